package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// fibEvents timestamps the first RTM_NEWROUTE for each prefix in a
// namespace's kernel FIB, as zebra installs them.
type fibEvents struct {
	mu      sync.Mutex
	changed chan struct{}
	seen    map[netip.Prefix]time.Time
	last    time.Time
	errs    []error
}

func watchFIBEvents(tb testing.TB, ns string) *fibEvents {
	tb.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	w := &fibEvents{changed: make(chan struct{}), seen: map[netip.Prefix]time.Time{}}
	ch := make(chan netlink.RouteUpdate, 4096)
	done := make(chan struct{})
	err = netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: &h,
		// 10,000 routes arrive in a burst: a small buffer would drop
		// events (ENOBUFS) and the count would never complete.
		ReceiveBufferSize:      64 << 20,
		ReceiveBufferForceSize: true,
		ErrorCallback: func(err error) {
			w.mu.Lock()
			w.errs = append(w.errs, err)
			w.mu.Unlock()
		},
	})
	if err != nil {
		tb.Fatalf("netlink route subscription in %s: %v", ns, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for u := range ch {
			now := time.Now()
			if u.Type != unix.RTM_NEWROUTE || u.Protocol != unix.RTPROT_BGP || u.Dst == nil {
				continue
			}
			p, ok := prefixOf(u.Dst)
			if !ok {
				continue
			}
			w.mu.Lock()
			if _, dup := w.seen[p]; !dup {
				w.seen[p] = now
				w.last = now
				close(w.changed)
				w.changed = make(chan struct{})
			}
			w.mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		close(done)
		<-exited
	})
	return w
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func (w *fibEvents) wait(ctx context.Context, p netip.Prefix) (time.Time, error) {
	for {
		w.mu.Lock()
		ts, ok := w.seen[p]
		ch := w.changed
		errs := w.errs
		w.mu.Unlock()
		if ok {
			return ts, nil
		}
		if len(errs) > 0 {
			return time.Time{}, fmt.Errorf("netlink: %v", errs)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%v never reached the router's FIB: %w", p, ctx.Err())
		}
	}
}

func (w *fibEvents) count() (int, time.Time, []error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seen), w.last, w.errs
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(len(s)-1, i))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// hostRoutes returns n /32s from 100.64.0.0/10 starting at index from.
func hostRoutes(from, n int) []Route {
	out := make([]Route, 0, n)
	for i := from; i < from+n; i++ {
		a := netip.AddrFrom4([4]byte{100, byte(64 + i>>16), byte(i >> 8), byte(i)})
		out = append(out, Route{Prefix: netip.PrefixFrom(a, 32), MED: 10, Communities: []string{"65000:100"}})
	}
	return out
}

// BenchmarkAnnounceLatency: an elastic IP is associated (one more /32 in a
// SetRoutes call that also carries 1,000 unchanged routes, as the agent's
// reconcile does). Meridian's share ends when the UPDATE is on the wire
// (kernel timestamp of the outgoing frame on the gateway's uplink); the
// baseline in the same run is the whole path until FRR's zebra installs the
// route in the kernel FIB, most of it FRR's own processing.
func BenchmarkAnnounceLatency(b *testing.B) {
	const rounds = 100
	const background = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFabric(b, 1)
	f.addNeighbors(b, ctx)
	capture := startCapture(b, f.gateways[0].netns, "uplink", f.gateways[0].addr)
	fib := watchFIBEvents(b, f.tor.Netns())
	routes := hostRoutes(0, background)
	gw := f.speaker(b, ctx, 0, false, routes...)
	if err := f.tor.WaitEstablished(ctx, f.gateways[0].addr); err != nil {
		b.Fatal(err)
	}
	if _, err := fib.wait(ctx, routes[background-1].Prefix); err != nil {
		b.Fatal(err)
	}
	var wire, total, call []time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i := range rounds {
			r := hostRoutes(background+n*rounds+i, 1)[0]
			routes = append(routes, r)
			rep, err := gw.setRoutes(ctx, routes...)
			if err != nil {
				b.Fatal(err)
			}
			start := time.Unix(0, rep.CallUnixNano)
			call = append(call, time.Duration(rep.ReturnUnixNano-rep.CallUnixNano))
			w, err := capture.wait(ctx, r.Prefix)
			if err != nil {
				b.Fatal(err)
			}
			fi, err := fib.wait(ctx, r.Prefix)
			if err != nil {
				b.Fatal(err)
			}
			wire = append(wire, w.Sub(start))
			total = append(total, fi.Sub(start))
		}
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(wire, 0.5)), "wire-p50-ms")
	b.ReportMetric(ms(percentile(wire, 0.99)), "wire-p99-ms")
	b.ReportMetric(ms(percentile(total, 0.5)), "fib-p50-ms")
	b.ReportMetric(ms(percentile(total, 0.99)), "fib-p99-ms")
	b.ReportMetric(float64(percentile(wire, 0.5))/float64(percentile(total, 0.5)), "share-p50")
	b.ReportMetric(ms(percentile(call, 0.99)), "call-p99-ms")
	b.Logf("%d announcements; SetRoutes returns p50 %v p99 %v; call -> UPDATE on the wire p50 %v p99 %v max %v; call -> router's kernel FIB p50 %v p99 %v max %v",
		len(wire), percentile(call, 0.5), percentile(call, 0.99), percentile(wire, 0.5), percentile(wire, 0.99), slices.Max(wire), percentile(total, 0.5), percentile(total, 0.99), slices.Max(total))
}

// BenchmarkAnnounce10000: 10,000 elastic IPs announced by one SetRoutes call
// on an established session: time until the last UPDATE is on the wire
// (Meridian's share) and until all 10,000 are in FRR's kernel FIB. The
// baseline in the same run sends the same routes with one GoBGP AddPath call
// (and so one UPDATE) per route, which is what batching replaces.
func BenchmarkAnnounce10000(b *testing.B) {
	var wireBatch, fibBatch, wireOne, fibOne time.Duration
	for range b.N {
		w, f := announceAll(b, 10000, false)
		wireBatch, fibBatch = wireBatch+w, fibBatch+f
		w, f = announceAll(b, 10000, true)
		wireOne, fibOne = wireOne+w, fibOne+f
	}
	n := time.Duration(b.N)
	b.ReportMetric(ms(wireBatch/n), "wire-all-ms")
	b.ReportMetric(ms(fibBatch/n), "fib-all-ms")
	b.ReportMetric(ms(fibOne/n), "baseline-fib-all-ms")
	b.ReportMetric(float64(fibOne)/float64(fibBatch), "speedup-vs-per-path")
	b.ReportMetric(float64(wireBatch)/float64(fibBatch), "share")
	b.Logf("10,000 /32s: batched: last UPDATE on the wire %v, all in FIB %v; one path per call: %v, %v", wireBatch/n, fibBatch/n, wireOne/n, fibOne/n)
}

// announceAll announces n /32s in one SetRoutes call to a fresh router and
// returns the times from the call until the last UPDATE left the gateway and
// until the last route was in the router's kernel FIB.
func announceAll(b *testing.B, n int, noBatch bool) (wire, fibAll time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b.StopTimer()
	f := newFabric(b, 1)
	f.addNeighbors(b, ctx)
	capture := startCapture(b, f.gateways[0].netns, "uplink", f.gateways[0].addr)
	fib := watchFIBEvents(b, f.tor.Netns())
	g := f.gateways[0]
	gw := startChildWith(b, "gw1", g.netns, childConfig{Config: Config{ASN: gatewayASN, RouterID: g.addr, ListenPort: -1}, NoBatch: noBatch})
	if err := gw.SetPeers(ctx, f.peer(0, false)); err != nil {
		b.Fatal(err)
	}
	if err := f.tor.WaitEstablished(ctx, g.addr); err != nil {
		b.Fatal(err)
	}
	routes := hostRoutes(0, n)
	b.StartTimer()
	start, _, err := gw.SetRoutes(ctx, routes...)
	if err != nil {
		b.Fatal(err)
	}
	for {
		got, last, errs := fib.count()
		if len(errs) > 0 {
			b.Fatalf("netlink: %v", errs)
		}
		if got == n {
			fibAll = last.Sub(start)
			break
		}
		select {
		case <-ctx.Done():
			b.Fatalf("%d of %d routes in the router's FIB: %v", got, n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	b.StopTimer()
	sent, last := capture.count()
	if sent != n {
		b.Fatalf("captured %d of %d announcements on the wire", sent, n)
	}
	fibNow, err := f.tor.FIB(ctx)
	if err != nil || len(fibNow) != n {
		b.Fatalf("router's FIB has %d routes (%v), want %d", len(fibNow), err, n)
	}
	return last.Sub(start), fibAll
}
