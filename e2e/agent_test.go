package e2e

import (
	"path/filepath"
	"testing"
)

// TestTwoNodeVPC runs the whole stack: controller, an agent per node, and
// the workloads of testdata/two-node.yaml, then checks the security groups'
// verdicts within a node and across the overlay, and that forwarding
// survives an agent restart.
func TestTwoNodeVPC(t *testing.T) {
	if err := Build(t.Context(), testBins, "./cmd/meridian-agent"); err != nil {
		t.Fatal(err)
	}
	topo, err := LoadTopology(filepath.Join("testdata", "two-node.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r := Setup(t, topo, Options{BinDir: testBins})
	policy := []Expect{
		// web accepts HTTP from anywhere: same node and across nodes.
		Allow("web-1", "web-2", TCP, 80),
		Allow("web-2", "web-1", TCP, 80),
		Allow("db-1", "web-1", TCP, 80),
		// db accepts PostgreSQL from members of web only.
		Allow("web-1", "db-1", TCP, 5432),
		Allow("web-2", "db-1", TCP, 5432),
		Deny("web-1", "web-2", TCP, 5432),
		// Nothing else gets in.
		Deny("web-1", "db-1", TCP, 22),
		Deny("web-1", "web-2", UDP, 53),
		Deny("web-2", "db-1", UDP, 5432),
		// ICMP from inside the VPC is allowed to both groups.
		Allow("web-1", "db-1", ICMP, 0),
		Allow("db-1", "web-2", ICMP, 0),
		Allow("web-2", "web-1", ICMP, 0),
	}
	r.AssertReachability(t, policy...)
	if t.Failed() {
		return
	}

	// The data path outlives its agent: with node-1's agent stopped the
	// same verdicts hold, and a restarted agent changes none of them.
	if err := r.Stop("node-1-agent"); err != nil {
		t.Fatal(err)
	}
	r.AssertReachability(t, policy...)
	if err := r.Restart(t.Context(), "node-1-agent"); err != nil {
		t.Fatal(err)
	}
	r.AssertReachability(t, policy...)
}
