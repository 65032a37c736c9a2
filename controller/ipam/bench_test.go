package ipam_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/ipam/ipamtest"
	"github.com/meridian-sdn/meridian/controller/store"
)

// countingTx counts store reads, the cost that dominates on a real store.
type countingTx struct {
	store.Tx
	gets int
}

func (c *countingTx) Get(key string) (store.KV, bool, error) {
	c.gets++
	return c.Tx.Get(key)
}

// BenchmarkAllocateIP measures steady-state churn in a /16 at a given
// occupancy: each op allocates one address and releases a random held one, so
// the fill level stays put and freed addresses are scattered behind and ahead
// of the cursor (the worst case for a cursor without an index). ns/op and
// gets/op must stay flat from 10% to 99% full.
//
//	go test -run '^$' -bench BenchmarkAllocateIP -benchtime 200000x ./controller/ipam/
func BenchmarkAllocateIP(b *testing.B) {
	s := subnet("bench", "10.0.0.0/16", "10.0.0.1")
	const usable = 1<<16 - 3
	for _, fill := range []int{10, 50, 90, 99} {
		b.Run(fmt.Sprintf("fill=%d%%", fill), func(b *testing.B) {
			tx := &countingTx{Tx: ipamtest.NewTx()}
			rng := rand.New(rand.NewPCG(1, uint64(fill)))
			// Occupy fill% of the usable addresses, chosen at random.
			var held []netip.Addr
			for _, i := range rng.Perm(1 << 16) {
				if len(held) == usable*fill/100 {
					break
				}
				a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
				if err := ipam.ReserveIP(tx, s, a, "pre"); err == nil {
					held = append(held, a)
				}
			}
			tx.gets = 0
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				a, err := ipam.AllocateIP(tx, s, "p")
				if err != nil {
					b.Fatal(err)
				}
				held = append(held, a)
				j := rng.IntN(len(held))
				if err := ipam.ReleaseIP(tx, s, held[j]); err != nil {
					b.Fatal(err)
				}
				held[j] = held[len(held)-1]
				held = held[:len(held)-1]
			}
			b.ReportMetric(float64(tx.gets)/float64(b.N), "gets/op")
		})
	}
}
