package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
)

// Flow logs, the data path's half (bpf/c/flowlog.h). A port with a flow log
// carries a slot number; the slot says what is logged, the sampling rate and
// the rate limit. New flows that pass policy at such a port are sampled and
// rate-limited in BPF; the chosen ones are announced on the flow_events ring
// and get per-direction packet and byte counters in their conntrack entry,
// which the agent reads (FlowCounters). Rejected flows come from the drop
// events (DropEvents).

// FlowLogSlots is how many flow-log configurations a node holds at once
// (slot 0 means "no flow log").
const FlowLogSlots = 255

// FlowLogTraffic says which flows a slot logs.
type FlowLogTraffic uint32

const (
	FlowLogAccept FlowLogTraffic = 1
	FlowLogReject FlowLogTraffic = 2
	FlowLogAll                   = FlowLogAccept | FlowLogReject
)

// FlowLogSlot is one flow-log configuration as the data path applies it.
type FlowLogSlot struct {
	Traffic FlowLogTraffic
	Sample  uint32 // log 1 in Sample new flows; 0 or 1: every one
	// Rate is the most new-flow events per second the node emits for this
	// slot, Burst how many it may emit at once after a quiet period; 0: no
	// limit. Each CPU has its own bucket (no shared state in the fast path)
	// holding its share, so the node total stays within Rate + Burst per
	// second whatever CPU the flows land on.
	Rate  uint32
	Burst uint32
}

// bucketParams turns a node-wide rate and burst into one CPU's bucket:
// the credit (ns) an event costs and the credit the bucket holds at most.
func bucketParams(rate, burst uint32, cpus int) (cost, max uint64) {
	if rate == 0 {
		return 0, 0
	}
	if cpus < 1 {
		cpus = 1
	}
	if burst == 0 {
		burst = rate
	}
	cost = uint64(cpus) * uint64(time.Second) / uint64(rate)
	perCPU := uint64(burst) / uint64(cpus)
	if perCPU < 1 {
		perCPU = 1
	}
	return cost, cost * perCPU
}

// SetFlowLogSlot installs or replaces slot's configuration (1..FlowLogSlots).
func (d *Datapath) SetFlowLogSlot(slot uint8, s FlowLogSlot) error {
	if slot == 0 {
		return errors.New("set flow-log slot: slot 0 means no flow log")
	}
	if s.Traffic == 0 || s.Traffic&^FlowLogAll != 0 {
		return fmt.Errorf("set flow-log slot %d: traffic %d: want accept, reject or both", slot, s.Traffic)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		cpus = runtime.NumCPU()
	}
	cost, max := bucketParams(s.Rate, s.Burst, cpus)
	cfg := bpf.MeridianFlowlogCfg{Traffic: uint32(s.Traffic), Sample: s.Sample, CostNs: cost, BurstNs: max}
	if err := d.objs.FlowlogCfgs.Update(uint32(slot), &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set flow-log slot %d: %w", slot, err)
	}
	return nil
}

// ClearFlowLogSlot turns a slot off: ports still naming it log nothing.
func (d *Datapath) ClearFlowLogSlot(slot uint8) error {
	if err := d.objs.FlowlogCfgs.Update(uint32(slot), &bpf.MeridianFlowlogCfg{}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("clear flow-log slot %d: %w", slot, err)
	}
	return nil
}

// SetPortFlowLog gives port the flow-log slot (0: none). The port must be
// installed; UpsertPort keeps the slot.
func (d *Datapath) SetPortFlowLog(port uint32, slot uint8) error {
	var info bpf.MeridianPortInfo
	if err := d.objs.Ports.Lookup(port, &info); err != nil {
		return fmt.Errorf("set flow log of port %d: %w", port, err)
	}
	if info.Flowlog == slot {
		return nil
	}
	info.Flowlog = slot
	// UpdateExist: a port deleted meanwhile is not brought back.
	if err := d.objs.Ports.Update(port, &info, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("set flow log of port %d: %w", port, err)
	}
	return nil
}

// PortFlowLog returns the flow-log slot of a port (0: none).
func (d *Datapath) PortFlowLog(port uint32) (uint8, error) {
	var info bpf.MeridianPortInfo
	if err := d.objs.Ports.Lookup(port, &info); err != nil {
		return 0, fmt.Errorf("flow log of port %d: %w", port, err)
	}
	return info.Flowlog, nil
}

// FlowLogStats counts what became of the new flows of ports with flow logs.
type FlowLogStats struct {
	Emitted     uint64 // announced to the agent
	SampledOut  uint64 // not chosen by sampling
	RateLimited uint64 // chosen, but over the rate limit
	RingFull    uint64 // chosen, but the agent was behind
}

// FlowLogStats reads the flow-log counters, summed over CPUs.
func (d *Datapath) FlowLogStats() (FlowLogStats, error) {
	var s FlowLogStats
	for i, dst := range []*uint64{&s.Emitted, &s.SampledOut, &s.RateLimited, &s.RingFull} {
		var perCPU []uint64
		if err := d.objs.FlowlogStats.Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("read flow-log counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return s, nil
}

// FlowLogSlotSkipped is how many new flows of slot's ports were chosen by
// sampling but not logged (over the rate limit, or the event ring full),
// summed over CPUs: what an AWS-style SKIPDATA record reports. The count
// only grows, also across a slot's reuse by another flow log: a reader
// takes differences between its reads.
func (d *Datapath) FlowLogSlotSkipped(slot uint8) (uint64, error) {
	if slot == 0 {
		return 0, errors.New("flow-log slot skips: slot 0 means no flow log")
	}
	var perCPU []bpf.MeridianFlowlogBucket
	if err := d.objs.FlowlogBuckets.Lookup(uint32(slot), &perCPU); err != nil {
		return 0, fmt.Errorf("read flow-log bucket of slot %d: %w", slot, err)
	}
	var n uint64
	for _, bucket := range perCPU {
		n += bucket.Skipped
	}
	return n, nil
}

// FlowKey is a flow as conntrack keys it: the originator's direction.
// For ICMP echo, ports are derived from the identifier (see parse_ipv4).
type FlowKey struct {
	VPC              uint32
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Protocol         uint8
}

func (k FlowKey) raw() bpf.MeridianCtKey {
	return bpf.MeridianCtKey{Vpc: k.VPC, Saddr: be32(k.Src), Daddr: be32(k.Dst),
		Sport: be16(k.SrcPort), Dport: be16(k.DstPort), Proto: k.Protocol}
}

// FlowEvent is a new flow a flow log chose.
type FlowEvent struct {
	Key       FlowKey
	Port      uint32 // the port whose flow log it is
	Slot      uint8
	Direction fw.Direction  // Egress: the port opened the flow
	ACLRule   uint32        // network-ACL rule id that allowed it; 0: no ACL
	SGRule    uint32        // security-group rule id that allowed it
	Bytes     uint32        // of the first packet
	Mono      time.Duration // CLOCK_MONOTONIC of the first packet
}

// FlowEventReader reads the flow_events ring.
type FlowEventReader struct {
	r   *ringbuf.Reader
	rec ringbuf.Record // reused: one allocation per reader, not per event
}

// FlowEvents opens the reader of new-flow events. One reader at a time.
func (d *Datapath) FlowEvents() (*FlowEventReader, error) {
	r, err := ringbuf.NewReader(d.objs.FlowEvents)
	if err != nil {
		return nil, fmt.Errorf("open flow event ring: %w", err)
	}
	return &FlowEventReader{r: r}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (e *FlowEventReader) SetDeadline(t time.Time) { e.r.SetDeadline(t) }

// Read blocks until the next event, the deadline or Close.
func (e *FlowEventReader) Read() (FlowEvent, error) {
	if err := e.r.ReadInto(&e.rec); err != nil {
		return FlowEvent{}, fmt.Errorf("read flow event: %w", err)
	}
	return decodeFlowEvent(e.rec.RawSample)
}

// flowEventSize is sizeof(struct flow_event).
const flowEventSize = 48

// decodeFlowEvent decodes a struct flow_event (bpf/c/flowlog.h) field by
// field: binary.Read's reflection was a sixth of the agent's work per
// logged flow. TestDecodeFlowEvent checks it against binary.Read.
func decodeFlowEvent(b []byte) (FlowEvent, error) {
	if len(b) < flowEventSize {
		return FlowEvent{}, fmt.Errorf("decode flow event: %d bytes, want %d", len(b), flowEventSize)
	}
	ne := binary.NativeEndian
	return FlowEvent{
		Key: FlowKey{VPC: ne.Uint32(b[12:]), Src: netip.AddrFrom4([4]byte(b[16:20])), Dst: netip.AddrFrom4([4]byte(b[20:24])),
			SrcPort: binary.BigEndian.Uint16(b[24:]), DstPort: binary.BigEndian.Uint16(b[26:]), Protocol: b[28]},
		Port: ne.Uint32(b[8:]), Slot: b[30], Direction: fw.Direction(b[29]),
		ACLRule: ne.Uint32(b[32:]), SGRule: ne.Uint32(b[36:]), Bytes: ne.Uint32(b[40:]), Mono: time.Duration(ne.Uint64(b[0:])),
	}, nil
}

// Close stops the reader; a blocked Read returns.
func (e *FlowEventReader) Close() error {
	if err := e.r.Close(); err != nil {
		return fmt.Errorf("close flow event reader: %w", err)
	}
	return nil
}

// FlowCounters are a logged flow's counters: [0] originator -> replier,
// [1] the replies.
type FlowCounters struct {
	Packets [2]uint64
	Bytes   [2]uint64
	// Done: the flow is over (TCP closed or reset, or timed out). Its
	// conntrack entry may linger until reused, with final counters.
	Done bool
	// Counting: the entry is the flow log's (a later flow with the same
	// key replaces it and starts from zero without it).
	Counting bool
}

// FlowCounters reads the counters of the flows named by keys; ok[i] is
// false when a flow's conntrack entry is gone. A few keys are looked up one
// by one; more go through the batched query (bpf/c/flowquery.c): three
// system calls per flowQueryMax keys instead of one per key.
func (d *Datapath) FlowCounters(keys []FlowKey) (out []FlowCounters, ok []bool, err error) {
	out = make([]FlowCounters, len(keys))
	ok = make([]bool, len(keys))
	if len(keys) < flowQueryMin {
		return out, ok, d.flowCountersEach(keys, out, ok)
	}
	d.fqMu.Lock()
	defer d.fqMu.Unlock()
	if d.fq == nil {
		if err := d.loadFlowQuery(); err != nil {
			return nil, nil, err
		}
	}
	for from := 0; from < len(keys); from += flowQueryMax {
		to := min(from+flowQueryMax, len(keys))
		if err := d.flowQuery(keys[from:to], out[from:to], ok[from:to]); err != nil {
			return nil, nil, err
		}
	}
	return out, ok, nil
}

const (
	// flowQueryMax is FQ_MAX in bpf/c/flowquery.c.
	flowQueryMax = 4096
	// flowQueryMin: below this many keys, lookups one by one cost fewer
	// system calls than the batch's three.
	flowQueryMin = 4
)

func (d *Datapath) flowCountersEach(keys []FlowKey, out []FlowCounters, ok []bool) error {
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	for i, k := range keys {
		var e bpf.MeridianCtEntry
		if err := d.objs.Conntrack.Lookup(k.raw(), &e); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return fmt.Errorf("read flow counters of %v: %w", k, err)
		}
		ok[i] = true
		out[i] = FlowCounters{Packets: e.FlPackets, Bytes: e.FlBytes, Counting: e.FlOn != 0,
			Done: e.Expires < now || e.State == ctStateClosed}
	}
	return nil
}

// loadFlowQuery loads the batched query with the data path's conntrack.
func (d *Datapath) loadFlowQuery() error {
	spec, err := bpf.LoadFlowquery()
	if err != nil {
		return fmt.Errorf("load flow query spec: %w", err)
	}
	var objs bpf.FlowqueryObjects
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"conntrack": d.objs.Conntrack}}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load flow query program: %w\n%+v", err, ve)
		}
		return fmt.Errorf("load flow query program: %w", err)
	}
	d.fq = &objs
	return nil
}

// flowQuery reads up to flowQueryMax keys' counters with d.fq (fqMu held):
// keys into the mapped slots, one program run, counters out of the slots.
func (d *Datapath) flowQuery(keys []FlowKey, out []FlowCounters, ok []bool) error {
	n := len(keys)
	mem, err := d.fq.FqSlots.Memory()
	if err != nil {
		return fmt.Errorf("map flow query slots: %w", err)
	}
	buf := make([]byte, n*fqSlotSize)
	ne := binary.NativeEndian
	for i, k := range keys {
		s := buf[i*fqSlotSize:]
		raw := k.raw()
		ne.PutUint32(s[fqKey+0:], raw.Vpc)
		ne.PutUint32(s[fqKey+4:], raw.Saddr)
		ne.PutUint32(s[fqKey+8:], raw.Daddr)
		ne.PutUint16(s[fqKey+12:], raw.Sport)
		ne.PutUint16(s[fqKey+14:], raw.Dport)
		s[fqKey+16] = raw.Proto
	}
	if _, err := mem.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write %d flow keys: %w", n, err)
	}
	args := bpf.FlowqueryFqArgs{N: uint32(n)}
	ret, err := d.fq.MeridianFlowQuery.Run(&ebpf.RunOptions{Context: args, ContextOut: &args})
	if err != nil {
		return fmt.Errorf("query %d flows: %w", n, err)
	}
	if ret != 0 {
		return fmt.Errorf("query %d flows: program returned %d", n, int32(ret))
	}
	if _, err := mem.ReadAt(buf, 0); err != nil {
		return fmt.Errorf("read %d flow counters: %w", n, err)
	}
	for i := range keys {
		s := buf[i*fqSlotSize:]
		if s[fqFound] == 0 {
			continue
		}
		ok[i] = true
		out[i] = FlowCounters{
			Packets:  [2]uint64{ne.Uint64(s[fqPackets:]), ne.Uint64(s[fqPackets+8:])},
			Bytes:    [2]uint64{ne.Uint64(s[fqBytes:]), ne.Uint64(s[fqBytes+8:])},
			Counting: s[fqCounting] != 0, Done: s[fqDone] != 0,
		}
	}
	return nil
}

// struct fq_slot's layout, from its generated Go twin.
const (
	fqSlotSize = int(unsafe.Sizeof(bpf.FlowqueryFqSlot{}))
	fqKey      = int(unsafe.Offsetof(bpf.FlowqueryFqSlot{}.Key))
	fqPackets  = int(unsafe.Offsetof(bpf.FlowqueryFqSlot{}.Packets))
	fqBytes    = int(unsafe.Offsetof(bpf.FlowqueryFqSlot{}.Bytes))
	fqFound    = int(unsafe.Offsetof(bpf.FlowqueryFqSlot{}.Found))
	fqCounting = int(unsafe.Offsetof(bpf.FlowqueryFqSlot{}.Counting))
	fqDone     = int(unsafe.Offsetof(bpf.FlowqueryFqSlot{}.Done))
)

// ctStateClosed is enum ct_state's CT_CLOSED.
const ctStateClosed = 4

// MonotonicNow is CLOCK_MONOTONIC, the clock of FlowEvent.Mono.
func MonotonicNow() (time.Duration, error) {
	ns, err := monotonicNow()
	return time.Duration(ns), err
}
