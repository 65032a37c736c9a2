package bgp

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no ASN", Config{RouterID: netip.MustParseAddr("10.0.0.1")}, "ASN"},
		{"no router ID", Config{ASN: 65001}, "router ID"},
		{"IPv6 router ID", Config{ASN: 65001, RouterID: netip.MustParseAddr("2001:db8::1")}, "router ID"},
		{"bad port", Config{ASN: 65001, RouterID: netip.MustParseAddr("10.0.0.1"), ListenPort: 70000}, "port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New(%+v) error = %v, want one mentioning %q", tc.cfg, err, tc.want)
			}
		})
	}
}

// TestSpeakerWithoutNetwork exercises the declarative API in-process: no
// peer is reachable (documentation addresses, no listener), which is all
// that bad-input handling needs.
func TestSpeakerWithoutNetwork(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := New(Config{ASN: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), ListenPort: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetRoutes(ctx, nil); err == nil {
		t.Error("SetRoutes before Start succeeded")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Stop(ctx); err != nil {
			t.Error(err)
		}
		if err := s.SetPeers(ctx, nil); err == nil {
			t.Error("SetPeers after Stop succeeded")
		}
	}()

	good := Peer{Address: netip.MustParseAddr("192.0.2.9"), ASN: 65000, HoldTime: 9 * time.Second}
	if err := s.SetPeers(ctx, []Peer{good}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		peers []Peer
		want  string
	}{
		{[]Peer{good, {Address: netip.MustParseAddr("192.0.2.10")}}, "ASN is 0"},
		{[]Peer{{Address: netip.MustParseAddr("192.0.2.10"), ASN: 1, HoldTime: time.Second}}, "hold time"},
		{[]Peer{{Address: netip.MustParseAddr("192.0.2.10"), ASN: 1, RestartTime: 5000 * time.Second}}, "restart time"},
		{[]Peer{{ASN: 1}}, "invalid address"},
		{[]Peer{good, good}, "twice"},
		{[]Peer{{Address: netip.MustParseAddr("192.0.2.10"), ASN: 1, LocalAddress: netip.MustParseAddr("2001:db8::1")}}, "other family"},
	} {
		if err := s.SetPeers(ctx, bad.peers); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("SetPeers(%+v) error = %v, want one mentioning %q", bad.peers, err, bad.want)
		}
	}
	st, err := s.PeerStates(ctx)
	if err != nil || len(st) != 1 || st[0].Address != good.Address || st[0].State == "established" {
		t.Errorf("after rejected calls: peer states %+v, %v; want only %v, not established", st, err, good.Address)
	}

	a := Route{Prefix: pfx("203.0.113.1/32"), Communities: []string{"65000:1"}}
	b := Route{Prefix: pfx("2001:db8::1/128"), MED: 7}
	if err := s.SetRoutes(ctx, []Route{a, b}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRoutes(ctx, []Route{{Prefix: pfx("203.0.113.2/32")}, {Prefix: pfx("203.0.113.3/32"), Communities: []string{"1:2:3:4"}}}); err == nil {
		t.Error("SetRoutes with a bad community succeeded")
	}
	if got := s.Routes(); !slices.Equal(got, []netip.Prefix{a.Prefix, b.Prefix}) {
		t.Errorf("announced %v after a rejected call, want %v and %v", got, a.Prefix, b.Prefix)
	}
	if err := s.SetRoutes(ctx, []Route{b}); err != nil {
		t.Fatal(err)
	}
	if got := s.Routes(); !slices.Equal(got, []netip.Prefix{b.Prefix}) {
		t.Errorf("announced %v, want only %v", got, b.Prefix)
	}
}
