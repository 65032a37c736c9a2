package datapath

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/fw"
)

// TestDropEventCarriesFrameHead: a policy drop's event carries the first
// DropSnap bytes of the frame and its whole length, for capture --drops.
func TestDropEventCarriesFrameHead(t *testing.T) {
	f := newFixture(t)
	f.policies[2] = fw.SecurityGroupPolicy{ID: 2} // B admits nothing
	f.install(t)
	events, err := f.d.DropEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: portA.IPs[0].AsSlice(), DstIP: portB.IPs[0].AsSlice()}
	udp := &layers.UDP{SrcPort: 5000, DstPort: 53}
	if err := udp.SetNetworkLayerForChecksum(ip4); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: portA.MAC, DstMAC: routerMAC, EthernetType: layers.EthernetTypeIPv4}, ip4, udp,
		gopacket.Payload(bytes.Repeat([]byte("x"), 1000))); err != nil {
		t.Fatal(err)
	}
	frame := buf.Bytes()
	f.expectDrop(t, portA, frame, portB.ID, DropSGIngress)
	ev := nextEvent(t, events)
	if ev.Reason != DropSGIngress || ev.Port != portB.ID || ev.Length != len(frame) || !bytes.Equal(ev.Frame, frame[:DropSnap]) {
		t.Fatalf("event %v on port %d, frame %d of %d bytes: %x; want sg-ingress on %d, the first %d of %d bytes",
			ev.Reason, ev.Port, len(ev.Frame), ev.Length, ev.Frame, portB.ID, DropSnap, len(frame))
	}
}

// TestOpenCaptureRefusesBadInput: options the kernel or the namespace
// cannot take are the caller's errors (ErrCaptureInput), and a good
// capture on the same interface then opens.
func TestOpenCaptureRefusesBadInput(t *testing.T) {
	inNewNetns(t, func(netns.NsHandle) {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mcapt0"}, PeerName: "mcapt1"}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			o    CaptureOptions
			want string
		}{
			{"snap length", CaptureOptions{Interface: "mcapt0", Snaplen: MaxCaptureSnaplen + 1}, "snap length 262145"},
			{"direction", CaptureOptions{Interface: "mcapt0", Direction: 7}, "direction 7"},
			{"no interface", CaptureOptions{Interface: "nope0"}, "interface nope0"},
			{"no namespace", CaptureOptions{Interface: "mcapt0", Netns: "/nonexistent/netns"}, "network namespace /nonexistent/netns"},
			{"program the kernel refuses", CaptureOptions{Interface: "mcapt0", Filter: []unix.SockFilter{{Code: 0xffff}}}, "the kernel refused the filter program"},
			{"jump out of the program", CaptureOptions{Interface: "mcapt0", Filter: []unix.SockFilter{{Code: 0x15, Jt: 5}, {Code: 6}}}, "the kernel refused the filter program"},
			{"too long", CaptureOptions{Interface: "mcapt0", Direction: CaptureIncoming, Filter: make([]unix.SockFilter, 4094)}, "at most 4096"},
		} {
			s, err := OpenCapture(tc.o)
			if err == nil {
				s.Close()
			}
			if !errors.Is(err, ErrCaptureInput) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want ErrCaptureInput with %q", tc.name, err, tc.want)
			}
		}
		s, err := OpenCapture(CaptureOptions{Interface: "mcapt0", Direction: CaptureOutgoing, Snaplen: 64,
			Filter: []unix.SockFilter{{Code: 6, K: 64}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestNonPolicyDropEventsOnlyWhileCapturing: a spoofed-source frame and a
// frame to an address without a route make no event while no drop capture
// runs (only their counters move); with one, each makes an event with its
// reason, its port, the frame's head and, for the spoofed frame (dropped
// before it was parsed), a zero tuple; a flood of malformed frames gets at
// most the budget's burst and rate; at 0 again the events stop.
func TestNonPolicyDropEventsOnlyWhileCapturing(t *testing.T) {
	f := newFixture(t)
	events, err := f.d.DropEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	if n, err := f.d.DropCapture(); err != nil || n != 0 {
		t.Fatalf("a new data path's drop_capture: %d, %v; want 0", n, err)
	}
	spoofed := from(portA, portB.IPs[0])
	spoofed.src = netip.MustParseAddr("10.0.1.99")
	noRoute := from(portA, netip.MustParseAddr("10.77.0.1")) // outside every route, no gateway
	send := func() {
		t.Helper()
		f.expectDrop(t, portA, spoofed.bytes(t), portA.ID, DropSpoofIP)
		f.expectDrop(t, portA, noRoute.bytes(t), portA.ID, DropNoRoute)
	}

	send()
	noEvent(t, events)

	if err := f.d.SetDropCapture(1); err != nil {
		t.Fatal(err)
	}
	send()
	ev := nextEvent(t, events)
	sf := spoofed.bytes(t)
	if ev.Reason != DropSpoofIP || ev.Port != portA.ID || ev.Rule != 0 || ev.Direction != fw.Egress ||
		ev.Src.IsValid() && !ev.Src.IsUnspecified() || ev.Length != len(sf) || !bytes.Equal(ev.Frame, sf[:min(len(sf), DropSnap)]) {
		t.Errorf("spoofed frame's event: %+v; want spoofed-ip at port %d, egress, no tuple, the frame", ev, portA.ID)
	}
	ev = nextEvent(t, events)
	if ev.Reason != DropNoRoute || ev.Port != portA.ID || ev.Dst != netip.MustParseAddr("10.77.0.1") || ev.Src != portA.IPs[0] {
		t.Errorf("unroutable frame's event: %+v; want no-route at port %d from %v to 10.77.0.1", ev, portA.ID, portA.IPs[0])
	}
	noEvent(t, events)

	// A flood: the budget lets through its burst (64 per CPU) and 1,000
	// per second per CPU, and counts the rest as suppressed.
	before, err := f.d.DropEventsSuppressed()
	if err != nil {
		t.Fatal(err)
	}
	malformed := append([]byte(nil), sf...)
	malformed[14] = 0x43 // IPv4 header length 12 bytes: malformed
	const flood = 5000
	start := time.Now()
	for range flood {
		if ret, _ := f.fromPort(t, portA, malformed); ret != actShot {
			t.Fatalf("malformed frame: verdict %d, want drop", ret)
		}
	}
	elapsed := time.Since(start)
	got := 0
	for {
		events.SetDeadline(time.Now().Add(100 * time.Millisecond))
		ev, err := events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ev.Reason != DropMalformed {
			t.Fatalf("flood event %+v, want malformed", ev)
		}
		got++
	}
	after, err := f.d.DropEventsSuppressed()
	if err != nil {
		t.Fatal(err)
	}
	cpus := runtime.NumCPU()
	limit := cpus * (64 + int(1000*elapsed.Seconds()) + 1)
	t.Logf("%d malformed frames in %v: %d events, %d suppressed", flood, elapsed, got, after-before)
	if got == 0 || got > limit {
		t.Errorf("%d events for a flood of %d, want 1..%d", got, flood, limit)
	}
	if uint64(got)+after-before != flood {
		t.Errorf("%d events + %d suppressed != %d drops", got, after-before, flood)
	}

	if err := f.d.SetDropCapture(0); err != nil {
		t.Fatal(err)
	}
	send()
	noEvent(t, events)
}
