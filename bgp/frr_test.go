package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/bgp/frrtest"
)

const (
	torASN     = 65000
	gatewayASN = 65101
)

// fabric is a top-of-rack router (FRR) and gateways, each in its own
// namespace with a veth to the router: gateway i is 10.77.i.2, the router's
// side 10.77.i.1.
type fabric struct {
	tor      *frrtest.Router
	gateways []gateway
}

type gateway struct {
	netns string
	addr  netip.Addr // the speaker's session address and so its next hop
	tor   netip.Addr // the router's address on that link
	// The same link's IPv6 addresses: fd77:i::2 and fd77:i::1.
	addr6, tor6 netip.Addr
}

func newFabric(t testing.TB, n int) *fabric {
	t.Helper()
	f := &fabric{tor: frrtest.Start(t, frrtest.Options{ASN: torASN})}
	for i := 1; i <= n; i++ {
		ns := frrtest.Netns(t, "gw")
		g := gateway{
			netns: ns,
			addr:  netip.MustParseAddr(fmt.Sprintf("10.77.%d.2", i)),
			tor:   netip.MustParseAddr(fmt.Sprintf("10.77.%d.1", i)),
			addr6: netip.MustParseAddr(fmt.Sprintf("fd77:%d::2", i)),
			tor6:  netip.MustParseAddr(fmt.Sprintf("fd77:%d::1", i)),
		}
		frrtest.Veth(t,
			frrtest.End{Netns: f.tor.Netns(), Name: fmt.Sprintf("gw%d", i), Addrs: []string{g.tor.String() + "/24", g.tor6.String() + "/64"}},
			frrtest.End{Netns: ns, Name: "uplink", Addrs: []string{g.addr.String() + "/24", g.addr6.String() + "/64"}})
		f.gateways = append(f.gateways, g)
	}
	return f
}

// speaker starts gateway i's speaker process and peers it with the router.
// The router side is configured first so the session comes up at the
// speaker's first connect attempt.
func (f *fabric) speaker(t testing.TB, ctx context.Context, i int, gr bool, routes ...Route) *child {
	t.Helper()
	g := f.gateways[i]
	c := startChild(t, fmt.Sprintf("gw%d", i+1), g.netns, Config{ASN: gatewayASN, RouterID: g.addr, ListenPort: -1})
	// Routes before peers: the first UPDATEs of the session carry them all,
	// then End-of-RIB (what an agent does after a restart).
	if len(routes) > 0 {
		if _, _, err := c.SetRoutes(ctx, routes...); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SetPeers(ctx, f.peer(i, gr)); err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fabric) peer(i int, gr bool) Peer {
	return Peer{Address: f.gateways[i].tor, ASN: torASN, HoldTime: 9 * time.Second, GracefulRestart: gr, RestartTime: 30 * time.Second}
}

func (f *fabric) addNeighbors(t testing.TB, ctx context.Context) {
	t.Helper()
	for _, g := range f.gateways {
		if err := f.tor.AddNeighbor(ctx, frrtest.Neighbor{Address: g.addr, ASN: gatewayASN}); err != nil {
			t.Fatal(err)
		}
	}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestAnnounceReachesFRRKernelFIBAndWithdrawRemovesIt(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	f := newFabric(t, 1)
	f.addNeighbors(t, ctx)
	gw := f.speaker(t, ctx, 0, false)
	if err := f.tor.WaitEstablished(ctx, f.gateways[0].addr); err != nil {
		t.Fatal(err)
	}

	eip := Route{Prefix: pfx("203.0.113.10/32"), MED: 50, Communities: []string{"65000:100", "65000:200:300"}}
	if _, _, err := gw.SetRoutes(ctx, eip); err != nil {
		t.Fatal(err)
	}
	if err := f.tor.WaitNextHops(ctx, eip.Prefix, func(nhs []netip.Addr, ok bool) bool {
		return ok && slices.Equal(nhs, addrs("10.77.1.2"))
	}); err != nil {
		t.Fatal(err)
	}
	paths, err := f.tor.Route(ctx, eip.Prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 1 {
		t.Fatalf("FRR has %d paths for %v, want 1: %+v", len(paths), eip.Prefix, paths)
	}
	p := paths[0]
	if p.MED != 50 || !slices.Equal(p.Communities, []string{"65000:100", "65000:200:300"}) || p.NextHop != f.gateways[0].addr {
		t.Errorf("FRR's path = %+v, want MED 50, communities 65000:100 and 65000:200:300, next hop %v", p, f.gateways[0].addr)
	}
	states, err := gw.PeerStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].Advertised != 1 {
		t.Errorf("peer states = %+v, want one peer with 1 prefix advertised", states)
	}

	if _, announced, err := gw.SetRoutes(ctx); err != nil || len(announced) != 0 {
		t.Fatalf("withdrawing everything: announced %v, %v", announced, err)
	}
	if err := f.tor.WaitFIB(ctx, eip.Prefix, false); err != nil {
		t.Fatal(err)
	}
}

func TestTwoGatewaysGiveECMPAndOneCrashLeavesOneNextHop(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	f := newFabric(t, 2)
	f.addNeighbors(t, ctx)
	eip := Route{Prefix: pfx("203.0.113.20/32")}
	gw1 := f.speaker(t, ctx, 0, false, eip)
	f.speaker(t, ctx, 1, false, eip)

	if err := f.tor.WaitNextHops(ctx, eip.Prefix, func(nhs []netip.Addr, ok bool) bool {
		return slices.Equal(nhs, addrs("10.77.1.2", "10.77.2.2"))
	}); err != nil {
		t.Fatalf("no ECMP route through both gateways: %v", err)
	}
	// A crash, not a shutdown: no NOTIFICATION, no graceful restart
	// negotiated, so the router drops the path when the TCP session closes.
	gw1.Kill()
	if err := f.tor.WaitNextHops(ctx, eip.Prefix, func(nhs []netip.Addr, ok bool) bool {
		return slices.Equal(nhs, addrs("10.77.2.2"))
	}); err != nil {
		t.Fatalf("after gateway 1 crashed: %v", err)
	}
}

func TestGracefulRestartLeavesRouterFIBUntouched(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	f := newFabric(t, 1)
	f.addNeighbors(t, ctx)
	routes := []Route{
		{Prefix: pfx("203.0.113.30/32"), MED: 10, Communities: []string{"65000:30"}},
		{Prefix: pfx("203.0.113.31/32")},
		{Prefix: pfx("10.30.0.0/16")},
	}
	gw := f.speaker(t, ctx, 0, true, routes...)
	for _, r := range routes {
		if err := f.tor.WaitFIB(ctx, r.Prefix, true); err != nil {
			t.Fatal(err)
		}
	}
	before, err := f.tor.FIB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	watch := f.tor.WatchFIB(t)

	gw.Kill()
	// The router notices at once (the kernel closed the socket) and keeps
	// the routes as stale.
	if err := waitCond(ctx, func() bool {
		st, _, err := f.tor.NeighborState(ctx, f.gateways[0].addr)
		return err == nil && st != "Established"
	}); err != nil {
		t.Fatalf("router did not notice the crash: %v", err)
	}
	paths, err := f.tor.Route(ctx, routes[0].Prefix)
	if err != nil || len(paths) != 1 || !paths[0].Stale {
		t.Fatalf("while the gateway is down the router's path is %+v (%v), want one stale path", paths, err)
	}

	f.speaker(t, ctx, 0, true, routes...)
	if err := f.tor.WaitEstablished(ctx, f.gateways[0].addr); err != nil {
		t.Fatal(err)
	}
	// Restart done when the router cleared the stale flags (End-of-RIB).
	if err := waitCond(ctx, func() bool {
		for _, r := range routes {
			paths, err := f.tor.Route(ctx, r.Prefix)
			if err != nil || len(paths) != 1 || paths[0].Stale {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatalf("routes still stale after the restart: %v", err)
	}
	// Give zebra time to act on anything bgpd decided.
	time.Sleep(500 * time.Millisecond)

	var watched []string
	for _, r := range routes {
		watched = append(watched, r.Prefix.Addr().String())
	}
	if ch := watch.Changes(watched...); len(ch) != 0 {
		t.Errorf("the router's kernel FIB changed during the restart:\n%v", ch)
	}
	after, err := f.tor.FIB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if !slices.Equal(before[r.Prefix], after[r.Prefix]) || len(after[r.Prefix]) == 0 {
			t.Errorf("%v: next hops %v before, %v after", r.Prefix, before[r.Prefix], after[r.Prefix])
		}
	}
	t.Logf("all route changes seen during the restart: %v", watch)
}

// TestGracefulRestartWithdrawsWhatWasReleasedMeanwhile: an elastic IP
// released while the agent was down is not re-announced; the End-of-RIB that
// follows the re-announcement lets the router drop its stale path at once,
// long before the 30 s restart time, while the kept routes never leave the
// FIB.
func TestGracefulRestartWithdrawsWhatWasReleasedMeanwhile(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	f := newFabric(t, 1)
	f.addNeighbors(t, ctx)
	kept := Route{Prefix: pfx("203.0.113.60/32")}
	released := Route{Prefix: pfx("203.0.113.61/32")}
	gw := f.speaker(t, ctx, 0, true, kept, released)
	for _, r := range []Route{kept, released} {
		if err := f.tor.WaitFIB(ctx, r.Prefix, true); err != nil {
			t.Fatal(err)
		}
	}
	watch := f.tor.WatchFIB(t)
	gw.Kill()
	if err := waitCond(ctx, func() bool {
		paths, err := f.tor.Route(ctx, released.Prefix)
		return err == nil && len(paths) == 1 && paths[0].Stale
	}); err != nil {
		t.Fatalf("router did not keep the routes as stale: %v", err)
	}

	f.speaker(t, ctx, 0, true, kept)
	if err := f.tor.WaitEstablished(ctx, f.gateways[0].addr); err != nil {
		t.Fatal(err)
	}
	established := time.Now()
	eorCtx, eorCancel := context.WithTimeout(ctx, 10*time.Second)
	defer eorCancel()
	if err := f.tor.WaitFIB(eorCtx, released.Prefix, false); err != nil {
		t.Fatalf("the released address stayed in the router's FIB: no End-of-RIB? %v", err)
	}
	t.Logf("stale route removed %v after the session came back", time.Since(established).Round(time.Millisecond))
	if ch := watch.Changes(kept.Prefix.Addr().String()); len(ch) != 0 {
		t.Errorf("the kept route changed in the router's FIB during the restart: %v", ch)
	}
	if err := f.tor.WaitFIB(ctx, kept.Prefix, true); err != nil {
		t.Fatal(err)
	}
}

func TestPeerStateFollowsTheSession(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	f := newFabric(t, 1)
	f.addNeighbors(t, ctx)
	eip := Route{Prefix: pfx("203.0.113.40/32")}
	start := time.Now()
	gw := f.speaker(t, ctx, 0, false, eip)
	var st []PeerState
	if err := waitCond(ctx, func() bool {
		var err error
		st, err = gw.PeerStates(ctx)
		return err == nil && len(st) == 1 && st[0].State == "established"
	}); err != nil {
		t.Fatalf("peer never established: %+v: %v", st, err)
	}
	if st[0].Address != f.gateways[0].tor || st[0].Since.Before(start) || st[0].Advertised != 1 {
		t.Errorf("state = %+v, want peer %v established since after %v with 1 route advertised", st[0], f.gateways[0].tor, start)
	}
	if err := f.tor.WaitFIB(ctx, eip.Prefix, true); err != nil {
		t.Fatal(err)
	}

	// Removing the peer closes the session cleanly: the router withdraws
	// our route at once, and the speaker reports no peer.
	if err := gw.SetPeers(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := gw.PeerStates(ctx); err != nil || len(st) != 0 {
		t.Errorf("after removing the peer: states %+v, %v", st, err)
	}
	if err := f.tor.WaitFIB(ctx, eip.Prefix, false); err != nil {
		t.Fatalf("route not withdrawn when the peer was removed: %v", err)
	}
	state, _, err := f.tor.NeighborState(ctx, f.gateways[0].addr)
	if err != nil || state == "Established" {
		t.Errorf("router's session after removal: %q, %v", state, err)
	}

	// Back, then the router goes away: the state leaves established and
	// says why.
	if err := gw.SetPeers(ctx, f.peer(0, false)); err != nil {
		t.Fatal(err)
	}
	if err := f.tor.WaitEstablished(ctx, f.gateways[0].addr); err != nil {
		t.Fatal(err)
	}
	f.tor.StopBGP()
	if err := waitCond(ctx, func() bool {
		var err error
		st, err = gw.PeerStates(ctx)
		return err == nil && len(st) == 1 && st[0].State != "established" && st[0].LastError != ""
	}); err != nil {
		t.Fatalf("peer state after the router stopped: %+v: %v", st, err)
	}
	t.Logf("after the router stopped: %+v", st[0])
}

func TestSetRoutesWithABadRouteChangesNothing(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	f := newFabric(t, 1)
	f.addNeighbors(t, ctx)
	good := Route{Prefix: pfx("203.0.113.50/32")}
	gw := f.speaker(t, ctx, 0, false, good)
	if err := f.tor.WaitFIB(ctx, good.Prefix, true); err != nil {
		t.Fatal(err)
	}

	added := Route{Prefix: pfx("203.0.113.51/32")}
	for _, bad := range []Route{
		{Prefix: pfx("203.0.113.52/32"), Communities: []string{"65000:not-a-number"}},
		{Prefix: pfx("203.0.113.0/24").Masked(), Communities: []string{"1:2:3:4"}},
		{Prefix: netip.PrefixFrom(netip.MustParseAddr("203.0.113.53"), 24)},
	} {
		// The bad route comes last, and the call would also withdraw good
		// and add another: none of it may happen.
		_, announced, err := gw.SetRoutes(ctx, added, bad)
		if err == nil {
			t.Fatalf("SetRoutes with %v succeeded", bad)
		}
		if !slices.Equal(announced, []netip.Prefix{good.Prefix}) {
			t.Errorf("after the failed call the speaker announces %v, want only %v", announced, good.Prefix)
		}
	}
	// Anything sent would reach FRR's table within a few ms.
	time.Sleep(300 * time.Millisecond)
	routes, err := f.tor.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[good.Prefix] == nil {
		t.Errorf("FRR's BGP table = %v, want only %v", routes, good.Prefix)
	}
}

// TestIPv6SessionWithPassword: an elastic IPv6 address (/128) over an IPv6
// session protected by TCP MD5 reaches FRR's kernel FIB through the
// gateway's IPv6 address.
func TestIPv6SessionWithPassword(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	f := newFabric(t, 1)
	g := f.gateways[0]
	const password = "m3ridian-bgp"
	if err := f.tor.AddNeighbor(ctx, frrtest.Neighbor{Address: g.addr6, ASN: gatewayASN, Password: password}); err != nil {
		t.Fatal(err)
	}
	gw := startChild(t, "gw1", g.netns, Config{ASN: gatewayASN, RouterID: g.addr, ListenPort: -1})
	eip := Route{Prefix: pfx("2001:db8:77::10/128"), MED: 5, Communities: []string{"65000:600"}}
	if _, _, err := gw.SetRoutes(ctx, eip); err != nil {
		t.Fatal(err)
	}
	if err := gw.SetPeers(ctx, Peer{Address: g.tor6, ASN: torASN, Password: password, HoldTime: 9 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := f.tor.WaitEstablished(ctx, g.addr6); err != nil {
		t.Fatal(err)
	}
	if err := f.tor.WaitNextHops(ctx, eip.Prefix, func(nhs []netip.Addr, ok bool) bool {
		return ok && slices.Equal(nhs, []netip.Addr{g.addr6})
	}); err != nil {
		t.Fatal(err)
	}
	paths, err := f.tor.Route(ctx, eip.Prefix)
	if err != nil || len(paths) != 1 || paths[0].MED != 5 || !slices.Equal(paths[0].Communities, []string{"65000:600"}) {
		t.Errorf("FRR's paths for %v: %+v, %v", eip.Prefix, paths, err)
	}
}

func waitCond(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}
