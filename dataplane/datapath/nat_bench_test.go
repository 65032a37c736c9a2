package datapath

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNsCmd runs a command in namespace ns (nsenter on the handle's fd, so
// the command does not depend on which thread starts it).
func inNsCmd(t testing.TB, ns netns.NsHandle, stdin string, args ...string) {
	t.Helper()
	// a duplicate: the os.File closes its descriptor, the handle's stays
	fd, err := unix.Dup(int(ns))
	if err != nil {
		t.Fatalf("dup netns handle: %v", err)
	}
	f := os.NewFile(uintptr(fd), "netns")
	defer f.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/proc/self/fd/3"}, args...)...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// connRate opens connections from ns to dst with n workers for d and
// returns the completed connections per second and the number that failed
// (no connection, or no close from the server within a second). A
// connection completes when the server's close is seen (EOF).
func connRate(ns netns.NsHandle, dst string, n int, d time.Duration) (rate float64, failed int64, err error) {
	var done, lost atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	fail := func(err error) {
		errMu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		errMu.Unlock()
	}
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Sockets are created in the namespace of the thread; the
			// thread is never given back (it ends with the goroutine).
			runtime.LockOSThread()
			if err := netns.Set(ns); err != nil {
				fail(err)
				return
			}
			dialer := net.Dialer{Timeout: 2 * time.Second}
			buf := make([]byte, 1)
			for time.Now().Before(deadline) {
				c, err := dialer.Dial("tcp4", dst)
				if err != nil {
					lost.Add(1)
					continue
				}
				c.SetReadDeadline(time.Now().Add(time.Second))
				_, err = c.Read(buf)
				c.Close()
				if err != io.EOF {
					// counted, not fatal: on a loaded 2-vCPU machine a
					// server close now and then takes longer than this
					lost.Add(1)
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return float64(done.Load()) / time.Since(start).Seconds(), lost.Load(), nil
}

// BenchmarkNATConnectionRate measures new TCP connections per second from
// a workload through its NAT gateway to an outside host (connect; the
// server closes at once; the client sees EOF and closes) on gwTopology,
// two ways in the same run: Meridian's eBPF NAT gateway, and the same
// gateway namespace forwarding in the kernel with nftables masquerade (the
// gateway's programs detached, decapsulated packets routed by the stack,
// replies re-encapsulated by a lightweight-tunnel route; the nftables table
// exists only during its rounds). The workload
// node's data path is the same for both. Rounds alternate so both see the
// machine's noise alike: the ratio reported is the geometric mean of each
// round's ratio, the rates the best round of each.
func BenchmarkNATConnectionRate(b *testing.B) {
	const (
		round       = 1500 * time.Millisecond
		rounds      = 5
		concurrency = 4
	)
	bpffs := privateBPFFS(b)
	inNewNetns(b, func(node netns.NsHandle) {
		g := newGatewayTopology(b, node, bpffs)
		// A NAT gateway's default port range.
		if err := g.dg.UpsertNATGateway(NATGateway{ID: 7, VPC: 100, Addresses: []netip.Addr{g.natIP},
			SNAT: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}}); err != nil {
			b.Fatal(err)
		}
		// The baseline's gateway: the stack forwards, nftables masquerades
		// on the uplink (table added in its rounds), replies go back into
		// the tunnel by route. Unused while Meridian's programs are
		// attached: they redirect every packet of the flows before the
		// stack sees it.
		inNs(b, g.gwNs, node, func() {
			if err := netlink.LinkSetHardwareAddr(g.vx2, gwRouterMAC); err != nil {
				b.Fatal(err)
			}
		})
		inNsCmd(b, g.gwNs, "", "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.ngvx2.rp_filter=0")
		inNsCmd(b, g.gwNs, "", "ip", "route", "replace", "10.0.1.0/24", "encap", "ip", "id", "100", "dst", g.nodeIP.String(), "dev", "ngvx2")
		inNsCmd(b, g.gwNs, "", "ip", "neigh", "replace", g.w2.address.String(), "lladdr", gwRouterMAC.String(), "dev", "ngvx2", "nud", "permanent")
		const masquerade = `table ip meridian_bench {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "ngup0" ip saddr 10.0.1.0/24 masquerade
	}
}
`

		// The outside host: accept, note who connected, close.
		var lis net.Listener
		var err error
		inNs(b, g.outNs, node, func() {
			lis, err = net.Listen("tcp4", g.outIP.String()+":9100")
		})
		if err != nil {
			b.Fatal(err)
		}
		defer lis.Close()
		var seenMu sync.Mutex
		seen := map[string]int{}
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				a := c.RemoteAddr().(*net.TCPAddr).IP.String()
				c.Close()
				seenMu.Lock()
				seen[a]++
				seenMu.Unlock()
			}
		}()
		from := func() map[string]int {
			seenMu.Lock()
			defer seenMu.Unlock()
			out := seen
			seen = map[string]int{}
			return out
		}

		dst := g.outIP.String() + ":9100"
		best := map[string]float64{}
		logRatio := 0.0 // sum over rounds of ln(meridian / nftables)
		for r := range rounds {
			rates := map[string]float64{}
			for _, variant := range []string{"meridian", "nftables"} {
				// Only the baseline's rounds have the nftables table: with
				// it, conntrack hooks every packet of the gateway's
				// namespace, the outer VXLAN packets too, which a Meridian
				// gateway does not pay.
				if variant == "meridian" {
					if r > 0 {
						inNsCmd(b, g.gwNs, "", "nft", "delete", "table", "ip", "meridian_bench")
					}
					g.attachGateway(b)
				} else {
					inNsCmd(b, g.gwNs, masquerade, "nft", "-f", "-")
					inNs(b, g.gwNs, node, func() {
						if err := g.dg.Detach(HookOverlay, g.vx2.Attrs().Index); err != nil {
							b.Fatal(err)
						}
						if err := g.dg.Detach(HookUplink, g.uplink.Attrs().Index); err != nil {
							b.Fatal(err)
						}
					})
				}
				from()
				rate, failed, err := connRate(g.w2.ns, dst, concurrency, round)
				if err == nil && float64(failed) > rate*round.Seconds()/100 {
					err = fmt.Errorf("%d connections failed, more than 1%%", failed)
				}
				if err != nil {
					dn, _ := g.dn.Drops()
					dg, _ := g.dg.Drops()
					st, _ := g.dg.NATStats()
					b.Fatalf("round %d, %s: %v (after %v connections; drops: node %v, gateway %v; NAT %+v)", r, variant, err, from(), dn, dg, st)
				}
				// Check the path measured is the one meant: the outside host
				// saw the NAT gateway's address, or the gateway's uplink.
				want := g.natIP.String()
				if variant == "nftables" {
					want = g.uplinkIP.String()
				}
				if got := from(); len(got) != 1 || got[want] == 0 {
					b.Fatalf("round %d, %s: connections came from %v, want only %s", r, variant, got, want)
				}
				b.Logf("round %d %s: %.0f connections/s, %d failed", r, variant, rate, failed)
				best[variant] = max(best[variant], rate)
				rates[variant] = rate
			}
			logRatio += math.Log(rates["meridian"] / rates["nftables"])
		}
		// Adjacent rounds share the machine's load: the geometric mean
		// of their ratios is the comparison; best rounds are the speeds.
		b.ReportMetric(math.Exp(logRatio/rounds), "x_vs_nftables")
		b.ReportMetric(best["meridian"], "meridian_conn/s")
		b.ReportMetric(best["nftables"], "nftables_conn/s")
	})
}
