package health

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
	"github.com/meridian-sdn/meridian/fw"
)

var (
	routerMAC  = net.HardwareAddr{0x0a, 0x4d, 0x52, 0x00, 0x00, 0x01}
	portMAC    = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x0a}
	gatewayIP  = netip.MustParseAddr("10.0.1.1")
	backendIP  = netip.MustParseAddr("10.0.1.10")
	quietLog   = slog.New(slog.NewTextHandler(io.Discard, nil))
	backendTCP = uint16(8080)
)

// newNetns adds a named namespace for the test and removes it after.
func newNetns(t *testing.T, role string) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "mhc-" + hex.EncodeToString(b) + "-" + role
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s (needs root): %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return filepath.Join("/run/netns", name)
}

// backendNode is a node namespace with the data path and one workload
// port (10.0.1.10, subnet 10.0.1.0/24, gateway 10.0.1.1) plumbed and
// attached as the agent does it.
type backendNode struct {
	node, workload string // namespace paths
	dp             *datapath.Datapath
	hostIf         string
}

func newBackendNode(t *testing.T) *backendNode {
	t.Helper()
	n := &backendNode{node: newNetns(t, "node"), workload: newNetns(t, "wl"), hostIf: "mp7"}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a private bpffs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	dp, err := datapath.Open(filepath.Join(bpffs, "node"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Unpin(); dp.Close() })
	n.dp = dp
	var ifindex int
	err = plumbing.RunInNetns(n.node, func() error {
		if _, err := plumbing.EnsureWorkloadVeth(plumbing.WorkloadSpec{HostName: n.hostIf, NetnsPath: n.workload, MAC: portMAC,
			Addrs: []netip.Prefix{netip.PrefixFrom(backendIP, 24)}, Gateway: gatewayIP}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(n.hostIf)
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		return dp.Attach(datapath.HookPort, ifindex)
	})
	if err != nil {
		t.Fatalf("plumb the backend port: %v", err)
	}
	if err := dp.UpsertSubnet(datapath.Subnet{ID: 1, Gateway: gatewayIP, RouterMAC: routerMAC}); err != nil {
		t.Fatal(err)
	}
	if err := dp.UpsertPort(datapath.Port{ID: 7, Ifindex: ifindex, MAC: portMAC, IPs: []netip.Addr{backendIP}, VPC: 100, Subnet: 1, SGPolicy: 1}); err != nil {
		t.Fatal(err)
	}
	// The backend admits its service port only, and sends anything.
	c, err := fw.CompileSecurityGroups(100, []fw.SecurityGroupPolicy{{ID: 1, Rules: []fw.SGRule{
		{ID: 1, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: backendTCP, To: backendTCP}, RemoteCIDR: netip.MustParsePrefix("0.0.0.0/0")},
		{ID: 2, Direction: fw.Egress, RemoteCIDR: netip.MustParsePrefix("0.0.0.0/0")},
	}}}, nil)
	if err == nil {
		err = dp.ApplySecurityGroups(c)
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// listen opens a TCP listener inside the workload.
func (n *backendNode) listen(t *testing.T, addr netip.AddrPort) net.Listener {
	t.Helper()
	var ln net.Listener
	err := plumbing.RunInNetns(n.workload, func() (err error) {
		ln, err = net.Listen("tcp4", addr.String())
		return err
	})
	if err != nil {
		t.Fatalf("listen in the workload: %v", err)
	}
	return ln
}

// serveHTTP serves h inside the workload until the returned stop is
// called (or the test ends).
func (n *backendNode) serveHTTP(t *testing.T, h http.Handler) (stop func()) {
	t.Helper()
	ln := n.listen(t, netip.AddrPortFrom(backendIP, backendTCP))
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	var once sync.Once
	stop = func() { once.Do(func() { srv.Close(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// drops is what the data path dropped at the backend's port.
func (n *backendNode) drops(t *testing.T) []datapath.DropCount {
	t.Helper()
	all, err := n.dp.Drops()
	if err != nil {
		t.Fatal(err)
	}
	return all
}

func (n *backendNode) target(key Key, addr netip.Addr, check Check) Target {
	return Target{Key: key, HostIf: n.hostIf, RouterMAC: routerMAC, PortMAC: portMAC, Gateway: gatewayIP,
		Address: addr, Port: backendTCP, Check: check.WithDefaults()}
}

// waitStatus waits until key's status is healthy (or not) and returns how
// long that took, failing after within.
func waitStatus(t *testing.T, c *Checker, key Key, healthy bool, within time.Duration) (time.Duration, Status) {
	t.Helper()
	start := time.Now()
	for {
		for _, s := range c.Statuses() {
			if s.Key == key && s.Healthy == healthy {
				return time.Since(start), s
			}
		}
		if time.Since(start) > within {
			t.Fatalf("backend %v not healthy=%v within %v: statuses %+v", key, healthy, within, c.Statuses())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTCPCheckDetectsStopAndRestart probes a real TCP server in a
// workload namespace through its port's host end, with the tc pipeline
// attached: healthy; the server stops and the backend is unhealthy within
// interval × threshold + timeout; it restarts and is healthy again. The
// probes' traffic is never counted as a drop.
func TestTCPCheckDetectsStopAndRestart(t *testing.T) {
	n := newBackendNode(t)
	stop := n.serveHTTP(t, http.NotFoundHandler()) // a TCP connect needs only the listener
	check := Check{Protocol: "tcp", Interval: 200 * time.Millisecond, Timeout: 200 * time.Millisecond,
		HealthyThreshold: 2, UnhealthyThreshold: 3}
	bound := check.Interval*time.Duration(check.UnhealthyThreshold) + check.Timeout
	const slack = 150 * time.Millisecond
	var changes atomic.Int32
	c := New(t.Context(), Config{Log: quietLog, Netns: n.node, OnChange: func() { changes.Add(1) }})
	defer c.Close()
	key := Key{Service: 1, Backend: 1}
	if err := c.Set([]Target{n.target(key, backendIP, check)}); err != nil {
		t.Fatal(err)
	}
	// The first probe comes within one interval (jitter), then thresholds.
	d, _ := waitStatus(t, c, key, true, check.Interval*time.Duration(check.HealthyThreshold)+check.Timeout+slack)
	t.Logf("healthy after %v", d)

	stop()
	d, st := waitStatus(t, c, key, false, bound+slack)
	t.Logf("server stopped: unhealthy after %v (bound %v): %q", d, bound, st.LastError)
	if st.LastError != errRefused.Error() {
		t.Errorf("last error %q, want %q", st.LastError, errRefused)
	}

	n.serveHTTP(t, http.NotFoundHandler())
	d, _ = waitStatus(t, c, key, true, check.Interval*time.Duration(check.HealthyThreshold)+check.Timeout+slack)
	t.Logf("server back: healthy after %v", d)
	if got := changes.Load(); got != 3 {
		t.Errorf("%d status changes reported, want 3 (healthy, unhealthy, healthy)", got)
	}
	if drops := n.drops(t); len(drops) != 0 {
		t.Errorf("the probes' traffic counted as drops: %+v", drops)
	}
}

// TestHTTPCheck probes two paths of one HTTP server and an address where
// nothing answers: 200 is healthy, 500 unhealthy, silence unhealthy after
// timeouts — and the silent backend does not slow the others down. A path
// that turns to 500 goes unhealthy, and back to 200 healthy.
func TestHTTPCheck(t *testing.T) {
	n := newBackendNode(t)
	var okStatus atomic.Int32
	okStatus.Store(http.StatusOK)
	var hosts sync.Map
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		hosts.Store(r.Host, true)
		w.WriteHeader(int(okStatus.Load()))
		fmt.Fprintln(w, "backend 1")
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "broken", http.StatusInternalServerError) })
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ok", http.StatusFound) })
	n.serveHTTP(t, mux)

	check := Check{Protocol: "http", Interval: 200 * time.Millisecond, Timeout: 300 * time.Millisecond,
		HealthyThreshold: 2, UnhealthyThreshold: 2}
	const slack = 150 * time.Millisecond
	withPath := func(p string) Check { c := check; c.Path = p; return c }
	ok, fail, moved, silent := Key{1, 1}, Key{2, 1}, Key{3, 1}, Key{4, 1}
	c := New(t.Context(), Config{Log: quietLog, Netns: n.node})
	defer c.Close()
	err := c.Set([]Target{
		n.target(ok, backendIP, withPath("/ok")),
		n.target(fail, backendIP, withPath("/fail")),
		n.target(moved, backendIP, withPath("/moved")),
		// Nothing has this address: the workload drops what it gets.
		n.target(silent, netip.MustParseAddr("10.0.1.99"), withPath("/ok")),
	})
	if err != nil {
		t.Fatal(err)
	}
	first := check.Interval*time.Duration(check.HealthyThreshold) + check.Timeout + slack
	waitStatus(t, c, ok, true, first)
	waitStatus(t, c, moved, true, first)
	_, st := waitStatus(t, c, fail, false, first)
	if st.LastError != "HTTP status 500" {
		t.Errorf("/fail: last error %q, want HTTP status 500", st.LastError)
	}
	_, st = waitStatus(t, c, silent, false, first+check.Timeout)
	if st.LastError != errNoReply.Error() {
		t.Errorf("silent backend: last error %q, want %q", st.LastError, errNoReply)
	}
	if _, ok := hosts.Load("10.0.1.10:8080"); !ok {
		t.Errorf("the request's Host header was not the backend's address:port")
	}

	okStatus.Store(http.StatusServiceUnavailable)
	bound := check.Interval*time.Duration(check.UnhealthyThreshold) + check.Timeout
	d, st := waitStatus(t, c, ok, false, bound+slack)
	t.Logf("/ok answering 503: unhealthy after %v (bound %v): %q", d, bound, st.LastError)
	okStatus.Store(http.StatusOK)
	d, _ = waitStatus(t, c, ok, true, check.Interval*time.Duration(check.HealthyThreshold)+check.Timeout+slack)
	t.Logf("/ok answering 200 again: healthy after %v", d)
	if drops := n.drops(t); len(drops) != 0 {
		t.Errorf("the probes' traffic counted as drops: %+v", drops)
	}
}

// TestSetStopsAndKeeps: removing a target stops its probes and its status;
// changing only its timing keeps the health found so far.
func TestSetStopsAndKeeps(t *testing.T) {
	var probes sync.Map // key -> *atomic.Int32
	probe := func(ctx context.Context, tg Target) error {
		v, _ := probes.LoadOrStore(tg.Key, new(atomic.Int32))
		v.(*atomic.Int32).Add(1)
		if tg.Address == netip.MustParseAddr("10.0.1.66") {
			return errors.New("down")
		}
		return nil
	}
	c := New(t.Context(), Config{Log: quietLog, Probe: probe})
	defer c.Close()
	check := Check{Protocol: "tcp", Interval: 20 * time.Millisecond}.WithDefaults()
	tg := func(k Key, addr string, ch Check) Target {
		return Target{Key: k, HostIf: "mp1", RouterMAC: routerMAC, PortMAC: portMAC, Gateway: gatewayIP,
			Address: netip.MustParseAddr(addr), Port: 80, Check: ch}
	}
	a, b := Key{1, 1}, Key{1, 2}
	if err := c.Set([]Target{tg(a, "10.0.1.10", check), tg(b, "10.0.1.66", check)}); err != nil {
		t.Fatal(err)
	}
	_, sa := waitStatus(t, c, a, true, time.Second)
	waitStatus(t, c, b, false, time.Second)

	slower := check
	slower.Interval = 30 * time.Millisecond
	if err := c.Set([]Target{tg(a, "10.0.1.10", slower)}); err != nil {
		t.Fatal(err)
	}
	st := c.Statuses()
	if len(st) != 1 || st[0].Key != a || !st[0].Healthy || !st[0].Since.Equal(sa.Since) {
		t.Fatalf("after the change: %+v, want only %v, healthy since %v", st, a, sa.Since)
	}
	v, _ := probes.Load(b)
	before := v.(*atomic.Int32).Load()
	time.Sleep(100 * time.Millisecond)
	if after := v.(*atomic.Int32).Load(); after != before {
		t.Errorf("removed backend probed %d more times", after-before)
	}

	bad := check
	bad.Protocol = "icmp"
	if err := c.Set([]Target{tg(a, "10.0.1.10", bad)}); err == nil {
		t.Error("a check with protocol icmp was accepted")
	}
	bad = check
	bad.Protocol, bad.Path = "http", "/a b"
	if err := bad.Validate(); err == nil {
		t.Error("a path with a space was accepted")
	}
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "dataplane/health tests need root (namespaces, AF_PACKET, BPF)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}
