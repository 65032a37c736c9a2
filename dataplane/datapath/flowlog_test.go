package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
)

// ipTotalLen is an IPv4 frame's total length field: the frame may be
// padded to Ethernet's 60 bytes, the count is of IP bytes.
func ipTotalLen(frame []byte) uint16 { return binary.BigEndian.Uint16(frame[14+2:]) }

// readFlowEvents drains the ring until it stays empty for a moment.
func readFlowEvents(t testing.TB, r *FlowEventReader) []FlowEvent {
	t.Helper()
	var out []FlowEvent
	for {
		r.SetDeadline(time.Now().Add(100 * time.Millisecond))
		ev, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
}

// TestFlowLogEventsAndCounters: a new flow between two ports with flow logs
// is announced once per port, with the rule that allowed it on that side;
// its packets and bytes are counted per direction in the conntrack entry;
// flows of ports without flow logs announce nothing and count nothing.
func TestFlowLogEventsAndCounters(t *testing.T) {
	f := newFixture(t)
	if err := f.d.SetFlowLogSlot(1, FlowLogSlot{Traffic: FlowLogAll}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Port{portA, portB} {
		if err := f.d.SetPortFlowLog(p.ID, 1); err != nil {
			t.Fatal(err)
		}
	}
	// Reinstalling a port (every reconcile does) keeps its flow log.
	if err := f.d.UpsertPort(portA); err != nil {
		t.Fatal(err)
	}
	if slot, err := f.d.PortFlowLog(portA.ID); err != nil || slot != 1 {
		t.Fatalf("port A's flow log after UpsertPort: %d, %v; want 1", slot, err)
	}
	r, err := f.d.FlowEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	syn := from(portA, portB.IPs[0])
	synBytes := syn.bytes(t)
	f.expectDeliver(t, portA, synBytes, portB, 64)
	synAck := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: portA.IPs[0], proto: fw.ProtoTCP, sport: 80, dport: 40000, flags: "SA"}
	f.expectDeliver(t, portB, synAck.bytes(t), portA, 64)
	ack := syn
	ack.flags = "A"
	for range 3 {
		f.expectDeliver(t, portA, ack.bytes(t), portB, 64)
	}

	evs := readFlowEvents(t, r)
	if len(evs) != 2 {
		t.Fatalf("got %d flow events, want 2 (A egress, B ingress): %+v", len(evs), evs)
	}
	key := FlowKey{VPC: 100, Src: portA.IPs[0], Dst: portB.IPs[0], SrcPort: 40000, DstPort: 80, Protocol: fw.ProtoTCP}
	ipLen := uint32(ipTotalLen(synBytes))
	want := map[uint32]FlowEvent{
		portA.ID: {Key: key, Port: portA.ID, Slot: 1, Direction: fw.Egress, SGRule: 1001, Bytes: ipLen},
		portB.ID: {Key: key, Port: portB.ID, Slot: 1, Direction: fw.Ingress, SGRule: 2002, Bytes: ipLen},
	}
	for _, ev := range evs {
		w, ok := want[ev.Port]
		if ev.Mono <= 0 {
			t.Errorf("event of port %d has no timestamp", ev.Port)
		}
		ev.Mono = 0
		if !ok || ev != w {
			t.Errorf("event %+v, want %+v", ev, w)
		}
		delete(want, ev.Port)
	}

	cs, ok, err := f.d.FlowCounters([]FlowKey{key})
	if err != nil || !ok[0] {
		t.Fatalf("counters: %v, found %v", err, ok)
	}
	c := cs[0]
	ackLen := uint64(ipTotalLen(ack.bytes(t)))
	synAckLen := uint64(ipTotalLen(synAck.bytes(t)))
	if !c.Counting || c.Done || c.Packets != [2]uint64{4, 1} ||
		c.Bytes != [2]uint64{uint64(ipLen) + 3*ackLen, synAckLen} {
		t.Fatalf("counters %+v, want 4 packets / %d bytes out, 1 / %d back, counting, not done",
			c, uint64(ipLen)+3*ackLen, synAckLen)
	}

	// A RST ends the flow: its final counters stay readable.
	rst := syn
	rst.flags = "R"
	f.expectDeliver(t, portA, rst.bytes(t), portB, 64)
	cs, _, err = f.d.FlowCounters([]FlowKey{key})
	if err != nil || !cs[0].Done || cs[0].Packets[0] != 5 {
		t.Fatalf("after RST: %+v, %v; want done with 5 packets out", cs[0], err)
	}

	// Ports D and E have no flow log: nothing announced, nothing counted.
	de := from(portD, portE.IPs[0])
	f.expectDeliver(t, portD, de.bytes(t), portE, 64)
	if evs := readFlowEvents(t, r); len(evs) != 0 {
		t.Fatalf("flow of ports without flow logs announced: %+v", evs)
	}
	cs, ok, err = f.d.FlowCounters([]FlowKey{{VPC: 200, Src: portD.IPs[0], Dst: portE.IPs[0], SrcPort: 40000, DstPort: 80, Protocol: fw.ProtoTCP}})
	if err != nil || !ok[0] || cs[0].Counting || cs[0].Packets != [2]uint64{} {
		t.Fatalf("D->E entry: %+v found %v err %v; want present and not counting", cs[0], ok, err)
	}

	// A flow log for rejects only announces no accepted flow; the slot
	// cleared announces nothing either.
	if err := f.d.SetFlowLogSlot(1, FlowLogSlot{Traffic: FlowLogReject}); err != nil {
		t.Fatal(err)
	}
	p := syn
	p.sport = 40001
	f.expectDeliver(t, portA, p.bytes(t), portB, 64)
	if err := f.d.ClearFlowLogSlot(1); err != nil {
		t.Fatal(err)
	}
	p.sport = 40002
	f.expectDeliver(t, portA, p.bytes(t), portB, 64)
	if evs := readFlowEvents(t, r); len(evs) != 0 {
		t.Fatalf("reject-only / cleared slot announced accepted flows: %+v", evs)
	}
	if err := f.d.SetFlowLogSlot(0, FlowLogSlot{Traffic: FlowLogAll}); err == nil {
		t.Error("slot 0 accepted")
	}
	if err := f.d.SetFlowLogSlot(2, FlowLogSlot{Traffic: 7}); err == nil {
		t.Error("traffic 7 accepted")
	}
}

// TestFlowLogFloodIsSampledAndLimited: 20,000 new flows at a port whose
// flow log samples 1 in 10 with a limit of 50 events/s: the ring gets at
// most the bucket plus the rate over the flood's duration, and every other
// flow is counted as sampled out or rate-limited.
func TestFlowLogFloodIsSampledAndLimited(t *testing.T) {
	f := newFixture(t)
	const rate, burst, flows = 50, 50, 20000
	if err := f.d.SetFlowLogSlot(3, FlowLogSlot{Traffic: FlowLogAccept, Sample: 10, Rate: rate, Burst: burst}); err != nil {
		t.Fatal(err)
	}
	if err := f.d.SetPortFlowLog(portA.ID, 3); err != nil {
		t.Fatal(err)
	}
	r, err := f.d.FlowEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before, err := f.d.FlowLogStats()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p := from(portA, portB.IPs[0])
	for i := range flows {
		p.sport = uint16(1024 + i%60000)
		p.dport = uint16(1 + i/60000)
		if ret, _ := f.fromPort(t, portA, p.bytes(t)); ret != actRedirect {
			t.Fatalf("flow %d: verdict %d", i, ret)
		}
	}
	elapsed := time.Since(start)
	after, err := f.d.FlowLogStats()
	if err != nil {
		t.Fatal(err)
	}
	evs := readFlowEvents(t, r)
	emitted := after.Emitted - before.Emitted
	sampledOut := after.SampledOut - before.SampledOut
	limited := after.RateLimited - before.RateLimited
	t.Logf("%d flows in %v: %d events, %d sampled out, %d rate-limited", flows, elapsed, emitted, sampledOut, limited)
	if uint64(len(evs)) != emitted {
		t.Errorf("ring had %d events, counter says %d", len(evs), emitted)
	}
	limit := uint64(burst + rate*elapsed.Seconds() + 1)
	if emitted > limit || emitted == 0 {
		t.Errorf("%d events, want 1..%d (burst %d + %d/s over %v)", emitted, limit, burst, rate, elapsed)
	}
	if emitted+sampledOut+limited != flows {
		t.Errorf("events %d + sampled out %d + limited %d != %d flows", emitted, sampledOut, limited, flows)
	}
	// 1 in 10 chosen: 2,000 expected; allow a wide margin for chance.
	if chosen := flows - sampledOut; chosen < 1500 || chosen > 2500 {
		t.Errorf("%d flows chosen by sampling, want about %d", chosen, flows/10)
	}
	if limited == 0 {
		t.Error("no flow rate-limited")
	}
}

func TestBucketParams(t *testing.T) {
	for _, tc := range []struct {
		rate, burst uint32
		cpus        int
		cost, max   uint64
	}{
		{0, 0, 2, 0, 0},
		{100, 0, 2, 20e6, 20e6 * 50},
		{100, 10, 4, 40e6, 40e6 * 2},
		{1, 1, 8, 8e9, 8e9},
	} {
		cost, max := bucketParams(tc.rate, tc.burst, tc.cpus)
		if cost != tc.cost || max != tc.max {
			t.Errorf("bucketParams(%d, %d, %d) = %d, %d; want %d, %d", tc.rate, tc.burst, tc.cpus, cost, max, tc.cost, tc.max)
		}
	}
}

// TestFlowCountersBatched: the batched query (bpf/c/flowquery.c) reads the
// same counters as lookups one by one — found or not, counting or not,
// open, closed or expired — for more keys than one run takes (chunks).
func TestFlowCountersBatched(t *testing.T) {
	f := newFixture(t)
	now, err := monotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	const n = flowQueryMax + 904 // two runs, the second partial
	keys := make([]FlowKey, n)
	for i := range keys {
		keys[i] = FlowKey{VPC: 100 + uint32(i%3), Src: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}),
			Dst: netip.AddrFrom4([4]byte{10, 1, 0, 1}), SrcPort: uint16(30000 + i), DstPort: 443, Protocol: fw.ProtoTCP}
		if i%5 == 4 {
			continue // not in conntrack
		}
		e := bpf.MeridianCtEntry{Expires: now + uint64(time.Hour), State: 2, FlOn: uint32(i % 2),
			FlPackets: [2]uint64{uint64(i), uint64(2 * i)}, FlBytes: [2]uint64{uint64(100 * i), uint64(7 * i)}}
		switch i % 7 {
		case 3:
			e.State = ctStateClosed
		case 5:
			e.Expires = now - 1
		}
		if err := f.d.objs.Conntrack.Put(keys[i].raw(), &e); err != nil {
			t.Fatal(err)
		}
	}
	wantC := make([]FlowCounters, n)
	wantOK := make([]bool, n)
	if err := f.d.flowCountersEach(keys, wantC, wantOK); err != nil {
		t.Fatal(err)
	}
	gotC, gotOK, err := f.d.FlowCounters(keys)
	if err != nil {
		t.Fatal(err)
	}
	found, done := 0, 0
	for i := range keys {
		if gotOK[i] != wantOK[i] || gotC[i] != wantC[i] {
			t.Fatalf("key %d: batched %+v found %v, one by one %+v found %v", i, gotC[i], gotOK[i], wantC[i], wantOK[i])
		}
		if gotOK[i] {
			found++
		}
		if gotC[i].Done {
			done++
		}
	}
	// The fixture is a fresh data path: exactly the entries put are there.
	if found != n-n/5 || done == 0 {
		t.Fatalf("found %d (want %d), done %d (want some)", found, n-n/5, done)
	}
	// A second query reuses the loaded program and sees a change.
	e := bpf.MeridianCtEntry{Expires: now + uint64(time.Hour), State: 2, FlOn: 1, FlPackets: [2]uint64{99, 1}}
	if err := f.d.objs.Conntrack.Put(keys[0].raw(), &e); err != nil {
		t.Fatal(err)
	}
	gotC, gotOK, err = f.d.FlowCounters(keys[:10])
	if err != nil || !gotOK[0] || gotC[0].Packets != [2]uint64{99, 1} || !gotC[0].Counting {
		t.Fatalf("after an update: %+v found %v err %v", gotC[0], gotOK[0], err)
	}
}

// TestDecodeFlowEvent: the hand decoder reads struct flow_event as
// binary.Read of the generated Go type does, for arbitrary bytes.
func TestDecodeFlowEvent(t *testing.T) {
	if got := binary.Size(bpf.MeridianFlowEvent{}); got != flowEventSize {
		t.Fatalf("struct flow_event is %d bytes, the decoder reads %d", got, flowEventSize)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		b := make([]byte, flowEventSize)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		got, err := decodeFlowEvent(b)
		if err != nil {
			t.Fatal(err)
		}
		var raw bpf.MeridianFlowEvent
		if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &raw); err != nil {
			t.Fatal(err)
		}
		want := FlowEvent{
			Key: FlowKey{VPC: raw.Vpc, Src: addrOf(raw.Saddr), Dst: addrOf(raw.Daddr),
				SrcPort: be16(raw.Sport), DstPort: be16(raw.Dport), Protocol: raw.Proto},
			Port: raw.Port, Slot: raw.Slot, Direction: fw.Direction(raw.Dir),
			ACLRule: raw.AclRule, SGRule: raw.SgRule, Bytes: raw.Len, Mono: time.Duration(raw.Ts),
		}
		if got != want {
			t.Fatalf("% x: decoded %+v, binary.Read %+v", b, got, want)
		}
	}
	if _, err := decodeFlowEvent(make([]byte, flowEventSize-1)); err == nil {
		t.Fatal("a short event decoded")
	}
}
