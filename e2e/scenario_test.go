package e2e

import (
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestScenarioFilesLoad keeps every scenario file valid, including the
// ones only another realization's tests might run.
func TestScenarioFilesLoad(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "scenarios", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files: %v", err)
	}
	for _, f := range files {
		sc, err := LoadScenario(f)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, ph := range sc.Phases {
			if len(ph.Expectations()) == 0 {
				t.Errorf("%s: phase %s expands to no flows", f, ph.Name)
			}
		}
	}
}

func TestMatrixRuleExpands(t *testing.T) {
	ph := Phase{Name: "p", Expect: []MatrixRule{
		{From: []string{"a", "b"}, To: []string{"a", "c"}, Allow: []string{"tcp/22"}, Deny: []string{"icmp"}},
	}}
	want := []Expect{
		Allow("a", "c", TCP, 22), Allow("b", "a", TCP, 22), Allow("b", "c", TCP, 22),
		Deny("a", "c", ICMP, 0), Deny("b", "a", ICMP, 0), Deny("b", "c", ICMP, 0),
	}
	got := ph.Expectations()
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("flow %d: got %v, want %v", i, got[i], want[i])
		}
	}
}

func TestScenarioRejects(t *testing.T) {
	const topo = `
nodes: [{name: n1}]
workloads: [{name: a, node: n1, port: projects/p/ports/a}, {name: b, node: n1, port: projects/p/ports/b}]
`
	tests := []struct {
		name, phases, want string
	}{
		{"no phases", ``, "at least one"},
		{"unknown workload", `phases: [{name: x, expect: [{from: [a], to: [zz], allow: [icmp]}]}]`, `"zz" is no node or workload`},
		{"bad service", `phases: [{name: x, expect: [{from: [a], to: [b], allow: [tcp]}]}]`, "want icmp, tcp/PORT or udp/PORT"},
		{"port zero", `phases: [{name: x, expect: [{from: [a], to: [b], deny: [udp/0]}]}]`, "port must be 1-65535"},
		{"no verdict", `phases: [{name: x, expect: [{from: [a], to: [b]}]}]`, "one of allow or deny"},
		{"duplicate phase", `phases: [{name: x, expect: [{from: [a], to: [b], allow: [icmp]}]}, {name: x, expect: [{from: [a], to: [b], allow: [icmp]}]}]`, "unique"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var sc Scenario
			if err := yaml.UnmarshalStrict([]byte(topo+tc.phases), &sc); err != nil {
				t.Fatal(err)
			}
			err := sc.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
