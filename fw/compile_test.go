package fw_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/meridian-sdn/meridian/fw"
	"github.com/meridian-sdn/meridian/fw/fwtest"
)

// The simulators below do in Go what the BPF programs do with the compiled
// entries: LPM and exact lookups, no rule walk.

func policyPort(p fw.Packet) uint16 {
	switch p.Protocol {
	case fw.ProtoTCP, fw.ProtoUDP:
		return p.DstPort
	case fw.ProtoICMP:
		return uint16(p.ICMPType)<<8 | uint16(p.ICMPCode)
	}
	return 0
}

func remote(d fw.Direction, p fw.Packet) netip.Addr {
	if d == fw.Egress {
		return p.Dst
	}
	return p.Src
}

func simulateSG(c *fw.CompiledSG, policy uint32, d fw.Direction, p fw.Packet) bool {
	// identity by LPM over the prefixes, as cross-checked against the
	// interval form the data path searches
	var identity uint32
	best := -1
	for _, e := range c.IPCache {
		if e.Prefix.Contains(remote(d, p)) && e.Prefix.Bits() > best {
			best, identity = e.Prefix.Bits(), e.Identity
		}
	}
	a := remote(d, p).As4()
	x := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	ivs := c.IPIntervals()
	i := len(ivs) - 1
	for i > 0 && ivs[i].Start > x {
		i--
	}
	if ivs[i].Identity != identity {
		panic(fmt.Sprintf("interval identity %d, LPM identity %d for %v", ivs[i].Identity, identity, remote(d, p)))
	}
	port := policyPort(p)
	for _, proto := range []uint8{p.Protocol, fw.ProtoAny} {
		for _, e := range c.Entries {
			if e.Policy != policy || e.Identity != identity || e.Direction != d || e.Protocol != proto {
				continue
			}
			for _, s := range e.Spans {
				if port >= s.Lo && port <= s.Hi {
					return true
				}
			}
			for _, ps := range c.PortSets {
				if e.PortSet != 0 && ps.Policy == policy && ps.Set == e.PortSet && ps.Port.Contains(port) {
					return true
				}
			}
		}
	}
	return false
}

func simulateACL(c *fw.CompiledACL, d fw.Direction, p fw.Packet) (bool, uint32) {
	var cidr, proto, port fw.Bitmap
	for _, dir := range c.Directions {
		if dir.Direction == d {
			a := remote(d, p).As4()
			cidr = dir.IPs.Match(uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]))
			port = dir.Ports.Match(uint32(policyPort(p)))
		}
	}
	found := false
	for _, e := range c.Protocols {
		if e.Direction == d && e.Protocol == uint16(p.Protocol) {
			proto, found = e.Rules, true
		}
	}
	if !found {
		for _, e := range c.Protocols {
			if e.Direction == d && e.Protocol == fw.ACLProtoOther {
				proto = e.Rules
			}
		}
	}
	for i := range fw.MaxACLRules {
		w, b := i/64, uint64(1)<<(i%64)
		if cidr[w]&proto[w]&port[w]&b != 0 {
			for _, r := range c.Rules {
				if r.Direction == d && r.Index == uint32(i) {
					return r.Action == fw.Allow, r.Rule
				}
			}
		}
	}
	return false, 0
}

func TestCompiledSecurityGroupsAgreeWithReference(t *testing.T) {
	g := fwtest.New(1)
	groups := []uint32{100, 101, 102}
	var verdicts [2]int
	for round := range 200 {
		members := g.Groups(groups)
		policies := []fw.SecurityGroupPolicy{g.Policy(1, 1+g.R.IntN(12), groups), g.Policy(2, g.R.IntN(5), groups)}
		c, err := fw.CompileSecurityGroups(7, policies, members)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for range 50 {
			pkt := g.Packet(g.Addr(), g.Addr())
			for i := range policies {
				for _, d := range []fw.Direction{fw.Egress, fw.Ingress} {
					want, _ := policies[i].Evaluate(d, pkt, members)
					verdicts[b2i(want)]++
					if got := simulateSG(c, policies[i].ID, d, pkt); got != want {
						t.Fatalf("round %d: policy %+v groups %v dir %v packet %+v: compiled %v, reference %v",
							round, policies[i], members, d, pkt, got, want)
					}
				}
			}
		}
	}
	requireBothVerdicts(t, verdicts)
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// requireBothVerdicts guards the randomized tests against generators that
// drift into all-allow or all-deny, which would make them vacuous.
func requireBothVerdicts(t *testing.T, v [2]int) {
	t.Helper()
	if v[0] < (v[0]+v[1])/20 || v[1] < (v[0]+v[1])/20 {
		t.Fatalf("verdicts too one-sided: %d denied, %d allowed", v[0], v[1])
	}
	t.Logf("%d denied, %d allowed", v[0], v[1])
}

func TestCompiledACLAgreesWithReference(t *testing.T) {
	g := fwtest.New(2)
	var verdicts [2]int
	for round := range 300 {
		acl := g.ACL(9, 1+g.R.IntN(20))
		c, err := fw.CompileACL(&acl)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for range 50 {
			pkt := g.Packet(g.Addr(), g.Addr())
			for _, d := range []fw.Direction{fw.Egress, fw.Ingress} {
				want, wantRule := acl.Evaluate(d, pkt)
				verdicts[b2i(want)]++
				got, gotRule := simulateACL(c, d, pkt)
				if got != want || gotRule != wantRule {
					t.Fatalf("round %d: acl %+v dir %v packet %+v: compiled %v rule %d, reference %v rule %d",
						round, acl, d, pkt, got, gotRule, want, wantRule)
				}
			}
		}
	}
	requireBothVerdicts(t, verdicts)
}

func TestACLOrderByNumber(t *testing.T) {
	web := netip.MustParsePrefix("0.0.0.0/0")
	tcp80 := fw.PortRange{From: 80, To: 80}
	pkt := fw.Packet{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.1.1"), Protocol: fw.ProtoTCP, SrcPort: 4000, DstPort: 80}
	cases := []struct {
		name    string
		rules   []fw.ACLRule
		allowed bool
		ruleID  uint32
	}{
		{"deny before allow", []fw.ACLRule{
			{ID: 1, Number: 200, Action: fw.Allow, Protocol: fw.ProtoTCP, Ports: tcp80, CIDR: web},
			{ID: 2, Number: 100, Action: fw.Deny, Protocol: fw.ProtoTCP, Ports: tcp80, CIDR: web},
		}, false, 2},
		{"allow before deny", []fw.ACLRule{
			{ID: 1, Number: 100, Action: fw.Allow, Protocol: fw.ProtoTCP, Ports: tcp80, CIDR: web},
			{ID: 2, Number: 200, Action: fw.Deny, Protocol: fw.ProtoAny, CIDR: web},
		}, true, 1},
		{"default deny", []fw.ACLRule{
			{ID: 1, Number: 100, Action: fw.Allow, Protocol: fw.ProtoUDP, CIDR: web},
		}, false, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			acl := fw.ACL{ID: 1, Rules: tc.rules}
			for i := range acl.Rules {
				acl.Rules[i].Direction = fw.Egress
			}
			c, err := fw.CompileACL(&acl)
			if err != nil {
				t.Fatal(err)
			}
			if ok, id := acl.Evaluate(fw.Egress, pkt); ok != tc.allowed || id != tc.ruleID {
				t.Errorf("reference: got %v/%d, want %v/%d", ok, id, tc.allowed, tc.ruleID)
			}
			if ok, id := simulateACL(c, fw.Egress, pkt); ok != tc.allowed || id != tc.ruleID {
				t.Errorf("compiled: got %v/%d, want %v/%d", ok, id, tc.allowed, tc.ruleID)
			}
		})
	}
}

func TestValidationRejects(t *testing.T) {
	cidr := netip.MustParsePrefix("10.0.0.0/8")
	cases := map[string]fw.SGRule{
		"zero id":          {Direction: fw.Egress, RemoteCIDR: cidr},
		"no remote":        {ID: 1},
		"both remotes":     {ID: 1, RemoteCIDR: cidr, RemoteGroup: 3},
		"ports without l4": {ID: 1, Ports: fw.PortRange{From: 1, To: 2}, RemoteCIDR: cidr},
		"reversed ports":   {ID: 1, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 9, To: 2}, RemoteCIDR: cidr},
		"icmp on tcp":      {ID: 1, Protocol: fw.ProtoTCP, ICMP: &fw.ICMPMatch{Type: 8}, RemoteCIDR: cidr},
		"ipv6":             {ID: 1, RemoteCIDR: netip.MustParsePrefix("::/0")},
	}
	for name, r := range cases {
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, r)
		}
	}
	acl := fw.ACL{ID: 1}
	for i := range fw.MaxACLRules + 1 {
		acl.Rules = append(acl.Rules, fw.ACLRule{ID: uint32(i + 1), Number: uint32(i), CIDR: cidr})
	}
	if _, err := fw.CompileACL(&acl); err == nil {
		t.Errorf("accepted an ACL with %d rules", len(acl.Rules))
	}
}

func TestManySpansBecomeAPortSet(t *testing.T) {
	var rules []fw.SGRule
	for i := range 12 {
		p := uint16(10 * (i + 1))
		rules = append(rules, fw.SGRule{ID: uint32(i + 1), Direction: fw.Ingress, Protocol: fw.ProtoTCP,
			Ports: fw.PortRange{From: p, To: p}, RemoteCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	}
	pol := fw.SecurityGroupPolicy{ID: 1, Rules: rules}
	c, err := fw.CompileSecurityGroups(1, []fw.SecurityGroupPolicy{pol}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Entries) != 1 || c.Entries[0].PortSet == 0 || len(c.PortSets) != 12 {
		t.Fatalf("want one entry with a port set of 12 ports: %+v", c)
	}
	for port := uint16(0); port < 200; port++ {
		pkt := fw.Packet{Src: netip.MustParseAddr("10.1.1.1"), Dst: netip.MustParseAddr("10.2.2.2"), Protocol: fw.ProtoTCP, DstPort: port}
		want, _ := pol.Evaluate(fw.Ingress, pkt, nil)
		if got := simulateSG(c, 1, fw.Ingress, pkt); got != want {
			t.Fatalf("port %d: compiled %v, reference %v", port, got, want)
		}
	}
}
