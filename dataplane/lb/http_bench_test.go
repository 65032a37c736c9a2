package lb

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"
)

var wrkRate = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

// backendNode makes the backend node namespace a DSR backend: a VXLAN
// device (VNI 7) with the backend port's MAC (the inner destination the
// load balancer writes) decapsulates, the VIP and three more backend
// addresses (for nft) are local, replies are routed back through the
// gateway, and an HTTP server answers "ok" on port 80 of every address.
// b1 gets an XDP_PASS program: frames redirected into g1 arrive only so.
// It returns the port MAC.
func (tp *topo) backendNode(tb testing.TB) string {
	tb.Helper()
	portMAC := "02:4d:52:00:01:01"
	ipCmd(tb, "-n", tp.be, "link", "add", "vx0", "address", portMAC, "type", "vxlan", "id", "7", "dstport", "4789",
		"local", "172.31.251.2", "dev", "b1", "nolearning")
	ipCmd(tb, "-n", tp.be, "link", "set", "vx0", "up")
	for _, a := range []string{"203.0.113.10/32", "172.31.251.11/32", "172.31.251.12/32", "172.31.251.13/32"} {
		ipCmd(tb, "-n", tp.be, "addr", "add", a, "dev", "lo")
	}
	ipCmd(tb, "-n", tp.be, "route", "add", "172.31.250.0/24", "via", "172.31.251.1")
	nsExec(tb, tp.be, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.vx0.rp_filter=0")
	var ln net.Listener
	var err error
	inNS(tb, tp.be, func() { ln, err = net.Listen("tcp4", ":80") })
	if err != nil {
		tb.Fatalf("listen in the backend node: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	recv := attachIn(tb, tp.be, tp.b1, newCounter(tb, xdpPass))
	tb.Cleanup(func() { recv.Close() })
	return portMAC
}

// wrk runs wrk in the client namespace against the VIP and returns
// requests per second.
func (tp *topo) wrk(tb testing.TB, d time.Duration) float64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tp.cli, "wrk", "-t1", "-c32",
		"-d"+strconv.Itoa(int(d.Seconds()))+"s", "--timeout", "2s", "http://203.0.113.10/").CombinedOutput()
	if err != nil {
		tb.Fatalf("wrk: %v: %s", err, out)
	}
	m := wrkRate.FindSubmatch(out)
	if m == nil {
		tb.Fatalf("wrk printed no rate: %s", out)
	}
	r, _ := strconv.ParseFloat(string(m[1]), 64)
	if regexp.MustCompile(`Socket errors|Non-2xx`).Match(out) {
		tb.Fatalf("wrk saw errors: %s", out)
	}
	return r
}

// BenchmarkHTTPRequests: requests per second from wrk (1 thread, 32
// connections) in the client namespace to an HTTP server in the backend
// node's namespace, through the gateway, in one run:
//   - lb: the load balancer on the uplink, VXLAN to the backend node whose
//     VXLAN device decapsulates; the server answers from the VIP straight
//     back through the gateway's routing (DSR: the replies skip the load
//     balancer);
//   - nft: nftables DNAT in the gateway (jhash over 3 backend addresses
//     of the same node), replies un-NATed by conntrack.
//
// Both paths end in the same Go HTTP server sharing the 2 vCPUs with wrk,
// so this measures what a user sees end to end, not the load balancer.
func BenchmarkHTTPRequests(b *testing.B) {
	for _, tool := range []string{"wrk", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s is needed: run hack/deps.sh: %v", tool, err)
		}
	}
	tp := newTopo(b)
	portMAC := tp.backendNode(b)
	l, err := Load(Options{MaxServices: 4, MaxBackends: 64, ConnTableSize: 65536})
	if err != nil {
		b.Fatalf("load (needs root and BPF): %v", err)
	}
	b.Cleanup(func() { l.Close() })
	s := vethService(80, 6)
	for _, be := range s.Backends {
		be.PortMac = portMAC
	}
	mustSet(b, l, s)
	if err := l.Configure(Config{UnderlayIP: netip.MustParseAddr("172.31.251.1"), MTU: 1550, RouterMAC: routerMAC,
		NextHopMAC: tp.b1MAC, SourceMAC: tp.g1MAC, OutIfindex: tp.g1}); err != nil {
		b.Fatal(err)
	}
	const d = 3 * time.Second

	var lbRate, nftRate float64
	for range b.N {
		inNS(b, tp.gw, func() { err = l.Attach(tp.g0, ModeDriver) })
		if err != nil {
			b.Fatal(err)
		}
		lbRate += tp.wrk(b, d)
		if err := l.Detach(tp.g0); err != nil {
			b.Fatal(err)
		}
		if st, _ := l.Stats(); st.Packets == 0 {
			b.Fatalf("requests did not go through the load balancer: %+v", st)
		}
		tp.nftDNAT(b)
		nftRate += tp.wrk(b, d)
		nsExec(b, tp.gw, "nft", "delete", "table", "ip", "lbbench")
	}
	n := float64(b.N)
	b.ReportMetric(lbRate/n, "req/s-lb")
	b.ReportMetric(nftRate/n, "req/s-nft")
	b.ReportMetric(lbRate/nftRate, "lb/nft")
}
