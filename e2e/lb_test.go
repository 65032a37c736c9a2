package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/bgp/frrtest"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// The load balancer of issue [5], end to end: the outside world of
// TestOutside (FRR top-of-rack router, internet host, two gateways with a
// BGP session each) around two workload nodes with four web servers.
//
//	inet 100.64.0.10 ── tor (FRR) ─┬─ gw-1 ext0 ─┐
//	                               └─ gw-2 ext0 ─┤ underlay
//	                        node-1: web-1, web-3 ┤
//	                        node-2: web-2, web-4 ┘
//
// The VIP is announced by both gateways (ECMP in FRR's FIB); each
// gateway's XDP load balancer sends a connection to its Maglev-chosen
// backend's node in VXLAN, the backend node translates and the reply goes
// straight out through a gateway (DSR). The backends' nodes health-check
// them with HTTP from their subnet gateway's address.

const (
	lbVIP      = "198.51.100.40"
	lbName     = "projects/demo/loadBalancers/web"
	lbWebPort  = 8080
	lbInterval = 500 * time.Millisecond
	lbTimeout  = 300 * time.Millisecond
	lbThresh   = 2
)

var lbWebs = []string{"web-1", "web-2", "web-3", "web-4"}

func lbTopology() Topology {
	t := Topology{
		Nodes: []Node{
			{Name: "node-1"},
			{Name: "node-2"},
			{Name: "gw-1", Roles: []string{"gateway"}, AgentArgs: []string{"--uplink", "ext0"}},
			{Name: "gw-2", Roles: []string{"gateway"}, AgentArgs: []string{"--uplink", "ext0"}},
		},
		Intent: `kind: Project
name: projects/demo
organization: acme
---
kind: Vpc
name: projects/demo/vpcs/prod
cidrBlocks: [10.0.0.0/16]
---
kind: Subnet
name: projects/demo/vpcs/prod/subnets/web
cidrBlock: 10.0.1.0/24
---
kind: SecurityGroup
name: projects/demo/securityGroups/web
vpc: projects/demo/vpcs/prod
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 8080, portRangeMax: 8080, remoteCidr: 0.0.0.0/0}
- {direction: EGRESS, protocol: all, remoteCidr: 0.0.0.0/0}
`,
	}
	for i, w := range lbWebs {
		t.Workloads = append(t.Workloads, Workload{Name: w, Node: fmt.Sprintf("node-%d", i%2+1), Port: "projects/demo/ports/" + w,
			Subnet: "projects/demo/vpcs/prod/subnets/web", IP: fmt.Sprintf("10.0.1.%d", 11+i),
			SecurityGroups: []string{"projects/demo/securityGroups/web"}})
	}
	return t
}

// setupLBOutside is setupOutside (outside_test.go) for lbTopology.
func setupLBOutside(t *testing.T) *outside {
	t.Helper()
	if err := Build(t.Context(), testBins, "./cmd/meridian-agent"); err != nil {
		t.Fatal(err)
	}
	topo := lbTopology()
	r := Setup(t, topo, Options{BinDir: testBins})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	tor, err := r.AddHost(ctx, "tor")
	if err != nil {
		t.Fatal(err)
	}
	inet, err := r.AddHost(ctx, "inet")
	if err != nil {
		t.Fatal(err)
	}
	frrtest.Veth(t, frrtest.End{Netns: tor, Name: "inet0", Addrs: []string{"100.64.0.1/24"}},
		frrtest.End{Netns: inet, Name: "eth0", Addrs: []string{inetAddr + "/24"}})
	script(t, inet, "ip route add default via 100.64.0.1",
		// Packets from the internet come with their checksums complete;
		// a veth would leave the TCP checksum to an offload that never
		// happens once the gateway's XDP program has taken the frame
		// (the load balancer forwards the inner packet as it is).
		"ethtool -K eth0 tx off")
	script(t, tor, "sysctl -qw net.ipv4.ip_forward=1",
		// Spread flows over the gateways by their ports too, as a
		// fabric's ECMP does.
		"sysctl -qw net.ipv4.fib_multipath_hash_policy=1")
	for i, gw := range outsideGateways {
		ns, err := r.Netns(gw)
		if err != nil {
			t.Fatal(err)
		}
		frrtest.Veth(t, frrtest.End{Netns: tor, Name: gw, Addrs: []string{fmt.Sprintf("172.31.%d.1/24", i+1)}},
			frrtest.End{Netns: ns, Name: "ext0", Addrs: []string{fmt.Sprintf("172.31.%d.2/24", i+1)}})
		script(t, ns, fmt.Sprintf("ip route add default via 172.31.%d.1", i+1))
	}
	// The XDP load balancer redirects encapsulated frames from ext0 into
	// the gateway's underlay veth; a veth delivers such frames only if
	// its peer (here the fabric bridge's port) runs NAPI, i.e. has GRO
	// on or an XDP program. A physical NIC needs neither.
	for i, n := range topo.Nodes {
		if strings.HasPrefix(n.Name, "gw-") {
			if out, err := r.Exec(ctx, fabricName, "ethtool", "-K", fmt.Sprintf("n%d", i), "gro", "on"); err != nil {
				t.Fatalf("GRO on the fabric port of %s: %v\n%s", n.Name, err, out)
			}
		}
	}
	router := frrtest.Start(t, frrtest.Options{Netns: tor, ASN: torASN})
	for i := range outsideGateways {
		if err := router.AddNeighbor(ctx, frrtest.Neighbor{Address: gwAddr(i + 1), ASN: gwASN, Keepalive: 1, Hold: 3}); err != nil {
			t.Fatal(err)
		}
	}
	docs := []string{fmt.Sprintf(`kind: PublicAddressPool
name: publicAddressPools/internet
cidrs: [%s]
communities: ["65000:100"]
med: 10`, poolCIDR)}
	for i, gw := range outsideGateways {
		docs = append(docs, fmt.Sprintf(`kind: BgpPeer
name: bgpPeers/%s-tor
node: nodes/%s
localAsn: %d
peerAsn: %d
peerAddress: 172.31.%d.1
holdTime: 3
restartTime: 120`, gw, gw, gwASN, torASN, i+1))
	}
	if err := r.Apply(ctx, strings.Join(docs, "\n---\n")+"\n"); err != nil {
		t.Fatal(err)
	}
	for i := range outsideGateways {
		if err := router.WaitEstablished(ctx, gwAddr(i+1)); err != nil {
			t.Fatalf("%v\n%s", err, r.Logs(30))
		}
	}
	return &outside{r: r, tor: router}
}

// webServer is an HTTP server in a workload answering its name on / and
// 200 on /healthz, which the test stops and starts.
type webServer struct {
	t    *testing.T
	r    *Run
	name string
	mu   sync.Mutex
	srv  *http.Server
	done chan struct{}
}

// startWeb starts name's server until owner (the whole test, even when
// started in a subtest) ends.
func startWeb(t *testing.T, owner testing.TB, r *Run, name string) *webServer {
	w := &webServer{t: t, r: r, name: name}
	w.start()
	owner.Cleanup(w.stop)
	return w
}

func (w *webServer) start() {
	w.t.Helper()
	ns, err := w.r.Netns(w.name)
	if err != nil {
		w.t.Fatal(err)
	}
	var l net.Listener
	if err := plumbing.RunInNetns(netnsPath(ns), func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", lbWebPort))
		return err
	}); err != nil {
		w.t.Fatalf("listen in %s: %v", w.name, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, w.name) })
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	w.mu.Lock()
	w.srv, w.done = srv, done
	w.mu.Unlock()
}

// stop closes the listener and every connection: new SYNs get a RST.
func (w *webServer) stop() {
	w.mu.Lock()
	srv, done := w.srv, w.done
	w.srv = nil
	w.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

// lbDoc is the load balancer with backends webs (all on port 8080).
func lbDoc(webs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `kind: LoadBalancer
name: %s
vpc: projects/demo/vpcs/prod
scheme: internet-facing
pool: publicAddressPools/internet
vip: %s
listeners:
- name: http
  protocol: tcp
  port: 80
  healthCheck:
    protocol: http
    path: /healthz
    intervalMs: %d
    timeoutMs: %d
    healthyThreshold: %d
    unhealthyThreshold: %d
  backends:
`, lbName, lbVIP, lbInterval.Milliseconds(), lbTimeout.Milliseconds(), lbThresh, lbThresh)
	for _, w := range webs {
		fmt.Fprintf(&b, "  - {port: projects/demo/ports/%s, targetPort: %d}\n", w, lbWebPort)
	}
	return b.String()
}

// lbBackendStatus is a backend as the API shows it.
type lbBackendStatus struct {
	Port    string `json:"port"`
	State   string `json:"state"`
	Reason  string `json:"reason"`
	Serving bool   `json:"serving"`
}

// lbBackends returns the listener's backends by workload name.
func lbBackends(ctx context.Context, r *Run) (map[string]lbBackendStatus, error) {
	var lb struct {
		Status struct {
			Listeners []struct {
				Backends []lbBackendStatus `json:"backends"`
			} `json:"listeners"`
		} `json:"status"`
	}
	if err := ctlJSON(ctx, r, &lb, "load-balancer", "get", lbName); err != nil {
		return nil, err
	}
	out := map[string]lbBackendStatus{}
	for _, l := range lb.Status.Listeners {
		for _, b := range l.Backends {
			out[strings.TrimPrefix(b.Port, "projects/demo/ports/")] = b
		}
	}
	return out, nil
}

// waitBackends waits until cond holds for the API's backends.
func waitBackends(ctx context.Context, t *testing.T, r *Run, within time.Duration, what string, cond func(map[string]lbBackendStatus) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last map[string]lbBackendStatus
	var err error
	for {
		last, err = lbBackends(ctx, r)
		if err == nil && cond(last) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v: backends %+v (%v)\n%s", what, within, last, err, r.Logs(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// vipGet opens a new connection from the internet host to the VIP and
// returns the name of the backend that answered.
func vipGet(r *Run) (string, error) {
	c, err := dialFrom(r, "inet", lbVIP+":80", 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return askOn(c, bufio.NewReader(c), true)
}

// askOn sends one GET on an open connection and returns the body.
func askOn(c net.Conn, br *bufio.Reader, closing bool) (string, error) {
	c.SetDeadline(time.Now().Add(20 * time.Second)) // a gateway restart costs retransmissions, not the connection
	hdr := ""
	if closing {
		hdr = "Connection: close\r\n"
	}
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n%s\r\n", lbVIP, hdr); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	return string(body), nil
}

// spread opens n connections to the VIP and counts the answers by
// backend ("error" for failed ones, "error: ..." once per distinct
// failure, for the log).
func spread(r *Run, n int) map[string]int {
	seen := map[string]int{}
	for range n {
		name, err := vipGet(r)
		if err != nil {
			name = "error"
			seen[fmt.Sprintf("error at %s: %v", time.Now().Format("15:04:05.000"), err)]++
		}
		seen[name]++
	}
	return seen
}

// TestLoadBalancer: an internet-facing load balancer over three backends
// with HTTP health checks, through the real agents, controller and FRR.
func TestLoadBalancer(t *testing.T) {
	o := setupLBOutside(t)
	r := o.r
	ctx := t.Context()
	webs := map[string]*webServer{}
	for _, w := range lbWebs[:3] {
		webs[w] = startWeb(t, t, r, w)
	}
	vipPfx := hostPrefix(lbVIP)

	start := time.Now()
	if err := r.Apply(ctx, lbDoc(lbWebs[:3]...)); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := o.tor.WaitNextHops(wctx, vipPfx, func(nhs []netip.Addr, ok bool) bool { return len(nhs) == 2 }); err != nil {
		t.Fatalf("VIP %s not in FRR's FIB through both gateways: %v\n%s", lbVIP, err, r.Logs(30))
	}
	t.Logf("VIP in FRR's FIB via both gateways %v after the API call", time.Since(start).Round(time.Millisecond))
	allHealthy := func(names ...string) func(map[string]lbBackendStatus) bool {
		return func(bs map[string]lbBackendStatus) bool {
			for _, n := range names {
				if b, ok := bs[n]; !ok || b.State != "healthy" || !b.Serving {
					return false
				}
			}
			return true
		}
	}
	d := waitBackends(ctx, t, r, 15*time.Second, "three healthy backends", allHealthy(lbWebs[:3]...))
	t.Logf("three backends healthy in the API %v later", d.Round(time.Millisecond))
	// The API shows health as soon as the store has it; the gateways'
	// tables follow a distribution later (a backend not yet known healthy
	// does not serve while others are): wait until each has answered once.
	served := map[string]int{}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		for w, c := range spread(r, 6) {
			served[w] += c
		}
		if served[lbWebs[0]] > 0 && served[lbWebs[1]] > 0 && served[lbWebs[2]] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not every backend answers 5 s after the API shows them healthy: %v", served)
		}
	}

	t.Run("spread", func(t *testing.T) {
		seen := spread(r, 60)
		t.Logf("60 connections from the internet host: %v", seen)
		for _, w := range lbWebs[:3] {
			if seen[w] < 6 {
				t.Errorf("%s answered %d of 60 connections, want a share (%v)", w, seen[w], seen)
			}
		}
		if seen["error"] > 0 {
			t.Errorf("%d connections failed", seen["error"])
		}
	})

	// A VIP's packets, traced where they enter: the gateways' XDP load
	// balancers report the backend chosen and the tunnel to its node.
	t.Run("live-trace", func(t *testing.T) {
		args := []string{"--config=", "live-trace", "--dst", lbVIP, "-p", "tcp", "--dport", "80",
			"--count", "1", "--duration", "15s"}
		for _, gw := range outsideGateways {
			n, ok := r.State().node(gw)
			if !ok || n.AgentSocket == "" {
				t.Fatalf("gateway %s has no agent socket", gw)
			}
			args = append(args, "--agent-socket", n.AgentSocket)
		}
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := r.Ctl(ctx, args...)
			done <- result{out, err}
		}()
		// Connections until a gateway has traced one (the filter is
		// installed some time after the command starts; the gateway
		// that did not carry one stops at --duration).
		var res result
	wait:
		for {
			select {
			case res = <-done:
				break wait
			case <-time.After(200 * time.Millisecond):
				spread(r, 1)
			}
		}
		if res.err != nil {
			t.Fatalf("live-trace: %v", res.err)
		}
		t.Logf("meridianctl live-trace on the gateways:\n%s", res.out)
		for _, want := range []string{"load-balancer", "TUNNELED", "direct server return", "tunnel"} {
			if !strings.Contains(res.out, want) {
				t.Errorf("live-trace output lacks %q", want)
			}
		}
	})

	// A long-lived connection, and which gateway carries it.
	long, err := dialFrom(r, "inet", lbVIP+":80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	longBR := bufio.NewReader(long)
	longName, err := askOn(long, longBR, false)
	if err != nil {
		t.Fatalf("long-lived connection: %v", err)
	}
	carrier := func() string {
		var before [2]uint64
		for i, gw := range outsideGateways {
			before[i], _ = r.RxPackets(gw, "ext0")
		}
		for range 20 {
			if _, err := askOn(long, longBR, false); err != nil {
				t.Fatalf("long-lived connection: %v", err)
			}
		}
		var after [2]uint64
		for i, gw := range outsideGateways {
			after[i], _ = r.RxPackets(gw, "ext0")
		}
		if after[1]-before[1] > after[0]-before[0] {
			return outsideGateways[1]
		}
		return outsideGateways[0]
	}
	top := t
	t.Run("add-backend", func(t *testing.T) {
		webs["web-4"] = startWeb(t, top, r, "web-4")
		if err := r.Apply(ctx, lbDoc(lbWebs...)); err != nil {
			t.Fatal(err)
		}
		d := waitBackends(ctx, t, r, 15*time.Second, "web-4 healthy", allHealthy(lbWebs...))
		t.Logf("web-4 healthy and serving %v after it was added", d.Round(time.Millisecond))
		got, err := askOn(long, longBR, false)
		if err != nil || got != longName {
			t.Fatalf("long-lived connection after adding web-4: %q, %v; want %s", got, err, longName)
		}
		// New flows reach web-4 (through the gateways' updated tables).
		deadline := time.Now().Add(5 * time.Second)
		var seen map[string]int
		for {
			seen = spread(r, 20)
			if seen["web-4"] > 0 || time.Now().After(deadline) {
				break
			}
		}
		if seen["web-4"] == 0 || seen["error"] > 0 {
			t.Errorf("after adding web-4: %v", seen)
		}
	})

	t.Run("lb-node-restart", func(t *testing.T) {
		// The gateway carrying the long-lived connection restarts its
		// agent after web-4 joined, when the Maglev table may send the
		// flow elsewhere: its connection table (pinned, like the program)
		// keeps it on its backend, and forwarding never stops.
		gw := carrier()
		t.Logf("the long-lived connection is served by %s through %s: restarting its agent", longName, gw)
		stopping := time.Now()
		if err := r.Restart(ctx, gw+"-agent"); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		t.Logf("%s's agent stopped and serving again in %v", gw, restarted.Sub(stopping).Round(time.Millisecond))
		got, err := askOn(long, longBR, false)
		if err != nil || got != longName {
			t.Fatalf("long-lived connection across %s's restart: %q, %v; want %s", gw, got, err, longName)
		}
		if seen := spread(r, 20); seen["error"] > 0 {
			t.Errorf("new connections right after the restart: %v", seen)
		}
		// The restarted agent announces the VIP again once its load
		// balancer serves it: FRR's path through it is fresh (not the
		// stale one graceful restart kept).
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		gwIP := gwAddr(1)
		if gw == outsideGateways[1] {
			gwIP = gwAddr(2)
		}
		for {
			paths, err := o.tor.Route(wctx, vipPfx)
			fresh := false
			for _, p := range paths {
				fresh = fresh || (p.Peer == gwIP && !p.Stale)
			}
			if err == nil && fresh {
				break
			}
			if wctx.Err() != nil {
				t.Fatalf("%s's path to the VIP not refreshed after the restart: %+v, %v", gw, paths, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("%s announces the VIP again %v after the restart returned", gw, time.Since(restarted).Round(time.Millisecond))
		if seen := spread(r, 20); seen["error"] > 0 {
			t.Errorf("new connections after the restart: %v", seen)
		}
	})

	t.Run("backend-failure", func(t *testing.T) {
		victim := "web-2"
		if victim == longName {
			victim = "web-3"
		}
		webs[victim].stop()
		killed := time.Now()
		bound := lbInterval*lbThresh + lbTimeout
		d := waitBackends(ctx, t, r, bound+5*time.Second, victim+" unhealthy", func(bs map[string]lbBackendStatus) bool {
			return bs[victim].State == "unhealthy" && !bs[victim].Serving
		})
		bs, _ := lbBackends(ctx, r)
		t.Logf("%s's server killed: unhealthy in the API after %v (checks: interval %v x %d + timeout %v = %v): %q",
			victim, d.Round(time.Millisecond), lbInterval, lbThresh, lbTimeout, bound, bs[victim].Reason)
		if d > bound+2*time.Second {
			t.Errorf("%s took %v to leave, want about %v (interval x threshold + timeout) plus the report's way", victim, d, bound)
		}
		// Within a moment the gateways' tables follow the API: then no
		// new connection goes to it (and none fails).
		var clean time.Duration
		for {
			seen := spread(r, 20)
			if seen[victim] == 0 && seen["error"] == 0 {
				clean = time.Since(killed)
				break
			}
			if time.Since(killed) > bound+5*time.Second {
				t.Fatalf("new connections still reach %s (or fail) %v after its server died: %v", victim, time.Since(killed), seen)
			}
		}
		seen := spread(r, 40)
		t.Logf("no new connection to %s from %v after the kill; then 40 more: %v", victim, clean.Round(time.Millisecond), seen)
		if seen[victim] > 0 || seen["error"] > 0 {
			t.Errorf("after %s left: %v", victim, seen)
		}
		got, err := askOn(long, longBR, false)
		if err != nil || got != longName {
			t.Errorf("long-lived connection to %s after %s failed: %q, %v", longName, victim, got, err)
		}
	})
}
