package apiserver_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

const lbName = a1 + "/loadBalancers/web"

// lbEnv is edgeEnv plus three backend ports in a1's VPC v: b1 (10.0.1.21,
// on n1), b2 (10.0.1.22, on n2), b3 (10.0.1.23, unbound).
func lbEnv(t *testing.T) *apitest.Env {
	t.Helper()
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	for i, node := range []string{apitest.Node1, apitest.Node2, ""} {
		id := []string{"b1", "b2", "b3"}[i]
		e.Ok(e.User.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: id, Port: &v1.Port{
			Subnet: apitest.Subnet(a1), FixedIps: []string{[]string{"10.0.1.21", "10.0.1.22", "10.0.1.23"}[i]}, Node: node}}))
	}
	return e
}

func backendPort(id string) string { return a1 + "/ports/" + id }

// okLB is a valid internet-facing load balancer: http on 80 to b1, b2 (by
// address) and b3 with an HTTP check, dns on udp/53 to b1.
func okLB() *v1.LoadBalancer {
	return &v1.LoadBalancer{Vpc: apitest.VPC(a1), Pool: poolName, Listeners: []*v1.LoadBalancerListener{
		{Name: "http", Protocol: "TCP", Port: 80, HealthCheck: &v1.LoadBalancerHealthCheck{Protocol: "http", Path: "/healthz"},
			Backends: []*v1.LoadBalancerBackend{
				{Port: backendPort("b1"), TargetPort: 8080},
				{Address: "10.0.1.22", TargetPort: 8080, Weight: proto.Uint32(3)},
				{Port: backendPort("b3"), TargetPort: 8080},
			}},
		{Name: "dns", Protocol: "udp", Port: 53, SourceIpPersistence: true, Backends: []*v1.LoadBalancerBackend{{Port: backendPort("b1")}}},
	}}
}

func createLB(ctx context.Context, c *apitest.Client, id string, lb *v1.LoadBalancer) (*v1.LoadBalancer, error) {
	return c.LB.CreateLoadBalancer(ctx, &v1.CreateLoadBalancerRequest{Parent: a1, LoadBalancerId: id, LoadBalancer: lb})
}

func lbCall(mod func(*v1.LoadBalancer)) call {
	lb := okLB()
	mod(lb)
	return func(ctx context.Context, c *apitest.Client) error { _, err := createLB(ctx, c, "x", lb); return err }
}

func poolAllocated(t *testing.T, e *apitest.Env) uint64 {
	t.Helper()
	p := apitest.Must[*v1.PublicAddressPool](t)(e.User.Edge.GetPublicAddressPool(apitest.Ctx(t), &v1.GetPublicAddressPoolRequest{Name: poolName}))
	return p.GetStatus().GetAllocated()
}

func TestLoadBalancerLifecycle(t *testing.T) {
	e := lbEnv(t)
	ctx := apitest.Ctx(t)
	lb := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "web", okLB()))
	if lb.Id == 0 || lb.Scheme != "internet-facing" || (lb.Vip != "203.0.113.1" && lb.Vip != "203.0.113.2") {
		t.Fatalf("created: %v", lb)
	}
	if got := poolAllocated(t, e); got != 1 {
		t.Fatalf("pool allocated %d, want 1", got)
	}
	http, dns := lb.Listeners[0], lb.Listeners[1]
	if http.Id == 0 || dns.Id == 0 || http.Id == dns.Id || http.Protocol != "tcp" {
		t.Fatalf("listeners: %v", lb.Listeners)
	}
	// Defaults and resolution: the address-only backend is b2; weights
	// default to 1; target port defaults to the listener's.
	b := http.Backends
	if b[1].Port != backendPort("b2") || b[1].Address != "10.0.1.22" || b[0].Address != "10.0.1.21" || b[0].GetWeight() != 1 || b[1].GetWeight() != 3 {
		t.Fatalf("backends: %v", b)
	}
	if dns.Backends[0].TargetPort != 53 {
		t.Fatalf("dns target port %d", dns.Backends[0].TargetPort)
	}
	hc := http.HealthCheck
	if hc.IntervalMs != 2000 || hc.TimeoutMs != 1000 || hc.HealthyThreshold != 2 || hc.UnhealthyThreshold != 2 || hc.Path != "/healthz" {
		t.Fatalf("health check defaults: %v", hc)
	}
	// Status without reports: unknown (serving, none known healthy),
	// unbound b3; dns has no check: healthy.
	st := lb.Status.Listeners
	states := func(ls *v1.LoadBalancerListenerStatus) []string {
		var out []string
		for _, b := range ls.Backends {
			out = append(out, b.State)
		}
		return out
	}
	if got := states(st[0]); !slices.Equal(got, []string{"unknown", "unknown", "unbound"}) || st[0].Serving != 2 {
		t.Fatalf("http status %v", st[0])
	}
	if got := states(st[1]); !slices.Equal(got, []string{"healthy"}) || st[1].Serving != 1 {
		t.Fatalf("dns status %v", st[1])
	}
	// Get and List agree.
	got := apitest.Must[*v1.LoadBalancer](t)(e.User.LB.GetLoadBalancer(ctx, &v1.GetLoadBalancerRequest{Name: lbName}))
	if !proto.Equal(got, lb) {
		t.Fatalf("get %v\nwant %v", got, lb)
	}
	l := apitest.Must[*v1.ListLoadBalancersResponse](t)(e.User.LB.ListLoadBalancers(ctx, &v1.ListLoadBalancersRequest{Parent: a1}))
	if len(l.LoadBalancers) != 1 || !proto.Equal(l.LoadBalancers[0], lb) {
		t.Fatalf("list %v", l)
	}
	// Echoing a read back changes nothing: no revision, no audit record.
	before := e.State()
	e.Ok(e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: got}))
	if after := e.State(); after != before {
		t.Fatalf("echoed update wrote: %+v -> %+v", before, after)
	}
	// Update: drop b3, drain b2, re-weight b1, add a listener. Kept IDs stay.
	upd := proto.Clone(got).(*v1.LoadBalancer)
	upd.Listeners[0].Backends = upd.Listeners[0].Backends[:2]
	upd.Listeners[0].Backends[0].Weight = proto.Uint32(7)
	upd.Listeners[0].Backends[1].Draining = true
	upd.Listeners = append(upd.Listeners, &v1.LoadBalancerListener{Name: "https", Protocol: "tcp", Port: 443,
		Backends: []*v1.LoadBalancerBackend{{Port: backendPort("b1")}, {Port: backendPort("b2"), Address: "10.0.1.22"}}})
	lb2 := apitest.Must[*v1.LoadBalancer](t)(e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: upd, UpdateMask: mask("listeners")}))
	if lb2.Listeners[0].Id != http.Id || lb2.Listeners[0].Backends[0].Id != b[0].Id || lb2.Listeners[0].Backends[1].Id != b[1].Id ||
		lb2.Listeners[1].Id != dns.Id || lb2.Vip != lb.Vip {
		t.Fatalf("IDs changed across the update:\n%v\n%v", lb, lb2)
	}
	https := lb2.Listeners[2]
	if https.Id == 0 || https.Id == http.Id || https.Id == dns.Id || https.Backends[0].Id == https.Backends[1].Id ||
		slices.Contains([]uint32{b[0].Id, b[1].Id, b[2].Id}, https.Backends[0].Id) {
		t.Fatalf("new listener IDs: %v", https)
	}
	if s := lb2.Status.Listeners[0].Backends[1]; s.State != "draining" || s.Serving {
		t.Fatalf("drained backend status %v", s)
	}
	// Listener IDs are unique across load balancers too.
	other := okLB()
	other.Listeners = other.Listeners[1:]
	lb3 := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "other", other))
	if id := lb3.Listeners[0].Id; id == http.Id || id == dns.Id || id == https.Id {
		t.Fatalf("listener ID %d reused", id)
	}
	// The pool is now full: a third internet-facing load balancer is
	// RESOURCE_EXHAUSTED and changes nothing.
	before = e.State()
	_, err := createLB(ctx, e.User, "third", okLB())
	apitest.WantCode(t, err, codes.ResourceExhausted, "")
	if after := e.State(); after != before {
		t.Fatalf("exhausted create changed state")
	}
	// Delete releases the VIP: the next one gets it.
	e.Ok(e.User.LB.DeleteLoadBalancer(ctx, &v1.DeleteLoadBalancerRequest{Name: lbName}))
	if got := poolAllocated(t, e); got != 1 {
		t.Fatalf("pool allocated after delete %d, want 1", got)
	}
	lb4 := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "third", okLB()))
	if lb4.Vip != lb.Vip {
		t.Fatalf("freed VIP %s not reused: got %s", lb.Vip, lb4.Vip)
	}
	// Audit: every mutation recorded.
	recs := apitest.Must[*v1.ListAuditRecordsResponse](t)(e.Admin.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Project: a1, PageSize: 1000}))
	var methods []string
	for _, r := range recs.Records {
		if strings.Contains(r.Method, "LoadBalancer") {
			methods = append(methods, r.Method)
		}
	}
	if want := []string{"CreateLoadBalancer", "UpdateLoadBalancer", "CreateLoadBalancer", "DeleteLoadBalancer", "CreateLoadBalancer"}; !slices.Equal(methods, want) {
		t.Fatalf("audit %v, want %v", methods, want)
	}
}

func TestInternalLoadBalancer(t *testing.T) {
	e := lbEnv(t)
	ctx := apitest.Ctx(t)
	in := okLB()
	in.Pool, in.Scheme, in.Subnet = "", "internal", apitest.Subnet(a1)
	lb := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "int", in))
	if !strings.HasPrefix(lb.Vip, "10.0.1.") || slices.Contains([]string{"10.0.1.1", "10.0.1.10", "10.0.1.21", "10.0.1.22", "10.0.1.23"}, lb.Vip) {
		t.Fatalf("internal VIP %s", lb.Vip)
	}
	// The VIP is held: a port cannot take it, and it is not a backend address.
	before := e.State()
	_, err := e.User.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: "thief", Port: &v1.Port{Subnet: apitest.Subnet(a1), FixedIps: []string{lb.Vip}}})
	apitest.WantCode(t, err, codes.InvalidArgument, "port.fixed_ips[0]")
	_, err = e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: &v1.LoadBalancer{Name: lb.Name,
		Listeners: []*v1.LoadBalancerListener{{Name: "x", Protocol: "tcp", Port: 1, Backends: []*v1.LoadBalancerBackend{{Address: lb.Vip}}}}}, UpdateMask: mask("listeners")})
	apitest.WantCode(t, err, codes.InvalidArgument, "load_balancer.listeners[0].backends[0].address")
	if after := e.State(); after != before {
		t.Fatalf("refused requests changed state")
	}
	// A requested VIP.
	in2 := proto.Clone(in).(*v1.LoadBalancer)
	in2.Vip = "10.0.1.200"
	if got := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "int2", in2)); got.Vip != "10.0.1.200" {
		t.Fatalf("requested VIP: %s", got.Vip)
	}
	// Delete releases it: a port can have it now.
	e.Ok(e.User.LB.DeleteLoadBalancer(ctx, &v1.DeleteLoadBalancerRequest{Name: a1 + "/loadBalancers/int2"}))
	e.Ok(e.User.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: "heir", Port: &v1.Port{Subnet: apitest.Subnet(a1), FixedIps: []string{"10.0.1.200"}}}))
}

// TestLoadBalancerBackendsStayPut: a port used as a backend is neither
// deleted nor stripped of the backend's address; removing the backend
// first lets both happen.
func TestLoadBalancerBackendsStayPut(t *testing.T) {
	e := lbEnv(t)
	ctx := apitest.Ctx(t)
	e.Ok(e.User.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: backendPort("b3"), SecondaryIps: []string{"10.0.1.50"}}, UpdateMask: mask("secondary_ips")}))
	lb := okLB()
	lb.Listeners[0].Backends[2].Address = "10.0.1.50"
	created := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "web", lb))
	before := e.State()
	_, err := e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: backendPort("b1")})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
	if !strings.Contains(err.Error(), lbName) {
		t.Fatalf("refusal does not name the load balancer: %v", err)
	}
	_, err = e.User.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: backendPort("b3")}, UpdateMask: mask("secondary_ips")})
	apitest.WantCode(t, err, codes.InvalidArgument, "port.secondary_ips")
	if after := e.State(); after != before {
		t.Fatalf("refused requests changed state")
	}
	upd := proto.Clone(created).(*v1.LoadBalancer)
	upd.Listeners[0].Backends = upd.Listeners[0].Backends[1:2]
	upd.Listeners = upd.Listeners[:1]
	e.Ok(e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: upd, UpdateMask: mask("listeners")}))
	e.Ok(e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: backendPort("b1")}))
	e.Ok(e.User.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: backendPort("b3")}, UpdateMask: mask("secondary_ips")}))
}

// TestLoadBalancerStatusShowsHealth: health records (as the distributor
// writes them) and node-down markers show in the status; records of
// removed backends go with them.
func TestLoadBalancerStatusShowsHealth(t *testing.T) {
	e := lbEnv(t)
	ctx := apitest.Ctx(t)
	lb := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "web", okLB()))
	http := lb.Listeners[0]
	since := time.Unix(1700000000, 0)
	write := func(fn func(tx store.Tx) error) {
		t.Helper()
		if _, err := e.Store.Update(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	write(func(tx store.Tx) error {
		if err := tx.Put(resource.LbHealthKey(http.Id, http.Backends[0].Id), resource.LbHealth{Node: "n1", Healthy: false, SinceUnix: since.Unix(), Error: "connect: connection refused"}.Encode()); err != nil {
			return err
		}
		return tx.Put(resource.LbHealthKey(http.Id, http.Backends[1].Id), resource.LbHealth{Node: "n2", Healthy: true, SinceUnix: since.Unix()}.Encode())
	})
	get := func() *v1.LoadBalancerListenerStatus {
		return apitest.Must[*v1.LoadBalancer](t)(e.User.LB.GetLoadBalancer(ctx, &v1.GetLoadBalancerRequest{Name: lb.Name})).Status.Listeners[0]
	}
	st := get()
	b0, b1 := st.Backends[0], st.Backends[1]
	if b0.State != "unhealthy" || b0.Reason != "connect: connection refused" || b0.Serving || !b0.Since.AsTime().Equal(since) || b0.Node != apitest.Node1 {
		t.Fatalf("b1 status %v", b0)
	}
	if b1.State != "healthy" || !b1.Serving || st.Serving != 1 {
		t.Fatalf("b2 status %v (serving %d)", b1, st.Serving)
	}
	// n2's agent away past the grace period: its backend is unhealthy.
	write(func(tx store.Tx) error { return tx.Put(resource.NodeDownKey("n2"), nil) })
	if b := get().Backends[1]; b.State != "unhealthy" || b.Serving || !strings.Contains(b.Reason, "n2") {
		t.Fatalf("b2 on a down node: %v", b)
	}
	// Removing the backend removes its record.
	upd := proto.Clone(lb).(*v1.LoadBalancer)
	upd.Listeners[0].Backends = upd.Listeners[0].Backends[1:]
	e.Ok(e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: upd, UpdateMask: mask("listeners")}))
	err := e.Store.View(ctx, func(tx store.ReadTx) error {
		if _, ok, err := tx.Get(resource.LbHealthKey(http.Id, http.Backends[0].Id)); err != nil || ok {
			t.Errorf("record of the removed backend still there (err %v)", err)
		}
		if _, ok, err := tx.Get(resource.LbHealthKey(http.Id, http.Backends[1].Id)); err != nil || !ok {
			t.Errorf("record of a kept backend gone (err %v)", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Turning the check off drops the listener's records.
	upd = apitest.Must[*v1.LoadBalancer](t)(e.User.LB.GetLoadBalancer(ctx, &v1.GetLoadBalancerRequest{Name: lb.Name}))
	upd.Listeners[0].HealthCheck = nil
	e.Ok(e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: upd, UpdateMask: mask("listeners")}))
	if err := e.Store.View(ctx, func(tx store.ReadTx) error {
		if n, err := tx.Count(resource.LbHealthPrefix); err != nil || n != 0 {
			t.Errorf("%d health records left after the check was removed (err %v)", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.Ok(e.User.LB.DeleteLoadBalancer(ctx, &v1.DeleteLoadBalancerRequest{Name: lb.Name}))
	err = e.Store.View(ctx, func(tx store.ReadTx) error {
		n, err := tx.Count(resource.LbHealthPrefix)
		if n != 0 {
			t.Errorf("%d health records left after delete", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestLoadBalancerAuthzAndQuota(t *testing.T) {
	e := lbEnv(t)
	ctx := apitest.Ctx(t)
	apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "web", okLB()))
	before := e.State()
	// Another organisation's user neither sees nor creates.
	_, err := e.UserB.LB.GetLoadBalancer(ctx, &v1.GetLoadBalancerRequest{Name: lbName})
	apitest.WantCode(t, err, codes.PermissionDenied, "")
	_, err = createLB(ctx, e.UserB, "evil", okLB())
	apitest.WantCode(t, err, codes.PermissionDenied, "")
	_, err = e.UserB.LB.DeleteLoadBalancer(ctx, &v1.DeleteLoadBalancerRequest{Name: lbName})
	apitest.WantCode(t, err, codes.PermissionDenied, "")
	if after := e.State(); after != before {
		t.Fatalf("refused requests changed state")
	}
	// Quota: one load balancer, two listeners, two backends per listener.
	e.Ok(e.Admin.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: a1,
		Quota: &v1.Quota{LoadBalancers: 1, LoadBalancerListeners: 1, LoadBalancerBackends: 2}}, UpdateMask: mask("quota")}))
	before = e.State()
	in := okLB()
	in.Pool, in.Scheme, in.Subnet = "", "internal", apitest.Subnet(a1)
	_, err = createLB(ctx, e.User, "second", in)
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
	_, err = e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: &v1.LoadBalancer{Name: lbName, Listeners: okLB().Listeners}, UpdateMask: mask("listeners")})
	apitest.WantCode(t, err, codes.InvalidArgument, "load_balancer.listeners")
	_, err = e.User.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: &v1.LoadBalancer{Name: lbName, Listeners: okLB().Listeners[:1]}, UpdateMask: mask("listeners")})
	apitest.WantCode(t, err, codes.InvalidArgument, "load_balancer.listeners[0].backends")
	if after := e.State(); after != before {
		t.Fatalf("over-quota requests changed state")
	}
	_, err = e.Admin.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: a1,
		Quota: &v1.Quota{LoadBalancerBackends: 70000}}, UpdateMask: mask("quota")})
	apitest.WantCode(t, err, codes.InvalidArgument, "project.quota.load_balancer_backends")
	if after := e.State(); after != before {
		t.Fatalf("over-quota requests changed state")
	}
	p := apitest.Must[*v1.Project](t)(e.User.Project.GetProject(ctx, &v1.GetProjectRequest{Name: a1}))
	if p.Usage.LoadBalancers != 1 {
		t.Fatalf("usage %v", p.Usage)
	}
}

// TestLoadBalancerRejectedRequestsChangeNothing: every validation rule
// fails with INVALID_ARGUMENT naming its field and changes nothing.
func TestLoadBalancerRejectedRequestsChangeNothing(t *testing.T) {
	e := lbEnv(t)
	ctx := apitest.Ctx(t)
	lb := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "web", okLB()))
	l0 := func(mod func(*v1.LoadBalancerListener)) call {
		return lbCall(func(lb *v1.LoadBalancer) { mod(lb.Listeners[0]) })
	}
	b0 := func(mod func(*v1.LoadBalancerBackend)) call {
		return l0(func(l *v1.LoadBalancerListener) { mod(l.Backends[0]) })
	}
	hc := func(mod func(*v1.LoadBalancerHealthCheck)) call {
		return l0(func(l *v1.LoadBalancerListener) { mod(l.HealthCheck) })
	}
	internal := func(mod func(*v1.LoadBalancer)) call {
		return lbCall(func(lb *v1.LoadBalancer) { lb.Pool, lb.Scheme, lb.Subnet = "", "internal", apitest.Subnet(a1); mod(lb) })
	}
	const l = "load_balancer.listeners[0]"
	const b = l + ".backends[0]"
	cases := []rejectCase{
		invalidCase("vpc missing", lbCall(func(lb *v1.LoadBalancer) { lb.Vpc = "" }), "load_balancer.vpc"),
		invalidCase("vpc does not exist", lbCall(func(lb *v1.LoadBalancer) { lb.Vpc = a1 + "/vpcs/nope" }), "load_balancer.vpc"),
		invalidCase("vpc of another project", lbCall(func(lb *v1.LoadBalancer) { lb.Vpc = apitest.VPC(apitest.ProjectA2) }), "load_balancer.vpc"),
		invalidCase("scheme unknown", lbCall(func(lb *v1.LoadBalancer) { lb.Scheme = "public" }), "load_balancer.scheme"),
		invalidCase("internet-facing without pool", lbCall(func(lb *v1.LoadBalancer) { lb.Pool = "" }), "load_balancer.pool"),
		invalidCase("pool does not exist", lbCall(func(lb *v1.LoadBalancer) { lb.Pool = "publicAddressPools/nope" }), "load_balancer.pool"),
		invalidCase("internet-facing with subnet", lbCall(func(lb *v1.LoadBalancer) { lb.Subnet = apitest.Subnet(a1) }), "load_balancer.subnet"),
		invalidCase("vip outside the pool", lbCall(func(lb *v1.LoadBalancer) { lb.Vip = "198.51.100.7" }), "load_balancer.vip"),
		invalidCase("vip taken", lbCall(func(x *v1.LoadBalancer) { x.Vip = lb.Vip }), "load_balancer.vip"),
		invalidCase("vip IPv6", lbCall(func(lb *v1.LoadBalancer) { lb.Vip = "2001:db8:1::5" }), "load_balancer.vip"),
		invalidCase("vip malformed", lbCall(func(lb *v1.LoadBalancer) { lb.Vip = "vip" }), "load_balancer.vip"),
		invalidCase("vip from an IPv6-only pool", lbCall(func(lb *v1.LoadBalancer) { lb.Pool = "publicAddressPools/pub6" }), "load_balancer.pool"),
		invalidCase("internal without subnet", internal(func(lb *v1.LoadBalancer) { lb.Subnet = "" }), "load_balancer.subnet"),
		invalidCase("internal with pool", internal(func(lb *v1.LoadBalancer) { lb.Pool = poolName }), "load_balancer.pool"),
		invalidCase("internal subnet of another vpc", internal(func(lb *v1.LoadBalancer) { lb.Subnet = apitest.Subnet2 }), "load_balancer.subnet"),
		invalidCase("internal vip outside the subnet", internal(func(lb *v1.LoadBalancer) { lb.Vip = "10.0.2.5" }), "load_balancer.vip"),
		invalidCase("internal vip is a port's address", internal(func(lb *v1.LoadBalancer) { lb.Vip = apitest.PortIP }), "load_balancer.vip"),
		invalidCase("internal vip is the subnet gateway", internal(func(lb *v1.LoadBalancer) { lb.Vip = apitest.SubnetGW }), "load_balancer.vip"),
		invalidCase("listener name missing", l0(func(l *v1.LoadBalancerListener) { l.Name = "" }), l+".name"),
		invalidCase("listener name duplicated", lbCall(func(lb *v1.LoadBalancer) { lb.Listeners[1].Name = "http" }), "load_balancer.listeners[1].name"),
		invalidCase("listener protocol", l0(func(l *v1.LoadBalancerListener) { l.Protocol = "sctp" }), l+".protocol"),
		invalidCase("listener port 0", l0(func(l *v1.LoadBalancerListener) { l.Port = 0 }), l+".port"),
		invalidCase("listener port too large", l0(func(l *v1.LoadBalancerListener) { l.Port = 65536 }), l+".port"),
		invalidCase("listener port+protocol duplicated", lbCall(func(lb *v1.LoadBalancer) { lb.Listeners[1].Protocol, lb.Listeners[1].Port = "tcp", 80 }), "load_balancer.listeners[1].port"),
		invalidCase("backend without port or address", b0(func(b *v1.LoadBalancerBackend) { b.Port = "" }), b),
		invalidCase("backend port does not exist", b0(func(b *v1.LoadBalancerBackend) { b.Port = backendPort("nope") }), b+".port"),
		invalidCase("backend port of another project", b0(func(b *v1.LoadBalancerBackend) { b.Port = apitest.Port(apitest.ProjectA2) }), b+".port"),
		invalidCase("backend port of another vpc", b0(func(b *v1.LoadBalancerBackend) { b.Port = apitest.Port2 }), b+".port"),
		invalidCase("backend address not the port's", b0(func(b *v1.LoadBalancerBackend) { b.Address = "10.0.1.22" }), b+".address"),
		invalidCase("backend address of no port", b0(func(b *v1.LoadBalancerBackend) { b.Port, b.Address = "", "10.0.1.99" }), b+".address"),
		invalidCase("backend address outside the vpc", b0(func(b *v1.LoadBalancerBackend) { b.Port, b.Address = "", "192.168.1.1" }), b+".address"),
		invalidCase("backend address malformed", b0(func(b *v1.LoadBalancerBackend) { b.Address = "ten" }), b+".address"),
		invalidCase("backend address IPv6", b0(func(b *v1.LoadBalancerBackend) { b.Address = "fd00::1" }), b+".address"),
		invalidCase("backend weight 0", b0(func(b *v1.LoadBalancerBackend) { b.Weight = proto.Uint32(0) }), b+".weight"),
		invalidCase("backend weight 257", b0(func(b *v1.LoadBalancerBackend) { b.Weight = proto.Uint32(257) }), b+".weight"),
		invalidCase("backend target port too large", b0(func(b *v1.LoadBalancerBackend) { b.TargetPort = 70000 }), b+".target_port"),
		invalidCase("backend duplicated", l0(func(l *v1.LoadBalancerListener) { l.Backends[1] = proto.Clone(l.Backends[0]).(*v1.LoadBalancerBackend) }), l+".backends[1]"),
		invalidCase("health check protocol", hc(func(h *v1.LoadBalancerHealthCheck) { h.Protocol = "icmp" }), l+".health_check.protocol"),
		invalidCase("health check path relative", hc(func(h *v1.LoadBalancerHealthCheck) { h.Path = "healthz" }), l+".health_check.path"),
		invalidCase("health check path on tcp", hc(func(h *v1.LoadBalancerHealthCheck) { h.Protocol = "tcp" }), l+".health_check.path"),
		invalidCase("health check port too large", hc(func(h *v1.LoadBalancerHealthCheck) { h.Port = 65536 }), l+".health_check.port"),
		invalidCase("health check interval too short", hc(func(h *v1.LoadBalancerHealthCheck) { h.IntervalMs = 99 }), l+".health_check.interval_ms"),
		invalidCase("health check interval too long", hc(func(h *v1.LoadBalancerHealthCheck) { h.IntervalMs = 300001 }), l+".health_check.interval_ms"),
		invalidCase("health check timeout above interval", hc(func(h *v1.LoadBalancerHealthCheck) { h.IntervalMs, h.TimeoutMs = 1000, 1001 }), l+".health_check.timeout_ms"),
		invalidCase("health check timeout too short", hc(func(h *v1.LoadBalancerHealthCheck) { h.TimeoutMs = 10 }), l+".health_check.timeout_ms"),
		invalidCase("health check healthy threshold 11", hc(func(h *v1.LoadBalancerHealthCheck) { h.HealthyThreshold = 11 }), l+".health_check.healthy_threshold"),
		invalidCase("health check unhealthy threshold 11", hc(func(h *v1.LoadBalancerHealthCheck) { h.UnhealthyThreshold = 11 }), l+".health_check.unhealthy_threshold"),
		invalidCase("update of immutable vip", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: &v1.LoadBalancer{Name: lb.Name, Vip: "203.0.113.9"}, UpdateMask: mask("vip")})
			return err
		}, "update_mask"),
		invalidCase("update with a bad backend", func(ctx context.Context, c *apitest.Client) error {
			upd := proto.Clone(lb).(*v1.LoadBalancer)
			upd.Listeners[0].Backends[0].Weight = proto.Uint32(0)
			_, err := c.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{LoadBalancer: upd, UpdateMask: mask("listeners")})
			return err
		}, b+".weight"),
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.State()
			err := tc.call(apitest.Ctx(t), e.User)
			apitest.WantCode(t, err, tc.code, tc.field)
			if after := e.State(); after != before {
				t.Fatalf("rejected request changed the store: %+v -> %+v", before, after)
			}
		})
	}
	t.Logf("%d rejected load-balancer requests changed nothing", len(cases))
	if got := poolAllocated(t, e); got != 1 {
		t.Fatalf("pool allocated %d after the rejections, want 1", got)
	}
}

// TestLoadBalancerWatch: load balancers stream to project members who
// ask for the kind, and not to other organisations.
func TestLoadBalancerWatch(t *testing.T) {
	e := lbEnv(t)
	ctx := apitest.Ctx(t)
	from := e.Store.Revision()
	w, err := e.User.Watch.Watch(ctx, &v1.WatchRequest{Kinds: []string{"LoadBalancer"}, FromRevision: from})
	if err != nil {
		t.Fatal(err)
	}
	wb, err := e.UserB.Watch.Watch(ctx, &v1.WatchRequest{FromRevision: from})
	if err != nil {
		t.Fatal(err)
	}
	lb := apitest.Must[*v1.LoadBalancer](t)(createLB(ctx, e.User, "web", okLB()))
	ev, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.GetResource().GetLoadBalancer(); got.GetName() != lb.Name || got.GetVip() != lb.Vip || ev.Type != v1.EventType_PUT {
		t.Fatalf("watch event %v", ev)
	}
	// Another organisation's watch sees nothing of it: a project of its
	// own changing afterwards is the first thing it gets.
	e.Ok(e.Admin.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: apitest.ProjectB1, Description: "marker"}, UpdateMask: mask("description")}))
	evb, err := wb.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if evb.GetResource().GetProject().GetName() != apitest.ProjectB1 {
		t.Fatalf("other organisation saw %v", evb)
	}
}
