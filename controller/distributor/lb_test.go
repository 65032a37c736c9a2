package distributor

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/store"
)

// lbSetup is a real API server and a distributor on one bolt store, with
// agents for gateway gw1, n1 and n2 (seeded nodes) and a third compute node
// n3; ports b1 on n1 and b2 on n2 in project a1's VPC v, p2 on n3 in VPC
// v2; an internet-facing load balancer "web" (http/80 with an HTTP check,
// backends b1 and b2) and an internal one "db" in VPC v2 (tcp/5432, no
// check, backend p2).
type lbSetup struct {
	api    *apitest.Env
	e      *env
	agents map[string]*agenttest.Agent
	web    *mv1.LoadBalancer
	db     *mv1.LoadBalancer
}

func newLbSetup(t *testing.T, grace time.Duration) *lbSetup {
	t.Helper()
	api := apitest.New(t, apitest.Options{Store: store.Options{Logger: quiet()}})
	api.Seed()
	ctx := apitest.Ctx(t)
	s := &lbSetup{api: api, agents: map[string]*agenttest.Agent{}}
	s.e = startEnv(t, api.Store, func(c *Config) { c.GatewayGrace = grace })
	api.Server.SetStatusProvider(s.e.d)
	c := api.Admin
	for _, n := range []struct{ id, ip, role string }{{"gw1", "192.0.2.50", "gateway"}, {"n1", "192.0.2.1", "compute"}, {"n2", "192.0.2.2", "compute"}, {"n3", "192.0.2.3", "compute"}} {
		a := agenttest.New(s.e.conn, n.id)
		if err := a.Register(ctx, n.ip, n.role); err != nil {
			t.Fatal(err)
		}
		if err := a.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		s.agents[n.id] = a
	}
	a1 := apitest.ProjectA1
	api.Ok(c.Edge.CreatePublicAddressPool(ctx, &mv1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "pub",
		PublicAddressPool: &mv1.PublicAddressPool{Cidrs: []string{"203.0.113.0/29"}}}))
	for _, p := range []struct{ id, ip, node, subnet string }{{"b1", "10.0.1.21", "nodes/n1", apitest.Subnet(a1)}, {"b2", "10.0.1.22", "nodes/n2", apitest.Subnet(a1)}} {
		api.Ok(c.Net.CreatePort(ctx, &mv1.CreatePortRequest{Parent: a1, PortId: p.id, Port: &mv1.Port{Subnet: p.subnet, FixedIps: []string{p.ip}, Node: p.node}}))
	}
	api.Ok(c.Net.UpdatePort(ctx, &mv1.UpdatePortRequest{Port: &mv1.Port{Name: apitest.Port2, Node: "nodes/n3"}, UpdateMask: mask("node")}))
	s.web = apitest.Must[*mv1.LoadBalancer](t)(c.LB.CreateLoadBalancer(ctx, &mv1.CreateLoadBalancerRequest{Parent: a1, LoadBalancerId: "web",
		LoadBalancer: &mv1.LoadBalancer{Vpc: apitest.VPC(a1), Pool: "publicAddressPools/pub", Listeners: []*mv1.LoadBalancerListener{{
			Name: "http", Protocol: "tcp", Port: 80, HealthCheck: &mv1.LoadBalancerHealthCheck{Protocol: "http", IntervalMs: 500},
			Backends: []*mv1.LoadBalancerBackend{{Port: a1 + "/ports/b1", TargetPort: 8080}, {Port: a1 + "/ports/b2", TargetPort: 8080}},
		}}}}))
	s.db = apitest.Must[*mv1.LoadBalancer](t)(c.LB.CreateLoadBalancer(ctx, &mv1.CreateLoadBalancerRequest{Parent: a1, LoadBalancerId: "db",
		LoadBalancer: &mv1.LoadBalancer{Vpc: apitest.VPC2, Scheme: "internal", Subnet: apitest.Subnet2, Listeners: []*mv1.LoadBalancerListener{{
			Name: "pg", Protocol: "tcp", Port: 5432, Backends: []*mv1.LoadBalancerBackend{{Port: apitest.Port2}},
		}}}}))
	s.converge(t)
	return s
}

func (s *lbSetup) converge(t *testing.T) {
	t.Helper()
	rev := readRevision(t, s.api.Store)
	for id, a := range s.agents {
		if a.Connected() {
			converge(t, s.e, a, id, rev)
		}
	}
}

// readRevision is the store revision as a read transaction sees it
// (Store.Revision may lag a commit that reads already see).
func readRevision(t *testing.T, st store.Store) int64 {
	t.Helper()
	var rev int64
	if err := st.View(testCtx(t), func(tx store.ReadTx) error { rev = tx.Revision(); return nil }); err != nil {
		t.Fatal(err)
	}
	return rev
}

func (s *lbSetup) webKey() string { return fmt.Sprintf("lb/%d", s.web.Listeners[0].Id) }

// healthy returns the healthy flags of web's backends as node sees them.
func (s *lbSetup) healthy(node string) []bool {
	var out []bool
	for _, b := range s.agents[node].State()[s.webKey()].GetLbService().GetBackends() {
		out = append(out, b.GetHealthy())
	}
	return out
}

func (s *lbSetup) report(t *testing.T, node string, backend int, healthy bool, reason string) {
	t.Helper()
	l := s.web.Listeners[0]
	err := s.agents[node].Report(&agentv1.NodeReport{BackendHealth: []*agentv1.BackendHealth{{
		ServiceId: l.Id, BackendId: l.Backends[backend].Id, Healthy: healthy, SinceUnix: 1_700_000_000, LastError: reason}}})
	if err != nil {
		t.Fatal(err)
	}
}

func (s *lbSetup) status(t *testing.T) *mv1.LoadBalancerListenerStatus {
	t.Helper()
	lb := apitest.Must[*mv1.LoadBalancer](t)(s.api.User.LB.GetLoadBalancer(apitest.Ctx(t), &mv1.GetLoadBalancerRequest{Name: s.web.Name}))
	return lb.Status.Listeners[0]
}

func lbKeys(a *agenttest.Agent) []string {
	var out []string
	for k := range a.State() {
		if strings.HasPrefix(k, "lb/") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// TestLbPlacementOnAgents: which nodes receive which LbService, through
// the API, the model and the agent protocol.
func TestLbPlacementOnAgents(t *testing.T) {
	s := newLbSetup(t, time.Minute)
	web, db := s.webKey(), fmt.Sprintf("lb/%d", s.db.Listeners[0].Id)
	for node, want := range map[string][]string{
		"gw1": {web}, // north-south: every gateway
		"n1":  {web}, // hosts b1 (and a port of VPC v, which has no internal LB)
		"n2":  {web}, // hosts b2
		"n3":  {db},  // hosts p2, in VPC v2 (internal: every node with a port there)
	} {
		if got := lbKeys(s.agents[node]); !slices.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", node, got, want)
		}
	}
	svc := s.agents["gw1"].State()[web].GetLbService()
	if svc.GetVip() != s.web.Vip || svc.GetInternal() || svc.GetPoolId() == 0 || svc.GetMaglevSize() != 65537 || svc.GetHealthCheck().GetIntervalMs() != 500 ||
		len(svc.GetBackends()) != 2 || svc.GetBackends()[0].GetNode() != "n1" || svc.GetBackends()[0].GetNodeIp() != "192.0.2.1" || svc.GetBackends()[0].GetPort() != 8080 {
		t.Fatalf("gateway's LbService: %v", svc)
	}
	if got := s.agents["n3"].State()[db].GetLbService(); !got.GetInternal() || got.GetVip() != s.db.Vip || !got.GetBackends()[0].GetHealthy() {
		t.Fatalf("internal LbService: %v", got)
	}
}

// TestLbHealthReportsReachAPIAndNodes: a node's report about its backend
// changes LbBackend.healthy on every holder and the API's status; repeated
// reports and reports about other nodes' backends write nothing; the
// latency from report to the gateway's delta is measured.
func TestLbHealthReportsReachAPIAndNodes(t *testing.T) {
	s := newLbSetup(t, time.Minute)
	ctx := apitest.Ctx(t)
	if st := s.status(t); st.Backends[0].State != "unknown" || st.Serving != 2 {
		t.Fatalf("before reports: %v", st)
	}
	// n2 says b2 is healthy: b1, still unknown, stops serving (it waits
	// for its first result now that a backend is known healthy).
	s.report(t, "n2", 1, true, "")
	waitFor(t, func() bool { return slices.Equal(s.healthy("gw1"), []bool{false, true}) })
	// n1 says b1 fails.
	s.report(t, "n1", 0, false, "GET /: connection refused")
	// The table does not change (b1 was out already): the API shows it.
	waitFor(t, func() bool { return s.status(t).Backends[0].State == "unhealthy" })
	for _, n := range []string{"gw1", "n1", "n2"} {
		if got := s.healthy(n); !slices.Equal(got, []bool{false, true}) {
			t.Fatalf("%s: healthy %v", n, got)
		}
	}
	st := s.status(t)
	if b := st.Backends[0]; b.State != "unhealthy" || b.Reason != "GET /: connection refused" || b.Serving || b.Since.AsTime().Unix() != 1_700_000_000 {
		t.Fatalf("b1 status %v", b)
	}
	if b := st.Backends[1]; b.State != "healthy" || !b.Serving || st.Serving != 1 {
		t.Fatalf("b2 status %v", st)
	}
	// The same state again, with another reason: nothing written. (The
	// revision as a read transaction sees it: Store.Revision may lag a
	// commit that reads already see.)
	rev := readRevision(t, s.api.Store)
	s.report(t, "n1", 0, false, "GET /: timeout")
	s.report(t, "n1", 0, false, "GET /: connection refused")
	// A node reporting on a backend it does not host: ignored.
	s.report(t, "n2", 0, true, "")
	// Flush: a report that does change something, after the others on the
	// same streams.
	s.report(t, "n1", 0, true, "")
	waitFor(t, func() bool { return slices.Equal(s.healthy("gw1"), []bool{true, true}) })
	if got := s.api.Store.Revision(); got != rev+1 {
		ch, _ := s.api.Store.Watch(ctx, "", rev)
		for resp := range ch {
			for _, ev := range resp.Events {
				t.Logf("write at %d: %v %s %s", resp.Revision, ev.Type, ev.KV.Key, ev.KV.Value)
			}
			if resp.Revision >= got {
				break
			}
		}
		t.Fatalf("store revision %d -> %d: want exactly one write (the real change)", rev, got)
	}

	// Latency: report -> the gateway's agent applies the delta.
	var lat []time.Duration
	for i := range 30 {
		want := i%2 == 0 // b1: unhealthy on even steps
		flip := make(chan struct{}, 1)
		s.agents["gw1"].SetOnResponse(func(r *agentv1.SyncResponse) {
			for _, o := range r.GetUpserts() {
				if o.GetKey() == s.webKey() && o.GetLbService().GetBackends()[0].GetHealthy() != want {
					select {
					case flip <- struct{}{}:
					default:
					}
				}
			}
		})
		start := time.Now()
		s.report(t, "n1", 0, !want, "")
		select {
		case <-flip:
			lat = append(lat, time.Since(start))
		case <-ctx.Done():
			t.Fatalf("step %d: no delta", i)
		}
	}
	s.agents["gw1"].SetOnResponse(nil)
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("report -> LbBackend.healthy delta at the gateway: p50 %v, p99 %v, max %v (%d flips)", p50, p99, lat[len(lat)-1], len(lat))
	// Baseline in the same run: an intent change (b2's weight through the
	// API) to the same gateway, the path every other change takes.
	var base []time.Duration
	for i := range 10 {
		weight := uint32(2 + i%2)
		got := make(chan struct{}, 1)
		s.agents["gw1"].SetOnResponse(func(r *agentv1.SyncResponse) {
			for _, o := range r.GetUpserts() {
				if o.GetKey() == s.webKey() && o.GetLbService().GetBackends()[1].GetWeight() == weight {
					select {
					case got <- struct{}{}:
					default:
					}
				}
			}
		})
		lb := apitest.Must[*mv1.LoadBalancer](t)(s.api.User.LB.GetLoadBalancer(ctx, &mv1.GetLoadBalancerRequest{Name: s.web.Name}))
		lb.Listeners[0].Backends[1].Weight = &weight
		start := time.Now()
		s.api.Ok(s.api.User.LB.UpdateLoadBalancer(ctx, &mv1.UpdateLoadBalancerRequest{LoadBalancer: lb, UpdateMask: mask("listeners")}))
		select {
		case <-got:
			base = append(base, time.Since(start))
		case <-ctx.Done():
			t.Fatalf("weight step %d: no delta", i)
		}
	}
	s.agents["gw1"].SetOnResponse(nil)
	slices.Sort(base)
	t.Logf("baseline, API weight change -> delta at the gateway: p50 %v, max %v (%d changes); health/intent p50 ratio %.2f",
		base[len(base)/2], base[len(base)-1], len(base), float64(p50)/float64(base[len(base)/2]))
	// The target is "well under 100 ms": asserted on the median, which
	// holds on a loaded machine too (~40 ms at load 22 on 2 vCPUs, ~10 ms
	// at load 15), while single fsyncs of the store can then take hundreds
	// of milliseconds; the bound on the maximum only catches a path that
	// waits for something (a timer, a poll) instead of reacting.
	if p50 > 50*time.Millisecond || lat[len(lat)-1] > time.Second {
		t.Fatalf("report -> distribution p50 %v (want <= 50ms), max %v (want <= 1s)", p50, lat[len(lat)-1])
	}
}

// TestLbBackendNodeAway: a node hosting a backend whose agent stays away
// past the grace period is marked down: its backend turns unhealthy on
// every holder and in the API, and healthy again when it is back.
func TestLbBackendNodeAway(t *testing.T) {
	s := newLbSetup(t, 100*time.Millisecond)
	ctx := testCtx(t)
	s.report(t, "n1", 0, true, "")
	s.report(t, "n2", 1, true, "")
	// Both unknown serve too: wait for the reports themselves to land,
	// and for every agent to have the result.
	waitFor(t, func() bool {
		st := s.status(t)
		return st.Backends[0].State == "healthy" && st.Backends[1].State == "healthy"
	})
	s.converge(t)
	if got := s.healthy("gw1"); !slices.Equal(got, []bool{true, true}) {
		t.Fatalf("gw1 healthy %v after both reports", got)
	}
	start := time.Now()
	s.agents["n2"].Disconnect()
	waitFor(t, func() bool {
		return slices.Equal(s.healthy("gw1"), []bool{true, false}) && slices.Equal(s.healthy("n1"), []bool{true, false})
	})
	t.Logf("b2 out of the tables %v after n2's agent left (grace 100ms)", time.Since(start).Round(time.Millisecond))
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Fatalf("out after %v, before the grace period", took)
	}
	if b := s.status(t).Backends[1]; b.State != "unhealthy" || !strings.Contains(b.Reason, "n2") {
		t.Fatalf("b2 status while n2 is away: %v", b)
	}
	if err := s.agents["n2"].Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return slices.Equal(s.healthy("gw1"), []bool{true, true}) })
	if b := s.status(t).Backends[1]; b.State != "healthy" {
		t.Fatalf("b2 status after n2 came back: %v", b)
	}
	// A backend without health check on a node that goes away leaves the
	// table too: the node may be gone.
	s.agents["n3"].Disconnect()
	db := fmt.Sprintf("lb/%d", s.db.Listeners[0].Id)
	waitFor(t, func() bool {
		return downMarked(t, s.api.Store, "n3") && !s.e.d.NodeState("n3")[db].GetLbService().GetBackends()[0].GetHealthy()
	})
	// A backend added on a node whose agent never came: marked down after
	// the grace period too, not healthy forever.
	a1 := apitest.ProjectA1
	s.api.Ok(s.api.Admin.Node.CreateNode(ctx, &mv1.CreateNodeRequest{NodeId: "n4", Node: &mv1.Node{UnderlayIp: "192.0.2.4"}}))
	s.api.Ok(s.api.User.Net.CreatePort(ctx, &mv1.CreatePortRequest{Parent: a1, PortId: "b4", Port: &mv1.Port{
		Subnet: apitest.Subnet(a1), FixedIps: []string{"10.0.1.24"}, Node: "nodes/n4"}}))
	lb := apitest.Must[*mv1.LoadBalancer](t)(s.api.User.LB.GetLoadBalancer(ctx, &mv1.GetLoadBalancerRequest{Name: s.web.Name}))
	lb.Listeners[0].Backends = append(lb.Listeners[0].Backends, &mv1.LoadBalancerBackend{Port: a1 + "/ports/b4", TargetPort: 8080})
	s.api.Ok(s.api.User.LB.UpdateLoadBalancer(ctx, &mv1.UpdateLoadBalancerRequest{LoadBalancer: lb, UpdateMask: mask("listeners")}))
	waitFor(t, func() bool {
		b := s.status(t).Backends[2]
		return b.State == "unhealthy" && strings.Contains(b.Reason, "n4")
	})
}

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

// TestMaglevSizeConfig: a smaller prime table size reaches the LbServices;
// a size that is not prime is refused.
func TestMaglevSizeConfig(t *testing.T) {
	st, _ := openStore(t)
	if _, err := New(Config{Store: st, Logger: quiet(), MaglevSize: 65536}); err == nil || !strings.Contains(err.Error(), "not prime") {
		t.Fatalf("non-prime size: %v", err)
	}
	d, err := New(Config{Store: st, Logger: quiet(), MaglevSize: 251})
	if err != nil {
		t.Fatal(err)
	}
	write(t, st, vpc(vpcA, 1), node("n1", "192.0.2.1"), &mv1.LoadBalancer{Name: proj + "/loadBalancers/l", Id: 1, Vpc: vpcA, Scheme: "internal",
		Vip: "10.0.1.100", Listeners: []*mv1.LoadBalancerListener{{Id: 7, Name: "x", Protocol: "tcp", Port: 80}}})
	if err := d.reload(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if got := d.model.Object("lb/7").GetLbService().GetMaglevSize(); got != 251 {
		t.Fatalf("maglev size %d, want 251", got)
	}
}
