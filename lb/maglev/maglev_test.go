package maglev

import (
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func backends(n int, weight func(i int) uint32) []Backend {
	bs := make([]Backend, n)
	for i := range bs {
		bs[i] = Backend{Key: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1), Weight: weight(i)}
	}
	return bs
}

func counts(table []int32, n int) []int {
	c := make([]int, n)
	for _, e := range table {
		c[e]++
	}
	return c
}

// Each backend's share of the table is within 1% of its weight's share,
// or within 2 slots (3e-5 of the traffic) where 1% is smaller than the
// rounding a table of whole slots allows (a weight-1 backend among weights
// up to 256 expects only ~5 of 65,537 slots).
func TestBalanceFollowsWeights(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 2, 3, 7, 10, 50, 100} {
		for _, weighted := range []bool{false, true} {
			bs := backends(n, func(int) uint32 {
				if !weighted {
					return 1
				}
				return uint32(rng.IntN(MaxWeight) + 1)
			})
			table, err := Table(bs, DefaultSize)
			if err != nil {
				t.Fatal(err)
			}
			var total uint32
			for _, b := range bs {
				total += b.Weight
			}
			for i, got := range counts(table, n) {
				want := float64(DefaultSize) * float64(bs[i].Weight) / float64(total)
				if diff := math.Abs(float64(got) - want); diff/want > 0.01 && diff > 2 {
					dev := diff / want
					t.Errorf("n=%d weighted=%v: backend %d (weight %d) has %d slots, want %.0f (±1%%): off by %.2f%%",
						n, weighted, i, bs[i].Weight, got, want, dev*100)
				}
			}
		}
	}
}

// Removing one of N backends moves about 1/N of the slots: the removed
// backend's own, plus the few extra the Maglev paper reports.
func TestRemovalDisruptsAboutOneNth(t *testing.T) {
	for _, n := range []int{3, 5, 10, 20, 100} {
		bs := backends(n, func(int) uint32 { return 1 })
		before, err := Table(bs, DefaultSize)
		if err != nil {
			t.Fatal(err)
		}
		removed := n / 2
		rest := append(append([]Backend{}, bs[:removed]...), bs[removed+1:]...)
		after, err := Table(rest, DefaultSize)
		if err != nil {
			t.Fatal(err)
		}
		moved := 0
		for i := range before {
			if bs[before[i]].Key != rest[after[i]].Key {
				moved++
			}
		}
		frac := float64(moved) / DefaultSize
		ideal := 1 / float64(n)
		t.Logf("n=%d: %.2f%% of slots moved (ideal %.2f%%)", n, frac*100, ideal*100)
		if frac > ideal*1.2+0.005 {
			t.Errorf("n=%d: removing one backend moved %.2f%% of flows, want about %.2f%%", n, frac*100, ideal*100)
		}
	}
}

// Nodes compute the same table whatever order they list backends in.
func TestTableIndependentOfOrder(t *testing.T) {
	bs := backends(17, func(i int) uint32 { return uint32(i%5 + 1) })
	ref, err := Table(bs, 65537)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 5 {
		shuffled := append([]Backend{}, bs...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		got, err := Table(shuffled, 65537)
		if err != nil {
			t.Fatal(err)
		}
		for i := range ref {
			if bs[ref[i]].Key != shuffled[got[i]].Key {
				t.Fatalf("slot %d differs with another backend order", i)
			}
		}
	}
}

func TestTableRejectsBadInput(t *testing.T) {
	for name, tc := range map[string]struct {
		bs   []Backend
		size uint32
	}{
		"size not prime":   {backends(2, func(int) uint32 { return 1 }), 65536},
		"zero weight":      {[]Backend{{Key: "a", Weight: 0}}, 7},
		"weight too large": {[]Backend{{Key: "a", Weight: MaxWeight + 1}}, 7},
		"duplicate key":    {[]Backend{{Key: "a", Weight: 1}, {Key: "a", Weight: 2}}, 7},
		"more than size":   {backends(8, func(int) uint32 { return 1 }), 7},
	} {
		if _, err := Table(tc.bs, tc.size); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	table, err := Table(nil, 7)
	if err != nil || Lookup(table, 12345) != Empty {
		t.Fatalf("empty backend set: table %v, err %v", table, err)
	}
}

func TestFlowHashWords(t *testing.T) {
	// 10.0.0.1 -> 10.0.0.2 sport 1 dport 80: the words as a little-endian
	// load of the header sees them.
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	h, err := FlowHash(src, dst, 1, 80, 6)
	if err != nil {
		t.Fatal(err)
	}
	if want := RawFlowHash(0x0100000a, 0x0200000a, 0x0100, 0x5000, 6); h != want {
		t.Fatalf("FlowHash = %#x, RawFlowHash on the loaded words = %#x", h, want)
	}
	if _, err := FlowHash(netip.MustParseAddr("::1"), dst, 1, 2, 6); err == nil {
		t.Fatal("IPv6 accepted")
	}
}

// The flow hash spreads flows evenly over a table: 100,000 random flows
// over 10 equal backends land within 3% of 1/10 each.
func TestFlowHashSpreads(t *testing.T) {
	bs := backends(10, func(int) uint32 { return 1 })
	table, err := Table(bs, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	c := make([]int, len(bs))
	const flows = 100000
	for range flows {
		h := RawFlowHash(rng.Uint32(), 0x0a00000a, uint16(rng.Uint32()), 0x5000, 6)
		c[Lookup(table, h)]++
	}
	for i, got := range c {
		if dev := math.Abs(float64(got)-flows/10) / (flows / 10); dev > 0.03 {
			t.Errorf("backend %d got %d of %d flows (%.1f%% off)", i, got, flows, dev*100)
		}
	}
}

func BenchmarkTable100Backends(b *testing.B) {
	bs := backends(100, func(i int) uint32 { return uint32(i%4 + 1) })
	for b.Loop() {
		if _, err := Table(bs, DefaultSize); err != nil {
			b.Fatal(err)
		}
	}
}
