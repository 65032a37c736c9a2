package datapath

import (
	"bytes"
	"errors"
	"strings"
	"testing"

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
