package bgp

import (
	"net/netip"
	"strings"
	"testing"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/proto"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// attrsOf decodes a path's attributes by type, for assertions.
func attrsOf(t *testing.T, p *api.Path) map[string]proto.Message {
	t.Helper()
	out := map[string]proto.Message{}
	for _, a := range p.Pattrs {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatalf("decoding attribute %s: %v", a.TypeUrl, err)
		}
		out[string(m.ProtoReflect().Descriptor().Name())] = m
	}
	return out
}

func TestBuildPath(t *testing.T) {
	tests := []struct {
		name      string
		route     Route
		family    api.Family_Afi
		nexthop   string
		med       uint32
		standard  []uint32
		large     [][3]uint32
		prefixLen uint32
	}{
		{
			name:    "elastic IPv4 /32 with next-hop-self",
			route:   Route{Prefix: pfx("203.0.113.7/32")},
			family:  api.Family_AFI_IP,
			nexthop: "0.0.0.0", prefixLen: 32,
		},
		{
			name:    "explicit next hop, MED and both kinds of community, sorted and deduplicated",
			route:   Route{Prefix: pfx("198.51.100.0/24"), NextHop: netip.MustParseAddr("10.0.0.9"), MED: 150, Communities: []string{"65000:200", "65000:100", "65000:100", "4200000000:1:2"}},
			family:  api.Family_AFI_IP,
			nexthop: "10.0.0.9", med: 150, prefixLen: 24,
			standard: []uint32{65000<<16 | 100, 65000<<16 | 200},
			large:    [][3]uint32{{4200000000, 1, 2}},
		},
		{
			name:    "elastic IPv6 /128 goes in MP_REACH with an unspecified next hop",
			route:   Route{Prefix: pfx("2001:db8::7/128"), MED: 5},
			family:  api.Family_AFI_IP6,
			nexthop: "::", med: 5, prefixLen: 128,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := BuildPath(tc.route)
			if err != nil {
				t.Fatalf("BuildPath: %v", err)
			}
			if p.Family.Afi != tc.family || p.Family.Safi != api.Family_SAFI_UNICAST {
				t.Errorf("family = %v, want %v unicast", p.Family, tc.family)
			}
			var nlri api.IPAddressPrefix
			if err := p.Nlri.UnmarshalTo(&nlri); err != nil {
				t.Fatalf("NLRI: %v", err)
			}
			if nlri.Prefix != tc.route.Prefix.Addr().String() || nlri.PrefixLen != tc.prefixLen {
				t.Errorf("NLRI = %s/%d, want %v", nlri.Prefix, nlri.PrefixLen, tc.route.Prefix)
			}
			attrs := attrsOf(t, p)
			if o, ok := attrs["OriginAttribute"].(*api.OriginAttribute); !ok || o.Origin != 0 {
				t.Errorf("origin = %v, want IGP", attrs["OriginAttribute"])
			}
			switch tc.family {
			case api.Family_AFI_IP:
				if nh, ok := attrs["NextHopAttribute"].(*api.NextHopAttribute); !ok || nh.NextHop != tc.nexthop {
					t.Errorf("next hop = %v, want %s", attrs["NextHopAttribute"], tc.nexthop)
				}
			case api.Family_AFI_IP6:
				mp, ok := attrs["MpReachNLRIAttribute"].(*api.MpReachNLRIAttribute)
				if !ok || len(mp.NextHops) != 1 || mp.NextHops[0] != tc.nexthop || len(mp.Nlris) != 1 {
					t.Errorf("MP_REACH = %v, want next hop %s and the NLRI", attrs["MpReachNLRIAttribute"], tc.nexthop)
				}
			}
			if m, ok := attrs["MultiExitDiscAttribute"].(*api.MultiExitDiscAttribute); !ok || m.Med != tc.med {
				t.Errorf("MED = %v, want %d", attrs["MultiExitDiscAttribute"], tc.med)
			}
			c, _ := attrs["CommunitiesAttribute"].(*api.CommunitiesAttribute)
			if got := c.GetCommunities(); !equalU32(got, tc.standard) {
				t.Errorf("communities = %v, want %v", got, tc.standard)
			}
			lc, _ := attrs["LargeCommunitiesAttribute"].(*api.LargeCommunitiesAttribute)
			var gotLarge [][3]uint32
			for _, l := range lc.GetCommunities() {
				gotLarge = append(gotLarge, [3]uint32{l.GlobalAdmin, l.LocalData1, l.LocalData2})
			}
			if len(gotLarge) != len(tc.large) || (len(gotLarge) > 0 && gotLarge[0] != tc.large[0]) {
				t.Errorf("large communities = %v, want %v", gotLarge, tc.large)
			}
			again, err := BuildPath(tc.route)
			if err != nil || !proto.Equal(p, again) {
				t.Errorf("BuildPath is not deterministic: %v", err)
			}
		})
	}
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBuildPathRejectsBadInput(t *testing.T) {
	tests := []struct {
		name  string
		route Route
		want  string
	}{
		{"zero prefix", Route{}, "invalid prefix"},
		{"host bits set", Route{Prefix: pfx("203.0.113.7/24")}, "host bits"},
		{"v4-mapped v6", Route{Prefix: pfx("::ffff:203.0.113.7/128")}, "IPv4-mapped"},
		{"next hop of the other family", Route{Prefix: pfx("203.0.113.7/32"), NextHop: netip.MustParseAddr("2001:db8::1")}, "prefix's family"},
		{"unspecified next hop", Route{Prefix: pfx("203.0.113.7/32"), NextHop: netip.MustParseAddr("0.0.0.0")}, "leave it empty"},
		{"community without colon", Route{Prefix: pfx("203.0.113.7/32"), Communities: []string{"65000"}}, "community"},
		{"community part over 16 bits", Route{Prefix: pfx("203.0.113.7/32"), Communities: []string{"65536:1"}}, "0..65535"},
		{"community not a number", Route{Prefix: pfx("203.0.113.7/32"), Communities: []string{"no:export"}}, "0..65535"},
		{"negative community", Route{Prefix: pfx("203.0.113.7/32"), Communities: []string{"-1:5"}}, "0..65535"},
		{"large community over 32 bits", Route{Prefix: pfx("203.0.113.7/32"), Communities: []string{"4294967296:1:1"}}, "large community"},
		{"four parts", Route{Prefix: pfx("203.0.113.7/32"), Communities: []string{"1:2:3:4"}}, "want"},
		{"empty community", Route{Prefix: pfx("203.0.113.7/32"), Communities: []string{""}}, "community"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := BuildPath(tc.route)
			if err == nil {
				t.Fatalf("BuildPath(%v) = %v, want an error", tc.route, p)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestDiffRoutes(t *testing.T) {
	a := Route{Prefix: pfx("203.0.113.1/32"), MED: 10}
	b := Route{Prefix: pfx("203.0.113.2/32")}
	c := Route{Prefix: pfx("10.1.0.0/16"), Communities: []string{"65000:1"}}
	announced := func(rs ...Route) map[netip.Prefix]announcement {
		m := map[netip.Prefix]announcement{}
		for _, r := range rs {
			p, err := BuildPath(r)
			if err != nil {
				t.Fatal(err)
			}
			m[r.Prefix] = announcement{route: r, path: p}
		}
		return m
	}
	aWorse := a
	aWorse.MED = 110
	tests := []struct {
		name               string
		from               map[netip.Prefix]announcement
		to                 []Route
		announce, withdraw []netip.Prefix
		err                string
	}{
		{name: "from nothing", from: announced(), to: []Route{a, b}, announce: []netip.Prefix{a.Prefix, b.Prefix}},
		{name: "unchanged sends nothing", from: announced(a, b), to: []Route{b, a}},
		{name: "communities reordered is no change", from: announced(c, a), to: []Route{a, {Prefix: c.Prefix, Communities: []string{"65000:1", "65000:1"}}}},
		{name: "one attribute change re-announces only that prefix", from: announced(a, b), to: []Route{aWorse, b}, announce: []netip.Prefix{a.Prefix}},
		{name: "removal withdraws only that prefix", from: announced(a, b, c), to: []Route{a, c}, withdraw: []netip.Prefix{b.Prefix}},
		{name: "everything gone", from: announced(a, c), to: nil, withdraw: []netip.Prefix{c.Prefix, a.Prefix}},
		{name: "duplicate prefix", from: announced(a), to: []Route{b, b}, err: "listed twice"},
		{name: "one bad route fails all", from: announced(a), to: []Route{b, {Prefix: pfx("203.0.113.9/32"), Communities: []string{"x"}}}, err: "community"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := diffRoutes(tc.from, tc.to)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string, got []announcement, want []netip.Prefix) {
				var gp []netip.Prefix
				for _, x := range got {
					gp = append(gp, x.route.Prefix)
				}
				if len(gp) != len(want) {
					t.Fatalf("%s = %v, want %v", what, gp, want)
				}
				for i := range gp {
					if gp[i] != want[i] {
						t.Fatalf("%s = %v, want %v", what, gp, want)
					}
				}
			}
			check("announce", p.announce, tc.announce)
			check("withdraw", p.withdraw, tc.withdraw)
		})
	}
}
