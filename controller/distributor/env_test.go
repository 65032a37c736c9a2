package distributor

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openStore opens a real bbolt store in a temporary directory.
func openStore(t *testing.T) (*store.Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meridian.db")
	st, err := store.Open(path, store.Options{Logger: quiet()})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st, path
}

// fakeClock is a settable clock for sync-lag assertions.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// env is one running controller: a distributor on the store, served over
// an in-memory gRPC connection.
type env struct {
	t      *testing.T
	st     store.Store
	d      *Distributor
	conn   *grpc.ClientConn
	srv    *grpc.Server
	cancel context.CancelFunc
	runErr chan error
	once   sync.Once
}

func startEnv(t *testing.T, st store.Store, mod func(*Config)) *env {
	t.Helper()
	cfg := Config{Store: st, Logger: quiet(), BatchWindow: 5 * time.Millisecond,
		Authorize: func(context.Context) error { return nil }} // no auth interceptor here
	if mod != nil {
		mod(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, st: st, d: d, cancel: cancel, runErr: make(chan error, 1)}
	go func() { e.runErr <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-e.runErr:
		t.Fatalf("distributor Run ended before ready: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("distributor not ready after 10s")
	}
	lis := bufconn.Listen(1 << 20)
	e.srv = grpc.NewServer()
	d.Register(e.srv)
	go func() { _ = e.srv.Serve(lis) }()
	e.conn, err = grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.stop)
	return e
}

// stop is a graceful controller shutdown: the distributor ends its streams,
// then the gRPC server drains.
func (e *env) stop() {
	e.once.Do(func() {
		e.cancel()
		if err := <-e.runErr; err != nil {
			e.t.Errorf("distributor Run: %v", err)
		}
		done := make(chan struct{})
		go func() { e.srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			e.t.Error("gRPC GracefulStop hung: a Sync stream did not end")
			e.srv.Stop()
		}
		_ = e.conn.Close()
	})
}

// write stores resources (and deletes names given as *deleteName) in one
// transaction and returns its revision.
type deleteKey string

func write(t *testing.T, st store.Store, items ...any) int64 {
	t.Helper()
	rev, err := st.Update(context.Background(), func(tx store.Tx) error {
		for _, it := range items {
			switch v := it.(type) {
			case deleteKey:
				if err := tx.Delete(string(v)); err != nil {
					return err
				}
			case proto.Message:
				k, ok := resource.KindOf(v)
				if !ok {
					t.Fatalf("no kind for %T", v)
				}
				b, err := proto.Marshal(v)
				if err != nil {
					return err
				}
				if err := tx.Put(k.Key(resource.Name(v)), b); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("store update: %v", err)
	}
	return rev
}

func del(k *resource.Kind, name string) deleteKey { return deleteKey(k.Key(name)) }

// expected computes a node's desired state independently: a fresh full
// model build from the store.
func expected(t *testing.T, st store.Store, node string) map[string]*agentv1.Object {
	t.Helper()
	m := model.New(quiet())
	if err := st.View(context.Background(), func(tx store.ReadTx) error { return m.Load(tx) }); err != nil {
		t.Fatal(err)
	}
	return m.NodeState(node)
}

// converge waits until the distributor has seen rev and the agent applied
// the node's resulting desired version, then checks the agent holds exactly
// what a fresh model computes for the node.
func converge(t *testing.T, e *env, a *agenttest.Agent, node string, rev int64) {
	t.Helper()
	ctx := testCtx(t)
	if err := e.d.WaitRevision(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	want := e.d.Status(node).Desired
	if err := a.WaitVersion(ctx, want); err != nil {
		t.Fatal(err)
	}
	if got := a.Version(); got != want {
		t.Fatalf("agent %s at version %d, desired %d", node, got, want)
	}
	sameState(t, node, a.State(), expected(t, e.st, node))
}

func sameState(t *testing.T, node string, got, want map[string]*agentv1.Object) {
	t.Helper()
	if g, w := sortedKeys(got), sortedKeys(want); !slices.Equal(g, w) {
		t.Fatalf("node %s holds %v, want %v", node, g, w)
	}
	for k, w := range want {
		if !proto.Equal(got[k], w) {
			t.Fatalf("node %s object %s:\n got %s\nwant %s", node, k, prototext.Format(got[k]), prototext.Format(w))
		}
	}
}

func sortedKeys(m map[string]*agentv1.Object) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Resource builders with the output-only IDs filled as the API server would.
const (
	proj = "projects/p1"
	vpcA = proj + "/vpcs/a"
	vpcB = proj + "/vpcs/b"
	subA = vpcA + "/subnets/s1"
	subB = vpcB + "/subnets/s1"
	sgW  = proj + "/securityGroups/web"
	sgD  = proj + "/securityGroups/db"
	sgB  = proj + "/securityGroups/b"
	acl  = proj + "/networkAcls/acl1"
	rt   = proj + "/routeTables/rt1"
)

func vpc(name string, id uint32) *mv1.Vpc {
	return &mv1.Vpc{Name: name, Id: id, Vni: 5000 + id, CidrBlocks: []string{"10.0.0.0/16"}}
}

func subnet(name string, id uint32, cidr, acl, rt string) *mv1.Subnet {
	return &mv1.Subnet{Name: name, Id: id, CidrBlock: cidr, NetworkAcl: acl, RouteTable: rt}
}

func port(name string, id uint32, sub, node, ip string, sgs ...string) *mv1.Port {
	return &mv1.Port{Name: name, Id: id, Subnet: sub, Node: node, FixedIps: []string{ip},
		MacAddress: "02:00:00:00:00:01", SecurityGroups: sgs}
}

func sg(name string, id uint32, vpc string, ports ...uint32) *mv1.SecurityGroup {
	g := &mv1.SecurityGroup{Name: name, Id: id, Vpc: vpc}
	for i, p := range ports {
		g.Rules = append(g.Rules, &mv1.SecurityGroupRule{Id: uint32(i + 1), Direction: mv1.Direction_INGRESS,
			Protocol: "tcp", PortRangeMin: p, PortRangeMax: p})
	}
	return g
}

func node(id, ip string) *mv1.Node { return &mv1.Node{Name: "nodes/" + id, UnderlayIp: ip} }

// fixture: VPC A with ports on n1 and n2, VPC B with a port on n3.
func fixture(t *testing.T, st store.Store) int64 {
	return write(t, st,
		node("n1", "192.0.2.1"), node("n2", "192.0.2.2"), node("n3", "192.0.2.3"),
		vpc(vpcA, 1), vpc(vpcB, 2),
		&mv1.NetworkAcl{Name: acl, Id: 1, Vpc: vpcA, Rules: []*mv1.NetworkAclRule{
			{Id: 1, Number: 100, Action: mv1.Action_ALLOW, Direction: mv1.Direction_INGRESS, Protocol: "all"}}},
		&mv1.RouteTable{Name: rt, Id: 1, Vpc: vpcA, Routes: []*mv1.Route{{Destination: "0.0.0.0/0", NextHopIp: "10.0.1.5"}}},
		subnet(subA, 1, "10.0.1.0/24", acl, rt), subnet(subB, 2, "10.0.1.0/24", "", ""),
		sg(sgW, 1, vpcA, 80, 443), sg(sgB, 3, vpcB, 22),
		port(proj+"/ports/a1", 1, subA, "nodes/n1", "10.0.1.10", sgW),
		port(proj+"/ports/a2", 2, subA, "nodes/n2", "10.0.1.11", sgW),
		port(proj+"/ports/b1", 3, subB, "nodes/n3", "10.0.1.10", sgB),
	)
}
