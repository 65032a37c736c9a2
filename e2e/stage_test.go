package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// standInBins is a bin directory whose meridian-agent is the harness's
// fakeagent: it plumbs workloads but forwards nothing.
func standInBins(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := Build(t.Context(), dir, "./e2e/internal/fakeagent"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "fakeagent"), filepath.Join(dir, "meridian-agent")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(testBins, "meridian-controller"), filepath.Join(dir, "meridian-controller")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestWorkloadStageWithStandInAgent exercises the agent and workload stages
// without the eBPF data path: agents start inside their node namespaces
// with the run's sockets and bpffs, workloads are attached through the
// local API with the controller's addresses, and an agent restarts.
func TestWorkloadStageWithStandInAgent(t *testing.T) {
	topo, err := LoadTopology(filepath.Join("testdata", "two-node.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r := Setup(t, topo, Options{BinDir: standInBins(t)})
	ctx := t.Context()
	st := r.State()
	for _, n := range st.Nodes {
		if fi, err := os.Stat(n.BPFFS); err != nil || !fi.IsDir() {
			t.Errorf("node %s: pin directory %s: %v", n.Name, n.BPFFS, err)
		}
	}
	tests := []struct {
		workload, ip, gateway string
	}{
		{"web-1", "10.0.1.11/24", "10.0.1.1"},
		{"web-2", "10.0.1.12/24", "10.0.1.1"},
		{"db-1", "10.0.2.21/24", "10.0.2.1"},
	}
	for _, tc := range tests {
		w, ok := st.workload(tc.workload)
		if !ok || len(w.IPs) != 1 || w.IPs[0] != tc.ip || w.HostIf == "" {
			t.Errorf("workload %s state %+v, want ip %s and a host interface", tc.workload, w, tc.ip)
			continue
		}
		if out, err := r.Exec(ctx, tc.workload, "ip", "-o", "-4", "addr", "show", "dev", "eth0"); err != nil || !strings.Contains(out, tc.ip) {
			t.Errorf("%s eth0: %v\n%s", tc.workload, err, out)
		}
		if out, err := r.Exec(ctx, tc.workload, "ip", "route", "show", "default"); err != nil || !strings.Contains(out, "via "+tc.gateway) {
			t.Errorf("%s default route: %v\n%s", tc.workload, err, out)
		}
		if out, err := r.Exec(ctx, w.Node, "ip", "-o", "link", "show", "dev", w.HostIf); err != nil || !strings.Contains(out, "state UP") {
			t.Errorf("%s host end %s on %s: %v\n%s", tc.workload, w.HostIf, w.Node, err, out)
		}
	}
	if err := r.Restart(ctx, "node-2-agent"); err != nil {
		t.Fatal(err)
	}
	// Attaching again through the restarted agent changes nothing.
	if err := r.AttachWorkload(ctx, topo.Workloads[2]); err != nil {
		t.Error(err)
	}
	db, _ := r.State().workload("db-1")
	if err := r.DetachWorkload(ctx, "db-1"); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Exec(ctx, db.Node, "ip", "-o", "link", "show", "dev", db.HostIf); err == nil {
		t.Errorf("host end %s still on %s after detach:\n%s", db.HostIf, db.Node, out)
	}
}
