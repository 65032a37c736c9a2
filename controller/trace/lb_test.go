package trace

import (
	"net/netip"
	"strings"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
	"github.com/meridian-sdn/meridian/lb/maglev"
)

// lbFixture adds to fixture() an east-west listener 10.0.9.9:80/tcp over
// srv (10.0.2.22) and w2 (10.0.1.15) on 443, which their SG "web" allows
// from the "client" group (a-1's).
func lbFixture(mod func(*agentv1.LbService)) Objects {
	objs := fixture()
	s := &agentv1.LbService{Id: 7, Name: pfx + "loadBalancers/lb/listeners/http", VpcId: 1, Vni: 100, Vip: "10.0.9.9", Port: 80,
		Protocol: 6, Internal: true, MaglevSize: 251, Backends: []*agentv1.LbBackend{
			{Id: 1, Address: "10.0.2.22", Port: 443, Weight: 1, PortId: 52, Node: "n2", Healthy: true},
			{Id: 2, Address: "10.0.1.15", Port: 443, Weight: 2, PortId: 57, Node: "n1", Healthy: true},
		}}
	if mod != nil {
		mod(s)
	}
	objs["lb/7"] = &agentv1.Object{Key: "lb/7", Body: &agentv1.Object_LbService{LbService: s}}
	return objs
}

// The trace's choice is lb/maglev's over the same backends: the table
// keyed "address:port" with weights, indexed by the flow hash.
func TestLoadBalancerStage(t *testing.T) {
	m := NewModel(lbFixture(nil))
	table, err := maglev.Table([]maglev.Backend{{Key: "10.0.2.22:443", Weight: 1}, {Key: "10.0.1.15:443", Weight: 2}}, 251)
	if err != nil {
		t.Fatal(err)
	}
	ports := []string{portS, portW2}
	seen := map[string]int{}
	for sport := uint16(40000); sport < 40040; sport++ {
		res, err := m.Trace(Request{From: portA1, To: "10.0.9.9", Protocol: fw.ProtoTCP, SrcPort: sport, DstPort: 80, Reply: true})
		if err != nil {
			t.Fatal(err)
		}
		h, _ := maglev.FlowHash(netip.MustParseAddr("10.0.1.11"), netip.MustParseAddr("10.0.9.9"), sport, 80, 6)
		want := ports[maglev.Lookup(table, h)]
		f := res.Forward
		if !res.Allowed || f.Stages[2].Stage != "load-balancer" || !strings.Contains(f.Stages[2].Detail, "backend chosen") ||
			!strings.Contains(f.Stages[2].Detail, want) || f.Stages[len(f.Stages)-1].Object != want {
			t.Fatalf("sport %d: want backend %s; got %s\n%+v", sport, want, stageNames(&f), f.Stages)
		}
		r := res.Reply.Stages
		if r[len(r)-2].Stage != "load-balancer" || !strings.Contains(r[len(r)-2].Detail, "back to the VIP 10.0.9.9:80") ||
			r[len(r)-1].Object != portA1 {
			t.Fatalf("reply: %s", stageNames(res.Reply))
		}
		seen[want]++
	}
	if len(seen) != 2 {
		t.Fatalf("40 flows went to %v, want both backends", seen)
	}

	// Not a listener: no stage; a listener without usable backends: dropped.
	res, _ := m.Trace(Request{From: portA1, To: "10.0.9.9", Protocol: fw.ProtoTCP, SrcPort: 1, DstPort: 81})
	if strings.Contains(stageNames(&res.Forward), "load-balancer") {
		t.Fatalf("port 81 is no listener: %s", stageNames(&res.Forward))
	}
	down := NewModel(lbFixture(func(s *agentv1.LbService) {
		s.Backends[0].Healthy = false
		s.Backends[1].Draining = true
	}))
	res, _ = down.Trace(Request{From: portA1, To: "10.0.9.9", Protocol: fw.ProtoTCP, SrcPort: 1, DstPort: 80})
	if res.Allowed || res.Forward.Reason != "LB_NO_BACKEND" {
		t.Fatalf("no usable backend: %s reason %q", stageNames(&res.Forward), res.Forward.Reason)
	}
	// Source-IP persistence: the ports do not matter.
	sticky := NewModel(lbFixture(func(s *agentv1.LbService) { s.SourceIpPersistence = true }))
	h, _ := maglev.FlowHash(netip.MustParseAddr("10.0.1.11"), netip.MustParseAddr("10.0.9.9"), 0, 0, 0)
	want := ports[maglev.Lookup(table, h)]
	for sport := uint16(1); sport < 20; sport++ {
		res, _ := sticky.Trace(Request{From: portA1, To: "10.0.9.9", Protocol: fw.ProtoTCP, SrcPort: sport, DstPort: 80})
		if last := res.Forward.Stages[len(res.Forward.Stages)-1]; last.Object != want {
			t.Fatalf("persistence: sport %d went to %s, want %s", sport, last.Object, want)
		}
	}
}
