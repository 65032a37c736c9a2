package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	meridianv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/bgp/frrtest"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// Benchmarks of issue [4] on the TestOutside topology (see outside_test.go).

// BenchmarkAssociateToFIB measures an elastic IP's association, from the
// API call to the /32 in FRR's kernel FIB (ip monitor, in this process),
// and Meridian's own share: from the API call to the gateway's BGP UPDATE
// on the wire (GoBGP logs each UPDATE as it writes it to the socket; the
// agents log at debug level in e2e runs). Each round associates a fresh
// address with web-1 by one UpdateElasticIp call (update mask "port") on
// an open API connection, then disassociates it the same way.
func BenchmarkAssociateToFIB(b *testing.B) {
	o := setupOutside(b)
	r := o.r
	ctx := b.Context()
	watch := frrtest.WatchRoutes(b, o.tor.Netns())
	api := apitest.Dial(b, r.ControllerEndpoint(), r.Token()).Edge
	setPort := func(name, port string) error {
		_, err := api.UpdateElasticIp(ctx, &meridianv1.UpdateElasticIpRequest{
			ElasticIp:  &meridianv1.ElasticIp{Name: name, Port: port},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"port"}},
		})
		return err
	}
	const rounds = 30
	var toFIB, toWire, toAgent []time.Duration
	for b.Loop() {
		toFIB, toWire, toAgent = toFIB[:0], toWire[:0], toAgent[:0]
		for i := range rounds {
			addr := fmt.Sprintf("198.51.100.%d", 100+i)
			pfx := netip.PrefixFrom(netip.MustParseAddr(addr), 32)
			name := fmt.Sprintf("projects/demo/elasticIps/bench-%d", i)
			// Allocate first: what is timed is the association alone.
			if _, err := api.CreateElasticIp(ctx, &meridianv1.CreateElasticIpRequest{Parent: "projects/demo",
				ElasticIpId: fmt.Sprintf("bench-%d", i),
				ElasticIp:   &meridianv1.ElasticIp{Pool: "publicAddressPools/internet", Address: addr}}); err != nil {
				b.Fatal(err)
			}
			// The allocation reaches the gateways as a delta of its own:
			// let it land, so the delta timed below is the association's.
			time.Sleep(100 * time.Millisecond)
			seen := len(watch.Changes(addr + " "))
			start := time.Now()
			if err := setPort(name, "projects/demo/ports/web-1"); err != nil {
				b.Fatal(err)
			}
			for len(watch.Changes(addr+" ")) == seen {
				if time.Since(start) > 10*time.Second {
					b.Fatalf("%s never reached FRR's FIB", addr)
				}
				time.Sleep(time.Millisecond)
			}
			toFIB = append(toFIB, time.Since(start))
			wire, err := firstLog(r, fmt.Sprintf(`"nlri":[{"prefix":"%s"}]`, pfx), `"gobgp: sent update"`, start)
			if err != nil {
				b.Fatal(err)
			}
			toWire = append(toWire, wire)
			recv, err := firstLog(r, `"msg":"desired state"`, `"snapshot":false`, start)
			if err != nil {
				b.Fatal(err)
			}
			toAgent = append(toAgent, recv)
			if err := setPort(name, ""); err != nil {
				b.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err = o.tor.WaitFIB(wctx, pfx, false)
			cancel()
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(ms(percentile(toFIB, 50)), "fib-p50-ms")
	b.ReportMetric(ms(percentile(toFIB, 99)), "fib-p99-ms")
	b.ReportMetric(ms(percentile(toWire, 50)), "wire-p50-ms")
	b.ReportMetric(ms(percentile(toWire, 99)), "wire-p99-ms")
	b.ReportMetric(ms(percentile(toAgent, 50)), "agent-p50-ms")
	b.ReportMetric(ms(percentile(toAgent, 99)), "agent-p99-ms")
	b.Logf("associate -> FRR FIB: p50 %v p99 %v; -> UPDATE on the wire: p50 %v p99 %v; -> delta at a gateway's agent: p50 %v p99 %v (%d rounds)",
		percentile(toFIB, 50), percentile(toFIB, 99), percentile(toWire, 50), percentile(toWire, 99),
		percentile(toAgent, 50), percentile(toAgent, 99), len(toFIB))
}

// firstLog returns how long after start the earliest gateway agent log
// line holding both substrings was written (agents log JSON with
// "time"; e2e runs them at debug level, where GoBGP logs every UPDATE as
// it writes it to the socket).
func firstLog(r *Run, sub1, sub2 string, start time.Time) (time.Duration, error) {
	best := time.Duration(-1)
	deadline := time.Now().Add(5 * time.Second)
	for best < 0 && time.Now().Before(deadline) {
		for _, gw := range outsideGateways {
			b, err := os.ReadFile(filepath.Join(r.RunDir(), gw+"-agent.log"))
			if err != nil {
				return 0, err
			}
			for line := range strings.Lines(string(b)) {
				if !strings.Contains(line, sub1) || !strings.Contains(line, sub2) {
					continue
				}
				i := strings.Index(line, `"time":"`)
				if i < 0 {
					continue
				}
				j := strings.IndexByte(line[i+8:], '"')
				ts, err := time.Parse(time.RFC3339Nano, line[i+8:i+8+j])
				if err != nil || ts.Before(start) {
					continue
				}
				if d := ts.Sub(start); best < 0 || d < best {
					best = d
				}
			}
		}
		if best < 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("no gateway agent logged %s %s after %v", sub1, sub2, start)
	}
	return best, nil
}

// BenchmarkNATConnRate compares new TCP connections per second from a
// workload through Meridian's NAT gateway (workload node -> VXLAN -> the
// owner gateway's eBPF SNAT -> uplink -> router -> internet host) with a
// client on the same workload node behind nftables masquerade on the same
// gateway (client namespace -> the node's kernel routing -> the same
// fabric, without VXLAN -> the gateway's forwarding + masquerade -> the
// same uplink): the same hops, the baseline without encapsulation. Same
// run, same server, alternating.
func BenchmarkNATConnRate(b *testing.B) {
	needTools(b, "nft")
	o := setupOutside(b)
	r := o.r
	ctx := b.Context()
	if err := r.Apply(ctx, fmt.Sprintf(`kind: ElasticIp
name: projects/demo/elasticIps/egress
pool: publicAddressPools/internet
address: %s
---
kind: NatGateway
name: projects/demo/natGateways/egress
vpc: projects/demo/vpcs/prod
elasticIps: [projects/demo/elasticIps/egress]
subnets: [projects/demo/vpcs/prod/subnets/web]
portMin: 1024
portMax: 65535
`, natEIP)); err != nil {
		b.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := o.tor.WaitFIB(wctx, hostPrefix(natEIP), true); err != nil {
		b.Fatal(err)
	}
	var ngw struct {
		Status struct {
			OwnerNode string `json:"ownerNode"`
		} `json:"status"`
	}
	if err := ctlJSON(ctx, r, &ngw, "nat-gateway", "get", "projects/demo/natGateways/egress"); err != nil {
		b.Fatal(err)
	}
	owner := ngw.Status.OwnerNode
	ownerNs, err := r.Netns(owner)
	if err != nil {
		b.Fatalf("owner %q: %v", owner, err)
	}
	// Baseline: a client namespace on the workload node, routed (no
	// overlay) across the same fabric to the owner gateway, which
	// forwards and masquerades it out of the same uplink.
	nodeNs := mustNetns(b, r, "node-1")
	nodeIP, _ := r.Addr("node-1")
	ownerIP, _ := r.Addr(owner)
	client := benchNetns(b, r, "masq-client")
	frrtest.Veth(b, frrtest.End{Netns: nodeNs, Name: "masq0", Addrs: []string{"10.99.0.1/24"}},
		frrtest.End{Netns: client, Name: "eth0", Addrs: []string{"10.99.0.2/24"}})
	script(b, client, "ip route add default via 10.99.0.1")
	script(b, nodeNs, "sysctl -qw net.ipv4.conf.all.forwarding=1", "ip route add "+inetAddr+"/32 via "+ownerIP.String())
	script(b, ownerNs, "sysctl -qw net.ipv4.conf.all.forwarding=1", "ip route add 10.99.0.0/24 via "+nodeIP.String())
	if _, err := Exec(ctx, ownerNs, "nft", "add table ip meridian_bench; add chain ip meridian_bench post { type nat hook postrouting priority 100; }; add rule ip meridian_bench post ip saddr 10.99.0.0/24 oifname ext0 masquerade"); err != nil {
		b.Fatal(err)
	}
	clients := map[string]string{"meridian": mustNetns(b, r, "web-2"), "nftables": client}
	// The server accepts and closes: a connection is its handshake.
	inet, _ := r.Netns("inet")
	var l net.Listener
	if err := plumbing.RunInNetns(netnsPath(inet), func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", inetPort+1))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dst := fmt.Sprintf("%s:%d", inetAddr, inetPort+1)
	var res map[string]float64
	for b.Loop() {
		res, err = alternate([]string{"meridian", "nftables"}, 3, func(path string) (float64, error) {
			return connRate(clients[path], dst, 2*time.Second)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(res["meridian"], "meridian-conn/s")
	b.ReportMetric(res["nftables"], "nftables-conn/s")
	b.ReportMetric(res["meridian"]/res["nftables"], "ratio")
	b.Logf("new TCP connections/s: Meridian NAT gateway %.0f, nftables masquerade %.0f, ratio %.2fx",
		res["meridian"], res["nftables"], res["meridian"]/res["nftables"])
}

func mustNetns(tb testing.TB, r *Run, name string) string {
	ns, err := r.Netns(name)
	if err != nil {
		tb.Fatal(err)
	}
	return ns
}

// connRate opens and closes TCP connections from ns to dst with a few
// parallel dialers for d and returns connections per second; a failed
// connection fails the measurement.
func connRate(ns, dst string, d time.Duration) (float64, error) {
	const workers = 4
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	stop := time.Now().Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- plumbing.RunInNetns(netnsPath(ns), func() error {
				dialer := net.Dialer{Timeout: 2 * time.Second}
				for time.Now().Before(stop) {
					c, err := dialer.Dial("tcp4", dst)
					if err != nil {
						return fmt.Errorf("after %d connections: %w", n.Load(), err)
					}
					// RST instead of FIN: no TIME_WAIT on the client,
					// whose ephemeral ports would otherwise run out.
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					n.Add(1)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return float64(n.Load()) / d.Seconds(), nil
}

// BenchmarkAnnounce10000EIPs: 10,000 elastic IPs, associated with ports,
// start being announced at once: their pool's announce flag goes from
// false to true in one API call, and the benchmark times that call until
// all 10,000 /32s are in FRR's kernel FIB (each through both gateways).
// Creating the ports and elastic IPs beforehand is reported, not timed.
func BenchmarkAnnounce10000EIPs(b *testing.B) {
	const n = 10000
	o := setupOutside(b)
	r := o.r
	ctx := b.Context()
	var docs strings.Builder
	docs.WriteString(`kind: Project
name: projects/demo
organization: acme
quota: {ports: 20000, elasticIps: 20000}
---
kind: Subnet
name: projects/demo/vpcs/prod/subnets/bulk
cidrBlock: 10.0.64.0/18
---
`)
	pool := func(announce bool) string {
		return fmt.Sprintf("kind: PublicAddressPool\nname: publicAddressPools/bulk\ncidrs: [198.18.0.0/18]\nmed: 10\nannounce: %v\n", announce)
	}
	docs.WriteString(pool(false))
	for i := range n {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(64 + (i+10)/256), byte((i + 10) % 256)})
		pub := netip.AddrFrom4([4]byte{198, 18, byte((i + 10) / 256), byte((i + 10) % 256)})
		fmt.Fprintf(&docs, "---\nkind: Port\nname: projects/demo/ports/bulk-%d\nsubnet: projects/demo/vpcs/prod/subnets/bulk\nfixedIps: [%s]\n", i, ip)
		fmt.Fprintf(&docs, "---\nkind: ElasticIp\nname: projects/demo/elasticIps/bulk-%d\npool: publicAddressPools/bulk\naddress: %s\nport: projects/demo/ports/bulk-%d\n", i, pub, i)
	}
	start := time.Now()
	if err := r.Apply(ctx, docs.String()); err != nil {
		b.Fatal(err)
	}
	b.Logf("created %d ports and %d elastic IPs (not announced) in %v", n, n, time.Since(start).Round(time.Millisecond))
	count := func() (int, error) {
		fib, err := o.tor.FIB(ctx)
		if err != nil {
			return 0, err
		}
		c := 0
		for p, nhs := range fib {
			if p.Addr().Is4() && p.Addr().As4()[0] == 198 && p.Addr().As4()[1] == 18 && len(nhs) == 2 {
				c++
			}
		}
		return c, nil
	}
	if c, err := count(); err != nil || c != 0 {
		b.Fatalf("before the flip: %d bulk routes in FRR's FIB (%v), want 0", c, err)
	}
	var took time.Duration
	for b.Loop() {
		start = time.Now()
		if err := r.Apply(ctx, pool(true)); err != nil {
			b.Fatal(err)
		}
		for {
			c, err := count()
			if err != nil {
				b.Fatal(err)
			}
			if c == n {
				break
			}
			if time.Since(start) > 2*time.Minute {
				b.Fatalf("%d of %d in FRR's FIB after %v", c, n, time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
		took = time.Since(start)
	}
	b.ReportMetric(took.Seconds(), "all-in-fib-s")
	b.Logf("pool announce=true -> all %d /32s in FRR's kernel FIB through both gateways: %v", n, took.Round(time.Millisecond))
}
