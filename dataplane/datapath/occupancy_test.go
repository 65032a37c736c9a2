package datapath

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
)

// TestConntrackOccupancyCountsFlows: each new flow forwarded by the data
// path takes one conntrack entry; its replies and dropped packets take none.
func TestConntrackOccupancyCountsFlows(t *testing.T) {
	f := newFixture(t)
	const flows = 37
	for i := range flows {
		p := from(portA, portB.IPs[0])
		p.sport = uint16(30000 + i)
		f.expectDeliver(t, portA, p.bytes(t), portB, 64)
	}
	// a reply of the first flow: no new entry
	back := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: portA.IPs[0], proto: fw.ProtoTCP, sport: 80, dport: 30000, flags: "SA"}
	f.expectDeliver(t, portB, back.bytes(t), portA, 64)
	// a drop: no entry
	f.policies[portA.SGPolicy] = fw.SecurityGroupPolicy{ID: portA.SGPolicy}
	f.install(t)
	p := from(portA, portB.IPs[0])
	p.sport = 50000
	f.expectDrop(t, portA, p.bytes(t), portA.ID, DropSGEgress)

	o, err := f.d.ConntrackOccupancy()
	if err != nil {
		t.Fatal(err)
	}
	if o.Entries != flows || o.Live != flows || o.Capacity != 262144 {
		t.Fatalf("conntrack occupancy %+v, want %d entries, all live, of 262144", o, flows)
	}
	n, err := f.d.NATOccupancy()
	if err != nil {
		t.Fatal(err)
	}
	if n.Entries != 0 || n.Capacity != 262144 {
		t.Fatalf("NAT occupancy %+v on a node that translated nothing", n)
	}
}

// fillConntrack writes n entries straight into the conntrack table, every
// other one expired, as a busy node's table would hold after some time.
func fillConntrack(t testing.TB, d *Datapath, n int) {
	t.Helper()
	now, err := monotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]bpf.MeridianCtKey, n)
	vals := make([]bpf.MeridianCtEntry, n)
	for i := range keys {
		keys[i] = bpf.MeridianCtKey{Vpc: 100, Saddr: 0x0a000000 | uint32(i>>16), Daddr: 0x0a010014, Sport: uint16(i), Dport: 80, Proto: 6}
		vals[i] = bpf.MeridianCtEntry{Expires: now + uint64(time.Hour), State: 2}
		if i%2 == 1 {
			vals[i].Expires = now - 1
		}
	}
	if c, err := d.objs.Conntrack.BatchUpdate(keys, vals, nil); err != nil || c != n {
		t.Fatalf("fill conntrack: wrote %d of %d: %v", c, n, err)
	}
}

// TestOccupancyBatchMatchesIteration: the batched count agrees with a walk
// of every key on a large table, live and expired entries apart.
func TestOccupancyBatchMatchesIteration(t *testing.T) {
	d := openTest(t)
	const n = 100_000
	fillConntrack(t, d, n)
	o, err := d.ConntrackOccupancy()
	if err != nil {
		t.Fatal(err)
	}
	now, _ := monotonicNow()
	it, err := countByIteration[bpf.MeridianCtKey](d.objs.Conntrack, func(v *bpf.MeridianCtEntry) bool { return v.Expires >= now }, o.Capacity)
	if err != nil {
		t.Fatal(err)
	}
	if o.Entries != n || o.Live != n/2 || o != it {
		t.Fatalf("batched %+v, iterated %+v, want %d entries, %d live", o, it, n, n/2)
	}
}

// BenchmarkConntrackOccupancy100k is the cost a /metrics scrape pays for the
// conntrack occupancy on a table of 100,000 entries, against the baseline of
// walking the table one key at a time (ratio "x_faster_than_iteration").
func BenchmarkConntrackOccupancy100k(b *testing.B) {
	d := openTest(b)
	fillConntrack(b, d, 100_000)
	live := func(*bpf.MeridianCtEntry) bool { return true }
	const baseRounds = 5
	start := time.Now()
	for range baseRounds {
		if _, err := countByIteration[bpf.MeridianCtKey](d.objs.Conntrack, live, 0); err != nil {
			b.Fatal(err)
		}
	}
	base := time.Since(start) / baseRounds
	b.ResetTimer()
	start = time.Now()
	for b.Loop() {
		if _, err := d.ConntrackOccupancy(); err != nil {
			b.Fatal(err)
		}
	}
	per := time.Since(start) / time.Duration(b.N)
	b.ReportMetric(float64(per.Microseconds())/1000, "ms/scrape")
	b.ReportMetric(float64(base.Microseconds())/1000, "baseline_ms/scrape")
	b.ReportMetric(float64(base)/float64(per), "x_faster_than_iteration")
}

// countByIteration is the baseline: one lookup per entry.
func countByIteration[K, V any](m *ebpf.Map, live func(*V) bool, capacity int) (Occupancy, error) {
	o := Occupancy{Capacity: capacity}
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		o.Entries++
		if live(&v) {
			o.Live++
		}
	}
	return o, it.Err()
}
