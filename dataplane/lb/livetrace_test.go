package lb

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// traceTest loads the VPC data path (for its live-trace maps) and a load
// balancer tracing on them, with a service of backends 1..3.
func traceTest(t *testing.T) (*datapath.Datapath, *LB, *datapath.TraceReader) {
	t.Helper()
	d, err := datapath.Open(filepath.Join(privateBPFFS(t), "meridian"))
	if err != nil {
		t.Fatalf("open data path: %v", err)
	}
	t.Cleanup(func() { d.Unpin(); d.Close() })
	l, err := Load(Options{MaxServices: 16, MaxBackends: 1024, ConnTableSize: 1 << 16, LiveTrace: d.LiveTraceMaps()})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	if err := l.Configure(Config{UnderlayIP: underlay, MTU: testMTU, RouterMAC: routerMAC,
		NextHopMAC: nextHopMAC, SourceMAC: uplinkMAC}); err != nil {
		t.Fatal(err)
	}
	r, err := d.TraceEvents()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return d, l, r
}

// traceFilters installs fs in the data path and tells the LB, as the
// agent does.
func traceFilters(t *testing.T, d *datapath.Datapath, l *LB, fs ...datapath.TraceFilter) {
	t.Helper()
	if err := d.SetTraceFilters(fs); err != nil {
		t.Fatal(err)
	}
	if err := l.SetTraceActive(uint32(len(fs))); err != nil {
		t.Fatal(err)
	}
}

// drainTrace reads the ring until it stays empty for a moment.
func drainTrace(t *testing.T, r *datapath.TraceReader) []datapath.TraceEvent {
	t.Helper()
	var out []datapath.TraceEvent
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

// TestLiveTraceXDP: a VIP's packet traced in the XDP load balancer reports
// its entry (the packet as it arrived), the backend chosen — the slot of the
// backend the Maglev table picks, named back by BackendOfSlot — the tunnel
// to that backend's node and the verdict; a VIP without a usable backend
// reports the drop; a filter for another flow, a port's filter, or no
// trace report nothing.
func TestLiveTraceXDP(t *testing.T) {
	d, l, r := traceTest(t)
	svc := svcMsg(1, 80, 251, 1, 2, 3)
	mustSet(t, l, svc)

	hit := clientPkt(client, 40000)
	// No trace running: nothing.
	send(t, l, hit)
	if evs := drainTrace(t, r); len(evs) != 0 {
		t.Fatalf("no trace running, got %d events", len(evs))
	}

	traceFilters(t, d, l, datapath.TraceFilter{ID: 7, VPC: 7, Src: netip.PrefixFrom(client, 32), Protocol: 6, DstPort: 80})
	want := goChoice(t, svc, client, 40001)
	p := hit
	p.sport = 40001
	p.flags = fSYN
	node := send(t, l, p)
	evs := drainTrace(t, r)
	if len(evs) != 4 {
		t.Fatalf("got %d events, want entry, service, tunnel, end: %+v", len(evs), evs)
	}
	for i, e := range evs {
		if e.ID != 7 || e.Packet != evs[0].Packet || e.Seq != uint32(i) {
			t.Errorf("event %d: id %d packet %d seq %d, want 7, %d, %d", i, e.ID, e.Packet, e.Seq, evs[0].Packet, i)
		}
	}
	entry, svcEv, tun, end := evs[0], evs[1], evs[2], evs[3]
	if entry.Stage != datapath.TraceEntry || entry.Prog != datapath.TraceFromLB || entry.VPC != 7 ||
		entry.Src != client || entry.Dst != vip || entry.SrcPort != 40001 || entry.DstPort != 80 ||
		entry.Protocol != 6 || entry.TCPFlags&0x02 == 0 {
		t.Errorf("entry %+v", entry)
	}
	_, backendID, ok := l.BackendOfSlot(svcEv.B)
	if svcEv.Stage != datapath.TraceService || datapath.ServiceHow(svcEv.Kind) != datapath.ServiceXDP ||
		svcEv.A != 1 || !ok || int(backendID) != want || svcEv.From != netip.AddrPortFrom(vip, 80) ||
		svcEv.To.Addr() != nodeOf(want) {
		t.Errorf("service stage %+v (slot %d is backend %d, found %v), want service 1, backend %d on %v",
			svcEv, svcEv.B, backendID, ok, want, nodeOf(want))
	}
	if tun.Stage != datapath.TraceTunnel || datapath.AddrOfU32(tun.A) != node || tun.B != 7 {
		t.Errorf("tunnel stage %+v, want node %v VNI 7", tun, node)
	}
	if end.Stage != datapath.TraceEnd || end.A != xdpTX {
		t.Errorf("end %+v, want XDP_TX (%d)", end, xdpTX)
	}

	// Another flow (source port, the filter's does not name one but its
	// source address does) is not traced; nor is a port's filter matched.
	other := hit
	other.src = netip.MustParseAddr("198.51.100.99")
	send(t, l, other)
	traceFilters(t, d, l, datapath.TraceFilter{ID: 8, Port: 5, Protocol: 6})
	send(t, l, hit)
	if evs := drainTrace(t, r); len(evs) != 0 {
		t.Fatalf("packets no filter takes were traced: %+v", evs)
	}

	// No usable backend: the drop, named as the data path names it.
	traceFilters(t, d, l, datapath.TraceFilter{ID: 9})
	mustSet(t, l, svcMsg(1, 80, 251))
	p.sport = 40002
	if ret, _ := run(t, l.objs.LbXdp, p.bytes(t)); ret != xdpDrop {
		t.Fatalf("verdict %d, want XDP_DROP", ret)
	}
	evs = drainTrace(t, r)
	if len(evs) != 3 || evs[1].Stage != datapath.TraceDrop || evs[1].Reason() != datapath.DropLBNoBackend ||
		evs[2].Stage != datapath.TraceEnd || evs[2].A != xdpDrop {
		t.Fatalf("no backend: %+v, want entry, drop (lb no backend), end XDP_DROP", evs)
	}

	// The trace ended: nothing again.
	traceFilters(t, d, l)
	run(t, l.objs.LbXdp, p.bytes(t))
	if evs := drainTrace(t, r); len(evs) != 0 {
		t.Fatalf("after the trace ended: %+v", evs)
	}
}
