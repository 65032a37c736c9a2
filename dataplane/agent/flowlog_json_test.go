package agent

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// flowLogJSONCases are records the hand-written encoder must write exactly
// as encoding/json does: every optional field empty and set, extreme
// numbers, and strings encoding/json escapes.
func flowLogJSONCases() []FlowRecord {
	base := FlowRecord{Version: 2, AccountID: "proj-1", InterfaceID: "web-0", SrcAddr: netip.MustParseAddr("10.0.1.10"), DstAddr: netip.MustParseAddr("10.0.2.20"),
		SrcPort: 40000, DstPort: 80, Protocol: 6, Packets: 10, Bytes: 1500, Start: 1795000000, End: 1795000001,
		Action: "ACCEPT", LogStatus: "OK", VPCID: "vpc-a", SubnetID: "sub-a", Direction: "egress",
		ReversePackets: 9, ReverseBytes: 900, Rule: "allowed by security group web rule 3", Node: "node-1", FlowLog: "fl"}
	full := base
	full.ACL, full.ACLRule, full.SecurityGroup, full.SGRuleID = "acl-1", 100, "web", 3
	full.DropReason, full.FlowEnded = "acl_ingress", true
	full.SkippedFlows = 12
	maxed := full
	maxed.SrcPort, maxed.DstPort, maxed.Protocol = 65535, 65535, 255
	maxed.Packets, maxed.Bytes, maxed.ReversePackets, maxed.ReverseBytes = ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)
	maxed.Start, maxed.End, maxed.Version = -1, 1<<62, -3
	maxed.ACLRule, maxed.SGRuleID = ^uint32(0), ^uint32(0)
	maxed.SkippedFlows = ^uint64(0)
	odd := full
	odd.AccountID = `a"b\c`
	odd.InterfaceID = "<port>&"
	odd.SubnetID = "tab\there\nnl\x00\x1f"
	odd.VPCID = "vpc-ü-日本\u2028\u2029"
	odd.Node = "bad utf8 \xff\xfe"
	odd.Rule = "no rule of network ACL (unknown) matches (default deny)"
	return []FlowRecord{{}, base, full, maxed, odd}
}

func TestFlowLogRecordJSONMatchesEncodingJSON(t *testing.T) {
	for i, r := range flowLogJSONCases() {
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatalf("case %d: json.Marshal: %v", i, err)
		}
		got := appendRecordJSON([]byte("prefix"), &r)
		if string(got) != "prefix"+string(want) {
			t.Errorf("case %d:\n got %s\nwant prefix%s", i, got, want)
		}
	}
}

// The cached CLOCK_MONOTONIC reading gives the wall time a fresh reading
// would (within the test's own scheduling), and now for a time not past.
func TestFlowLogMonoClock(t *testing.T) {
	var c monoClock
	for range 3 {
		mono, err := datapath.MonotonicNow()
		if err != nil {
			t.Fatalf("read CLOCK_MONOTONIC: %v", err)
		}
		now := time.Now()
		got := c.wallOf(now, mono-time.Second)
		// Tolerance: scheduling between the readings on a loaded 2-vCPU
		// machine; a wrong conversion is off by a second or more.
		if d := now.Add(-time.Second).Sub(got); d < -100*time.Millisecond || d > 100*time.Millisecond {
			t.Errorf("first packet 1 s ago: wall time %v, want %v (off by %v)", got, now.Add(-time.Second), d)
		}
		if got := c.wallOf(now, mono+time.Hour); !got.Equal(now) {
			t.Errorf("first packet in the future: wall time %v, want now %v", got, now)
		}
		time.Sleep(flowPoll / 2)
	}
}

// BenchmarkFlowLogRecordJSON compares the record encoder with
// encoding/json on the same records (ratio < 1: the encoder is faster).
func BenchmarkFlowLogRecordJSON(b *testing.B) {
	rs := flowLogJSONCases()[1:3]
	measure := func(enc func(*FlowRecord)) float64 {
		start := time.Now()
		for i := 0; i < 20000; i++ {
			enc(&rs[i%len(rs)])
		}
		return float64(time.Since(start).Nanoseconds()) / 20000
	}
	var buf []byte
	var std, own float64
	for b.Loop() {
		std = measure(func(r *FlowRecord) { buf, _ = json.Marshal(r) })
		own = measure(func(r *FlowRecord) { buf = appendRecordJSON(buf[:0], r) })
	}
	b.ReportMetric(std, "ns/record-encoding/json")
	b.ReportMetric(own, "ns/record-append")
	b.ReportMetric(own/std, "ratio")
}
