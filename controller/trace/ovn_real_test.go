package trace

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/fw"
)

const (
	portOA  = pfx + "ports/ovn-a"
	portOA2 = pfx + "ports/ovn-a2"
	portOS  = pfx + "ports/ovn-srv"
	portON  = pfx + "ports/ovn-nosg"
	portOE  = pfx + "ports/ebpf-a"
)

// ovnFixture is a topology an OVN deployment can realize (MACs, gateway
// addresses) on nodes o1, o2 of the OVN realization, plus node e1 of the
// eBPF one:
//
//	subnet a 10.0.1.0/24: ovn-a (client), ovn-a2 (web), ovn-nosg (no group) on o1; ebpf-a on e1
//	subnet b 10.0.2.0/24, network ACL back (ingress 100 deny tcp/80, 200 allow all): ovn-srv (web) on o2
//	web SG:    ingress tcp/22 from 10.0.1.0/24, tcp/443 from anywhere, egress all;  client SG: egress all
func ovnFixture() Objects {
	all := func(id uint32, ingress bool) *agentv1.Rule {
		return &agentv1.Rule{Id: id, Allow: true, Ingress: ingress, IcmpType: -1, IcmpCode: -1}
	}
	port := func(id uint32, name string, subnet uint32, ip, node string, groups ...uint32) *agentv1.Object {
		return obj("port/"+itoa(id), &agentv1.Port{Id: id, Name: name, VpcId: 1, SubnetId: subnet, Ips: []string{ip},
			Mac: "02:00:00:00:00:" + itoa(id), Node: node, SecurityGroupIds: groups, SourceDestCheck: true})
	}
	objs := []*agentv1.Object{
		obj("vpc/1", &agentv1.Vpc{Id: 1, Name: vpcN, Vni: 100, Cidrs: []string{"10.0.0.0/16"}}),
		obj("subnet/11", &agentv1.Subnet{Id: 11, Name: subA, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450}),
		obj("subnet/12", &agentv1.Subnet{Id: 12, Name: subB, VpcId: 1, Cidr: "10.0.2.0/24", GatewayIp: "10.0.2.1", Mtu: 1450, NetworkAclId: 21}),
		obj("acl/21", &agentv1.NetworkAcl{Id: 21, Name: aclB, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 101, Number: 100, Allow: false, Ingress: true, Protocol: 6, PortMin: 80, PortMax: 80, IcmpType: -1, IcmpCode: -1},
			{Id: 102, Number: 200, Allow: true, Ingress: true, IcmpType: -1, IcmpCode: -1},
			{Id: 103, Number: 200, Allow: true, IcmpType: -1, IcmpCode: -1},
		}}),
		obj("sg/41", &agentv1.SecurityGroup{Id: 41, Name: sgWeb, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 201, Allow: true, Ingress: true, Protocol: 6, PortMin: 22, PortMax: 22, Cidr: "10.0.1.0/24", IcmpType: -1, IcmpCode: -1},
			all(202, false),
			{Id: 204, Allow: true, Ingress: true, Protocol: 6, PortMin: 443, PortMax: 443, Cidr: "0.0.0.0/0", IcmpType: -1, IcmpCode: -1},
		}}),
		obj("sg/42", &agentv1.SecurityGroup{Id: 42, Name: sgCli, VpcId: 1, Rules: []*agentv1.Rule{all(203, false)}}),
		port(51, portOA, 11, "10.0.1.11", "o1", 42),
		port(52, portOA2, 11, "10.0.1.12", "o1", 41),
		port(53, portON, 11, "10.0.1.13", "o1"),
		port(54, portOS, 12, "10.0.2.22", "o2", 41),
		port(55, portOE, 11, "10.0.1.14", "e1", 42),
		obj("node/o1", &agentv1.PeerNode{Node: "o1", UnderlayIp: "192.0.2.21", Realization: "ovn"}),
		obj("node/o2", &agentv1.PeerNode{Node: "o2", UnderlayIp: "192.0.2.22", Realization: "ovn"}),
		obj("node/e1", &agentv1.PeerNode{Node: "e1", UnderlayIp: "192.0.2.23", Realization: "ebpf"}),
	}
	out := Objects{}
	for _, o := range objs {
		out[o.GetKey()] = o
	}
	return out
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

// testExternal is the OVN realization's external network in these tests.
var testExternal = ovn.ExternalNetwork{CIDR: netip.MustParsePrefix("172.16.0.0/24"),
	RouterRange: netip.MustParsePrefix("172.16.0.128/25"), NextHop: netip.MustParseAddr("172.16.0.1")}

// syncOVN realizes objs in a real OVN control plane, as the controller's
// OVN reconciler does, and waits for ovn-northd's logical flows.
func syncOVN(t *testing.T, objs Objects) *ovntest.Stack {
	t.Helper()
	stack := ovntest.Start(t, ovntest.Options{})
	ext := testExternal
	r, err := ovn.NewReconciler(ovn.Config{NB: stack.NB.Endpoint(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), External: &ext})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Sync(ctx, objs); err != nil {
		t.Fatal(err)
	}
	stack.WaitNorthd()
	return stack
}

// TestOVNTraceAgreesWithTheModel realizes a model in a real OVN control
// plane and traces allowed and dropped packets both ways: the model trace
// and ovn-trace on ovn-northd's flows must reach the same verdict, and
// ovn-trace's must name the port or the ACL tier that decided.
func TestOVNTraceAgreesWithTheModel(t *testing.T) {
	objs := ovnFixture()
	stack := syncOVN(t, objs)
	m := NewModel(objs)
	tracer := &OVNTracer{SB: stack.SB.Endpoint()}
	tcp := func(from, to string, dport uint16) Request {
		return Request{From: from, To: to, Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: dport}
	}
	cases := []struct {
		name    string
		req     Request
		allowed bool
		ovn     string // in ovn-trace's verdict
	}{
		{"allowed by the web group, across the router", tcp(portOA, portOS, 22), true, "output to mer-port-54"},
		{"allowed on the same subnet", tcp(portOA, portOA2, 22), true, "output to mer-port-52"},
		{"dropped: no rule of the web group allows tcp/8080", tcp(portOA, portOS, 8080), false,
			"drop at ls_out_acl priority 2000 (ACL priority 1000: Meridian's default deny"},
		{"dropped: network ACL rule 100 denies tcp/80", tcp(portOA, portOS, 80), false, "a network ACL rule"},
		{"dropped: a port in no group sends nothing", tcp(portON, portOS, 22), false,
			"drop at ls_in_acl priority 2000 (ACL priority 1000: Meridian's default deny"},
		{"dropped: the web group allows tcp/22 only from subnet a", tcp(portOS, portOA2, 22), false, "drop at ls_out_acl"},
		{"dropped: ICMP leaves the web group but the client's group lets nothing in", Request{From: portOS, To: portOA, Protocol: fw.ProtoICMP, ICMPType: 8}, false, "drop at ls_out_acl"},
		{"not delivered: an address of the VPC no port holds", tcp(portOA, "10.0.2.99", 22), false,
			"not delivered: the router has no MAC for the destination and sends an ARP request instead"},
		{"udp dropped: no group allows it in", Request{From: portOA, To: portOS, Protocol: fw.ProtoUDP, SrcPort: 40000, DstPort: 53}, false, "drop at ls_out_acl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := m.Trace(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Forward.Allowed != tc.allowed {
				t.Fatalf("model: allowed=%v, want %v: %s", res.Forward.Allowed, tc.allowed, stageNames(&res.Forward))
			}
			src, err := m.OVNSource(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			v, err := tracer.Trace(testContext(t), m, src, res.Forward.Packet)
			if err != nil {
				t.Fatal(err)
			}
			if v.Allowed != res.Forward.Allowed {
				t.Errorf("ovn-trace: allowed=%v (%s), the model: %v (%s)\n%s", v.Allowed, v.Verdict, res.Forward.Allowed, stageNames(&res.Forward), v.Text)
			}
			if !strings.Contains(v.Verdict, tc.ovn) {
				t.Errorf("ovn-trace verdict %q lacks %q", v.Verdict, tc.ovn)
			}
			if p := v.Proto(res.Forward.Allowed, false); !p.GetAgrees() || p.GetText() != "" {
				t.Errorf("API form: agrees=%v, text %d bytes without detail", p.GetAgrees(), len(p.GetText()))
			}
		})
	}
}

// TestOVNTraceFromTheOutside: a packet from the fabric to an elastic IP
// whose gateway node is an OVN node enters OVN by the external switch's
// localnet port, and ovn-trace agrees with the model on allowed and
// dropped ones.
func TestOVNTraceFromTheOutside(t *testing.T) {
	objs := ovnFixture()
	for _, o := range []*agentv1.Object{
		obj("gateway/o1", &agentv1.Gateway{Node: "o1", UnderlayIp: "192.0.2.21"}),
		obj("eip/61", &agentv1.ElasticIp{Id: 61, Name: pfx + "elasticIps/srv", Address: "172.16.0.50", VpcId: 1, Vni: 100, PortId: 54,
			PrivateIp: "10.0.2.22", PortNode: "o2", PortNodeIp: "192.0.2.22"}),
	} {
		objs[o.GetKey()] = o
	}
	stack := syncOVN(t, objs)
	m := NewModel(objs)
	tracer := &OVNTracer{SB: stack.SB.Endpoint(), ExternalSwitch: ovn.DefaultExternalSwitch}
	for _, tc := range []struct {
		dport   uint16
		allowed bool
		ovn     string
	}{
		{443, true, "output to mer-port-54"},
		{22, false, "drop at ls_out_acl priority 2000 (ACL priority 1000: Meridian's default deny"},
		{80, false, "a network ACL rule"},
	} {
		req := Request{From: "192.168.5.5", To: "172.16.0.50", Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: tc.dport}
		res, err := m.Trace(req)
		if err != nil {
			t.Fatal(err)
		}
		if res.Forward.Allowed != tc.allowed {
			t.Fatalf("tcp/%d: model allowed=%v, want %v: %s", tc.dport, res.Forward.Allowed, tc.allowed, stageNames(&res.Forward))
		}
		vpc, err := m.OVNOutside(req, res.Forward.Packet)
		if err != nil || vpc != 1 {
			t.Fatalf("OVNOutside = %d, %v", vpc, err)
		}
		v, err := tracer.TraceOutside(testContext(t), vpc, res.Forward.Packet)
		if err != nil {
			t.Fatal(err)
		}
		if v.Allowed != tc.allowed || !strings.Contains(v.Verdict, tc.ovn) || v.Datapath != ovn.DefaultExternalSwitch {
			t.Errorf("tcp/%d: ovn-trace allowed=%v %q on %s, want %v with %q\n%s", tc.dport, v.Allowed, v.Verdict, v.Datapath, tc.allowed, tc.ovn, v.Text)
		}
	}
	// Not an OVN matter: a public address no VPC has, a gateway of the
	// eBPF realization.
	if _, err := m.OVNOutside(Request{From: "192.168.5.5"}, Packet{Dst: netip.MustParseAddr("172.16.0.99")}); !errors.Is(err, ErrNotOVN) {
		t.Errorf("unknown public address: %v", err)
	}
	objs["node/o1"] = obj("node/o1", &agentv1.PeerNode{Node: "o1", UnderlayIp: "192.0.2.21", Realization: "ebpf"})
	if _, err := NewModel(objs).OVNOutside(Request{From: "192.168.5.5"}, Packet{Dst: netip.MustParseAddr("172.16.0.50")}); !errors.Is(err, ErrNotOVN) {
		t.Errorf("eBPF gateway: %v", err)
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOVNSourceIsAPortOnAnOVNNode(t *testing.T) {
	m := NewModel(ovnFixture())
	for _, c := range []struct {
		from string
		ok   bool
	}{{portOA, true}, {portOE, false}, {"198.51.100.7", false}} {
		_, err := m.OVNSource(Request{From: c.from})
		if (err == nil) != c.ok || (err != nil && !errors.Is(err, ErrNotOVN)) {
			t.Errorf("OVNSource(%s) = %v, want ok=%v", c.from, err, c.ok)
		}
	}
}

// TestOVNTraceFailsWithinItsTimeout: a southbound database that does not
// answer is an error after the timeout, not a hung trace; one that is not
// there is an error at once.
func TestOVNTraceFailsWithinItsTimeout(t *testing.T) {
	m := NewModel(ovnFixture())
	req := Request{From: portOA, To: portOS, Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: 22}
	res, err := m.Trace(req)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := m.OVNSource(req)
	// A socket that accepts connections and never says a word.
	sock := t.TempDir() + "/silent.sock"
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	for _, c := range []struct {
		sb   string
		want string
	}{
		{"unix:" + sock, "deadline exceeded"},
		{"unix:" + t.TempDir() + "/no-such.sock", "database connection failed"},
	} {
		tracer := &OVNTracer{SB: c.sb, Timeout: 500 * time.Millisecond}
		start := time.Now()
		_, err = tracer.Trace(testContext(t), m, src, res.Forward.Packet)
		if err == nil || !strings.Contains(err.Error(), c.want) || time.Since(start) > 5*time.Second {
			t.Errorf("ovn-trace against %s: err=%v after %v, want %q", c.sb, err, time.Since(start), c.want)
		}
	}
}
