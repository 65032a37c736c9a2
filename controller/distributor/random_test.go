package distributor

import (
	"fmt"
	"math/rand/v2"
	"testing"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/resource"
)

// TestManyAgentsRandomChanges runs many simulated agents against one
// controller while random changes hit the store, agents drop and resume at
// random, and the controller restarts once midway. In the end every agent
// must hold exactly its node's desired state, and no agent may have seen a
// protocol violation (a delta not starting at the version it holds).
func TestManyAgentsRandomChanges(t *testing.T) {
	const (
		nodes = 24
		vpcs  = 3
		ports = 60
		steps = 300
	)
	ctx := testCtx(t)
	st, _ := openStore(t)
	r := rand.New(rand.NewPCG(7, 7))
	vpcName := func(v int) string { return fmt.Sprintf("%s/vpcs/v%d", proj, v) }
	subName := func(v int) string { return vpcName(v) + "/subnets/s" }
	sgName := func(v, g int) string { return fmt.Sprintf("%s/securityGroups/g%d-%d", proj, v, g) }
	aclName := func(v int) string { return fmt.Sprintf("%s/networkAcls/a%d", proj, v) }
	var base []any
	for n := range nodes {
		base = append(base, node(fmt.Sprintf("n%d", n), fmt.Sprintf("192.0.2.%d", n+1)))
	}
	for v := range vpcs {
		base = append(base, vpc(vpcName(v), uint32(v+1)),
			&mv1.NetworkAcl{Name: aclName(v), Id: uint32(v + 1), Vpc: vpcName(v)},
			subnet(subName(v), uint32(v+1), "10.0.1.0/24", aclName(v), ""))
		for g := range 3 {
			base = append(base, sg(sgName(v, g), uint32(v*3+g+1), vpcName(v), 80))
		}
	}
	rev := write(t, st, base...)

	e := startEnv(t, st, nil)
	agents := make([]*agenttest.Agent, nodes)
	for n := range agents {
		agents[n] = agenttest.New(e.conn, fmt.Sprintf("n%d", n))
		if err := agents[n].Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	portVpc := map[int]int{}
	for step := range steps {
		switch x := r.IntN(10); {
		case x < 5: // create, move or rebind a port
			p := r.IntN(ports)
			v, ok := portVpc[p]
			if !ok {
				v = r.IntN(vpcs)
				portVpc[p] = v
			}
			nodeName := ""
			if r.IntN(5) > 0 {
				nodeName = fmt.Sprintf("nodes/n%d", r.IntN(nodes))
			}
			rev = write(t, st, port(fmt.Sprintf("%s/ports/q%d", proj, p), uint32(p+1), subName(v), nodeName,
				fmt.Sprintf("10.0.1.%d", p+10), sgName(v, r.IntN(3))))
		case x < 7: // delete a port
			p := r.IntN(ports)
			if _, ok := portVpc[p]; ok {
				delete(portVpc, p)
				rev = write(t, st, del(resource.KindPort, fmt.Sprintf("%s/ports/q%d", proj, p)))
			}
		case x < 9: // change a group's rules, sometimes referencing another group
			v, g := r.IntN(vpcs), r.IntN(3)
			grp := sg(sgName(v, g), uint32(v*3+g+1), vpcName(v), uint32(r.IntN(5)+1))
			if r.IntN(2) == 0 {
				grp.Rules = append(grp.Rules, &mv1.SecurityGroupRule{Id: 9, Direction: mv1.Direction_INGRESS, RemoteSecurityGroup: sgName(v, r.IntN(3))})
			}
			rev = write(t, st, grp)
		default: // attach or detach the subnet's ACL
			v := r.IntN(vpcs)
			a := ""
			if r.IntN(2) == 0 {
				a = aclName(v)
			}
			rev = write(t, st, subnet(subName(v), uint32(v+1), "10.0.1.0/24", a, ""))
		}
		// Agents come and go.
		if a := agents[r.IntN(nodes)]; r.IntN(8) == 0 {
			if a.Connected() {
				a.Disconnect()
			} else if err := a.Connect(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if step == steps/2 {
			for _, a := range agents {
				a.Disconnect()
			}
			e.stop()
			e = startEnv(t, st, nil)
			for _, a := range agents {
				a.Rebind(e.conn)
				if r.IntN(2) == 0 {
					if err := a.Connect(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	for n, a := range agents {
		if err := a.Err(); err != nil {
			t.Fatalf("agent n%d: %v", n, err)
		}
		if !a.Connected() {
			if err := a.Connect(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	var snapshots, deltas int
	for n, a := range agents {
		converge(t, e, a, fmt.Sprintf("n%d", n), rev)
		s := a.Stats()
		snapshots += s.Snapshots
		deltas += s.Deltas
	}
	t.Logf("%d agents, %d changes: %d snapshots, %d deltas", nodes, steps, snapshots, deltas)
}
