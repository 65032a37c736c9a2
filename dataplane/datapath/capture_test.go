package datapath

import (
	"bytes"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

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
