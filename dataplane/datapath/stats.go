package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
)

// DropReason says why a packet was dropped. The values are the kernel's
// (bpf/c/maps.h enum drop_reason) and never change meaning.
type DropReason uint32

const (
	DropUnknownPort   DropReason = 1
	DropSpoofMAC      DropReason = 2
	DropSpoofIP       DropReason = 3
	DropNotIPv4       DropReason = 4
	DropARP           DropReason = 5
	DropMalformed     DropReason = 6
	DropFragment      DropReason = 7
	DropTTLExceeded   DropReason = 8
	DropNoRoute       DropReason = 9
	DropSGEgress      DropReason = 10
	DropSGIngress     DropReason = 11
	DropACLEgress     DropReason = 12
	DropACLIngress    DropReason = 13
	DropNotLocal      DropReason = 14
	DropUnknownSubnet DropReason = 15
	// Outside world (issue [4]).
	DropNoGateway    DropReason = 16 // the port has an elastic IP, no gateway is live
	DropNATExhausted DropReason = 17 // NAT gateway: no free source port (also counted per NAT gateway)
	DropNATNoFlow    DropReason = 18 // to a NAT gateway address: no flow, no port mapping
	DropNATProtocol  DropReason = 19 // a protocol a NAT gateway cannot translate
	DropEIPUnbound   DropReason = 20 // elastic IP or port mapping whose port is on no node
	DropNoNATGateway DropReason = 21 // the source's NAT gateway is not installed on this gateway
	DropFIB          DropReason = 22 // gateway: no route toward the fabric
	// Services (issue [5]).
	DropLBNoBackend DropReason = 23 // service VIP with no backend for a new flow
)

var dropNames = map[DropReason]string{
	DropUnknownPort: "unknown-port", DropSpoofMAC: "spoofed-mac", DropSpoofIP: "spoofed-ip",
	DropNotIPv4: "not-ipv4", DropARP: "arp", DropMalformed: "malformed", DropFragment: "fragment",
	DropTTLExceeded: "ttl-exceeded", DropNoRoute: "no-route", DropSGEgress: "sg-egress",
	DropSGIngress: "sg-ingress", DropACLEgress: "acl-egress", DropACLIngress: "acl-ingress",
	DropNotLocal: "not-local", DropUnknownSubnet: "unknown-subnet",
	DropNoGateway: "no-gateway", DropNATExhausted: "nat-port-exhausted", DropNATNoFlow: "nat-no-flow",
	DropNATProtocol: "nat-protocol", DropEIPUnbound: "eip-unbound", DropNoNATGateway: "no-nat-gateway",
	DropFIB: "no-fabric-route", DropLBNoBackend: "lb-no-backend",
}

func (r DropReason) String() string {
	if n, ok := dropNames[r]; ok {
		return n
	}
	return fmt.Sprintf("drop-reason(%d)", uint32(r))
}

// DropCount is the number of packets dropped at a port for a reason. Port 0
// collects drops that happened before a port was known.
type DropCount struct {
	Port    uint32
	Reason  DropReason
	Packets uint64
}

// Drops returns the drop counters, summed over CPUs.
func (d *Datapath) Drops() ([]DropCount, error) {
	var out []DropCount
	var k bpf.MeridianDropKey
	var perCPU []uint64
	it := d.objs.Drops.Iterate()
	for it.Next(&k, &perCPU) {
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out = append(out, DropCount{Port: k.Port, Reason: DropReason(k.Reason), Packets: sum})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read drop counters: %w", err)
	}
	return out, nil
}

// ConntrackStats are the connection-tracking counters, summed over CPUs.
type ConntrackStats struct {
	Inserts        uint64
	InsertFailures uint64
	Hits           uint64
	Misses         uint64
	Expired        uint64 // timed-out entries met and replaced
}

// ConntrackStats reads the connection-tracking counters.
func (d *Datapath) ConntrackStats() (ConntrackStats, error) {
	var s ConntrackStats
	for i, dst := range []*uint64{&s.Inserts, &s.InsertFailures, &s.Hits, &s.Misses, &s.Expired} {
		var perCPU []uint64
		if err := d.objs.CtStats.Lookup(uint32(i), &perCPU); err != nil {
			return s, fmt.Errorf("read conntrack counter %d: %w", i, err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return s, nil
}

// IsPolicy says whether r is a security-group or network-ACL drop: the
// drops whose events always reach the ring and carry a rule.
func (r DropReason) IsPolicy() bool { return r >= DropSGEgress && r <= DropACLIngress }

// SetDropCapture tells the data path how many drop captures run on the
// node: while n > 0 it sends an event for a drop of every reason (within a
// per-CPU budget, see drop_budgets), not only policy drops. The agent
// counts its captures; the variable lives in the loaded programs, so a new
// Datapath starts at 0 whatever a crashed agent left.
func (d *Datapath) SetDropCapture(n uint32) error {
	if err := d.objs.DropCapture.Set(n); err != nil {
		return fmt.Errorf("set drop_capture to %d: %w", n, err)
	}
	return nil
}

// DropCapture is the data path's count of running drop captures.
func (d *Datapath) DropCapture() (uint32, error) {
	var n uint32
	if err := d.objs.DropCapture.Get(&n); err != nil {
		return 0, fmt.Errorf("read drop_capture: %w", err)
	}
	return n, nil
}

// DropEventsSuppressed is how many non-policy drop events the per-CPU
// budget held back (a flood during a drop capture), summed over CPUs.
func (d *Datapath) DropEventsSuppressed() (uint64, error) {
	var perCPU [][3]uint64 // struct drop_budget: credit, last, suppressed
	if err := d.objs.DropBudgets.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read drop event budget: %w", err)
	}
	var n uint64
	for _, b := range perCPU {
		n += b[2]
	}
	return n, nil
}

// DropEvent describes one dropped packet: every policy drop, and drops of
// the other reasons while a drop capture runs (SetDropCapture).
type DropEvent struct {
	Reason    DropReason
	Rule      uint32 // ACL rule that denied; 0: default deny / no rule allows / not a policy drop
	Port      uint32 // port whose policy dropped it, or where it was counted (0: none yet)
	Direction fw.Direction
	VPC       uint32
	Src, Dst  netip.Addr
	Protocol  uint8
	// TCP/UDP ports; for ICMP SrcPort is 0 and DstPort is type<<8 | code.
	SrcPort, DstPort uint16
	// Length is the dropped frame's length; Frame its first DropSnap bytes
	// (from the Ethernet header, as the data path dropped it).
	Length int
	Frame  []byte
}

// DropSnap is how many bytes of a dropped frame its event carries (C: DROP_SNAP).
const DropSnap = len(bpf.MeridianDropEvent{}.Data)

// EventReader reads drop events from the ring buffer.
type EventReader struct {
	r *ringbuf.Reader
}

// DropEvents opens a reader of drop events. Only one reader should
// consume the ring at a time.
func (d *Datapath) DropEvents() (*EventReader, error) {
	r, err := ringbuf.NewReader(d.objs.DropEvents)
	if err != nil {
		return nil, fmt.Errorf("open drop event ring: %w", err)
	}
	return &EventReader{r: r}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (e *EventReader) SetDeadline(t time.Time) { e.r.SetDeadline(t) }

// Read blocks until the next event, the deadline or Close.
func (e *EventReader) Read() (DropEvent, error) {
	rec, err := e.r.Read()
	if err != nil {
		return DropEvent{}, fmt.Errorf("read drop event: %w", err)
	}
	var raw bpf.MeridianDropEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &raw); err != nil {
		return DropEvent{}, fmt.Errorf("decode drop event of %d bytes: %w", len(rec.RawSample), err)
	}
	return DropEvent{
		Reason: DropReason(raw.Reason), Rule: raw.Rule, Port: raw.Port,
		Direction: fw.Direction(raw.Dir), VPC: raw.Vpc,
		Src: addrOf(raw.Saddr), Dst: addrOf(raw.Daddr), Protocol: raw.Proto,
		SrcPort: be16(raw.Sport), DstPort: be16(raw.Dport),
		Length: int(raw.Len), Frame: append([]byte(nil), raw.Data[:min(int(raw.CapLen), DropSnap)]...),
	}, nil
}

// Close stops the reader; a blocked Read returns.
func (e *EventReader) Close() error {
	if err := e.r.Close(); err != nil {
		return fmt.Errorf("close drop event reader: %w", err)
	}
	return nil
}
