package distributor

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// TestAgentProtocol walks one agent through snapshot, live deltas, a
// disconnection with missed creates/updates/deletes, a resume from its last
// version (deltas, not a snapshot), and a controller restart (snapshot),
// checking after each step that it holds exactly the node's desired state.
func TestAgentProtocol(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	rev := fixture(t, st)
	e := startEnv(t, st, nil)

	a := agenttest.New(e.conn, "n1")
	if err := a.Register(ctx, "192.0.2.1", "compute"); err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	if s := a.Stats(); s.Snapshots != 1 || s.Deltas != 0 || !s.LastSnapshot {
		t.Fatalf("first sync: %+v, want one snapshot", s)
	}
	if len(a.State()) == 0 {
		t.Fatal("snapshot was empty")
	}

	// Live changes arrive as deltas.
	rev = write(t, st, sg(sgW, 1, vpcA, 80, 443, 8080), port(proj+"/ports/a3", 4, subA, "nodes/n2", "10.0.1.12", sgW))
	converge(t, e, a, "n1", rev)
	if s := a.Stats(); s.Snapshots != 1 || s.Deltas == 0 || s.LastSnapshot {
		t.Fatalf("live change: %+v, want deltas after the snapshot", s)
	}

	// Away: creates, updates and deletes, some of them in one transaction.
	a.Disconnect()
	away := a.Version()
	write(t, st, sg(sgD, 2, vpcA, 5432))
	write(t, st, port(proj+"/ports/a4", 5, subA, "nodes/n1", "10.0.1.13", sgW, sgD))                 // new local port, new group
	write(t, st, sg(sgW, 1, vpcA, 22))                                                               // rules replaced
	write(t, st, del(resource.KindPort, proj+"/ports/a2"), del(resource.KindPort, proj+"/ports/a3")) // n2 leaves VPC A
	write(t, st, subnet(subA, 1, "10.0.1.0/24", "", rt))                                             // ACL detached ...
	write(t, st, del(resource.KindNetworkAcl, acl))                                                  // ... and deleted
	rev = write(t, st, subnet(vpcA+"/subnets/s2", 4, "10.0.2.0/24", "", ""), node("n2", "192.0.2.22"))
	if err := e.d.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if s := e.d.Status("n1"); s.Connected || s.Applied != away || s.Desired <= away {
		t.Fatalf("while away: %+v, want disconnected, applied %d, desired ahead", s, away)
	}
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	if s := a.Stats(); s.Snapshots != 1 || s.LastSnapshot || s.LastFrom != away {
		t.Fatalf("resume: %+v, want a delta from version %d", s, away)
	}
	for _, gone := range []string{"port/2", "port/4", "acl/1", "node/n2"} {
		if _, ok := a.State()[gone]; ok {
			t.Errorf("after resume the agent still holds %s", gone)
		}
	}
	for _, added := range []string{"port/5", "sg/2", "subnet/4"} {
		if _, ok := a.State()[added]; !ok {
			t.Errorf("after resume the agent lacks %s", added)
		}
	}

	// Controller restart: the history is gone, so a snapshot.
	a.Disconnect()
	e.stop()
	if a.Err() != nil {
		t.Fatalf("agent stream error: %v", a.Err())
	}
	write(t, st, del(resource.KindPort, proj+"/ports/a4"))
	rev = write(t, st, port(proj+"/ports/a5", 6, vpcA+"/subnets/s2", "nodes/n1", "10.0.2.10"))
	e2 := startEnv(t, st, nil)
	a.Rebind(e2.conn)
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e2, a, "n1", rev)
	if s := a.Stats(); s.Snapshots != 2 || !s.LastSnapshot {
		t.Fatalf("after controller restart: %+v, want a second snapshot", s)
	}
	// And live deltas continue on the new controller.
	rev = write(t, st, sg(sgW, 1, vpcA, 22, 23))
	converge(t, e2, a, "n1", rev)
	if s := a.Stats(); s.LastSnapshot {
		t.Fatalf("after restart, live change: %+v, want a delta", s)
	}
}

// TestResumeAfterRestartWithoutChanges: an agent whose version equals the
// restarted controller's load revision resumes with an empty delta; the
// model is deterministic, so the state at that revision is the same.
func TestResumeAfterRestartWithoutChanges(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	rev := fixture(t, st)
	e := startEnv(t, st, nil)
	a := agenttest.New(e.conn, "n1")
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	a.Disconnect()
	e.stop()
	e2 := startEnv(t, st, nil)
	a.Rebind(e2.conn)
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e2, a, "n1", rev)
	if s := a.Stats(); s.Snapshots != 1 || s.LastSnapshot {
		t.Fatalf("%+v: want the resume to be a delta", s)
	}
}

// TestOnlyWhatItNeeds: each node gets the objects of the VPCs where it has
// ports, and nothing of the others.
func TestOnlyWhatItNeeds(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	rev := fixture(t, st)
	e := startEnv(t, st, nil)
	agents := map[string]*agenttest.Agent{}
	for _, n := range []string{"n1", "n3", "n4"} {
		agents[n] = agenttest.New(e.conn, n)
		if err := agents[n].Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		node string
		want []string
	}{
		// n1: all of VPC A (ports a1=1, a2=2), its group, n2 as a peer.
		{"n1", []string{"acl/1", "node/n2", "port/1", "port/2", "rt/1", "sg/1", "subnet/1", "vpc/1"}},
		// n3: VPC B only (port b1=3); nothing of VPC A, and no peers.
		{"n3", []string{"port/3", "sg/3", "subnet/2", "vpc/2"}},
		// n4 hosts no port: nothing.
		{"n4", []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.node, func(t *testing.T) {
			converge(t, e, agents[tc.node], tc.node, rev)
			if got := sortedKeys(agents[tc.node].State()); !slices.Equal(got, tc.want) {
				t.Errorf("%s holds %v, want %v", tc.node, got, tc.want)
			}
		})
	}
	// A change in VPC B reaches n3 but not n1 (n1's version does not move).
	before := agents["n1"].Version()
	rev = write(t, st, sg(sgB, 3, vpcB, 22, 2222))
	converge(t, e, agents["n3"], "n3", rev)
	if got := e.d.Status("n1").Desired; got != before {
		t.Errorf("n1's desired version moved from %d to %d on a VPC B change", before, got)
	}
}

// TestStatus: acks move the applied version, errors are reported per
// object, ports go BUILD -> ACTIVE, and sync lag is measured.
func TestStatus(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	rev := fixture(t, st)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e := startEnv(t, st, func(c *Config) { c.Now = clock.Now })
	a1 := &mv1.Port{Name: proj + "/ports/a1", Node: "nodes/n1"}

	if err := e.d.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	s := e.d.Status("n1")
	if s.Connected || s.Applied != 0 || s.Desired != uint64(rev) {
		t.Fatalf("before the agent: %+v, want disconnected, applied 0, desired %d", s, rev)
	}
	clock.Advance(3 * time.Second)
	if got := e.d.Status("n1").SyncLag; got != 3*time.Second {
		t.Errorf("sync lag before any ack = %v, want 3s", got)
	}
	if ps := e.d.PortStatus(a1); ps.State != mv1.PortState_PORT_STATE_BUILD || !strings.Contains(ps.Message, "not connected") {
		t.Errorf("port before the agent: %v", ps)
	}
	if ps := e.d.PortStatus(&mv1.Port{Name: a1.Name}); ps.State != mv1.PortState_PORT_STATE_DOWN {
		t.Errorf("unbound port: %v", ps)
	}

	a := agenttest.New(e.conn, "n1")
	if err := a.Register(ctx, "192.0.2.1"); err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	waitFor(t, func() bool { return e.d.Status("n1").Applied == a.Version() })
	s = e.d.Status("n1")
	if !s.Connected || s.Applied != s.Desired || s.SyncLag != 0 || len(s.Errors) != 0 || s.AgentVersion != "agenttest" {
		t.Fatalf("in sync: %+v", s)
	}
	if ps := e.d.PortStatus(a1); ps.State != mv1.PortState_PORT_STATE_ACTIVE || ps.AppliedVersion != s.Applied {
		t.Errorf("port after ack: %v", ps)
	}
	ns := e.d.NodeStatus("n1")
	if !ns.Connected || ns.DesiredVersion != s.Desired || ns.AppliedVersion != s.Applied || ns.LastSeen == nil {
		t.Errorf("NodeStatus: %v", ns)
	}

	// The agent fails to realize a new port: ERROR with its message.
	a.SetErrorFor(func(key string) string {
		if key == "port/7" {
			return "veth: no such namespace"
		}
		return ""
	})
	bad := port(proj+"/ports/bad", 7, subA, "nodes/n1", "10.0.1.77")
	rev = write(t, st, bad)
	converge(t, e, a, "n1", rev)
	waitFor(t, func() bool { return e.d.Status("n1").Applied == a.Version() })
	if ps := e.d.PortStatus(bad); ps.State != mv1.PortState_PORT_STATE_ERROR || ps.Message != "veth: no such namespace" {
		t.Errorf("failed port: %v", ps)
	}
	if errs := e.d.Status("n1").Errors; len(errs) != 1 || errs[0].GetKey() != "port/7" {
		t.Errorf("node errors: %v", errs)
	}
	if ps := e.d.PortStatus(a1); ps.State != mv1.PortState_PORT_STATE_ACTIVE {
		t.Errorf("healthy port next to a failed one: %v", ps)
	}

	// Disconnected while changes pile up: lag grows; it is 0 again after resume.
	a.Disconnect()
	rev = write(t, st, sg(sgW, 1, vpcA, 8443))
	if err := e.d.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	clock.Advance(5 * time.Second)
	s = e.d.Status("n1")
	if s.Connected || s.Applied >= s.Desired || s.SyncLag != 5*time.Second {
		t.Fatalf("disconnected with pending changes: %+v, want lag 5s", s)
	}
	var found bool
	for _, m := range e.d.Metrics() {
		if m.Node == "n1" {
			found = m.SyncLagSeconds == 5 && !m.Connected && m.Desired == s.Desired
		}
	}
	if !found {
		t.Errorf("Metrics() = %+v, want n1 with lag 5", e.d.Metrics())
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(e.d.Collectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var lag float64 = -1
	for _, mf := range mfs {
		if mf.GetName() == "meridian_agent_sync_lag_seconds" {
			for _, m := range mf.GetMetric() {
				if m.GetLabel()[0].GetValue() == "n1" {
					lag = m.GetGauge().GetValue()
				}
			}
		}
	}
	if lag != 5 {
		t.Errorf("meridian_agent_sync_lag_seconds{node=n1} = %v, want 5", lag)
	}
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	waitFor(t, func() bool { return e.d.Status("n1").Applied == a.Version() })
	if s := e.d.Status("n1"); s.SyncLag != 0 {
		t.Errorf("lag after resume = %v", s.SyncLag)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestRegister: the Node resource is created with what the agent reports,
// updated on re-registration keeping create_time, and bad requests name
// the field.
func TestRegister(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e := startEnv(t, st, func(c *Config) { c.Now = clock.Now })
	client := agentv1.NewAgentServiceClient(e.conn)

	read := func() (*mv1.Node, int64) {
		t.Helper()
		var n mv1.Node
		var mod int64
		err := st.View(ctx, func(tx store.ReadTx) error {
			kv, ok, err := tx.Get(resource.KindNode.Key("nodes/gw1"))
			if err != nil || !ok {
				t.Fatalf("node not stored: %v", err)
			}
			mod = kv.ModRevision
			return proto.Unmarshal(kv.Value, &n)
		})
		if err != nil {
			t.Fatal(err)
		}
		return &n, mod
	}

	resp, err := client.Register(ctx, &agentv1.RegisterRequest{Node: "gw1", Hostname: "gw1.dc1", UnderlayIp: "192.0.2.9",
		Roles: []string{"gateway", "compute", "gateway"}, Realization: "ovn"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetName() != "nodes/gw1" {
		t.Errorf("name = %q", resp.GetName())
	}
	n, rev1 := read()
	want := &mv1.Node{Name: "nodes/gw1", Hostname: "gw1.dc1", UnderlayIp: "192.0.2.9",
		Roles: []mv1.NodeRole{mv1.NodeRole_COMPUTE, mv1.NodeRole_GATEWAY}, Realization: mv1.Realization_OVN,
		CreateTime: n.GetCreateTime(), UpdateTime: n.GetUpdateTime()}
	if !proto.Equal(n, want) || !n.GetCreateTime().AsTime().Equal(clock.Now()) {
		t.Errorf("stored node %v, want %v", n, want)
	}

	// The same registration again writes nothing.
	clock.Advance(time.Minute)
	if _, err := client.Register(ctx, &agentv1.RegisterRequest{Node: "gw1", Hostname: "gw1.dc1", UnderlayIp: "192.0.2.9",
		Roles: []string{"compute", "gateway"}, Realization: "ovn"}); err != nil {
		t.Fatal(err)
	}
	if _, rev := read(); rev != rev1 {
		t.Errorf("identical re-registration wrote revision %d (was %d)", rev, rev1)
	}
	// A new address updates, keeping create_time and admin-set labels.
	write(t, st, &mv1.Node{Name: "nodes/gw1", Hostname: "gw1.dc1", UnderlayIp: "192.0.2.9", Labels: map[string]string{"rack": "r1"},
		Roles: want.Roles, Realization: mv1.Realization_OVN, CreateTime: n.GetCreateTime(), UpdateTime: n.GetUpdateTime()})
	if _, err := client.Register(ctx, &agentv1.RegisterRequest{Node: "gw1", Hostname: "gw1.dc1", UnderlayIp: "192.0.2.10"}); err != nil {
		t.Fatal(err)
	}
	n2, _ := read()
	if n2.GetUnderlayIp() != "192.0.2.10" || !proto.Equal(n2.GetCreateTime(), n.GetCreateTime()) ||
		!n2.GetUpdateTime().AsTime().Equal(clock.Now()) || n2.GetLabels()["rack"] != "r1" ||
		n2.GetRealization() != mv1.Realization_EBPF || !slices.Equal(n2.GetRoles(), []mv1.NodeRole{mv1.NodeRole_COMPUTE}) {
		t.Errorf("re-registered node %v", n2)
	}

	bad := []struct {
		name  string
		req   *agentv1.RegisterRequest
		field string
	}{
		{"bad id", &agentv1.RegisterRequest{Node: "Bad_ID", UnderlayIp: "192.0.2.1"}, "node"},
		{"bad ip", &agentv1.RegisterRequest{Node: "n9", UnderlayIp: "not-an-ip"}, "underlay_ip"},
		{"bad role", &agentv1.RegisterRequest{Node: "n9", UnderlayIp: "192.0.2.1", Roles: []string{"router"}}, "roles[0]"},
		{"bad realization", &agentv1.RegisterRequest{Node: "n9", UnderlayIp: "192.0.2.1", Realization: "dpdk"}, "realization"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := client.Register(ctx, tc.req)
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field+":") {
				t.Errorf("err = %v, want InvalidArgument naming %s", err, tc.field)
			}
		})
	}
}

// TestBurstIsOneDelta: many quick store changes reach a connected agent as
// few deltas, not one per revision.
func TestBurstIsOneDelta(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	rev := fixture(t, st)
	e := startEnv(t, st, func(c *Config) { c.BatchWindow = 300 * time.Millisecond })
	a := agenttest.New(e.conn, "n1")
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	before := a.Stats().Deltas
	const n = 20
	done := make(chan int64)
	go func() {
		var last int64
		for i := range n {
			last = write(t, st, sg(sgW, 1, vpcA, uint32(1000+i)))
		}
		done <- last
	}()
	rev = <-done
	converge(t, e, a, "n1", rev)
	if got := a.Stats().Deltas - before; got < 1 || got > n/4 {
		t.Errorf("%d revisions arrived as %d deltas, want a few", n, got)
	}
}

// TestTombstoneBound: when a node's remembered deletes exceed the bound,
// an agent older than the trimmed ones gets a snapshot and still converges.
func TestTombstoneBound(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	rev := fixture(t, st)
	e := startEnv(t, st, func(c *Config) { c.MaxTombstones = 4 })
	a := agenttest.New(e.conn, "n1")
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	var ports []any
	for i := range 10 {
		ports = append(ports, port(proj+"/ports/t"+string(rune('a'+i)), uint32(100+i), subA, "", "10.0.1.1"))
	}
	held := len(a.State())
	// The agent must hold the ports before it goes away: only then are
	// their deletes news to it. Disconnecting earlier races the
	// distributor, which may apply the creation and the deletes in one
	// batch, so the ports never exist for the node, nothing needs a
	// tombstone and a delta from the old version is right.
	converge(t, e, a, "n1", write(t, st, ports...))
	if got := len(a.State()); got != held+len(ports) {
		t.Fatalf("n1 holds %d objects after the ports were added, want %d", got, held+len(ports))
	}
	a.Disconnect()
	for i := range 10 {
		rev = write(t, st, del(resource.KindPort, proj+"/ports/t"+string(rune('a'+i))))
	}
	if err := e.d.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)
	if !a.Stats().LastSnapshot {
		t.Errorf("resume past trimmed tombstones: %+v, want a snapshot", a.Stats())
	}
}

// TestSyncRequiresHello: a stream that does not start with Hello is refused.
func TestSyncRequiresHello(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	e := startEnv(t, st, nil)
	stream, err := agentv1.NewAgentServiceClient(e.conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Ack{Ack: &agentv1.Ack{Version: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("err = %v, want InvalidArgument", err)
	}
}

// TestAuthorize: the default hook (SystemAdminOnly) guards both RPCs.
func TestAuthorize(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	e := startEnv(t, st, func(c *Config) { c.Authorize = nil })
	client := agentv1.NewAgentServiceClient(e.conn)
	if _, err := client.Register(ctx, &agentv1.RegisterRequest{Node: "n1", UnderlayIp: "192.0.2.1"}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Register without identity: %v, want Unauthenticated", err)
	}
	stream, err := client.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Sync without identity: %v, want Unauthenticated", err)
	}
	for _, tc := range []struct {
		role auth.Role
		want codes.Code
	}{{auth.RoleSystemAdmin, codes.OK}, {auth.RoleOrgAdmin, codes.PermissionDenied}, {auth.RoleUser, codes.PermissionDenied}} {
		err := SystemAdminOnly(auth.WithIdentity(ctx, &auth.Identity{Subject: "node-n1", Role: tc.role}))
		if status.Code(err) != tc.want {
			t.Errorf("SystemAdminOnly(%s) = %v, want %v", tc.role, err, tc.want)
		}
	}
}

// TestDeltaIsMinimal: a delta carries only what changed for the node, and a
// change that alters no compiled object sends nothing.
func TestDeltaIsMinimal(t *testing.T) {
	ctx := testCtx(t)
	st, _ := openStore(t)
	rev := fixture(t, st)
	e := startEnv(t, st, nil)
	a := agenttest.New(e.conn, "n1")
	var mu sync.Mutex
	var last *agentv1.SyncResponse
	a.SetOnResponse(func(r *agentv1.SyncResponse) { mu.Lock(); last = r; mu.Unlock() })
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)

	rev = write(t, st, sg(sgW, 1, vpcA, 80, 443, 9000))
	converge(t, e, a, "n1", rev)
	mu.Lock()
	got := last
	mu.Unlock()
	if got.GetSnapshot() || len(got.GetUpserts()) != 1 || got.GetUpserts()[0].GetKey() != "sg/1" || len(got.GetDeletes()) != 0 {
		t.Errorf("rule change delta = %v, want one upsert of sg/1", got)
	}

	v := a.Version()
	desc := vpc(vpcA, 1)
	desc.Description = "only words"
	rev = write(t, st, desc)
	if err := e.d.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if d := e.d.Status("n1").Desired; d != v {
		t.Errorf("description change moved n1's desired version %d -> %d", v, d)
	}

	ev, err := st.Update(ctx, func(tx store.Tx) error { return tx.Delete(resource.KindPort.Key(proj + "/ports/a2")) })
	if err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", ev)
	mu.Lock()
	got = last
	mu.Unlock()
	// a2 was n2's only port: the port goes, and n2 stops being a peer.
	if len(got.GetUpserts()) != 0 || !slices.Equal(got.GetDeletes(), []string{"node/n2", "port/2"}) {
		t.Errorf("port delete delta = %v, want deletes [node/n2 port/2]", got)
	}
}
