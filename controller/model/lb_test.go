package model

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
)

const (
	lbWeb = p1 + "/loadBalancers/web"
	lbInt = p1 + "/loadBalancers/int"
)

// lbFixture is edgeFixture plus an internet-facing load balancer (two
// listeners, backends a1 on n1 and a2 on n2, a3 unbound) and an internal one
// with one backend a1.
func lbFixture(t *testing.T) *memTx {
	tx := edgeFixture(t)
	for _, msg := range []proto.Message{
		&mv1.LoadBalancer{Name: lbWeb, Id: 20, Vpc: vpcA, Scheme: "internet-facing", Pool: poolP, Vip: "203.0.113.50",
			Listeners: []*mv1.LoadBalancerListener{
				{Id: 101, Name: "http", Protocol: "tcp", Port: 80, Backends: []*mv1.LoadBalancerBackend{
					{Id: 12, Port: p1 + "/ports/a2", Address: "10.0.1.11", TargetPort: 8080, Weight: proto.Uint32(3)},
					{Id: 11, Port: p1 + "/ports/a1", Address: "10.0.1.10", TargetPort: 8080},
					{Id: 13, Port: p1 + "/ports/a3", Address: "10.0.1.12", TargetPort: 8080},
				}, HealthCheck: &mv1.LoadBalancerHealthCheck{Protocol: "http"}},
				{Id: 102, Name: "dns", Protocol: "udp", Port: 53, SourceIpPersistence: true, Backends: []*mv1.LoadBalancerBackend{
					{Id: 14, Port: p1 + "/ports/a2", Address: "10.0.1.11", TargetPort: 53, Draining: true},
				}},
			}},
		&mv1.LoadBalancer{Name: lbInt, Id: 21, Vpc: vpcA, Scheme: "internal", Subnet: subA, Vip: "10.0.1.100",
			Listeners: []*mv1.LoadBalancerListener{{Id: 103, Name: "db", Protocol: "tcp", Port: 5432, Backends: []*mv1.LoadBalancerBackend{
				{Id: 15, Port: p1 + "/ports/a1", Address: "10.0.1.10", TargetPort: 5432},
			}}}},
	} {
		tx.put(t, msg)
	}
	return tx
}

func TestLbCompile(t *testing.T) {
	tx := lbFixture(t)
	m := loadModel(t, tx)
	want := &agentv1.Object{Key: "lb/101", Body: &agentv1.Object_LbService{LbService: &agentv1.LbService{
		Id: 101, LoadBalancerId: 20, Name: lbWeb + "/http", VpcId: 1, Vni: 1001, Vip: "203.0.113.50", Port: 80, Protocol: 6,
		PoolId: 5, MaglevSize: 65537,
		HealthCheck: &agentv1.HealthCheck{Protocol: "http", Path: "/", IntervalMs: 2000, TimeoutMs: 1000, HealthyThreshold: 2, UnhealthyThreshold: 2},
		Backends: []*agentv1.LbBackend{
			// No report yet and none known healthy: unknown backends serve.
			{Id: 11, Address: "10.0.1.10", Port: 8080, Weight: 1, PortId: 1, PortMac: "02:00:00:00:00:01", Node: "n1", NodeIp: "192.0.2.1", Healthy: true},
			{Id: 12, Address: "10.0.1.11", Port: 8080, Weight: 3, PortId: 2, PortMac: "02:00:00:00:00:01", Node: "n2", NodeIp: "192.0.2.2", Healthy: true},
			{Id: 13, Address: "10.0.1.12", Port: 8080, Weight: 1, PortId: 3, PortMac: "02:00:00:00:00:01"},
		},
	}}}
	if got := m.Object("lb/101"); !proto.Equal(got, want) {
		t.Fatalf("lb/101:\n got: %v\nwant: %v", prototext.Format(got), prototext.Format(want))
	}
	dns := m.Object("lb/102").GetLbService()
	if !dns.GetSourceIpPersistence() || dns.GetProtocol() != 17 || dns.GetHealthCheck() != nil ||
		!dns.GetBackends()[0].GetHealthy() || !dns.GetBackends()[0].GetDraining() {
		t.Fatalf("lb/102: %v", prototext.Format(dns))
	}
	if s := m.Object("lb/103").GetLbService(); !s.GetInternal() || s.GetPoolId() != 0 || s.GetVip() != "10.0.1.100" {
		t.Fatalf("lb/103: %v", prototext.Format(s))
	}
	if got := m.LbServices(); len(got) != 3 || got[0].GetId() != 101 || got[2].GetId() != 103 {
		t.Fatalf("LbServices: %v", got)
	}

	// Reports: a1 unhealthy, then a2 healthy. Once a2 is known healthy,
	// a1 (unhealthy) and nothing unknown serve.
	healthy := func(key string) []bool {
		var out []bool
		for _, b := range m.Object(key).GetLbService().GetBackends() {
			out = append(out, b.GetHealthy())
		}
		return out
	}
	ev := tx.putRawValue(resource.LbHealthKey(101, 11), resource.LbHealth{Node: "n1", Healthy: false, Error: "connection refused"}.Encode())
	ch := m.Apply(ev)
	if got := healthy("lb/101"); !slices.Equal(got, []bool{false, true, false}) {
		t.Fatalf("after a1 unhealthy: %v", got)
	}
	// Every holder of lb/101 gets the change: gateways and n1, n2.
	if got := flatten(ch); !slices.Equal(got, []string{"g1 lb/101", "g2 lb/101", "n1 lb/101", "n2 lb/101"}) {
		t.Fatalf("changes %v", got)
	}
	m.Apply(tx.putRawValue(resource.LbHealthKey(101, 12), resource.LbHealth{Node: "n2", Healthy: true}.Encode()))
	if got := healthy("lb/101"); !slices.Equal(got, []bool{false, true, false}) {
		t.Fatalf("after a2 healthy: %v", got)
	}
	// A report by another node (the port moved) does not count.
	m.Apply(tx.putRawValue(resource.LbHealthKey(101, 11), resource.LbHealth{Node: "n3", Healthy: true}.Encode()))
	if got := healthy("lb/101"); !slices.Equal(got, []bool{false, true, false}) {
		t.Fatalf("after a stale report: %v", got)
	}
	m.Apply(tx.putRawValue(resource.LbHealthKey(101, 11), resource.LbHealth{Node: "n1", Healthy: true}.Encode()))
	if got := healthy("lb/101"); !slices.Equal(got, []bool{true, true, false}) {
		t.Fatalf("after a1 healthy: %v", got)
	}
	// n2 down: its backend is unhealthy.
	m.Apply(tx.putRaw(GatewayDownKey("n2")))
	if got := healthy("lb/101"); !slices.Equal(got, []bool{true, false, false}) {
		t.Fatalf("after n2 down: %v", got)
	}
	assertSameAsFull(t, m, tx)
	ev, _ = tx.del(GatewayDownKey("n2"))
	m.Apply(ev)
	if got := healthy("lb/101"); !slices.Equal(got, []bool{true, true, false}) {
		t.Fatalf("after n2 back: %v", got)
	}
	assertSameAsFull(t, m, tx)
}

func TestLbPlacement(t *testing.T) {
	tx := lbFixture(t)
	m := loadModel(t, tx)
	lbKeys := func(n string) []string {
		var out []string
		for _, k := range keysOf(m.NodeState(n)) {
			if len(k) > 3 && k[:3] == "lb/" {
				out = append(out, k)
			}
		}
		return out
	}
	for n, want := range map[string][]string{
		"g1": {"lb/101", "lb/102"}, // north-south: every gateway
		"g2": {"lb/101", "lb/102"},
		"n1": {"lb/101", "lb/103"},           // backends a1 (http) and VPC A (internal)
		"n2": {"lb/101", "lb/102", "lb/103"}, // backends a2 (http, dns) and VPC A
		"n3": nil,                            // VPC B only
		"n4": nil,
	} {
		if got := lbKeys(n); !slices.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", n, got, want)
		}
	}
	// Binding a3 to n4 puts lb/101 there (backend) and lb/103 (VPC).
	ch := m.Apply(tx.put(t, port(p1+"/ports/a3", 3, subA, "nodes/n4", "10.0.1.12")))
	if got := lbKeys("n4"); !slices.Equal(got, []string{"lb/101", "lb/103"}) {
		t.Fatalf("n4 after binding a3: %v (changes %v)", got, flatten(ch))
	}
	assertSameAsFull(t, m, tx)
	// Deleting the listener removes it everywhere.
	lb := proto.Clone(m.lbs[lbWeb]).(*mv1.LoadBalancer)
	lb.Listeners = lb.Listeners[1:]
	m.Apply(tx.put(t, lb))
	if m.Object("lb/101") != nil || !slices.Equal(lbKeys("g1"), []string{"lb/102"}) {
		t.Fatalf("after removing the listener: g1 holds %v", lbKeys("g1"))
	}
	assertSameAsFull(t, m, tx)
	ev, _ := tx.del(keyOf(lb))
	m.Apply(ev)
	if got := lbKeys("g1"); got != nil {
		t.Fatalf("after deleting the load balancer: g1 holds %v", got)
	}
	assertSameAsFull(t, m, tx)
}

// TestLbNamesThatLookLikeListeners: resources whose names contain
// "/listeners/" are not taken for listeners.
func TestLbNamesThatLookLikeListeners(t *testing.T) {
	tx := newMemTx()
	const p = "projects/listeners"
	for _, msg := range []proto.Message{
		node("n1", "192.0.2.1"), vpc(p+"/vpcs/listeners", 1, "10.0.0.0/16"),
		subnet(p+"/vpcs/listeners/subnets/s", 2, "10.0.1.0/24", "", ""),
		port(p+"/ports/listeners", 3, p+"/vpcs/listeners/subnets/s", "nodes/n1", "10.0.1.10"),
		&mv1.LoadBalancer{Name: p + "/loadBalancers/listeners", Id: 4, Vpc: p + "/vpcs/listeners", Scheme: "internal", Vip: "10.0.1.100",
			Listeners: []*mv1.LoadBalancerListener{{Id: 5, Name: "listeners", Protocol: "tcp", Port: 80,
				Backends: []*mv1.LoadBalancerBackend{{Id: 6, Port: p + "/ports/listeners", Address: "10.0.1.10"}}}}},
	} {
		tx.put(t, msg)
	}
	m := loadModel(t, tx)
	if got := keysOf(m.NodeState("n1")); !slices.Equal(got, []string{"lb/5", "port/3", "subnet/2", "vpc/1"}) {
		t.Fatalf("n1 holds %v", got)
	}
	if b := m.Object("lb/5").GetLbService().GetBackends(); len(b) != 1 || b[0].GetPortId() != 3 || b[0].GetNode() != "n1" {
		t.Fatalf("backends %v", b)
	}
}
