package agent

import (
	"net/netip"
	"strings"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// gatewayWorld is metricsWorld with web-1's elastic IP, a NAT gateway for
// subnet 2 with a port mapping to db-1, and an east-west service over db-1.
func gatewayWorld() map[string]*agentv1.Object {
	w := metricsWorld()
	for _, o := range []*agentv1.Object{
		{Key: "eip/5", Body: &agentv1.Object_ElasticIp{ElasticIp: &agentv1.ElasticIp{Id: 5, Name: "projects/lt/elasticIps/web",
			Address: "198.51.100.10", VpcId: 1, Vni: 100, PortId: 1, PrivateIp: "10.0.1.10", PortNode: "n1"}}},
		{Key: "natgw/7", Body: &agentv1.Object_NatGateway{NatGateway: &agentv1.NatGateway{Id: 7, Name: "projects/lt/natGateways/out",
			VpcId: 1, Vni: 100, Addresses: []string{"198.51.100.20"}, PortMin: 1024, PortMax: 65535, OwnerNode: "gw1",
			PortMappings: []*agentv1.PortMapping{{Protocol: 6, Address: "198.51.100.20", PublicPort: 8080, PortId: 2, PrivateIp: "10.0.2.20", PrivatePort: 80}}}}},
		{Key: "lb/9", Body: &agentv1.Object_LbService{LbService: &agentv1.LbService{Id: 9, Name: "projects/lt/loadBalancers/db/http",
			VpcId: 1, Vni: 100, Vip: "10.0.9.9", Port: 80, Protocol: 6, Internal: true,
			Backends: []*agentv1.LbBackend{{Id: 2, Address: "10.0.2.20", Port: 8080, Weight: 1, PortId: 2, Node: "n1", Healthy: true}}}}},
	} {
		w[o.Key] = o
	}
	return w
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func nbo(s string) uint32 {
	b := netip.MustParseAddr(s).As4()
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// TestLiveTraceRendersGatewayStages: the gateway's and the services' events
// become stages named as the model trace names them (gateway, nat, uplink,
// load-balancer), each naming its object — the elastic IP, the NAT
// gateway, the service and its backend — and the packet's verdict says
// where it went: tunnelled to the port's node, out to the fabric, left to
// the host, or dropped at the gateway with the object it was about.
func TestLiveTraceRendersGatewayStages(t *testing.T) {
	a := &Agent{cfg: Config{Node: "gw1"}, desired: gatewayWorld()}
	outside := netip.MustParseAddr("203.0.113.2")
	entry := func(prog uint8, vpc uint32, src, dst string, sport, dport uint16) datapath.TraceEvent {
		return datapath.TraceEvent{Stage: datapath.TraceEntry, Prog: prog, VPC: vpc, Protocol: 6, TCPFlags: 0x02,
			Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SrcPort: sport, DstPort: dport}
	}
	fromPort := func(e datapath.TraceEvent, port uint32) datapath.TraceEvent { e.Port = port; return e }
	end := func(v int32) datapath.TraceEvent { return datapath.TraceEvent{Stage: datapath.TraceEnd, A: uint32(v)} }
	type want struct{ stage, verdict, object, rule, detail string }
	for _, c := range []struct {
		name    string
		evs     []datapath.TraceEvent
		entered string
		verdict string
		reason  string
		stages  []want
	}{
		{"elastic IP inbound", []datapath.TraceEvent{
			entry(datapath.TraceFromUplink, 100, "203.0.113.2", "198.51.100.10", 5555, 80),
			{Stage: datapath.TraceGatewayIn, Kind: uint8(datapath.GatewayElasticIP), From: ap("203.0.113.2:5555"), To: ap("198.51.100.10:80"), A: 100},
			{Stage: datapath.TraceNAT, Kind: uint8(datapath.NATElasticIP | datapath.NATDst), From: ap("198.51.100.10:80"), To: ap("10.0.1.10:80")},
			{Stage: datapath.TraceTunnel, A: nbo("192.0.2.11"), B: 100},
			end(7),
		}, "uplink", "TUNNELED", "", []want{
			{"source", "pass", outside.String(), "", "uplink, for VNI 100"},
			{"gateway", "pass", "projects/lt/elasticIps/web", "elastic IP 198.51.100.10", "of port web-1"},
			{"nat", "pass", "projects/lt/elasticIps/web", "elastic IP 198.51.100.10 -> 10.0.1.10 (stateless 1:1)", "destination rewritten 198.51.100.10:80 -> 10.0.1.10:80"},
			{"tunnel", "pass", "", "", "VXLAN VNI 100 to underlay 192.0.2.11"},
		}},
		{"NAT gateway outbound, new flow", []datapath.TraceEvent{
			entry(datapath.TraceFromOverlay, 100, "10.0.2.20", "203.0.113.2", 40000, 443),
			{Stage: datapath.TraceNAT, Kind: uint8(datapath.NATGatewayNewFlow), From: ap("10.0.2.20:40000"), To: ap("198.51.100.20:61234")},
			{Stage: datapath.TraceGatewayOut, From: ap("198.51.100.20:0"), To: ap("203.0.113.2:0"), A: 1, B: nbo("203.0.113.254")},
			end(7),
		}, "overlay", "TO_FABRIC", "", []want{
			{"source", "pass", "", "", "arrived over VXLAN"},
			{"nat", "pass", "projects/lt/natGateways/out", "10.0.2.20:40000 -> 198.51.100.20:61234", "a new flow took public port 61234 of 1024-65535"},
			{"uplink", "deliver", "lo", "next hop 203.0.113.254", "leaves toward the fabric out of lo"},
		}},
		{"port mapping's reply", []datapath.TraceEvent{
			entry(datapath.TraceFromOverlay, 100, "10.0.2.20", "203.0.113.2", 80, 5555),
			{Stage: datapath.TraceNAT, Kind: uint8(datapath.NATPortMapping), From: ap("10.0.2.20:80"), To: ap("198.51.100.20:8080")},
			{Stage: datapath.TraceGatewayOut, Kind: 1, From: ap("198.51.100.20:0"), To: ap("203.0.113.2:0"), A: 1, B: nbo("203.0.113.254")},
			end(7),
		}, "overlay", "TO_FABRIC", "", []want{
			{"source", "pass", "", "", ""},
			{"nat", "pass", "projects/lt/natGateways/out", "port mapping tcp 10.0.2.20:80 -> 198.51.100.20:8080", "source rewritten"},
			{"uplink", "deliver", "lo", "next hop 203.0.113.254", "the kernel resolves it"},
		}},
		{"NAT address without a flow: dropped at the gateway", []datapath.TraceEvent{
			entry(datapath.TraceFromUplink, 0, "203.0.113.2", "198.51.100.20", 5555, 9999),
			{Stage: datapath.TraceGatewayIn, Kind: uint8(datapath.GatewayNATAddress), From: ap("203.0.113.2:5555"), To: ap("198.51.100.20:9999"), A: 7},
			{Stage: datapath.TraceDrop, A: uint32(datapath.DropNATNoFlow)},
			end(2),
		}, "uplink", "DROPPED", "NAT_NO_FLOW", []want{
			{"source", "pass", outside.String(), "", "arrived from the fabric on gateway gw1's uplink"},
			{"gateway", "pass", "projects/lt/natGateways/out", "NAT gateway address 198.51.100.20", "port mappings and the replies"},
			{"gateway", "drop", "projects/lt/natGateways/out", "", "nat-no-flow"},
		}},
		{"not served here", []datapath.TraceEvent{
			entry(datapath.TraceFromUplink, 0, "203.0.113.2", "203.0.113.1", 5555, 179),
			{Stage: datapath.TraceGatewayIn, From: ap("203.0.113.2:0"), To: ap("203.0.113.1:0")},
			end(-1),
		}, "uplink", "TO_HOST", "", []want{
			{"source", "pass", outside.String(), "", ""},
			{"gateway", "pass", "203.0.113.1", "", "left to the host's stack"},
		}},
		{"north-south VIP in the gateway's XDP load balancer", []datapath.TraceEvent{
			entry(datapath.TraceFromLB, 100, "203.0.113.2", "10.0.9.9", 5555, 80),
			{Stage: datapath.TraceService, Kind: uint8(datapath.ServiceXDP), From: ap("10.0.9.9:80"), To: ap("192.0.2.11:0"), A: 9, B: 3},
			{Stage: datapath.TraceTunnel, A: nbo("192.0.2.11"), B: 100},
			end(3), // XDP_TX
		}, "uplink", "TUNNELED", "", []want{
			{"source", "pass", outside.String(), "", "for a load balancer's VIP (XDP, VNI 100)"},
			{"load-balancer", "pass", "projects/lt/loadBalancers/db/http", "", "chose a backend (its connection table, else the Maglev table) on the node at 192.0.2.11; the packet goes there unchanged"},
			{"tunnel", "pass", "", "", "VXLAN VNI 100 to underlay 192.0.2.11"},
		}},
		{"north-south VIP without a backend", []datapath.TraceEvent{
			entry(datapath.TraceFromLB, 100, "203.0.113.2", "10.0.9.9", 5555, 80),
			{Stage: datapath.TraceDrop, A: uint32(datapath.DropLBNoBackend)},
			end(1), // XDP_DROP
		}, "uplink", "DROPPED", "LB_NO_BACKEND", []want{
			{"source", "pass", outside.String(), "", "for a load balancer's VIP"},
			{"load-balancer", "drop", "VIP 10.0.9.9:80", "", "no usable backend"},
		}},
		{"east-west service", []datapath.TraceEvent{
			fromPort(entry(datapath.TraceFromPort, 100, "10.0.1.10", "10.0.9.9", 31000, 80), 1),
			{Stage: datapath.TraceService, Kind: uint8(datapath.ServiceMaglev), From: ap("10.0.9.9:80"), To: ap("10.0.2.20:8080"), A: 9, B: 2},
			{Stage: datapath.TraceService, Kind: uint8(datapath.ServiceStored), From: ap("10.0.9.9:80"), To: ap("10.0.2.20:8080"), A: 9, B: 2},
			{Stage: datapath.TraceService, Kind: uint8(datapath.ServiceReply), From: ap("10.0.2.20:8080"), To: ap("10.0.9.9:80")},
			{Stage: datapath.TraceDeliver, Port: 2},
			end(7),
		}, "port web-1", "DELIVERED", "", []want{
			{"source", "pass", "web-1", "", ""},
			{"load-balancer", "pass", "projects/lt/loadBalancers/db/http", "backend 2 10.0.2.20:8080", "backend 2 (port db-1) 10.0.2.20:8080, a new flow: the service's Maglev table chose it"},
			{"load-balancer", "pass", "projects/lt/loadBalancers/db/http", "backend 2 10.0.2.20:8080", "an established flow"},
			{"load-balancer", "pass", "projects/lt/loadBalancers/db/http", "", "source 10.0.2.20:8080 rewritten back to the VIP 10.0.9.9:80"},
			{"deliver", "deliver", "db-1", "", ""},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := a.renderTrace(c.evs)
			if p.Entered != c.entered || p.Verdict != c.verdict || p.DropReason != c.reason {
				t.Errorf("entered %q verdict %q reason %q; want %q %q %q", p.Entered, p.Verdict, p.DropReason, c.entered, c.verdict, c.reason)
			}
			if len(p.Stages) != len(c.stages) {
				t.Fatalf("%d stages, want %d: %v", len(p.Stages), len(c.stages), p.Stages)
			}
			for i, w := range c.stages {
				s := p.Stages[i]
				if s.Stage != w.stage || s.Verdict != w.verdict || s.Object != w.object || s.Rule != w.rule || !strings.Contains(s.Detail, w.detail) {
					t.Errorf("stage %d: %s %s object %q rule %q detail %q\nwant %s %s object %q rule %q detail with %q",
						i, s.Stage, s.Verdict, s.Object, s.Rule, s.Detail, w.stage, w.verdict, w.object, w.rule, w.detail)
				}
			}
		})
	}
}
