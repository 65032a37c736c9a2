package frrtest

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseIPRouteJSON(t *testing.T) {
	in := `[{"dst":"203.0.113.7","gateway":"10.0.0.2","dev":"v0","protocol":"bgp","metric":20,"flags":[]},
{"dst":"203.0.113.8","protocol":"bgp","metric":20,"flags":[],"nexthops":[{"gateway":"10.0.1.2","dev":"v1","weight":1,"flags":[]},{"gateway":"10.0.0.2","dev":"v0","weight":1,"flags":[]}]},
{"dst":"10.9.0.0/16","gateway":"10.0.0.2","dev":"v0","protocol":"bgp","metric":20,"flags":[]},
{"dst":"2001:db8::7","gateway":"fd00::2","dev":"v0","protocol":"bgp","metric":20,"flags":[]}]`
	got, err := ParseIPRouteJSON([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	want := map[netip.Prefix][]netip.Addr{
		netip.MustParsePrefix("203.0.113.7/32"):  {a("10.0.0.2")},
		netip.MustParsePrefix("203.0.113.8/32"):  {a("10.0.0.2"), a("10.0.1.2")},
		netip.MustParsePrefix("10.9.0.0/16"):     {a("10.0.0.2")},
		netip.MustParsePrefix("2001:db8::7/128"): {a("fd00::2")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, err := ParseIPRouteJSON([]byte(`[{"dst":"not-an-address"}]`)); err == nil {
		t.Error("a bad dst parsed without error")
	}
}

// TestRouterStartsAndStops checks the helper itself: bgpd answers in the
// namespace, a neighbour can be configured, and the FIB starts empty.
func TestRouterStartsAndStops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := Start(t, Options{ASN: 65010})
	out, err := r.Vtysh(ctx, "show running-config")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"router bgp 65010", "no bgp ebgp-requires-policy", "maximum-paths 8"} {
		if !strings.Contains(out, want) {
			t.Errorf("running config lacks %q:\n%s", want, out)
		}
	}
	peer := netip.MustParseAddr("10.0.0.2")
	if err := r.AddNeighbor(ctx, Neighbor{Address: peer, ASN: 65001}); err != nil {
		t.Fatal(err)
	}
	st, _, err := r.NeighborState(ctx, peer)
	if err != nil || st == "Established" {
		t.Errorf("neighbor state = %q, %v; want a configured, not established, session", st, err)
	}
	if err := r.ConfigureBGP(ctx, "neighbor 10.0.0.3 bogus-keyword"); err == nil {
		t.Error("a bad configuration line was accepted")
	}
	fib, err := r.FIB(ctx)
	if err != nil || len(fib) != 0 {
		t.Errorf("FIB = %v, %v; want empty", fib, err)
	}
	w := r.WatchFIB(t)
	if _, err := Exec(ctx, r.Netns(), "ip", "route", "add", "192.0.2.10/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(w.Changes("192.0.2.10")) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if len(w.Changes("192.0.2.10")) == 0 {
		t.Errorf("the watcher missed a route change: %v", w)
	}
}
