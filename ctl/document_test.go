package ctl

import (
	"os"
	"strings"
	"testing"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

func TestParseDocumentsMultiDoc(t *testing.T) {
	src := `# leading comment
---
kind: Vpc
name: projects/p/vpcs/v
cidrBlocks: [10.0.0.0/16]
---
# only a comment: not a document
---
kind: Project
name: projects/p
organization: acme
--- kind: Node
name: nodes/n1
underlay_ip: 192.0.2.1
`
	docs, err := parseDocuments(kindTable(), "t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 3 {
		t.Fatalf("got %d documents, want 3", len(docs))
	}
	want := []struct {
		kind, name  string
		index, line int
	}{{"Vpc", "projects/p/vpcs/v", 1, 3}, {"Project", "projects/p", 2, 9}, {"Node", "nodes/n1", 3, 12}}
	for i, w := range want {
		d := docs[i]
		if d.Kind.Name != w.kind || d.Name != w.name || d.Index != w.index || d.Line != w.line {
			t.Errorf("doc %d = %s %s #%d line %d, want %+v", i, d.Kind.Name, d.Name, d.Index, d.Line, w)
		}
		if _, ok := d.Fields["kind"]; ok {
			t.Errorf("doc %d: kind is still among the fields", i)
		}
	}
	if got := docs[0].Msg.(*v1.Vpc).GetCidrBlocks(); len(got) != 1 || got[0] != "10.0.0.0/16" {
		t.Errorf("cidr blocks = %v", got)
	}
	if got := docs[2].Msg.(*v1.Node).GetUnderlayIp(); got != "192.0.2.1" {
		t.Errorf("snake_case field: underlay ip = %q", got)
	}
}

func TestParseDocumentsErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want []string // substrings of the error
	}{
		{"unknown kind", "kind: Vpc\nname: projects/p/vpcs/v\n---\nkind: Vnet\nname: x\n",
			[]string{"t.yaml: document 2 (line 4)", `unknown kind "Vnet"`, "Project, Node, PublicAddressPool"}},
		{"missing kind", "name: projects/p\n", []string{"document 1 (line 1)", "missing kind"}},
		{"unknown field", "kind: Project\nname: projects/p\n---\nkind: Vpc\nname: projects/p/vpcs/v\ncidrBlock: 10.0.0.0/16\n",
			[]string{"document 2 (line 4)", `unknown field "cidrBlock"`, `did you mean "cidrBlocks"`}},
		{"unknown nested field", "kind: SecurityGroup\nname: projects/p/securityGroups/s\nrules:\n- protocol: tcp\n- portMin: 80\n",
			[]string{"document 1", `unknown field "rules[1].portMin"`}},
		{"bad YAML", "kind: Project\nname: projects/p\n---\nkind: Vpc\n  name: [oops\n",
			[]string{"document 2 (line 4)", "invalid YAML", "line 5"}},
		{"not a mapping", "- a\n- b\n", []string{"document 1", "want a mapping"}},
		{"bad value", "kind: Vpc\nname: projects/p/vpcs/v\ncidrBlocks: 10\n", []string{"document 1", "Vpc"}},
		{"bad enum", "kind: SecurityGroup\nname: projects/p/securityGroups/s\nrules:\n- direction: SIDEWAYS\n", []string{"document 1", "SIDEWAYS"}},
		{"missing name", "kind: Vpc\ncidrBlocks: [10.0.0.0/16]\n", []string{"document 1", "no name", "projects/{project}/vpcs/{id}"}},
		{"bad name", "kind: Vpc\nname: projects/p/subnets/v\n", []string{"document 1", "not a Vpc name"}},
		{"duplicate", "kind: Project\nname: projects/p\n---\nkind: Project\nname: projects/p\n", []string{"document 2", "already defined by document 1"}},
		{"empty", "# nothing\n---\n", []string{"no documents"}},
		{"all errors reported", "kind: X\n---\nkind: Y\n", []string{"document 1", "document 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseDocuments(kindTable(), "t.yaml", []byte(tc.src))
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "(line 1:") {
				t.Errorf("error %q leaks positions in the re-encoded JSON", err)
			}
		})
	}
}

func TestOrderDocuments(t *testing.T) {
	src := `kind: Port
name: projects/p/ports/a
---
kind: Subnet
name: projects/p/vpcs/v/subnets/s
---
kind: Port
name: projects/p/ports/b
---
kind: SecurityGroup
name: projects/p/securityGroups/g
---
kind: Vpc
name: projects/p/vpcs/v
---
kind: NetworkAcl
name: projects/p/networkAcls/a
---
kind: Node
name: nodes/n
---
kind: RouteTable
name: projects/p/routeTables/r
---
kind: Project
name: projects/p
`
	docs, err := parseDocuments(kindTable(), "t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range orderDocuments(docs) {
		got = append(got, d.Name)
	}
	want := []string{"projects/p", "nodes/n", "projects/p/vpcs/v", "projects/p/networkAcls/a", "projects/p/routeTables/r",
		"projects/p/vpcs/v/subnets/s", "projects/p/securityGroups/g", "projects/p/ports/a", "projects/p/ports/b"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("order:\n got %v\nwant %v", got, want)
	}
	if docs[0].Name != "projects/p/ports/a" {
		t.Error("orderDocuments reordered its input")
	}
}

// TestExampleTopology keeps the shipped example parseable and complete.
func TestExampleTopology(t *testing.T) {
	data, err := os.ReadFile("../examples/topology.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := parseDocuments(kindTable(), "topology.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, d := range docs {
		count[d.Kind.Name]++
	}
	want := map[string]int{"Project": 1, "Node": 2, "Vpc": 1, "Subnet": 2, "NetworkAcl": 1, "RouteTable": 1, "SecurityGroup": 2, "Port": 3}
	for k, n := range want {
		if count[k] != n {
			t.Errorf("%d %s documents, want %d", count[k], k, n)
		}
	}
	for _, d := range docs {
		if d.Name == "projects/demo/securityGroups/db" {
			r := d.Msg.(*v1.SecurityGroup).GetRules()[0]
			if r.GetRemoteSecurityGroup() != "projects/demo/securityGroups/web" || r.GetPortRangeMin() != 5432 {
				t.Errorf("db security group rule = %v", r)
			}
		}
	}
}

// TestExampleOutside keeps the issue [4] example parseable: every kind of
// the outside world, in dependency order after the topology's.
func TestExampleOutside(t *testing.T) {
	data, err := os.ReadFile("../examples/outside.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := parseDocuments(kindTable(), "outside.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range orderDocuments(docs) {
		got = append(got, d.Kind.Name)
	}
	want := []string{"Node", "PublicAddressPool", "BgpPeer", "ElasticIp", "ElasticIp", "NatGateway"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("kinds in apply order: %v, want %v", got, want)
	}
}
