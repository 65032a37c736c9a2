package e2e_test

import (
	"context"
	"fmt"
	"log"

	"github.com/meridian-sdn/meridian/e2e"
)

// A topology as Go values: two nodes, a workload on each in one subnet, and
// a security group that lets in HTTP only. (Not run: it needs root and the
// binaries.)
func ExampleUp() {
	topo := e2e.Topology{
		Nodes: []e2e.Node{{Name: "node-1"}, {Name: "node-2"}},
		Workloads: []e2e.Workload{
			{Name: "a", Node: "node-1", Port: "projects/p/ports/a", Subnet: "projects/p/vpcs/v/subnets/s", SecurityGroups: []string{"projects/p/securityGroups/web"}},
			{Name: "b", Node: "node-2", Port: "projects/p/ports/b", Subnet: "projects/p/vpcs/v/subnets/s", SecurityGroups: []string{"projects/p/securityGroups/web"}},
		},
		Intent: `
kind: Project
name: projects/p
organization: acme
---
kind: Vpc
name: projects/p/vpcs/v
cidrBlocks: [10.0.0.0/16]
---
kind: Subnet
name: projects/p/vpcs/v/subnets/s
cidrBlock: 10.0.1.0/24
---
kind: SecurityGroup
name: projects/p/securityGroups/web
vpc: projects/p/vpcs/v
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 80, portRangeMax: 80}
- {direction: EGRESS, protocol: all}
`,
	}
	ctx := context.Background()
	r, err := e2e.Up(ctx, topo, e2e.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	rep, err := r.CheckReachability(ctx, []e2e.Expect{
		e2e.Allow("a", "b", e2e.TCP, 80),
		e2e.Deny("a", "b", e2e.TCP, 22),
		e2e.Deny("b", "a", e2e.UDP, 53),
	}, e2e.ProbeOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(rep)
}
