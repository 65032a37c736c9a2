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

func TestServiceTranslatesForThisNode(t *testing.T) {
	s := &agentv1.LbService{Id: 4, Vni: 100, Vip: "10.0.9.9", Port: 80, Protocol: 6, Internal: true, SourceIpPersistence: true,
		MaglevSize: 251, Backends: []*agentv1.LbBackend{
			{Id: 1, Address: "10.0.1.20", Port: 8080, Weight: 2, Node: "n1", PortMac: "02:00:00:00:00:0b", Healthy: true},
			{Id: 2, Address: "10.0.1.21", Port: 8080, Node: "n2", Healthy: true, Draining: true},
			{Id: 3, Address: "10.0.1.22", Port: 8080, Weight: 1}, // unbound: left out
			{Id: 5, Address: "fd00::5", Port: 8080, Weight: 1, Node: "n2"},
		}}
	got, ok, err := serviceOf(s, "n1")
	if err != nil || !ok {
		t.Fatalf("serviceOf: ok %v, %v", ok, err)
	}
	if got.ID != 4 || got.VPC != 100 || got.VIP != netip.MustParseAddr("10.0.9.9") || got.Port != 80 || got.Protocol != 6 ||
		!got.Internal || !got.SourceIPPersistence || got.TableSize != 251 || len(got.Backends) != 2 {
		t.Fatalf("translated to %+v", got)
	}
	b1, b2 := got.Backends[0], got.Backends[1]
	if !b1.Local || b1.PortMAC.String() != "02:00:00:00:00:0b" || b1.Weight != 2 || !b1.Healthy ||
		b2.Local || b2.Weight != 1 || !b2.Draining {
		t.Fatalf("backends %+v, %+v", b1, b2)
	}
	if _, ok, err := serviceOf(&agentv1.LbService{Vip: "fd00::9", Port: 80, Protocol: 6}, "n1"); ok || err != nil {
		t.Fatalf("IPv6 VIP: ok %v, err %v", ok, err)
	}
	for _, bad := range []*agentv1.LbService{
		{Vip: "nope", Port: 80, Protocol: 6},
		{Vip: "10.0.9.9", Port: 70000, Protocol: 6},
		{Vip: "10.0.9.9", Port: 80, Protocol: 1},
		{Vip: "10.0.9.9", Port: 80, Protocol: 6, Backends: []*agentv1.LbBackend{{Id: 1, Address: "10.0.1.1", Port: 1, Node: "n1", PortMac: "x"}}},
	} {
		if _, _, err := serviceOf(bad, "n1"); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}
