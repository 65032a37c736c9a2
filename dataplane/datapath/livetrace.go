package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Live trace (bpf/c/livetrace.h): real packets matching one of a few
// filters report, stage by stage, what the programs did with them. While no
// filter is installed the programs pay one load of a global variable per
// hook; the filters, the per-CPU budgets and the event ring are not pinned:
// a trace belongs to the process that installed it, and a restarted agent
// (which re-attaches the programs) starts with tracing off.

// MaxTraceFilters is how many filters can be installed at once (C: LT_MAX_FILTERS).
const MaxTraceFilters = 16

// TraceFilter selects the packets to trace. Zero fields match anything.
type TraceFilter struct {
	// ID names the trace in its events; non-zero.
	ID uint32
	// Port: packets sent by this port (its data-path id). 0: any port and
	// also packets arriving over VXLAN (after decapsulation), which come
	// from no port of this node, and, on a gateway, packets arriving from
	// the fabric on its uplink (compared as they arrived, their VPC the
	// VNI of the elastic IP, port mapping or NAT flow they are for; 0:
	// none).
	Port             uint32
	VPC              uint32
	Src, Dst         netip.Prefix // IPv4; the zero Prefix: any
	Protocol         uint8
	SrcPort, DstPort uint16 // ICMP: not matched (give 0)
	// Rate is the most packets per second this node traces for the
	// filter, Burst how many at once; 0: DefaultTraceRate and its burst.
	// Each CPU holds its share: matching packets over it are counted
	// (TraceCounts) and not traced, so a busy flow cannot flood the ring.
	Rate, Burst uint32
}

// DefaultTraceRate is the per-node packet budget of a filter without one.
const DefaultTraceRate = 100

// ltFilter is struct lt_filter.
type ltFilter struct {
	ID, Port, VPC              uint32
	Saddr, Smask, Daddr, Dmask uint32 // network order, as the bytes are
	Sport, Dport               uint16 // network order
	Proto                      uint8
	Pad                        [3]uint8
	Pad2                       uint32
	CostNs, BurstNs            uint64
}

// ltBucket is struct lt_bucket.
type ltBucket struct {
	Credit, Last, Traced, Capped uint64
}

// ltEvent is struct lt_event.
type ltEvent struct {
	Ts                            uint64
	ID, Pkt, Seq                  uint32
	Stage, Prog, Proto, TCPFlags  uint8
	Port, A, B, Vpc, Saddr, Daddr uint32
	Sport, Dport                  uint16
	Pad                           uint32
}

// nboU32 reads 4 bytes of an address as the C side holds them (network
// order in a native-endian __u32).
func nboU32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func nbo16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func prefixMatch(p netip.Prefix) (addr, mask uint32, err error) {
	if !p.IsValid() {
		return 0, 0, nil
	}
	if !p.Addr().Is4() {
		return 0, 0, fmt.Errorf("prefix %s: IPv4 only (the data path is IPv4)", p)
	}
	var mb [4]byte
	for i := 0; i < p.Bits(); i++ {
		mb[i/8] |= 0x80 >> (i % 8)
	}
	p = p.Masked()
	return nboU32(p.Addr()), binary.NativeEndian.Uint32(mb[:]), nil
}

func (f TraceFilter) raw(cpus int) (ltFilter, error) {
	if f.ID == 0 {
		return ltFilter{}, errors.New("trace filter: id 0 is reserved (unused slot)")
	}
	sa, sm, err := prefixMatch(f.Src)
	if err != nil {
		return ltFilter{}, fmt.Errorf("trace filter %d: source %w", f.ID, err)
	}
	da, dm, err := prefixMatch(f.Dst)
	if err != nil {
		return ltFilter{}, fmt.Errorf("trace filter %d: destination %w", f.ID, err)
	}
	rate, burst := f.Rate, f.Burst
	if rate == 0 {
		rate, burst = DefaultTraceRate, DefaultTraceRate/5
	}
	cost, max := bucketParams(rate, burst, cpus)
	return ltFilter{ID: f.ID, Port: f.Port, VPC: f.VPC, Saddr: sa, Smask: sm, Daddr: da, Dmask: dm,
		Sport: nbo16(f.SrcPort), Dport: nbo16(f.DstPort), Proto: f.Protocol, CostNs: cost, BurstNs: max}, nil
}

// SetTraceFilters installs filters by slot: fs[i] goes to slot i, and a
// zero ID leaves slot i unused; slots past len(fs) are cleared. No filter
// at all turns tracing off (the programs back to their cost without it).
// A slot whose filter changed starts with a full budget and zero counts;
// the others keep theirs, so traces can come and go beside each other.
// Bad filters are refused before anything changes.
func (d *Datapath) SetTraceFilters(fs []TraceFilter) error {
	if len(fs) > MaxTraceFilters {
		return fmt.Errorf("set trace filters: %d slots, at most %d", len(fs), MaxTraceFilters)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("set trace filters: count CPUs: %w", err)
	}
	raws := make([]ltFilter, MaxTraceFilters)
	seen := map[uint32]bool{}
	var n uint32 // slots the programs look at: up to the last one used
	for i, f := range fs {
		if f == (TraceFilter{}) {
			continue
		}
		if seen[f.ID] {
			return fmt.Errorf("set trace filters: id %d twice", f.ID)
		}
		seen[f.ID] = true
		if raws[i], err = f.raw(cpus); err != nil {
			return fmt.Errorf("set trace filters: %w", err)
		}
		n = uint32(i) + 1
	}
	// Fewer slots first, so that the programs never read a slot being
	// rewritten; then the slots; then more slots.
	var cur uint32
	if err := d.objs.LtActive.Get(&cur); err != nil {
		return fmt.Errorf("read lt_active: %w", err)
	}
	if n < cur {
		if err := d.objs.LtActive.Set(n); err != nil {
			return fmt.Errorf("set lt_active: %w", err)
		}
	}
	fresh := make([]ltBucket, cpus)
	for i := range raws {
		k := uint32(i)
		var old ltFilter
		if err := d.objs.LtFilters.Lookup(k, &old); err != nil {
			return fmt.Errorf("read trace filter slot %d: %w", i, err)
		}
		if old == raws[i] {
			continue
		}
		if err := d.objs.LtFilters.Update(k, &raws[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write trace filter slot %d: %w", i, err)
		}
		if err := d.objs.LtBuckets.Update(k, fresh, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("reset trace budget of slot %d: %w", i, err)
		}
	}
	if n >= cur {
		if err := d.objs.LtActive.Set(n); err != nil {
			return fmt.Errorf("set lt_active: %w", err)
		}
	}
	return nil
}

// TraceCount is how many packets matched filter slot i since it was set:
// Traced reported their stages, Capped found the budget spent.
type TraceCount struct {
	Traced, Capped uint64
}

// TraceCounts returns the counts of slots 0..n-1, summed over CPUs.
func (d *Datapath) TraceCounts(n int) ([]TraceCount, error) {
	out := make([]TraceCount, n)
	for i := range out {
		var per []ltBucket
		if err := d.objs.LtBuckets.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read trace budget of slot %d: %w", i, err)
		}
		for _, b := range per {
			out[i].Traced += b.Traced
			out[i].Capped += b.Capped
		}
	}
	return out, nil
}

// TraceStage is a point of the pipeline a traced packet passed (C: enum lt_stage).
type TraceStage uint8

const (
	TraceEntry      TraceStage = 1
	TraceSpoof      TraceStage = 2
	TraceConntrack  TraceStage = 3
	TraceACLEgress  TraceStage = 4
	TraceSGEgress   TraceStage = 5
	TraceRoute      TraceStage = 6
	TraceACLIngress TraceStage = 7
	TraceSGIngress  TraceStage = 8
	TraceTunnel     TraceStage = 9
	TraceDeliver    TraceStage = 10
	TraceDrop       TraceStage = 11
	TraceEnd        TraceStage = 12
	// The gateway's and the services' stages carry a Kind and a From and
	// To address:port (see TraceEvent).
	TraceGatewayIn  TraceStage = 13 // Kind: GatewayMatch; To: the public address; A: the elastic IP's VNI or the NAT gateway id
	TraceNAT        TraceStage = 14 // Kind: NATKind; From: before, To: after
	TraceGatewayOut TraceStage = 15 // Kind: 0 next hop's MAC known, 1 left to the kernel; A: ifindex, B: next hop
	TraceService    TraceStage = 16 // Kind: ServiceHow; From: VIP, To: backend (reply: reversed); A: service id, B: backend id
)

// Stage names are the model trace's (controller/trace), so that the two can
// be shown side by side.
var traceStageNames = map[TraceStage]string{
	TraceEntry: "source", TraceSpoof: "anti-spoofing", TraceConntrack: "conntrack",
	TraceACLEgress: "acl-egress", TraceSGEgress: "sg-egress", TraceRoute: "route",
	TraceACLIngress: "acl-ingress", TraceSGIngress: "sg-ingress", TraceTunnel: "tunnel",
	TraceDeliver: "deliver", TraceDrop: "drop", TraceEnd: "verdict",
	TraceGatewayIn: "gateway", TraceNAT: "nat", TraceGatewayOut: "uplink", TraceService: "load-balancer",
}

// GatewayMatch is what a packet's destination is to the gateway it reached
// (TraceGatewayIn's Kind; C: enum lt_gw).
type GatewayMatch uint8

const (
	GatewayNoMatch    GatewayMatch = 0 // no public address served here: left to the host
	GatewayElasticIP  GatewayMatch = 1
	GatewayNATAddress GatewayMatch = 2
)

// NATKind is whose translation a TraceNAT event reports, with NATDst set
// if the destination was rewritten (else the source) (C: enum lt_nat).
type NATKind uint8

const (
	NATElasticIP      NATKind = 1 // 1:1
	NATGatewayFlow    NATKind = 2 // a NAT gateway's known flow
	NATGatewayNewFlow NATKind = 3 // a NAT gateway's new flow: a public port taken
	NATPortMapping    NATKind = 4
	NATServiceReturn  NATKind = 5 // source a north-south VIP (direct server return): left as it is
	NATDst            NATKind = 0x80
)

// ServiceHow is how a TraceService event found the backend (C: enum lt_svc).
type ServiceHow uint8

const (
	ServiceMaglev ServiceHow = 1 // east-west new flow: the Maglev table's choice
	ServiceStored ServiceHow = 2 // east-west established flow: its stored backend
	ServiceLocal  ServiceHow = 3 // north-south, on the backend's node: by the backend port's MAC
	ServiceReply  ServiceHow = 4 // a reply: source rewritten back to the VIP
	// ServiceXDP: north-south, on a gateway (bpf/c/lb.c): B is the
	// backend's slot in the load balancer's table (lb.LB.BackendOfSlot
	// names it), To the backend's node; the packet is not rewritten (DSR).
	ServiceXDP ServiceHow = 5
)

func (s TraceStage) String() string {
	if n, ok := traceStageNames[s]; ok {
		return n
	}
	return fmt.Sprintf("stage(%d)", uint8(s))
}

func (m GatewayMatch) String() string {
	switch m {
	case GatewayNoMatch:
		return "none"
	case GatewayElasticIP:
		return "elastic-ip"
	case GatewayNATAddress:
		return "nat-gateway"
	}
	return fmt.Sprintf("gateway-match(%d)", uint8(m))
}

// Dst says whether the destination was rewritten (else the source).
func (k NATKind) Dst() bool { return k&NATDst != 0 }

// Of is the kind without NATDst.
func (k NATKind) Of() NATKind { return k &^ NATDst }

func (k NATKind) String() string {
	dir := "snat "
	if k.Dst() {
		dir = "dnat "
	}
	switch k.Of() {
	case NATElasticIP:
		return dir + "elastic-ip"
	case NATGatewayFlow:
		return dir + "nat-gateway"
	case NATGatewayNewFlow:
		return dir + "nat-gateway-new"
	case NATPortMapping:
		return dir + "port-mapping"
	case NATServiceReturn:
		return "service-return"
	}
	return fmt.Sprintf("nat-kind(%#x)", uint8(k))
}

func (h ServiceHow) String() string {
	switch h {
	case ServiceMaglev:
		return "maglev"
	case ServiceStored:
		return "stored"
	case ServiceLocal:
		return "local"
	case ServiceReply:
		return "reply"
	case ServiceXDP:
		return "xdp"
	}
	return fmt.Sprintf("service-how(%d)", uint8(h))
}

// Where a traced packet entered (C: enum lt_prog).
const (
	TraceFromPort    = 1
	TraceFromOverlay = 2
	TraceFromUplink  = 3 // a gateway's interface toward the fabric
	TraceFromLB      = 4 // the XDP load balancer on a gateway's uplink (bpf/c/lb.c)
)

// LiveTraceMaps are the maps the live trace's programs share (filters,
// budgets, per-CPU scratch, the ring), for another BPF object that traces
// too (dataplane/lb: lb.Options.LiveTrace).
func (d *Datapath) LiveTraceMaps() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{"lt_filters": d.objs.LtFilters, "lt_buckets": d.objs.LtBuckets,
		"lt_curs": d.objs.LtCurs, "lt_events": d.objs.LtEvents}
}

// TraceEvent is one stage of one traced packet.
type TraceEvent struct {
	Time   time.Duration // CLOCK_MONOTONIC, as bpf_ktime_get_ns
	ID     uint32        // the filter's
	Packet uint32        // random per traced packet: groups its events
	Seq    uint32        // order within the packet
	Stage  TraceStage
	Port   uint32
	// Stage data (livetrace.h enum lt_stage): conntrack state and reply;
	// ACL rule id and ACL; SG rule id and established; route kind and
	// port or node; tunnel remote and VNI; drop reason and rule; verdict;
	// the gateway's and services' stages: see their constants.
	A, B uint32
	// TraceGatewayIn, TraceNAT, TraceGatewayOut, TraceService: the
	// variant (GatewayMatch, NATKind, ServiceHow) and two address:port
	// pairs (ports 0 where the stage has none).
	Kind     uint8
	From, To netip.AddrPort
	// LT_ENTRY only: where and what.
	Prog             uint8
	VPC              uint32
	Src, Dst         netip.Addr
	Protocol         uint8
	TCPFlags         uint8
	SrcPort, DstPort uint16 // ICMP: 0 and type<<8|code
}

// Reason is a drop event's reason.
func (e TraceEvent) Reason() DropReason { return DropReason(e.A) }

// Addr is field A or B read as an address in network order (tunnel remote,
// route node).
func AddrOfU32(v uint32) netip.Addr { return addrOf(v) }

// TraceReader reads live-trace events.
type TraceReader struct {
	r *ringbuf.Reader
}

// TraceEvents opens the reader of the live-trace ring. One reader at a time.
func (d *Datapath) TraceEvents() (*TraceReader, error) {
	r, err := ringbuf.NewReader(d.objs.LtEvents)
	if err != nil {
		return nil, fmt.Errorf("open live-trace ring: %w", err)
	}
	return &TraceReader{r: r}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (r *TraceReader) SetDeadline(t time.Time) { r.r.SetDeadline(t) }

// Read blocks until the next event, the deadline or Close.
func (r *TraceReader) Read() (TraceEvent, error) {
	rec, err := r.r.Read()
	if err != nil {
		return TraceEvent{}, fmt.Errorf("read live-trace event: %w", err)
	}
	var raw ltEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return TraceEvent{}, fmt.Errorf("decode live-trace event of %d bytes: %w", len(rec.RawSample), err)
	}
	ev := TraceEvent{Time: time.Duration(raw.Ts), ID: raw.ID, Packet: raw.Pkt, Seq: raw.Seq,
		Stage: TraceStage(raw.Stage), Port: raw.Port, A: raw.A, B: raw.B}
	switch ev.Stage {
	case TraceEntry:
		ev.Prog, ev.VPC, ev.Protocol, ev.TCPFlags = raw.Prog, raw.Vpc, raw.Proto, raw.TCPFlags
		ev.Src, ev.Dst = addrOf(raw.Saddr), addrOf(raw.Daddr)
		ev.SrcPort, ev.DstPort = be16(raw.Sport), be16(raw.Dport)
	case TraceGatewayIn, TraceNAT, TraceGatewayOut, TraceService:
		ev.Kind = raw.Prog
		ev.From = netip.AddrPortFrom(addrOf(raw.Saddr), be16(raw.Sport))
		ev.To = netip.AddrPortFrom(addrOf(raw.Daddr), be16(raw.Dport))
	}
	return ev, nil
}

// Close stops the reader; a blocked Read returns.
func (r *TraceReader) Close() error {
	if err := r.r.Close(); err != nil {
		return fmt.Errorf("close live-trace reader: %w", err)
	}
	return nil
}
