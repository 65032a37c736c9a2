package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runNetns lists the namespaces of a run that `ip netns list` still shows.
func runNetns(t *testing.T, runID string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	var left []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], "-"+runID+"-") {
			left = append(left, f[0])
		}
	}
	return left
}

func threeNodes() Topology {
	return Topology{Nodes: []Node{{Name: "node-1"}, {Name: "node-2"}, {Name: "node-3", UnderlayHost: 99}}}
}

// TestFabricConnectsNodes builds the fabric alone and checks that nodes
// reach each other on their underlay addresses, by every probe kind, that
// Exec runs in the right namespace, and that nothing is left afterwards.
func TestFabricConnectsNodes(t *testing.T) {
	r := Setup(t, threeNodes(), Options{Until: StageFabric})
	ctx := t.Context()

	out, err := r.Exec(ctx, "node-3", "ip", "-4", "-o", "addr", "show", "dev", uplinkName)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSuffix(r.State().Subnet.Addr().String(), "0") + "99/24"
	if !strings.Contains(out, want) {
		t.Errorf("node-3's %s: %q, want address %s", uplinkName, out, want)
	}
	// /sys shows the root namespace under nsenter --net: ask netlink.
	if out, err := r.Exec(ctx, "node-1", "ip", "-o", "link", "show", "dev", uplinkName); err != nil || !strings.Contains(out, " mtu 9000 ") {
		t.Errorf("node-1's %s MTU: %q (%v), want the default 9000", uplinkName, out, err)
	}
	if out, err := r.Exec(ctx, fabricName, "ip", "-o", "link", "show", "master", bridgeName); err != nil || strings.Count(out, "\n") != 3 {
		t.Errorf("bridge ports in the fabric: %v\n%s", err, out)
	}
	if _, err := r.Exec(ctx, "node-1", "false"); err == nil {
		t.Error("Exec of a failing command returned no error")
	}

	var exps []Expect
	for _, from := range []string{"node-1", "node-2", "node-3"} {
		for _, to := range []string{"node-1", "node-2", "node-3"} {
			if from != to {
				exps = append(exps, Allow(from, to, ICMP, 0), Allow(from, to, TCP, 7000), Allow(from, to, UDP, 7001))
			}
		}
		// Nothing answers there: an address in the subnet that no node has.
		absent := strings.TrimSuffix(r.State().Subnet.Addr().String(), "0") + "200"
		exps = append(exps, Deny(from, absent, ICMP, 0), Deny(from, absent, TCP, 7000))
	}
	// A literal address gets no listener: node-1's port 7002 is closed, so
	// the probe is refused even though the fabric carries it.
	node1, err := r.Addr("node-1")
	if err != nil {
		t.Fatal(err)
	}
	exps = append(exps, Deny("node-2", node1.String(), TCP, 7002), Deny("node-2", node1.String(), UDP, 7002))
	r.AssertReachability(t, exps...)
}

// TestCloseRemovesEverything: after Close, no namespace of the run is
// listed, its processes are gone and its directory is removed; a second
// Close is harmless.
func TestCloseRemovesEverything(t *testing.T) {
	tests := []struct {
		name  string
		until Stage
		// closeBy tears the run down: its own Close, or a fresh Run read
		// from the state file as `meridian-e2e down` does.
		closeBy func(t *testing.T, r *Run) error
	}{
		{"fabric closed by its Run", StageFabric, func(_ *testing.T, r *Run) error { return r.Close() }},
		{"controller closed by its Run", StageController, func(_ *testing.T, r *Run) error { return r.Close() }},
		{"controller closed from the state file", StageController, func(t *testing.T, r *Run) error {
			other, err := Attach(r.RunDir())
			if err != nil {
				t.Fatal(err)
			}
			return other.Close()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			r, err := Up(ctx, threeNodes(), Options{Until: tc.until, BinDir: testBins})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Close() }) // in case the test fails before its own Close
			st := r.State()
			if got := runNetns(t, st.RunID); len(got) != 4 {
				t.Errorf("namespaces of the run: %v, want fabric and 3 nodes", got)
			}
			if err := tc.closeBy(t, r); err != nil {
				t.Fatalf("close: %v", err)
			}
			if left := runNetns(t, st.RunID); len(left) != 0 {
				t.Errorf("namespaces left: %v", left)
			}
			for _, p := range st.Procs {
				if p.Alive() {
					t.Errorf("process %s (pid %d) still runs", p.Name, p.PID)
				}
			}
			if _, err := os.Stat(st.RunDir); !os.IsNotExist(err) {
				t.Errorf("run directory %s: %v, want it removed", st.RunDir, err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

// TestControllerStageAppliesIntent: the controller runs on its unix socket,
// the topology's documents are applied with generated nodes and ports, and
// meridianctl works against it.
func TestControllerStageAppliesIntent(t *testing.T) {
	topo, err := LoadTopology(filepath.Join("testdata", "two-node.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r := Setup(t, topo, Options{Until: StageController, BinDir: testBins})
	ctx := t.Context()
	st := r.State()
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"port", "list", "--parent", "projects/demo"}, []string{"projects/demo/ports/web-1", "10.0.1.12", "10.0.2.21"}},
		{[]string{"node", "get", "nodes/node-2", "-o", "json"}, []string{st.Nodes[1].Underlay.String()}},
		{[]string{"sg", "list", "--parent", "projects/demo"}, []string{"projects/demo/securityGroups/db"}},
	}
	for _, tc := range tests {
		out, err := r.Ctl(ctx, tc.args...)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("meridianctl %s lacks %q:\n%s", strings.Join(tc.args, " "), w, out)
			}
		}
	}
	// A second apply of the same documents changes nothing: the generated
	// documents say exactly what the controller stored.
	out, err := r.Ctl(ctx, "apply", "-f", st.Intent)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasSuffix(line, " unchanged") {
			t.Errorf("second apply changed something:\n%s", out)
			break
		}
	}

	// A restarted controller serves on the same socket from the same store.
	before := r.State().Procs[0]
	if err := r.Restart(ctx, "controller"); err != nil {
		t.Fatal(err)
	}
	after := r.State().Procs
	if len(after) != 1 || after[0].PID == before.PID || before.Alive() || !after[0].Alive() {
		t.Errorf("processes after restart: %+v (before: pid %d)", after, before.PID)
	}
	if out, err := r.Ctl(ctx, "port", "list", "--parent", "projects/demo"); err != nil || !strings.Contains(out, "10.0.2.21") {
		t.Errorf("port list after restart: %v\n%s", err, out)
	}
}
