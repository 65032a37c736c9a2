package model

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// assertSameAsFull checks that the incrementally maintained model m equals a
// full rebuild from tx: every object and every node's desired state.
func assertSameAsFull(t *testing.T, m *Model, tx *memTx) {
	t.Helper()
	full := loadModel(t, tx)
	if m.Len() != full.Len() {
		t.Fatalf("incremental has %d objects, full rebuild %d", m.Len(), full.Len())
	}
	for k, want := range full.objs {
		if got := m.objs[k]; !proto.Equal(got, want) {
			t.Fatalf("object %s: incremental %v, full %v", k, got, want)
		}
	}
	if got, want := m.Nodes(), full.Nodes(); !slices.Equal(got, want) {
		t.Fatalf("nodes: incremental %v, full %v", got, want)
	}
	for _, n := range full.Nodes() {
		if got, want := keysOf(m.NodeState(n)), keysOf(full.NodeState(n)); !slices.Equal(got, want) {
			t.Fatalf("node %s: incremental %v, full %v", n, got, want)
		}
	}
	if len(m.holders) != len(full.holders) {
		t.Fatalf("holders index: incremental %d keys, full %d", len(m.holders), len(full.holders))
	}
	for ref, k := range full.resKey {
		if m.resKey[ref] != k {
			t.Fatalf("resKey[%s]: incremental %q, full %q", ref, m.resKey[ref], k)
		}
	}
}

// universe is a small, dense set of resource slots so random changes collide
// often: references to deleted resources, nodes gaining and losing VPCs,
// groups referencing each other.
type universe struct {
	r    *rand.Rand
	vpcs []string
}

const (
	nVpcs, nSubnets, nSGs, nACLs, nRTs, nPorts, nNodes = 3, 2, 3, 2, 1, 14, 5
	nPools, nPeers, nEIPs, nNGWs                       = 2, 3, 6, 3
	nLBs, nListeners, nBackends                        = 3, 3, 4
)

func (u *universe) lbName(i int) string { return fmt.Sprintf("projects/p/loadBalancers/l%d", i) }

// randomLB returns a random load balancer. Listener IDs are derived from
// the load balancer's slot, so they stay unique across load balancers as
// the API server guarantees.
func (u *universe) randomLB(v int) *mv1.LoadBalancer {
	i := u.r.IntN(nLBs)
	lb := &mv1.LoadBalancer{Name: u.lbName(i), Id: uint32(i + 1), Vpc: u.vpcName(v), Vip: fmt.Sprintf("203.0.113.%d", 100+i)}
	if u.r.IntN(2) == 0 {
		lb.Scheme, lb.Subnet = "internal", u.subName(v, 0)
	} else {
		lb.Scheme, lb.Pool = "internet-facing", u.poolName(u.r.IntN(nPools))
	}
	for j := range nListeners {
		if u.r.IntN(3) == 0 {
			continue
		}
		l := &mv1.LoadBalancerListener{Id: uint32(100*(i+1) + j), Name: fmt.Sprint("l", j), Protocol: []string{"tcp", "udp"}[u.r.IntN(2)],
			Port: uint32(80 + j), SourceIpPersistence: u.r.IntN(2) == 0}
		if u.r.IntN(2) == 0 {
			l.HealthCheck = &mv1.LoadBalancerHealthCheck{Protocol: "tcp"}
		}
		for b := range u.r.IntN(nBackends + 1) {
			be := &mv1.LoadBalancerBackend{Id: uint32(b + 1), Port: u.portName(u.r.IntN(nPorts)), Address: "10.0.0.1", Draining: u.r.IntN(4) == 0}
			if u.r.IntN(2) == 0 {
				be.Weight = proto.Uint32(uint32(1 + u.r.IntN(3)))
			}
			l.Backends = append(l.Backends, be)
		}
		lb.Listeners = append(lb.Listeners, l)
	}
	return lb
}

func (u *universe) poolName(i int) string { return fmt.Sprintf("publicAddressPools/pl%d", i) }
func (u *universe) eipName(i int) string  { return fmt.Sprintf("projects/p/elasticIps/e%d", i) }
func (u *universe) ngwName(i int) string  { return fmt.Sprintf("projects/p/natGateways/g%d", i) }
func (u *universe) nodeName(i int) string { return fmt.Sprintf("nodes/n%d", i) }

// randomEdge returns a random outside-world resource.
func (u *universe) randomEdge(v int) proto.Message {
	switch u.r.IntN(5) {
	case 4:
		return u.randomLB(v)
	case 0:
		i := u.r.IntN(nPools)
		p := &mv1.PublicAddressPool{Name: u.poolName(i), Id: uint32(i + 1), Cidrs: []string{fmt.Sprintf("203.0.%d.0/24", 113+i)},
			Communities: []string{"65000:1", "65000:2"}[:u.r.IntN(3)], Med: uint32(u.r.IntN(2))}
		if u.r.IntN(3) == 0 {
			p.Announce = proto.Bool(false)
		}
		return p
	case 1:
		i := u.r.IntN(nPeers)
		return &mv1.BgpPeer{Name: fmt.Sprintf("bgpPeers/b%d", i), Id: uint32(i + 1), Node: u.nodeName(u.r.IntN(nNodes)),
			LocalAsn: 65001, PeerAsn: uint32(65000 + u.r.IntN(2)), PeerAddress: "192.0.2.254", Password: u.maybe(0.5, "pw"),
			AnnounceVpcPrefixes: u.r.IntN(3) == 0}
	case 2:
		i := u.r.IntN(nEIPs)
		e := &mv1.ElasticIp{Name: u.eipName(i), Id: uint32(i + 1), Pool: u.poolName(u.r.IntN(nPools)),
			Address: fmt.Sprintf("203.0.113.%d", u.r.IntN(4)+1)}
		switch u.r.IntN(3) {
		case 0:
			e.Port, e.PrivateIp = u.portName(u.r.IntN(nPorts)), fmt.Sprintf("10.0.0.%d", u.r.IntN(250)+1)
		case 1:
			e.NatGateway = u.ngwName(u.r.IntN(nNGWs))
		}
		return e
	default:
		i := u.r.IntN(nNGWs)
		n := &mv1.NatGateway{Name: u.ngwName(i), Id: uint32(i + 1), Vpc: u.vpcName(v), PortMin: uint32(u.r.IntN(2)) * 2000}
		for range u.r.IntN(3) {
			n.ElasticIps = append(n.ElasticIps, u.eipName(u.r.IntN(nEIPs)))
		}
		for range u.r.IntN(3) {
			n.Subnets = append(n.Subnets, u.subName(v, u.r.IntN(nSubnets)))
		}
		for j := range u.r.IntN(3) {
			n.PortMappings = append(n.PortMappings, &mv1.NatGatewayPortMapping{Protocol: []string{"tcp", "udp"}[u.r.IntN(2)],
				ElasticIp: u.eipName(u.r.IntN(nEIPs)), PublicPort: uint32(80 + j), Port: u.portName(u.r.IntN(nPorts)), PrivatePort: 8080,
				PrivateIp: "10.0.0.1"})
		}
		return n
	}
}

func (u *universe) vpcName(i int) string    { return fmt.Sprintf("projects/p/vpcs/v%d", i) }
func (u *universe) subName(v, i int) string { return fmt.Sprintf("%s/subnets/s%d", u.vpcName(v), i) }
func (u *universe) sgName(v, i int) string {
	return fmt.Sprintf("projects/p/securityGroups/g%d-%d", v, i)
}
func (u *universe) aclName(v, i int) string {
	return fmt.Sprintf("projects/p/networkAcls/a%d-%d", v, i)
}
func (u *universe) rtName(v, i int) string { return fmt.Sprintf("projects/p/routeTables/r%d-%d", v, i) }
func (u *universe) portName(i int) string  { return fmt.Sprintf("projects/p/ports/q%d", i) }

func (u *universe) maybe(p float64, s string) string {
	if u.r.Float64() < p {
		return s
	}
	return ""
}

// random returns a random resource (or, for a delete, just its key).
func (u *universe) random() (msg proto.Message, key string) {
	v := u.r.IntN(nVpcs)
	id := func(base, i int) uint32 { return uint32(base*10 + i + 1) }
	switch u.r.IntN(9) {
	case 0:
		m := vpc(u.vpcName(v), uint32(v+1), fmt.Sprintf("10.%d.0.0/16", u.r.IntN(3)))
		m.Description = fmt.Sprint(u.r.IntN(2)) // no-op changes too
		return m, keyOf(m)
	case 1:
		i := u.r.IntN(nSubnets)
		m := subnet(u.subName(v, i), id(v, i), fmt.Sprintf("10.0.%d.0/24", i),
			u.maybe(0.6, u.aclName(v, u.r.IntN(nACLs))), u.maybe(0.6, u.rtName(v, u.r.IntN(nRTs))))
		return m, keyOf(m)
	case 2:
		i := u.r.IntN(nPorts)
		s := u.subName(v, u.r.IntN(nSubnets))
		var sgs []string
		for range u.r.IntN(3) {
			sgs = append(sgs, u.sgName(v, u.r.IntN(nSGs)))
		}
		m := port(u.portName(i), uint32(i+1), s, u.maybe(0.8, fmt.Sprintf("nodes/n%d", u.r.IntN(nNodes))),
			fmt.Sprintf("10.0.0.%d", u.r.IntN(250)+1), sgs...)
		return m, keyOf(m)
	case 3:
		i := u.r.IntN(nSGs)
		var rules []*mv1.SecurityGroupRule
		for j := range u.r.IntN(4) {
			r := &mv1.SecurityGroupRule{Id: uint32(j + 1), Direction: mv1.Direction(1 + u.r.IntN(2)), Protocol: []string{"tcp", "udp", "all", "icmp"}[u.r.IntN(4)]}
			if u.r.IntN(2) == 0 {
				r.RemoteSecurityGroup = u.sgName(v, u.r.IntN(nSGs))
			} else {
				r.RemoteCidr = fmt.Sprintf("10.%d.0.0/16", u.r.IntN(4))
			}
			rules = append(rules, r)
		}
		m := sg(u.sgName(v, i), id(v, i), u.vpcName(v), rules...)
		return m, keyOf(m)
	case 4:
		i := u.r.IntN(nACLs)
		m := &mv1.NetworkAcl{Name: u.aclName(v, i), Id: id(v, i), Vpc: u.vpcName(v), Rules: []*mv1.NetworkAclRule{
			{Id: 1, Number: uint32(u.r.IntN(3) + 1), Action: mv1.Action_ALLOW, Direction: mv1.Direction_INGRESS, Protocol: "tcp"}}}
		return m, keyOf(m)
	case 5:
		i := u.r.IntN(nRTs)
		m := &mv1.RouteTable{Name: u.rtName(v, i), Id: id(v, i), Vpc: u.vpcName(v), Routes: []*mv1.Route{
			{Destination: "0.0.0.0/0", NextHopPort: u.portName(u.r.IntN(nPorts))}}}
		return m, keyOf(m)
	case 6:
		n := u.r.IntN(nNodes)
		m := node(fmt.Sprintf("n%d", n), fmt.Sprintf("192.0.2.%d", u.r.IntN(3)+1))
		if u.r.IntN(5) < 2 {
			m.Roles = []mv1.NodeRole{mv1.NodeRole_COMPUTE, mv1.NodeRole_GATEWAY}
		}
		return m, keyOf(m)
	default:
		m := u.randomEdge(v)
		return m, keyOf(m)
	}
}

// TestIncrementalEqualsFull applies random sequences of changes one event at
// a time and checks after every event that (1) the model equals a full
// rebuild and (2) the reported changes are exactly the nodes and keys whose
// desired state differs from before the event.
func TestIncrementalEqualsFull(t *testing.T) {
	seen := map[string]int{}
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			u := &universe{r: rand.New(rand.NewPCG(seed, 42))}
			tx := newMemTx()
			m := New(quiet())
			for step := range 400 {
				before := map[string]map[string]*agentv1.Object{}
				for _, n := range m.Nodes() {
					before[n] = snapshot(m, n)
				}
				var got Changes
				what := ""
				if u.r.IntN(12) == 0 {
					// The distributor records a backend's health (or a
					// removed backend's record goes).
					key := resource.LbHealthKey(uint32(100*(1+u.r.IntN(nLBs))+u.r.IntN(nListeners)), uint32(1+u.r.IntN(nBackends)))
					ev, ok := tx.putRawValue(key, resource.LbHealth{Node: fmt.Sprintf("n%d", u.r.IntN(nNodes)), Healthy: u.r.IntN(2) == 0}.Encode()), true
					if u.r.IntN(4) == 0 {
						ev, ok = tx.del(key)
					}
					if !ok {
						continue
					}
					got, what = m.Apply(ev), "health "+key
				} else if u.r.IntN(20) == 0 {
					// The distributor marks a gateway down or up again.
					// Or marks its agent away (just gone) or back.
					n, down := fmt.Sprintf("n%d", u.r.IntN(nNodes)), u.r.IntN(2) == 0
					key, kind := GatewayDownKey(n), "down"
					if u.r.IntN(2) == 0 {
						key, kind = GatewayAwayKey(n), "away"
					}
					ev, ok := tx.putRaw(key), true
					if !down {
						ev, ok = tx.del(key)
					}
					if !ok {
						continue
					}
					got, what = m.Apply(ev), fmt.Sprintf("%s %s %v", kind, n, down)
				} else {
					msg, key := u.random()
					var ev store.Event
					if u.r.IntN(4) == 0 {
						var ok bool
						if ev, ok = tx.del(key); !ok {
							continue
						}
					} else {
						ev = tx.put(t, msg)
					}
					got, what = m.Apply(ev), fmt.Sprint(ev.Type, " ", ev.KV.Key)
				}
				assertSameAsFull(t, m, tx)
				want := Changes{}
				nodes := map[string]bool{}
				for n := range before {
					nodes[n] = true
				}
				for _, n := range m.Nodes() {
					nodes[n] = true
				}
				for n := range nodes {
					after := snapshot(m, n)
					for k, o := range before[n] {
						if a, ok := after[k]; !ok || !proto.Equal(a, o) {
							want.add(n, k)
						}
					}
					for k := range after {
						if _, ok := before[n][k]; !ok {
							want.add(n, k)
						}
					}
				}
				if g, w := flatten(got), flatten(want); !slices.Equal(g, w) {
					t.Fatalf("step %d (%s): changes %v, want %v", step, what, g, w)
				}
				for _, k := range flatten(got) {
					_, key, _ := strings.Cut(k, " ")
					kind, _, _ := strings.Cut(key, "/")
					seen[kind]++
					if o := m.Object(key); o.GetNatGateway().GetOwnerNode() != "" && strings.HasPrefix(what, "down") {
						seen["owner moved"]++
					}
					if kind == "lb" && strings.HasPrefix(what, "health") {
						seen["lb health"]++
					}
				}
			}
		})
	}
	// The universe must actually exercise every kind of object and the
	// gateway failover, or the property says little.
	for _, kind := range []string{"gateway", "eip", "ngw", "pool", "bgp", "port", "owner moved", "lb", "lb health"} {
		if seen[kind] == 0 {
			t.Errorf("no change of %q in any run: widen the universe", kind)
		}
	}
}

func snapshot(m *Model, n string) map[string]*agentv1.Object {
	out := map[string]*agentv1.Object{}
	for k, o := range m.NodeState(n) {
		out[k] = o
	}
	return out
}

func flatten(c Changes) []string {
	var out []string
	for n, keys := range c {
		for k := range keys {
			out = append(out, n+" "+k)
		}
	}
	sort.Strings(out)
	return out
}
