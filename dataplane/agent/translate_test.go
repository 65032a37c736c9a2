package agent

import (
	"net/netip"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
)

func TestPolicyIDIsStableAndSharedBySameGroups(t *testing.T) {
	a := policyID([]uint32{3, 1, 2}, map[uint32]string{})
	b := policyID([]uint32{1, 2, 3}, map[uint32]string{})
	if a != b || a == 0 {
		t.Fatalf("same set of groups got policies %d and %d", a, b)
	}
	taken := map[uint32]string{}
	x := policyID([]uint32{1}, taken)
	// Force a collision: another set claims x first in a fresh table.
	taken2 := map[uint32]string{x: "[99]"}
	y := policyID([]uint32{1}, taken2)
	if y == x {
		t.Fatalf("collision not resolved: both got %d", x)
	}
}

func TestRulesTranslateToFirewallModel(t *testing.T) {
	sg := &agentv1.SecurityGroup{Id: 5, Rules: []*agentv1.Rule{
		{Id: 1, Ingress: true, Protocol: 6, PortMin: 22, PortMax: 22, Cidr: "10.0.1.0/24", IcmpType: -1, IcmpCode: -1},
		{Id: 2, Ingress: true, Protocol: 1, IcmpType: 8, IcmpCode: -1, RemoteGroupId: 5},
		{Id: 3, Ingress: false, Protocol: 0, IcmpType: -1, IcmpCode: -1},
		{Id: 4, Ingress: true, Protocol: 6, Cidr: "2001:db8::/64", Ipv6: true, IcmpType: -1, IcmpCode: -1},
	}}
	rules, err := fw.SGRulesOf(sg)
	if err != nil {
		t.Fatal(err)
	}
	want := []fw.SGRule{
		{ID: 1, Direction: fw.Ingress, Protocol: 6, Ports: fw.PortRange{From: 22, To: 22}, RemoteCIDR: netip.MustParsePrefix("10.0.1.0/24")},
		{ID: 2, Direction: fw.Ingress, Protocol: 1, ICMP: &fw.ICMPMatch{Type: 8, AnyCode: true}, RemoteGroup: 5},
		{ID: 3, Direction: fw.Egress, RemoteCIDR: netip.MustParsePrefix("0.0.0.0/0")},
	}
	if len(rules) != len(want) {
		t.Fatalf("got %d rules, want %d (IPv6 rules are skipped): %+v", len(rules), len(want), rules)
	}
	for i := range want {
		g, w := rules[i], want[i]
		if g.ID != w.ID || g.Direction != w.Direction || g.Protocol != w.Protocol || g.Ports != w.Ports ||
			g.RemoteCIDR != w.RemoteCIDR || g.RemoteGroup != w.RemoteGroup || (g.ICMP == nil) != (w.ICMP == nil) ||
			(g.ICMP != nil && *g.ICMP != *w.ICMP) {
			t.Errorf("rule %d: got %+v, want %+v", i, g, w)
		}
	}
	acl, err := fw.ACLOf(&agentv1.NetworkAcl{Id: 2, Rules: []*agentv1.Rule{
		{Id: 10, Number: 100, Allow: false, Ingress: true, Protocol: 6, PortMin: 80, PortMax: 80, IcmpType: -1, IcmpCode: -1},
		{Id: 11, Number: 200, Allow: true, Ingress: true, IcmpType: -1, IcmpCode: -1, Cidr: "10.0.0.0/8"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(acl.Rules) != 2 || acl.Rules[0].Action != fw.Deny || acl.Rules[1].Action != fw.Allow ||
		acl.Rules[0].CIDR != netip.MustParsePrefix("0.0.0.0/0") || acl.Rules[0].Number != 100 {
		t.Fatalf("ACL translated to %+v", acl)
	}
}
