package datapath

import (
	"testing"
)

// TestFlowLogSlotSkipped: a flood at a port whose flow log samples 1 in 5
// with a small rate limit: the slot's skip count is exactly the flows that
// sampling chose but the limit kept out of the ring, and another slot's
// count does not move.
func TestFlowLogSlotSkipped(t *testing.T) {
	f := newFixture(t)
	const flows = 3000
	if err := f.d.SetFlowLogSlot(4, FlowLogSlot{Traffic: FlowLogAccept, Sample: 5, Rate: 20, Burst: 20}); err != nil {
		t.Fatal(err)
	}
	if err := f.d.SetFlowLogSlot(5, FlowLogSlot{Traffic: FlowLogAccept}); err != nil {
		t.Fatal(err)
	}
	if err := f.d.SetPortFlowLog(portA.ID, 4); err != nil {
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
	skip4, err := f.d.FlowLogSlotSkipped(4)
	if err != nil {
		t.Fatal(err)
	}
	skip5, err := f.d.FlowLogSlotSkipped(5)
	if err != nil {
		t.Fatal(err)
	}
	p := from(portA, portB.IPs[0])
	for i := range flows {
		p.sport = uint16(2000 + i)
		p.dport = 9
		if ret, _ := f.fromPort(t, portA, p.bytes(t)); ret != actRedirect {
			t.Fatalf("flow %d: verdict %d", i, ret)
		}
	}
	after, err := f.d.FlowLogStats()
	if err != nil {
		t.Fatal(err)
	}
	readFlowEvents(t, r)
	got4, err := f.d.FlowLogSlotSkipped(4)
	if err != nil {
		t.Fatal(err)
	}
	got5, err := f.d.FlowLogSlotSkipped(5)
	if err != nil {
		t.Fatal(err)
	}
	limited := (after.RateLimited - before.RateLimited) + (after.RingFull - before.RingFull)
	chosen := flows - (after.SampledOut - before.SampledOut)
	emitted := after.Emitted - before.Emitted
	t.Logf("%d flows: %d chosen, %d logged, %d skipped (slot 4)", flows, chosen, emitted, got4-skip4)
	if got4-skip4 != limited || limited == 0 {
		t.Errorf("slot 4 skipped %d, want the %d flows chosen but not logged (> 0)", got4-skip4, limited)
	}
	if emitted+(got4-skip4) != chosen {
		t.Errorf("logged %d + skipped %d != %d chosen", emitted, got4-skip4, chosen)
	}
	if got5 != skip5 {
		t.Errorf("slot 5 (no port) skipped %d -> %d", skip5, got5)
	}
	if _, err := f.d.FlowLogSlotSkipped(0); err == nil {
		t.Error("slot 0 (no flow log) accepted")
	}
}
