package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"time"

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
	r *ringbuf.Reader
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
	rec, err := e.r.Read()
	if err != nil {
		return FlowEvent{}, fmt.Errorf("read flow event: %w", err)
	}
	var raw bpf.MeridianFlowEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return FlowEvent{}, fmt.Errorf("decode flow event of %d bytes: %w", len(rec.RawSample), err)
	}
	return FlowEvent{
		Key: FlowKey{VPC: raw.Vpc, Src: addrOf(raw.Saddr), Dst: addrOf(raw.Daddr),
			SrcPort: be16(raw.Sport), DstPort: be16(raw.Dport), Protocol: raw.Proto},
		Port: raw.Port, Slot: raw.Slot, Direction: fw.Direction(raw.Dir),
		ACLRule: raw.AclRule, SGRule: raw.SgRule, Bytes: raw.Len, Mono: time.Duration(raw.Ts),
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

// FlowCounters reads the counters of the flows named by keys, one lookup
// each; ok[i] is false when a flow's conntrack entry is gone.
func (d *Datapath) FlowCounters(keys []FlowKey) (out []FlowCounters, ok []bool, err error) {
	now, err := monotonicNow()
	if err != nil {
		return nil, nil, err
	}
	out = make([]FlowCounters, len(keys))
	ok = make([]bool, len(keys))
	for i, k := range keys {
		var e bpf.MeridianCtEntry
		if err := d.objs.Conntrack.Lookup(k.raw(), &e); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			return nil, nil, fmt.Errorf("read flow counters of %v: %w", k, err)
		}
		ok[i] = true
		out[i] = FlowCounters{Packets: e.FlPackets, Bytes: e.FlBytes, Counting: e.FlOn != 0,
			Done: e.Expires < now || e.State == ctStateClosed}
	}
	return out, ok, nil
}

// ctStateClosed is enum ct_state's CT_CLOSED.
const ctStateClosed = 4

// MonotonicNow is CLOCK_MONOTONIC, the clock of FlowEvent.Mono.
func MonotonicNow() (time.Duration, error) {
	ns, err := monotonicNow()
	return time.Duration(ns), err
}
