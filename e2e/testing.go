package e2e

import (
	"testing"
)

// Setup builds topo for a test and tears it down when the test ends, pass
// or fail. A failing test's output gets the end of every process log first.
func Setup(t testing.TB, topo Topology, opts Options) *Run {
	t.Helper()
	r, err := Up(t.Context(), topo, opts)
	if err != nil {
		t.Fatalf("e2e up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process logs of run %s (%s):\n%s", r.RunID(), r.RunDir(), r.Logs(60))
		}
		if err := r.Close(); err != nil {
			t.Errorf("e2e teardown of run %s: %v", r.RunID(), err)
		}
	})
	return r
}
