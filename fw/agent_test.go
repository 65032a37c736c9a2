package fw

import (
	"net/netip"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

func TestFromAgentProtocol(t *testing.T) {
	sg := &agentv1.SecurityGroup{Id: 1, Rules: []*agentv1.Rule{
		{Id: 1, Ingress: true, Protocol: 6, PortMin: 22, PortMax: 22, IcmpType: -1, IcmpCode: -1},
		{Id: 2, Ipv6: true, Cidr: "2001:db8::/32", IcmpType: -1, IcmpCode: -1},
		{Id: 3, Protocol: 1, IcmpType: 8, IcmpCode: -1, RemoteGroupId: 4},
	}}
	rules, err := SGRulesOf(sg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 2 || rules[0].RemoteCIDR != netip.MustParsePrefix("0.0.0.0/0") || rules[0].Direction != Ingress ||
		rules[1].RemoteGroup != 4 || rules[1].ICMP == nil || !rules[1].ICMP.AnyCode || rules[1].ICMP.Type != 8 {
		t.Fatalf("rules %+v", rules)
	}
	// One rule that does not parse makes the whole group an error: the
	// agent installs none of it, and the trace says so.
	sg.Rules = append(sg.Rules, &agentv1.Rule{Id: 5, Cidr: "10.0.0.0/33"})
	if r, err := SGRulesOf(sg); err == nil || r != nil {
		t.Fatalf("bad rule: %v, %v", r, err)
	}
	acl, err := ACLOf(&agentv1.NetworkAcl{Id: 7, Rules: []*agentv1.Rule{
		{Id: 1, Number: 100, Ingress: true, Protocol: 17, IcmpType: -1, IcmpCode: -1},
		{Id: 2, Number: 200, Allow: true, Cidr: "10.0.0.0/8", IcmpType: -1, IcmpCode: -1},
	}})
	if err != nil || acl.ID != 7 || len(acl.Rules) != 2 || acl.Rules[0].Action != Deny || acl.Rules[1].Action != Allow ||
		acl.Rules[1].Direction != Egress || acl.Rules[1].CIDR != netip.MustParsePrefix("10.0.0.0/8") {
		t.Fatalf("acl %+v, %v", acl, err)
	}
	if a, err := ACLOf(&agentv1.NetworkAcl{Id: 7, Rules: []*agentv1.Rule{{Id: 1, Cidr: "nope"}}}); err == nil || a != nil {
		t.Fatalf("bad ACL rule: %v, %v", a, err)
	}
}
