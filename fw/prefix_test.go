package fw

import (
	"math/rand/v2"
	"testing"
)

func TestRangePrefixesCoverExactly(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		lo, hi := uint16(r.IntN(65536)), uint16(r.IntN(65536))
		if lo > hi {
			lo, hi = hi, lo
		}
		ps := rangePrefixes(lo, hi)
		if len(ps) > 30 {
			t.Fatalf("[%d,%d]: %d prefixes", lo, hi, len(ps))
		}
		for _, v := range []uint16{lo, hi, lo - 1, hi + 1, uint16(r.IntN(65536))} {
			in := v >= lo && v <= hi
			n := 0
			for _, p := range ps {
				if p.Contains(v) {
					n++
				}
			}
			if (n == 1) != in || n > 1 {
				t.Fatalf("[%d,%d] port %d: covered %d times, want in=%v (%v)", lo, hi, v, n, in, ps)
			}
		}
	}
	if ps := rangePrefixes(0, 0xffff); len(ps) != 1 || ps[0].Bits != 0 {
		t.Fatalf("full range: %v", ps)
	}
}
