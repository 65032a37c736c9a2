package plumbing

import (
	"slices"
	"testing"
)

// convergeStep is one Ensure call in a sequence that shares a spec: the
// kernel may be disturbed and the spec edited first; the result must say
// exactly whether the device was created and list at least wantChanges
// (none and not created means unchanged).
type convergeStep[S any] struct {
	name        string
	disturb     func(t *testing.T)
	edit        func(s *S)
	wantCreated bool
	wantChanges []string
}

// runConvergeSteps runs the steps in order, each as a subtest on a thread
// inside the node namespace, and calls check with the spec and result
// after each.
func runConvergeSteps[S any](t *testing.T, node string, spec S, steps []convergeStep[S],
	ensure func(S) (Result, error), check func(t *testing.T, spec S, res Result)) {
	t.Helper()
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			enterNetns(t, node)
			if step.disturb != nil {
				step.disturb(t)
			}
			if step.edit != nil {
				step.edit(&spec)
			}
			res, err := ensure(spec)
			if err != nil {
				t.Fatalf("ensure: %v", err)
			}
			if res.Created != step.wantCreated {
				t.Errorf("Created = %v, want %v (changes %q)", res.Created, step.wantCreated, res.Changes)
			}
			if !step.wantCreated && len(step.wantChanges) == 0 && !res.Unchanged() {
				t.Errorf("want unchanged, got changes %q", res.Changes)
			}
			for _, c := range step.wantChanges {
				if !slices.Contains(res.Changes, c) {
					t.Errorf("changes %q lack %q", res.Changes, c)
				}
			}
			check(t, spec, res)
		})
	}
}
