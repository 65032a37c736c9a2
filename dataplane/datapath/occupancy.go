package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/meridian-sdn/meridian/bpf"
)

// Occupancy is how full an LRU table is. Entries counts every slot in use,
// expired or not: the kernel only reclaims an LRU slot when it needs one, so
// Entries reaching Capacity means new flows now evict old ones. Live counts
// the entries whose timeout has not passed.
type Occupancy struct {
	Entries  int
	Live     int
	Capacity int
}

// occupancyBatch is how many entries one batch lookup reads: large enough
// that a 100,000-entry table takes a few dozen system calls, small enough
// that the buffers stay under a megabyte.
const occupancyBatch = 4096

// ConntrackOccupancy counts the connection-tracking table's entries. It
// walks the table with batch lookups (one system call per 4096 entries), so
// its cost grows with the number of entries, not with the capacity.
func (d *Datapath) ConntrackOccupancy() (Occupancy, error) {
	now, err := monotonicNow()
	if err != nil {
		return Occupancy{}, err
	}
	o, err := countLRU(d.objs.Conntrack, make([]bpf.MeridianCtKey, occupancyBatch), make([]bpf.MeridianCtEntry, occupancyBatch),
		func(v *bpf.MeridianCtEntry) bool { return v.Expires >= now })
	if err != nil {
		return o, fmt.Errorf("count conntrack entries: %w", err)
	}
	return o, nil
}

// NATOccupancy counts the NAT table's entries. Each translated flow has two
// (one per direction), so Entries is about twice the flows of all NAT
// gateways and elastic IPs served by this node.
func (d *Datapath) NATOccupancy() (Occupancy, error) {
	now, err := monotonicNow()
	if err != nil {
		return Occupancy{}, err
	}
	o, err := countLRU(d.objs.Nat, make([]bpf.MeridianNatKey, occupancyBatch), make([]bpf.MeridianNatEntry, occupancyBatch),
		func(v *bpf.MeridianNatEntry) bool { return v.Expires >= now && v.State != natStateClosed })
	if err != nil {
		return o, fmt.Errorf("count NAT entries: %w", err)
	}
	return o, nil
}

// countLRU counts m's entries and those live says are live, reading them in
// batches; kernels without batch lookups fall back to one lookup per entry.
// A table changing during the walk may be counted a few entries off, which
// is fine for a gauge.
func countLRU[K, V any](m *ebpf.Map, keys []K, vals []V, live func(*V) bool) (Occupancy, error) {
	o := Occupancy{Capacity: int(m.MaxEntries())}
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range vals[:n] {
			o.Entries++
			if live(&vals[i]) {
				o.Live++
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return o, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) && o.Entries == 0 {
			return countByIteration[K](m, live, o.Capacity)
		}
		if err != nil {
			return o, err
		}
	}
}

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
