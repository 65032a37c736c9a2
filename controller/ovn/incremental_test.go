package ovn

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// waitDrift waits until the reconciler heard of NB events for rows of
// table, as Run would before its next pass (the cache delivers events on
// its own goroutine).
func waitDrift(t *testing.T, r *Reconciler, table string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.driftMu.Lock()
		n := len(r.drift[table])
		r.driftMu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no NB event for %s reached the reconciler", table)
		}
		time.Sleep(time.Millisecond)
	}
}

// settleEvents waits until the NB events of the rows the last pass wrote
// reached the reconciler (the cache delivers them on its own goroutine),
// then runs the pass they cause, as Run would, so the next pass sees only
// the test's change. Every row written names itself in an event.
func settleEvents(t *testing.T, r *Reconciler, objs map[string]*agentv1.Object, wrote SyncResult) {
	t.Helper()
	want := wrote.Created + wrote.Updated
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.driftMu.Lock()
		n := scopeSize(r.drift)
		r.driftMu.Unlock()
		if n >= want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events for %d of the %d rows written reached the reconciler", n, want)
		}
		time.Sleep(time.Millisecond)
	}
	if res := mustSync(t, r, objs); res.Writes() != 0 {
		t.Fatalf("verifying the rows just written wrote %+v", res)
	}
}

func TestOneRuleChangeIsOneIncrementalWrite(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	objs := fixture()
	settleEvents(t, r, objs, mustSync(t, r, objs))

	sg := cloneSG(objs["sg/21"].GetSecurityGroup())
	sg.Rules[0].PortMin, sg.Rules[0].PortMax = 2222, 2222
	objs["sg/21"] = objects(sg)["sg/21"]
	res := mustSync(t, r, objs)
	if res.Writes() != 1 || res.Updated != 1 || res.Transactions != 1 {
		t.Errorf("one rule change wrote %+v, want one update in one transaction", res)
	}
	if st := r.Status(); st.LastScope != 1 {
		t.Errorf("the pass looked at %d rows, want 1 (the changed ACL)", st.LastScope)
	}
	assertNBMatches(t, r, Render(objs))

	// Nothing changed: an incremental pass looks at nothing at all.
	settleEvents(t, r, objs, res)
	if res := mustSync(t, r, objs); res != (SyncResult{}) || r.Status().LastScope != 0 {
		t.Errorf("idle incremental pass wrote %+v over %d rows", res, r.Status().LastScope)
	}
}

func TestIncrementalPassRepairsDriftItHears(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	objs := fixture()
	settleEvents(t, r, objs, mustSync(t, r, objs))
	c := r.Client()
	a := &nbdb.ACL{UUID: uuidOf(r, nbdb.ACLTable, "sg/21/rule/1"), Match: "1"}
	transact(t, c, must(c.Where(a).Update(a, &a.Match)))
	waitDrift(t, r, nbdb.ACLTable)
	res := mustSync(t, r, objs)
	if res.Updated != 1 || res.Writes() != 1 {
		t.Errorf("repair wrote %+v, want the one ACL updated", res)
	}
	if st := r.Status(); st.LastScope < 0 {
		t.Errorf("the repair took a full pass")
	}
	assertNBMatches(t, r, Render(objs))
}

// TestIncrementalPassesMatchFullPasses applies random changes of every kind
// and checks after each incremental pass that NB holds exactly the
// rendering and that a full pass finds nothing left to write.
func TestIncrementalPassesMatchFullPasses(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	r := connect(t, ovntest.InMemoryNB(t), nil)
	m := newMutator(rng)
	m.flowLogs = true
	objs := m.objects()
	mustSync(t, r, objs)
	full, incremental, metered := 0, 0, 0
	for step := range 60 {
		what := m.mutate()
		objs = m.objects()
		if _, err := r.Sync(testCtx(t), objs); err != nil {
			t.Fatalf("step %d (%s): %v", step, what, err)
		}
		if r.Status().LastScope < 0 {
			full++
		} else {
			incremental++
		}
		assertNBMatches(t, r, Render(objs))
		if t.Failed() {
			t.Fatalf("step %d (%s): NB differs from the rendering", step, what)
		}
		if len(meridianRows(r, nbdb.MeterTable)) > 0 {
			metered++
		}
		res, err := r.Resync(testCtx(t), objs)
		if err != nil {
			t.Fatalf("step %d (%s): full pass: %v", step, what, err)
		}
		if res.Writes() != 0 {
			t.Fatalf("step %d (%s): the full pass after the incremental one wrote %+v", step, what, res)
		}
	}
	t.Logf("%d incremental passes, %d fell back to full passes; flow-log meters in NB after %d", incremental, full, metered)
	if metered == 0 {
		t.Errorf("no step had a flow-log meter: the test does not cover logged ACLs")
	}
	if incremental < 50 {
		t.Errorf("only %d of 60 passes were incremental", incremental)
	}
}

// TestIncrementalLoadBalancersMatchFullPasses is the same with an external
// network and gateway nodes, so listeners come and go both internal and
// north-south (with the gateway ports they bring), among the other
// changes.
func TestIncrementalLoadBalancersMatchFullPasses(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 11))
	ext := testExternal()
	r := connect(t, ovntest.InMemoryNB(t), func(c *Config) { c.External = &ext })
	m := newMutator(rng)
	m.outside = true
	for range 3 {
		m.addLB()
	}
	objs := m.objects()
	mustSync(t, r, objs)
	incremental, lbSteps, withHealthChecks := 0, 0, 0
	for step := range 60 {
		what := m.mutate()
		if m.rng.IntN(2) == 0 && len(m.lbs) > 0 { // listeners twice as often (while there are some)
			id, svc := pick(m.rng, m.lbs)
			svc = proto.Clone(svc).(*agentv1.LbService)
			m.lbs[id] = svc
			what += ", " + m.changeLB(svc)
		}
		if strings.Contains(what, "listener") {
			lbSteps++
		}
		objs = m.objects()
		if _, err := r.Sync(testCtx(t), objs); err != nil {
			t.Fatalf("step %d (%s): %v", step, what, err)
		}
		if r.Status().LastScope >= 0 {
			incremental++
		}
		assertNBMatches(t, r, renderExt(t, objs))
		if t.Failed() {
			t.Fatalf("step %d (%s): NB differs from the rendering", step, what)
		}
		if len(meridianRows(r, nbdb.LoadBalancerHealthCheckTable)) > 0 {
			withHealthChecks++
		}
		res, err := r.Resync(testCtx(t), objs)
		if err != nil {
			t.Fatalf("step %d (%s): full pass: %v", step, what, err)
		}
		if res.Writes() != 0 {
			t.Fatalf("step %d (%s): the full pass after the incremental one wrote %+v", step, what, res)
		}
	}
	t.Logf("%d of 60 passes incremental, %d changed listeners; %d load balancers at the end", incremental, lbSteps,
		len(meridianRows(r, nbdb.LoadBalancerTable)))
	if incremental < 50 {
		t.Errorf("only %d of 60 passes were incremental", incremental)
	}
	// Coverage, not chance: health checks come and go with the random
	// changes, so whether one is left at the end is luck (it failed 1 run
	// in 8); the passes that had some are what counts.
	if withHealthChecks < 10 {
		t.Errorf("only %d of 60 passes had health checks: the test does not cover them", withHealthChecks)
	}
}

// mutator holds a random topology and changes it the way the model does:
// a changed object is a new object.
type mutator struct {
	rng     *rand.Rand
	vpcs    []*agentv1.Vpc
	subnets map[uint32]*agentv1.Subnet
	ports   map[uint32]*agentv1.Port
	sgs     map[uint32]*agentv1.SecurityGroup
	acls    map[uint32]*agentv1.NetworkAcl
	rts     map[uint32]*agentv1.RouteTable
	lbs     map[uint32]*agentv1.LbService
	fls     map[uint32]*agentv1.FlowLogConfig
	next    uint32
	// outside: also gateway nodes and north-south listeners (for a
	// renderer with an external network).
	outside bool
	// flowLogs: also flow logs come, change and go (which ACLs are
	// logged, and the meters).
	flowLogs bool
}

func newMutator(rng *rand.Rand) *mutator {
	m := &mutator{rng: rng, subnets: map[uint32]*agentv1.Subnet{}, ports: map[uint32]*agentv1.Port{},
		sgs: map[uint32]*agentv1.SecurityGroup{}, acls: map[uint32]*agentv1.NetworkAcl{}, rts: map[uint32]*agentv1.RouteTable{},
		lbs: map[uint32]*agentv1.LbService{}, fls: map[uint32]*agentv1.FlowLogConfig{}, next: 1000}
	for v := uint32(1); v <= 2; v++ {
		m.vpcs = append(m.vpcs, &agentv1.Vpc{Id: v, Vni: 100 + v, Cidrs: []string{"10.0.0.0/8"}})
		for s := range uint32(3) {
			id := v*10 + s
			m.subnets[id] = &agentv1.Subnet{Id: id, VpcId: v, Cidr: fmt.Sprintf("10.%d.0.0/16", s),
				GatewayIp: fmt.Sprintf("10.%d.0.1", s), Mtu: 1450, DhcpEnabled: s == 0}
		}
		for g := range uint32(4) {
			id := v*100 + g
			m.sgs[id] = &agentv1.SecurityGroup{Id: id, VpcId: v, Rules: []*agentv1.Rule{m.rule(v)}}
		}
		m.acls[v*1000] = &agentv1.NetworkAcl{Id: v * 1000, VpcId: v, Rules: []*agentv1.Rule{
			{Id: m.id(), Number: 100, Ingress: true, Protocol: 6, PortMin: 23, PortMax: 23, IcmpType: -1, IcmpCode: -1},
			{Id: m.id(), Number: 200, Ingress: true, Allow: true, IcmpType: -1, IcmpCode: -1}}}
		m.rts[v*2000] = &agentv1.RouteTable{Id: v * 2000, VpcId: v, Routes: []*agentv1.Route{{Destination: "192.168.0.0/16", Blackhole: true}}}
	}
	for range 30 {
		m.addPort()
	}
	for range 3 {
		m.addLB()
	}
	return m
}

// addLB adds a listener over two to four ports of a random VPC: internal,
// or (with outside) north-south one time in two.
func (m *mutator) addLB() {
	id := m.id()
	vpc := m.vpcs[m.rng.IntN(len(m.vpcs))].Id
	svc := &agentv1.LbService{Id: id, VpcId: vpc, Vni: 100 + vpc, Vip: fmt.Sprintf("10.9.%d.%d", id/250, id%250+1),
		Port: uint32(80 + m.rng.IntN(3)), Protocol: 6, Internal: true}
	if m.outside && m.rng.IntN(2) == 0 {
		svc.Internal, svc.Vip = false, fmt.Sprintf("172.16.0.%d", 2+id%100)
	}
	m.lbs[id] = svc
	m.changeLB(svc)
}

// changeLB changes a listener in place: new backends, health check,
// persistence, protocol.
func (m *mutator) changeLB(svc *agentv1.LbService) string {
	svc.Backends = nil
	for _, pid := range sortedIDs(m.ports) {
		p := m.ports[pid]
		if p.VpcId != svc.VpcId || m.rng.IntN(5) != 0 || len(svc.Backends) == 4 {
			continue
		}
		svc.Backends = append(svc.Backends, &agentv1.LbBackend{Id: pid, Address: p.Ips[0], Port: 8080, Weight: 1, PortId: pid,
			Node: "n1", Healthy: m.rng.IntN(4) != 0, Draining: m.rng.IntN(5) == 0})
	}
	svc.HealthCheck = nil
	if m.rng.IntN(2) == 0 {
		svc.HealthCheck = &agentv1.HealthCheck{Protocol: "tcp", IntervalMs: uint32(1000 * (1 + m.rng.IntN(3)))}
	}
	svc.SourceIpPersistence = m.rng.IntN(2) == 0
	svc.Protocol = []uint32{6, 17}[m.rng.IntN(2)]
	return "listener changed"
}

func (m *mutator) id() uint32 { m.next++; return m.next }

func (m *mutator) rule(vpc uint32) *agentv1.Rule {
	r := &agentv1.Rule{Id: m.id(), Allow: true, Ingress: m.rng.IntN(2) == 0, Protocol: 6,
		PortMin: uint32(1 + m.rng.IntN(1000)), IcmpType: -1, IcmpCode: -1, Cidr: "192.168.0.0/24"}
	r.PortMax = r.PortMin
	if m.rng.IntN(3) == 0 {
		r.Cidr, r.RemoteGroupId = "", vpc*100+uint32(m.rng.IntN(4))
	}
	return r
}

func pick[T any](rng *rand.Rand, m map[uint32]T) (uint32, T) {
	keys := sortedIDs(m)
	k := keys[rng.IntN(len(keys))]
	return k, m[k]
}

func (m *mutator) addPort() {
	id := m.id()
	_, s := pick(m.rng, m.subnets)
	m.ports[id] = &agentv1.Port{Id: id, VpcId: s.VpcId, SubnetId: s.Id, Mac: fmt.Sprintf("02:00:00:00:%02x:%02x", byte(id>>8), byte(id)),
		Ips: []string{fmt.Sprintf("10.%d.%d.%d", (s.Id%10)%3, id/200, id%200+2)}, SourceDestCheck: true,
		SecurityGroupIds: m.groups(s.VpcId)}
}

func (m *mutator) groups(vpc uint32) []uint32 {
	var out []uint32
	for g := range uint32(4) {
		if m.rng.IntN(3) == 0 {
			out = append(out, vpc*100+g)
		}
	}
	return out
}

// mutate makes one random change and says what it was.
func (m *mutator) mutate() string {
	if m.flowLogs && m.rng.IntN(6) == 0 {
		return m.changeFlowLog()
	}
	switch m.rng.IntN(15) {
	case 12:
		m.addLB()
		return "listener added"
	case 13:
		if len(m.lbs) == 0 {
			m.addLB()
			return "listener added"
		}
		id, svc := pick(m.rng, m.lbs)
		svc = proto.Clone(svc).(*agentv1.LbService)
		m.lbs[id] = svc
		return m.changeLB(svc)
	case 14:
		if len(m.lbs) == 0 {
			return "nothing"
		}
		id, _ := pick(m.rng, m.lbs)
		delete(m.lbs, id)
		return "listener deleted"
	case 0:
		id, g := pick(m.rng, m.sgs)
		g = proto.Clone(g).(*agentv1.SecurityGroup)
		if len(g.Rules) > 0 {
			g.Rules[m.rng.IntN(len(g.Rules))].PortMin += 1
		}
		m.sgs[id] = g
		return "rule changed"
	case 1:
		id, g := pick(m.rng, m.sgs)
		g = proto.Clone(g).(*agentv1.SecurityGroup)
		g.Rules = append(g.Rules, m.rule(g.VpcId))
		m.sgs[id] = g
		return "rule added"
	case 2:
		id, g := pick(m.rng, m.sgs)
		g = proto.Clone(g).(*agentv1.SecurityGroup)
		if len(g.Rules) > 0 {
			i := m.rng.IntN(len(g.Rules))
			g.Rules = slices.Delete(g.Rules, i, i+1)
		}
		m.sgs[id] = g
		return "rule removed"
	case 3:
		m.addPort()
		return "port added"
	case 4:
		id, _ := pick(m.rng, m.ports)
		delete(m.ports, id)
		return "port deleted"
	case 5:
		id, p := pick(m.rng, m.ports)
		p = proto.Clone(p).(*agentv1.Port)
		p.SecurityGroupIds = m.groups(p.VpcId)
		m.ports[id] = p
		return "port groups changed"
	case 6:
		id, p := pick(m.rng, m.ports)
		p = proto.Clone(p).(*agentv1.Port)
		s := p.VpcId*10 + uint32(m.rng.IntN(3))
		p.SubnetId = s
		p.Ips = []string{fmt.Sprintf("10.%d.%d.%d", s%10, id/200, id%200+2)}
		m.ports[id] = p
		return "port moved to another subnet"
	case 7:
		id, s := pick(m.rng, m.subnets)
		s = proto.Clone(s).(*agentv1.Subnet)
		s.DhcpEnabled = !s.DhcpEnabled
		m.subnets[id] = s
		return "subnet DHCP toggled"
	case 8:
		id, s := pick(m.rng, m.subnets)
		s = proto.Clone(s).(*agentv1.Subnet)
		if s.NetworkAclId == 0 {
			s.NetworkAclId, s.RouteTableId = s.VpcId*1000, s.VpcId*2000
		} else {
			s.NetworkAclId, s.RouteTableId = 0, 0
		}
		m.subnets[id] = s
		return "subnet network ACL and route table toggled"
	case 9:
		id, a := pick(m.rng, m.acls)
		a = proto.Clone(a).(*agentv1.NetworkAcl)
		a.Rules = append(a.Rules, &agentv1.Rule{Id: m.id(), Number: uint32(300 + m.rng.IntN(100)), Protocol: 17,
			PortMin: 53, PortMax: 53, IcmpType: -1, IcmpCode: -1})
		m.acls[id] = a
		return "network ACL rule added"
	case 10:
		id, rt := pick(m.rng, m.rts)
		rt = proto.Clone(rt).(*agentv1.RouteTable)
		rt.Routes = append(rt.Routes, &agentv1.Route{Destination: fmt.Sprintf("172.16.%d.0/24", m.rng.IntN(256)), NextHopIp: "10.0.0.9"})
		m.rts[id] = rt
		return "route added"
	default:
		id, g := pick(m.rng, m.sgs)
		if m.rng.IntN(2) == 0 {
			delete(m.sgs, id) // ports still naming it render without it
			return "security group deleted"
		}
		m.sgs[id+50] = &agentv1.SecurityGroup{Id: id + 50, VpcId: g.VpcId, Rules: []*agentv1.Rule{m.rule(g.VpcId)}}
		return "security group added"
	}
}

func (m *mutator) objects() map[string]*agentv1.Object {
	var bodies []proto.Message
	for _, v := range m.vpcs {
		bodies = append(bodies, v)
	}
	for _, id := range sortedIDs(m.subnets) {
		bodies = append(bodies, m.subnets[id])
	}
	for _, id := range sortedIDs(m.ports) {
		bodies = append(bodies, m.ports[id])
	}
	for _, id := range sortedIDs(m.sgs) {
		bodies = append(bodies, m.sgs[id])
	}
	for _, id := range sortedIDs(m.acls) {
		bodies = append(bodies, m.acls[id])
	}
	for _, id := range sortedIDs(m.rts) {
		bodies = append(bodies, m.rts[id])
	}
	for _, id := range sortedIDs(m.fls) {
		bodies = append(bodies, m.fls[id])
	}
	objs := objects(bodies...)
	var outside []proto.Message
	for _, id := range sortedIDs(m.lbs) {
		outside = append(outside, m.lbs[id])
	}
	if m.outside {
		outside = append(outside, &agentv1.Gateway{Node: "gw1"}, &agentv1.Gateway{Node: "gw2"})
	}
	return withOutside(objs, outside...)
}

// changeFlowLog adds, changes or deletes a flow log of a random scope
// (VPC, subnet or port), traffic type and rate limit: which ACL rows are
// logged, with which meter, follows.
func (m *mutator) changeFlowLog() string {
	if len(m.fls) > 0 && m.rng.IntN(3) == 0 {
		id, _ := pick(m.rng, m.fls)
		delete(m.fls, id)
		return "flow log deleted"
	}
	what := "flow log added"
	id := m.id()
	if len(m.fls) > 0 && m.rng.IntN(2) == 0 {
		id, _ = pick(m.rng, m.fls)
		what = "flow log changed"
	}
	vpc := m.vpcs[m.rng.IntN(len(m.vpcs))].Id
	c := &agentv1.FlowLogConfig{Id: id, VpcId: vpc, TrafficType: []string{"ACCEPT", "REJECT", "ALL"}[m.rng.IntN(3)],
		AggregationInterval: 1, RateLimit: uint32(m.rng.IntN(3) * 50), Burst: uint32(m.rng.IntN(2) * 10)}
	switch m.rng.IntN(3) {
	case 0:
		c.SubnetId = vpc*10 + uint32(m.rng.IntN(3))
	case 1:
		pid, _ := pick(m.rng, m.ports)
		c.PortId, c.VpcId = pid, m.ports[pid].VpcId
	}
	m.fls[id] = c
	return what
}
