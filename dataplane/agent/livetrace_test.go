package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/trace"
	"github.com/meridian-sdn/meridian/ctl"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// liveNode is an agent on a private data path with metricsWorld's two
// ports plumbed into workload namespaces (web-1 in subnet 1, whose network
// ACL denies TCP 23 by rule 100; db-1 in subnet 2, whose security group
// admits TCP 80 only), serving LiveTraceLocalService on a socket.
type liveNode struct {
	world  map[string]*agentv1.Object
	node   netns.NsHandle
	nsWeb  string
	socket string
}

const (
	liveACL = "projects/lt/networkAcls/web"
	liveSG  = "projects/lt/securityGroups/db"
)

func newLiveNode(t *testing.T, dp *datapath.Datapath) *liveNode {
	t.Helper()
	node, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	world := metricsWorld()
	world["acl/7"].GetNetworkAcl().Name = liveACL
	world["sg/1"].GetSecurityGroup().Name = "projects/lt/securityGroups/web"
	world["sg/2"].GetSecurityGroup().Name = liveSG
	n := &liveNode{world: world, node: node}
	a := &Agent{
		cfg: Config{Node: "n1", StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp,
		plumb: netlinkPlumber{}, desired: map[string]*agentv1.Object{}, changed: make(chan struct{}, 1), errs: map[string]string{},
		attach: map[string]*attachment{}, applied: newApplied(),
	}
	for _, w := range []struct {
		port, mac, addr, gw string
		id                  uint32
	}{
		{"web-1", "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1", 1},
		{"db-1", "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1", 2},
	} {
		name := fmt.Sprintf("mlt%d-%d", os.Getpid(), w.id)
		ns, err := netns.NewNamed(name) // enters it
		if err != nil {
			t.Fatalf("create workload namespace %s: %v", name, err)
		}
		ns.Close()
		t.Cleanup(func() { netns.DeleteNamed(name) })
		if err := netns.Set(node); err != nil {
			t.Fatalf("back to the node namespace: %v", err)
		}
		path := "/run/netns/" + name
		if w.id == 1 {
			n.nsWeb = path
		}
		mac, _ := net.ParseMAC(w.mac)
		spec := WorkloadSpec{HostName: hostIfName(w.id), NetnsPath: path, IfName: "eth0", MAC: mac,
			Addrs: []netip.Prefix{netip.MustParsePrefix(w.addr)}, Gateway: netip.MustParseAddr(w.gw), MTU: 1500}
		if err := a.plumb.EnsureWorkload(spec); err != nil {
			t.Fatalf("plumb %s: %v", w.port, err)
		}
		a.attach[w.port] = &attachment{Port: w.port, PortID: w.id, NetnsPath: path, IfName: "eth0", HostIf: hostIfName(w.id)}
	}
	var ups []*agentv1.Object
	for _, o := range world {
		ups = append(ups, o)
	}
	a.applyResponse(&agentv1.SyncResponse{Snapshot: true, Version: 1, Upserts: ups})
	a.reconcileOnce()
	if len(a.errs) != 0 {
		t.Fatalf("reconcile errors: %v", a.errs)
	}

	sdir, err := os.MkdirTemp("", "mlt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sdir) })
	n.socket = filepath.Join(sdir, "agent.sock")
	lis, err := net.Listen("unix", n.socket)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	agentv1.RegisterLiveTraceLocalServiceServer(g, newLiveTraceServer(a))
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); <-done })
	return n
}

// dial opens TCP connections from web-1 to db-1:port until ctx ends
// (each SYN of each attempt is a packet the trace may take).
func (n *liveNode) dial(t *testing.T, ctx context.Context, port int) {
	t.Helper()
	// dial runs in subtests too, on a goroutine of their own: lock the
	// thread and put back whatever namespace it was in. (Setting it to the
	// node namespace on an unlocked thread leaked that namespace to
	// whatever goroutine ran there next: a later test's HTTP dial to
	// 127.0.0.1 found no route.) A thread that cannot go back stays locked,
	// and Go retires it.
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.GetFromPath(n.nsWeb)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the namespace the thread was in: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	for ctx.Err() == nil {
		c, err := net.DialTimeout("tcp4", fmt.Sprintf("10.0.2.20:%d", port), 300*time.Millisecond)
		if err == nil {
			c.Close()
		}
	}
}

// liveTrace runs meridianctl live-trace for one packet while web-1 dials
// db-1:port, and returns the packet the data path traced.
func (n *liveNode) liveTrace(t *testing.T, port int) *agentv1.LiveTracePacket {
	t.Helper()
	out := n.liveTraceOutput(t, port, "-o", "json")
	var p agentv1.LiveTracePacket
	line, _, _ := strings.Cut(out, "\n")
	if err := protojson.Unmarshal([]byte(line), &p); err != nil {
		t.Fatalf("meridianctl output %q: %v", out, err)
	}
	return &p
}

// liveTraceOutput runs meridianctl live-trace with extra args for one
// packet while web-1 dials db-1:port, and returns what it printed.
func (n *liveNode) liveTraceOutput(t *testing.T, port int, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errs := newReadySignal("tracing on node")
	var out strings.Builder
	done := make(chan error, 1)
	args := []string{"live-trace", "--port", "web-1", "--dst", "10.0.2.20", "-p", "tcp", "--dport", fmt.Sprint(port),
		"--count", "1", "--agent-socket", n.socket, "--config", ""}
	args = append(args, extra...)
	go func() {
		done <- ctl.Run(ctx, args, ctl.Streams{In: strings.NewReader(""), Out: &out, Err: errs}, func(string) string { return "" })
	}()
	select {
	case <-errs.ready:
	case err := <-done:
		t.Fatalf("meridianctl %v ended before tracing: %v\n%s", args, err, errs)
	case <-ctx.Done():
		t.Fatalf("meridianctl %v: not tracing after 20 s\n%s", args, errs)
	}
	dctx, dcancel := context.WithCancel(ctx)
	go func() { <-done; dcancel() }() // re-read below from out
	n.dial(t, dctx, port)
	if ctx.Err() != nil {
		t.Fatalf("meridianctl %v: no packet traced in 20 s\n%s", args, errs)
	}
	if !strings.Contains(errs.String(), "1 packets traced") {
		t.Errorf("summary on stderr: %q", errs.String())
	}
	return out.String()
}

// TestLiveTraceNamesTheModelsRule: a flow dropped by a security group and
// one dropped by a network ACL rule, sent for real between two workload
// namespaces through the attached data path: the live trace's drop stage
// names the same stage, object, rule and reason as the model trace
// (controller/trace) run on the same objects the agent installed.
func TestLiveTraceNamesTheModelsRule(t *testing.T) {
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		n := newLiveNode(t, dp)
		if n.world["port/1"].GetPort().Name != "web-1" {
			t.Fatal("fixture: port 1 is not web-1")
		}
		model := trace.NewModel(n.world)
		for _, c := range []struct {
			name       string
			port       int
			wantStage  string
			wantObject string
			wantRule   string
		}{
			{"security group", 22, "sg-ingress", liveSG, "none"},
			{"network ACL", 23, "acl-egress", liveACL, "100"},
		} {
			t.Run(c.name, func(t *testing.T) {
				live := n.liveTrace(t, c.port)
				res, err := model.Trace(trace.Request{From: "web-1", To: "10.0.2.20", Protocol: 6, SrcPort: 40000, DstPort: uint16(c.port), TCPFlags: trace.FlagSYN})
				if err != nil {
					t.Fatal(err)
				}
				mt := res.Forward
				last := mt.Stages[len(mt.Stages)-1]
				if mt.Allowed || last.Verdict != trace.Drop {
					t.Fatalf("model trace: %+v, want a drop", mt)
				}
				mrule, _, _ := strings.Cut(last.Rule, ":") // "100: deny tcp ..." names rule 100
				ldrop := live.Stages[len(live.Stages)-1]
				if live.Verdict != "DROPPED" || ldrop.Verdict != "drop" {
					t.Fatalf("live trace: %v, want a drop", live)
				}
				got := fmt.Sprintf("%s %s rule %s (%s)", ldrop.Stage, ldrop.Object, ldrop.Rule, live.DropReason)
				want := fmt.Sprintf("%s %s rule %s (%s)", last.Stage, last.Object, mrule, mt.Reason)
				if got != want {
					t.Fatalf("live trace drops at %s, the model at %s\nlive: %v", got, want, live)
				}
				if want != fmt.Sprintf("%s %s rule %s (%s)", c.wantStage, c.wantObject, c.wantRule, mt.Reason) {
					t.Fatalf("both drop at %s, the test expects %s %s rule %s", want, c.wantStage, c.wantObject, c.wantRule)
				}
				if live.Node != "n1" || live.Entered != "port web-1" || !strings.HasPrefix(live.Packet, "tcp 10.0.1.10:") ||
					!strings.HasSuffix(live.Packet, fmt.Sprintf("-> 10.0.2.20:%d [SYN]", c.port)) {
					t.Errorf("live packet %q entered %q on %q", live.Packet, live.Entered, live.Node)
				}
				// The stages before the drop are the model's, in its order.
				var ls, ms []string
				for _, s := range live.Stages {
					ls = append(ls, s.Stage)
				}
				for _, s := range mt.Stages {
					ms = append(ms, s.Stage)
				}
				if strings.Join(ls, " ") != strings.Join(ms, " ") {
					t.Errorf("stages differ:\nlive  %s\nmodel %s", strings.Join(ls, " "), strings.Join(ms, " "))
				}
				t.Logf("live: %s; model: %s", got, want)
				table := n.liveTraceOutput(t, c.port)
				t.Logf("meridianctl live-trace:\n%s", table)
				if want := fmt.Sprintf("live verdict: DROPPED at %s by %s rule %s (%s)", c.wantStage, c.wantObject, c.wantRule, mt.Reason); !strings.Contains(table, want) {
					t.Errorf("table output lacks %q:\n%s", want, table)
				}
			})
		}
	})
}

// TestLiveTraceFilter: a request becomes this node's filter — the port's
// own packets on its node, its VPC's packets from the overlay on another —
// and bad requests are refused with the field named.
func TestLiveTraceFilter(t *testing.T) {
	world := metricsWorld()
	world["port/2"].GetPort().Node = "n2"
	a := &Agent{cfg: Config{Node: "n1"}, desired: world}
	for _, c := range []struct {
		name string
		req  *agentv1.LiveTraceRequest
		want datapath.TraceFilter
	}{
		{"local port", &agentv1.LiveTraceRequest{Port: "web-1", Dst: "10.0.2.20", Protocol: 6, DstPort: 22},
			datapath.TraceFilter{Port: 1, VPC: 100, Dst: netip.MustParsePrefix("10.0.2.20/32"), Protocol: 6, DstPort: 22}},
		{"port by id", &agentv1.LiveTraceRequest{Port: "1", Src: "10.0.1.0/24"},
			datapath.TraceFilter{Port: 1, VPC: 100, Src: netip.MustParsePrefix("10.0.1.0/24")}},
		{"port on another node", &agentv1.LiveTraceRequest{Port: "db-1", Rate: 5},
			datapath.TraceFilter{VPC: 100, Rate: 5}},
		{"overlay only", &agentv1.LiveTraceRequest{Vni: 7}, datapath.TraceFilter{VPC: 7}},
	} {
		got, _, err := a.traceFilter(c.req)
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
	for _, c := range []struct {
		req  *agentv1.LiveTraceRequest
		want string
	}{
		{&agentv1.LiveTraceRequest{Port: "nope"}, "port nope is not in node n1's desired state"},
		{&agentv1.LiveTraceRequest{Src: "10.0.0.300"}, `src "10.0.0.300"`},
		{&agentv1.LiveTraceRequest{Dst: "fd00::1"}, `dst "fd00::1": want an IPv4`},
		{&agentv1.LiveTraceRequest{DstPort: 70000}, "out of range"},
	} {
		if _, _, err := a.traceFilter(c.req); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.req, err, c.want)
		}
	}
}
