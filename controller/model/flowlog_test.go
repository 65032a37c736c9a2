package model

import (
	"testing"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/store"
)

// TestFlowLogPlacement: a flow log goes to the nodes with bound ports in
// its VPC and no other, names its scope by ID, follows ports binding and
// unbinding, and disappears with its resource; after every event the
// incremental model equals a full build.
func TestFlowLogPlacement(t *testing.T) {
	const (
		v1n, v2n = "projects/p/vpcs/a", "projects/p/vpcs/b"
		s1       = v1n + "/subnets/s1"
		s2       = v2n + "/subnets/s2"
		pa, pb   = "projects/p/ports/pa", "projects/p/ports/pb"
		fl       = "projects/p/flowLogs/f"
	)
	tx := newMemTx()
	inc := New(quiet())
	check := func(step string) {
		t.Helper()
		full := loadModel(t, tx)
		for _, n := range []string{"n1", "n2", "n3"} {
			a, b := inc.NodeState(n), full.NodeState(n)
			if len(a) != len(b) {
				t.Fatalf("%s: node %s incremental %v, full %v", step, n, keysOf(a), keysOf(b))
			}
			for k, o := range b {
				if !proto.Equal(a[k], o) {
					t.Fatalf("%s: node %s object %s incremental %v, full %v", step, n, k, a[k], o)
				}
			}
		}
	}
	apply := func(step string, ev store.Event) { t.Helper(); inc.Apply(ev); check(step) }
	apply("vpc a", tx.put(t, vpc(v1n, 1, "10.1.0.0/16")))
	apply("vpc b", tx.put(t, vpc(v2n, 2, "10.2.0.0/16")))
	apply("subnet 1", tx.put(t, subnet(s1, 11, "10.1.1.0/24", "", "")))
	apply("subnet 2", tx.put(t, subnet(s2, 12, "10.2.1.0/24", "", "")))
	apply("port a on n1", tx.put(t, port(pa, 21, s1, "nodes/n1", "10.1.1.10")))
	apply("port b on n2", tx.put(t, port(pb, 22, s2, "nodes/n2", "10.2.1.10")))
	f := &mv1.FlowLog{Name: fl, Id: 31, Resource: s1, Vpc: v1n, TrafficType: "ALL", FilePath: "/var/log/f.jsonl",
		Sampling: 10, RateLimit: 100, Burst: 50, AggregationInterval: 10, MaxFileBytes: 1 << 20}
	apply("flow log", tx.put(t, f))

	got := inc.NodeState("n1")["flowlog/31"].GetFlowLog()
	want := &agentv1.FlowLogConfig{Id: 31, Name: fl, Project: "projects/p", VpcId: 1, SubnetId: 11, TrafficType: "ALL",
		FilePath: "/var/log/f.jsonl", MaxFileBytes: 1 << 20, Sampling: 10, RateLimit: 100, Burst: 50, AggregationInterval: 10}
	if !proto.Equal(got, want) {
		t.Fatalf("n1's flow log %v, want %v", got, want)
	}
	if _, ok := inc.NodeState("n2")["flowlog/31"]; ok {
		t.Fatal("n2 (no port in VPC a) got the flow log")
	}

	// Port b moves into VPC a's subnet on n3... as a new port there.
	apply("port c on n3", tx.put(t, port("projects/p/ports/pc", 23, s1, "nodes/n3", "10.1.1.11")))
	if _, ok := inc.NodeState("n3")["flowlog/31"]; !ok {
		t.Fatal("n3 got a port in VPC a but not its flow log")
	}
	pc := port("projects/p/ports/pc", 23, s1, "", "10.1.1.11")
	apply("port c unbound", tx.put(t, pc))
	if _, ok := inc.NodeState("n3")["flowlog/31"]; ok {
		t.Fatal("n3 kept the flow log after its port was unbound")
	}
	f2 := proto.Clone(f).(*mv1.FlowLog)
	f2.TrafficType = "REJECT"
	apply("flow log updated", tx.put(t, f2))
	if got := inc.NodeState("n1")["flowlog/31"].GetFlowLog().GetTrafficType(); got != "REJECT" {
		t.Fatalf("updated traffic type %q", got)
	}
	ev, _ := tx.del(keyOf(f2))
	apply("flow log deleted", ev)
	if _, ok := inc.NodeState("n1")["flowlog/31"]; ok {
		t.Fatal("deleted flow log still on n1")
	}
}
