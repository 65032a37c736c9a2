package e2e

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestParseTopologyRejects(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"no nodes", "workloads: []", "at least one node"},
		{"unknown field", "nodes: [{name: n1, underlay: 1}]", "unknown field"},
		{"node named like the fabric", "nodes: [{name: fabric}]", `"fabric" is already the fabric`},
		{"upper-case name", "nodes: [{name: Node1}]", "only a-z"},
		{"duplicate underlay host", "nodes: [{name: a, underlayHost: 12}, {name: b}]", "underlayHost 12 is already node a's"},
		{"tiny underlay MTU", "nodes: [{name: a}]\nunderlayMTU: 576", "want 1280..65535"},
		{"broadcast underlay host", "nodes: [{name: a, underlayHost: 255}]", "not a host address"},
		{"unknown role", "nodes: [{name: a, roles: [router]}]", `role "router"`},
		{"workload on a missing node", "nodes: [{name: a}]\nworkloads: [{name: w, node: b, port: projects/p/ports/w}]", `node "b" is not in nodes`},
		{"workload named like a node", "nodes: [{name: a}]\nworkloads: [{name: a, node: a, port: projects/p/ports/w}]", `"a" is already node a`},
		{"port that is not a port name", "nodes: [{name: a}]\nworkloads: [{name: w, node: a, port: w}]", "not a port name"},
		{"port used twice", "nodes: [{name: a}]\nworkloads: [{name: w, node: a, port: projects/p/ports/w}, {name: v, node: a, port: projects/p/ports/w}]", "already workload w's"},
		{"ip without subnet", "nodes: [{name: a}]\nworkloads: [{name: w, node: a, port: projects/p/ports/w, ip: 10.0.0.1}]", "need subnet"},
		{"bad ip", "nodes: [{name: a}]\nworkloads: [{name: w, node: a, port: projects/p/ports/w, subnet: s, ip: 10.0.0.300}]", "ip:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTopology([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestDocumentsAddNodesAndPorts: the generated apply input is the intent
// plus one Node per node (with the run's underlay address) and one Port per
// workload with a subnet.
func TestDocumentsAddNodesAndPorts(t *testing.T) {
	topo, err := LoadTopology("testdata/two-node.yaml")
	if err != nil {
		t.Fatal(err)
	}
	topo.Nodes[1].Roles = []string{"compute", "load-balancer"}
	underlay := map[string]netip.Addr{"node-1": netip.MustParseAddr("10.201.3.11"), "node-2": netip.MustParseAddr("10.201.3.12")}
	out, err := topo.Documents(underlay)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]map[string]any{}
	for _, d := range strings.Split(out, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("document %q: %v", d, err)
		}
		byName[m["name"].(string)] = m
	}
	tests := []struct {
		name, field string
		want        string
	}{
		{"projects/demo", "kind", "Project"},
		{"nodes/node-1", "underlayIp", "10.201.3.11"},
		{"nodes/node-2", "roles", "[COMPUTE LOAD_BALANCER]"},
		{"projects/demo/ports/web-2", "node", "nodes/node-2"},
		{"projects/demo/ports/web-2", "fixedIps", "[10.0.1.12]"},
		{"projects/demo/ports/db-1", "securityGroups", "[projects/demo/securityGroups/db]"},
		{"projects/demo/ports/db-1", "subnet", "projects/demo/vpcs/prod/subnets/db"},
	}
	for _, tc := range tests {
		d, ok := byName[tc.name]
		if !ok {
			t.Errorf("no document %s in\n%s", tc.name, out)
			continue
		}
		if got := fmtAny(d[tc.field]); got != tc.want {
			t.Errorf("%s %s = %s, want %s", tc.name, tc.field, got, tc.want)
		}
	}
	if _, err := topo.Documents(map[string]netip.Addr{}); err == nil {
		t.Error("Documents without underlay addresses succeeded")
	}
}

func fmtAny(v any) string {
	if l, ok := v.([]any); ok {
		s := make([]string, len(l))
		for i, x := range l {
			s[i] = fmtAny(x)
		}
		return "[" + strings.Join(s, " ") + "]"
	}
	if s, ok := v.(string); ok {
		return s
	}
	return "?"
}

// TestReportString: the matrix shows expected outcomes in lower case,
// surprises in upper case with "!", and explains each surprise.
func TestReportString(t *testing.T) {
	rep := Report{Outcomes: []Outcome{
		{Expect: Allow("a", "b", TCP, 80), Got: true},
		{Expect: Deny("b", "a", TCP, 80), Got: true},
		{Expect: Allow("a", "c", TCP, 80), Err: errors.New("i/o timeout")},
		{Expect: Allow("a", "b", ICMP, 0), Got: true},
	}}
	if !rep.Failed() {
		t.Error("Failed() = false with two mismatches")
	}
	want := `tcp/80 from\to  b      a       c
a               allow  .       DENY!
b               .      ALLOW!  .

icmp from\to  b
a             allow

b -> a tcp/80: want deny, got allow
a -> c tcp/80: want allow, got deny (i/o timeout)
`
	if got := rep.String(); got != want {
		t.Errorf("report:\n%s\nwant:\n%s", got, want)
	}
}
