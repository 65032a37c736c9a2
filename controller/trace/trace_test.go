package trace

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
)

const (
	pfx    = "projects/p/"
	vpcN   = pfx + "vpcs/v"
	subA   = vpcN + "/subnets/a"
	subB   = vpcN + "/subnets/b"
	aclB   = pfx + "networkAcls/back"
	rtB    = pfx + "routeTables/back"
	sgWeb  = pfx + "securityGroups/web"
	sgCli  = pfx + "securityGroups/client"
	portA1 = pfx + "ports/a-1"
	portS  = pfx + "ports/srv"
	portNo = pfx + "ports/nosg"
	portUB = pfx + "ports/unbound"
	portE  = pfx + "ports/eip"
	portO  = pfx + "ports/ovn-src"
	portW2 = pfx + "ports/w2"
)

func obj(key string, body any) *agentv1.Object {
	o := &agentv1.Object{Key: key}
	switch b := body.(type) {
	case *agentv1.Vpc:
		o.Body = &agentv1.Object_Vpc{Vpc: b}
	case *agentv1.Subnet:
		o.Body = &agentv1.Object_Subnet{Subnet: b}
	case *agentv1.Port:
		o.Body = &agentv1.Object_Port{Port: b}
	case *agentv1.SecurityGroup:
		o.Body = &agentv1.Object_SecurityGroup{SecurityGroup: b}
	case *agentv1.NetworkAcl:
		o.Body = &agentv1.Object_NetworkAcl{NetworkAcl: b}
	case *agentv1.RouteTable:
		o.Body = &agentv1.Object_RouteTable{RouteTable: b}
	case *agentv1.PeerNode:
		o.Body = &agentv1.Object_PeerNode{PeerNode: b}
	case *agentv1.Gateway:
		o.Body = &agentv1.Object_Gateway{Gateway: b}
	case *agentv1.ElasticIp:
		o.Body = &agentv1.Object_ElasticIp{ElasticIp: b}
	}
	return o
}

// fixture is a crafted model: subnet a (no ACL) and subnet b (ACL "back",
// route table "back"), nodes n1, n2 (eBPF) and n3 (OVN), a gateway g1.
//
//	back ACL: ingress 100 deny tcp/80, 200 allow all;
//	          egress 100 allow tcp 32768-65535 (replies to clients only)
//	web SG:   ingress tcp/22 from 10.0.1.0/24, tcp/443 from group client;
//	          egress all
//	client:   egress all
//	route table back: 10.0.1.128/25 blackhole
func fixture() Objects {
	all := func(id uint32, ingress bool) *agentv1.Rule {
		return &agentv1.Rule{Id: id, Allow: true, Ingress: ingress, IcmpType: -1, IcmpCode: -1}
	}
	objs := []*agentv1.Object{
		obj("vpc/1", &agentv1.Vpc{Id: 1, Name: vpcN, Vni: 100, Cidrs: []string{"10.0.0.0/16"}}),
		obj("subnet/11", &agentv1.Subnet{Id: 11, Name: subA, VpcId: 1, Cidr: "10.0.1.0/24"}),
		obj("subnet/12", &agentv1.Subnet{Id: 12, Name: subB, VpcId: 1, Cidr: "10.0.2.0/24", NetworkAclId: 21, RouteTableId: 31}),
		obj("acl/21", &agentv1.NetworkAcl{Id: 21, Name: aclB, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 101, Number: 100, Allow: false, Ingress: true, Protocol: 6, PortMin: 80, PortMax: 80, IcmpType: -1, IcmpCode: -1},
			{Id: 102, Number: 200, Allow: true, Ingress: true, IcmpType: -1, IcmpCode: -1},
			{Id: 103, Number: 100, Allow: true, Protocol: 6, PortMin: 32768, PortMax: 65535, IcmpType: -1, IcmpCode: -1},
		}}),
		obj("rt/31", &agentv1.RouteTable{Id: 31, Name: rtB, VpcId: 1, Routes: []*agentv1.Route{{Destination: "10.0.1.128/25", Blackhole: true}}}),
		obj("sg/41", &agentv1.SecurityGroup{Id: 41, Name: sgWeb, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 201, Allow: true, Ingress: true, Protocol: 6, PortMin: 22, PortMax: 22, Cidr: "10.0.1.0/24", IcmpType: -1, IcmpCode: -1},
			all(202, false),
			{Id: 204, Allow: true, Ingress: true, Protocol: 6, PortMin: 443, PortMax: 443, RemoteGroupId: 42, IcmpType: -1, IcmpCode: -1},
		}}),
		obj("sg/42", &agentv1.SecurityGroup{Id: 42, Name: sgCli, VpcId: 1, Rules: []*agentv1.Rule{all(203, false)}}),
		obj("port/51", &agentv1.Port{Id: 51, Name: portA1, VpcId: 1, SubnetId: 11, Ips: []string{"10.0.1.11"}, Node: "n1", SecurityGroupIds: []uint32{42}, SourceDestCheck: true}),
		obj("port/52", &agentv1.Port{Id: 52, Name: portS, VpcId: 1, SubnetId: 12, Ips: []string{"10.0.2.22"}, Node: "n2", SecurityGroupIds: []uint32{41}, SourceDestCheck: true}),
		obj("port/53", &agentv1.Port{Id: 53, Name: portNo, VpcId: 1, SubnetId: 11, Ips: []string{"10.0.1.12"}, Node: "n1", SourceDestCheck: true}),
		obj("port/54", &agentv1.Port{Id: 54, Name: portUB, VpcId: 1, SubnetId: 11, Ips: []string{"10.0.1.13"}, SecurityGroupIds: []uint32{42}, SourceDestCheck: true}),
		obj("port/55", &agentv1.Port{Id: 55, Name: portE, VpcId: 1, SubnetId: 11, Ips: []string{"10.0.1.14"}, Node: "n1", SecurityGroupIds: []uint32{42}, SourceDestCheck: true}),
		obj("port/56", &agentv1.Port{Id: 56, Name: portO, VpcId: 1, SubnetId: 12, Ips: []string{"10.0.2.33"}, Node: "n3", SecurityGroupIds: []uint32{42}, SourceDestCheck: true}),
		obj("port/57", &agentv1.Port{Id: 57, Name: portW2, VpcId: 1, SubnetId: 11, Ips: []string{"10.0.1.15"}, Node: "n1", SecurityGroupIds: []uint32{41}, SourceDestCheck: true}),
		obj("node/n1", &agentv1.PeerNode{Node: "n1", UnderlayIp: "192.0.2.11", Realization: "ebpf"}),
		obj("node/n2", &agentv1.PeerNode{Node: "n2", UnderlayIp: "192.0.2.12", Realization: "ebpf"}),
		obj("node/n3", &agentv1.PeerNode{Node: "n3", UnderlayIp: "192.0.2.13", Realization: "ovn"}),
		obj("node/g1", &agentv1.PeerNode{Node: "g1", UnderlayIp: "192.0.2.1", Realization: "ebpf"}),
		obj("gateway/g1", &agentv1.Gateway{Node: "g1", UnderlayIp: "192.0.2.1"}),
		obj("eip/61", &agentv1.ElasticIp{Id: 61, Name: pfx + "elasticIps/e", Address: "203.0.113.10", VpcId: 1, Vni: 100, PortId: 55,
			PrivateIp: "10.0.1.14", PortNode: "n1", PortNodeIp: "192.0.2.11"}),
	}
	out := Objects{}
	for _, o := range objs {
		out[o.GetKey()] = o
	}
	return out
}

func stageNames(t *Trace) string {
	var out []string
	for _, s := range t.Stages {
		out = append(out, s.Stage+":"+s.Verdict)
	}
	return strings.Join(out, " ")
}

// TestStages traces crafted packets and checks, for each, the verdict, the
// stage that decided, the object and rule it names and the drop reason.
func TestStages(t *testing.T) {
	m := NewModel(fixture())
	tcp := func(from, to string, dport uint16) Request {
		return Request{From: from, To: to, Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: dport}
	}
	cases := []struct {
		name    string
		req     Request
		allowed bool
		stage   string // the last stage
		object  string // its object
		rule    string // prefix of its rule
		reason  string
	}{
		{"allow: SG rule and ACL rule 200, across nodes", tcp(portA1, "10.0.2.22", 22), true, "deliver", portS, "", ""},
		{"deny by ACL rule 100", tcp(portA1, "10.0.2.22", 80), false, "acl-ingress", aclB, "100: deny ingress tcp/80", "ACL_INGRESS"},
		{"allow: remote group member", tcp(portA1, "10.0.2.22", 443), true, "deliver", portS, "", ""},
		{"deny: not a member of the remote group", tcp(portW2, "10.0.2.22", 443), false, "sg-ingress", sgWeb, "none", "SG_INGRESS"},
		{"deny: no SG rule allows", tcp(portA1, "10.0.2.22", 8080), false, "sg-ingress", sgWeb, "none", "SG_INGRESS"},
		{"deny: a port in no security group", tcp(portNo, "10.0.2.22", 22), false, "sg-egress", portNo, "none", "SG_EGRESS"},
		{"deny: ACL egress default rule", Request{From: portS, To: "10.0.1.11", Protocol: fw.ProtoICMP, ICMPType: 8}, false, "acl-egress", aclB, "*", "ACL_EGRESS"},
		{"anti-spoofing drop", Request{From: portA1, SrcIP: netip.MustParseAddr("10.0.1.99"), To: "10.0.2.22", Protocol: fw.ProtoTCP, DstPort: 22},
			false, "anti-spoofing", portA1, "", "SPOOF_IP"},
		{"blackhole route (OVN source node)", tcp(portO, "10.0.1.200", 40000), false, "route", rtB, "10.0.1.128/25 -> blackhole", "NO_ROUTE"},
		{"unknown destination inside the VPC", tcp(portA1, "10.0.1.250", 22), false, "route", vpcN, "local 10.0.0.0/16", "NO_ROUTE"},
		{"destination port not bound", tcp(portA1, "10.0.1.13", 22), false, "route", vpcN, "local 10.0.1.0/24", "NO_ROUTE"},
		{"source port not bound", tcp(portUB, "10.0.2.22", 22), false, "source", portUB, "", "UNKNOWN_PORT"},
		{"outside through the elastic IP", tcp(portE, "198.51.100.7", 443), true, "uplink", "", "", ""},
		{"outside without elastic IP or NAT gateway", tcp(portA1, "198.51.100.7", 443), false, "route", vpcN, "outside", "NO_ROUTE"},
		{"from the outside to the elastic IP: no ingress rule", Request{From: "198.51.100.7", To: "203.0.113.10", Protocol: fw.ProtoTCP, SrcPort: 5555, DstPort: 22},
			false, "sg-ingress", sgCli, "none", "SG_INGRESS"},
		{"from the outside to an address nobody serves", Request{From: "198.51.100.7", To: "203.0.113.99", Protocol: fw.ProtoICMP, ICMPType: 8},
			false, "gateway", "", "", "NO_ROUTE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := m.Trace(c.req)
			if err != nil {
				t.Fatal(err)
			}
			tr := res.Forward
			if tr.Allowed != c.allowed || res.Allowed != c.allowed {
				t.Fatalf("allowed = %v, want %v; stages %s", tr.Allowed, c.allowed, stageNames(&tr))
			}
			last := tr.Stages[len(tr.Stages)-1]
			if last.Stage != c.stage || last.Object != c.object || !strings.HasPrefix(last.Rule, c.rule) || tr.Reason != c.reason {
				t.Errorf("decided by %s/%q rule %q reason %q, want %s/%q rule %q... reason %q\nstages %s\n%s",
					last.Stage, last.Object, last.Rule, tr.Reason, c.stage, c.object, c.rule, c.reason, stageNames(&tr), last.Detail)
			}
			if tr.State != StateNew {
				t.Errorf("state %s, want NEW", tr.State)
			}
		})
	}
}

// TestStageOrder checks the order of an allowed walk across nodes: the
// eBPF pipeline's (bpf/c/meridian.c).
func TestStageOrder(t *testing.T) {
	res, err := NewModel(fixture()).Trace(Request{From: portA1, To: portS, Protocol: fw.ProtoTCP, DstPort: 22})
	if err != nil {
		t.Fatal(err)
	}
	want := "source:pass anti-spoofing:pass conntrack:pass acl-egress:pass sg-egress:pass route:pass tunnel:pass conntrack:pass acl-ingress:pass sg-ingress:pass deliver:deliver"
	if got := stageNames(&res.Forward); got != want {
		t.Errorf("stages\n got %s\nwant %s", got, want)
	}
	tun := res.Forward.Stages[6]
	if !strings.Contains(tun.Detail, "VNI 100") || !strings.Contains(tun.Detail, "n2") {
		t.Errorf("tunnel stage %q does not name the VNI and the node", tun.Detail)
	}
}

// TestReply: the reply of an allowed connection skips the security groups
// (conntrack) but meets the ACLs, which are stateless.
func TestReply(t *testing.T) {
	m := NewModel(fixture())
	// srv's reply to a-1:40000 leaves subnet b through egress rule 100.
	res, err := m.Trace(Request{From: portA1, To: "10.0.2.22", Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: 22, Reply: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Allowed || res.Reply == nil || res.Reply.State != StateEstablished {
		t.Fatalf("connection allowed=%v reply=%+v", res.Allowed, res.Reply)
	}
	for _, s := range res.Reply.Stages {
		if strings.HasPrefix(s.Stage, "sg-") && s.Verdict != Skip {
			t.Errorf("reply stage %s: %s, want skip", s.Stage, s.Verdict)
		}
		if s.Stage == "acl-egress" && !strings.HasPrefix(s.Rule, "100:") {
			t.Errorf("reply left subnet b by rule %q, want 100", s.Rule)
		}
	}
	// From a client port below 32768 the reply finds no egress rule.
	res, err = m.Trace(Request{From: portA1, To: "10.0.2.22", Protocol: fw.ProtoTCP, SrcPort: 1000, DstPort: 22, Reply: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Allowed || !res.Forward.Allowed || res.Reply == nil || res.Reply.Reason != "ACL_EGRESS" {
		t.Errorf("reply to port 1000: connection allowed=%v forward=%v reply=%+v, want the reply dropped by ACL egress", res.Allowed, res.Forward.Allowed, res.Reply)
	}
	// The reply of a connection to the outside comes back through the
	// elastic IP.
	res, err = m.Trace(Request{From: portE, To: "198.51.100.7", Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: 443, Reply: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Allowed || res.Reply.Packet.Dst.String() != "203.0.113.10" {
		t.Errorf("outside reply: allowed=%v, reply %s, stages %s", res.Allowed, res.Reply.Packet, stageNames(res.Reply))
	}
}

// TestRealizations: where the realizations differ today, the trace
// follows the node doing the work and says so.
func TestRealizations(t *testing.T) {
	objs := fixture()
	m := NewModel(objs)
	// srv (eBPF node) to the blackholed range: the eBPF data path ignores
	// route tables, so the VPC route decides, with a note.
	res, err := m.Trace(Request{From: portS, To: "10.0.1.200", Protocol: fw.ProtoTCP, DstPort: 40000})
	if err != nil {
		t.Fatal(err)
	}
	last := res.Forward.Stages[len(res.Forward.Stages)-1]
	if last.Object != vpcN || !strings.Contains(strings.Join(res.Forward.Notes, "\n"), "does not realize") {
		t.Errorf("eBPF source: decided by %s %s, notes %q", last.Object, last.Rule, res.Forward.Notes)
	}
	// Source/destination check off: OVN nodes accept a foreign source.
	objs["port/56"].GetPort().SourceDestCheck = false
	m = NewModel(objs)
	res, err = m.Trace(Request{From: portO, SrcIP: netip.MustParseAddr("10.9.9.9"), To: "10.0.2.22", Protocol: fw.ProtoTCP, DstPort: 22})
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Forward.Stages[1]; s.Stage != "anti-spoofing" || s.Verdict != Pass {
		t.Errorf("OVN port without source/destination check: %+v", s)
	}
}

func TestInvalidRequests(t *testing.T) {
	m := NewModel(fixture())
	for _, req := range []Request{
		{From: pfx + "ports/missing", To: "10.0.2.22", Protocol: fw.ProtoTCP, DstPort: 22},
		{From: portA1, To: pfx + "ports/missing", Protocol: fw.ProtoTCP, DstPort: 22},
		{From: portA1, To: "10.0.2.22"},
		{From: "2001:db8::1", To: "10.0.2.22", Protocol: fw.ProtoUDP, DstPort: 53},
	} {
		if _, err := m.Trace(req); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: err = %v, want ErrInvalid", req, err)
		}
	}
}

// TestPortMappings: a NAT gateway's port mapping lets a connection in from
// the outside; its reply leaves through the same gateway path as the
// port's other outbound traffic and is translated back to the mapping. A
// mapped port outside the NAT gateway's subnets and without an elastic IP
// has no way out on eBPF nodes (the workload node sends to a gateway only
// what an elastic IP or a NAT gateway claims), so the reply is dropped
// there: the trace says so, as the data path would.
func TestPortMappings(t *testing.T) {
	objs := fixture()
	sg := objs["sg/41"].GetSecurityGroup()
	sg.Rules = append(sg.Rules, &agentv1.Rule{Id: 205, Allow: true, Ingress: true, Protocol: 6, PortMin: 22, PortMax: 22, IcmpType: -1, IcmpCode: -1})
	objs["ngw/71"] = &agentv1.Object{Key: "ngw/71", Body: &agentv1.Object_NatGateway{NatGateway: &agentv1.NatGateway{
		Id: 71, Name: pfx + "natGateways/n", VpcId: 1, Vni: 100, Addresses: []string{"203.0.113.20"}, SubnetIds: []uint32{11},
		SnatCidrs: []string{"10.0.1.0/24"}, PortMin: 1024, PortMax: 65535, OwnerNode: "g1",
		PortMappings: []*agentv1.PortMapping{
			{Protocol: 6, Address: "203.0.113.20", PublicPort: 2222, PortId: 57, PrivateIp: "10.0.1.15", PrivatePort: 22, PortNode: "n1"},
			{Protocol: 6, Address: "203.0.113.20", PublicPort: 2223, PortId: 52, PrivateIp: "10.0.2.22", PrivatePort: 22, PortNode: "n2"},
		},
	}}}
	m := NewModel(objs)
	in := func(public uint16) Request {
		return Request{From: "198.51.100.7", To: "203.0.113.20", Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: public, Reply: true}
	}
	res, err := m.Trace(in(2222))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Allowed {
		t.Fatalf("mapping to w2: forward %s / reply %+v", stageNames(&res.Forward), res.Reply)
	}
	rules := ""
	for _, s := range res.Reply.Stages {
		rules += s.Rule + "\n"
	}
	if !strings.Contains(rules, "port mapping tcp 10.0.1.15:22 -> 203.0.113.20:2222") {
		t.Errorf("the reply is not translated back by the mapping: %s", rules)
	}
	res, err = m.Trace(in(2223))
	if err != nil {
		t.Fatal(err)
	}
	if res.Allowed || !res.Forward.Allowed || res.Reply.Reason != "NO_ROUTE" {
		t.Errorf("mapping to srv (subnet b, no elastic IP): connection %v, forward %v, reply %s %s", res.Allowed, res.Forward.Allowed, res.Reply.Reason, stageNames(res.Reply))
	}
	// A NAT gateway's address lets nothing else in.
	res, err = m.Trace(in(2224))
	if err != nil {
		t.Fatal(err)
	}
	if res.Forward.Reason != "NAT_NO_FLOW" {
		t.Errorf("unmapped port of a NAT address: %s (%s)", res.Forward.Reason, stageNames(&res.Forward))
	}
}
