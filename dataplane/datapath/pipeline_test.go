package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"reflect"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/meridian-sdn/meridian/fw"
)

// expectDrop runs the packet from port p and checks it is dropped, counted
// once at (port, reason).
func (f *fixture) expectDrop(t *testing.T, p Port, pkt []byte, port uint32, reason DropReason) {
	t.Helper()
	var ret uint32
	gotPort, gotReason, ok := f.dropDelta(t, func() { ret, _ = f.fromPort(t, p, pkt) })
	if ret != actShot {
		t.Fatalf("verdict %d, want drop (%v)", ret, reason)
	}
	if !ok || gotPort != port || gotReason != reason {
		t.Fatalf("drop counted as port %d %v (counted %v), want port %d %v", gotPort, gotReason, ok, port, reason)
	}
}

// expectDeliver runs the packet from port p and checks it is redirected to
// port dst, routed: MACs rewritten and TTL as given. It returns the IPv4
// layer delivered.
func (f *fixture) expectDeliver(t *testing.T, p Port, pkt []byte, dst Port, ttl uint8) *layers.IPv4 {
	t.Helper()
	var ret uint32
	var out []byte
	port, reason, dropped := f.dropDelta(t, func() { ret, out = f.fromPort(t, p, pkt) })
	if dropped || ret != actRedirect {
		t.Fatalf("verdict %d (drop at port %d: %v), want redirect", ret, port, reason)
	}
	return checkDelivered(t, out, dst, ttl)
}

func checkDelivered(t *testing.T, out []byte, dst Port, ttl uint8) *layers.IPv4 {
	t.Helper()
	pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip4, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if eth == nil || ip4 == nil {
		t.Fatalf("delivered frame does not decode: %v", pkt)
	}
	if !bytes.Equal(eth.DstMAC, dst.MAC) || !bytes.Equal(eth.SrcMAC, routerMAC) {
		t.Fatalf("delivered %v -> %v, want %v -> %v (port %d)", eth.SrcMAC, eth.DstMAC, routerMAC, dst.MAC, dst.ID)
	}
	if ip4.TTL != ttl {
		t.Fatalf("TTL %d, want %d", ip4.TTL, ttl)
	}
	checkIPChecksum(t, out[14:14+int(ip4.IHL)*4])
	return ip4
}

func checkIPChecksum(t *testing.T, hdr []byte) {
	t.Helper()
	var sum uint32
	for i := 0; i+1 < len(hdr); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(hdr[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		t.Fatalf("IPv4 header checksum wrong (sum %#x)", sum)
	}
}

func TestAntiSpoofing(t *testing.T) {
	f := newFixture(t)
	good := from(portA, portB.IPs[0])

	spoofMAC := good
	spoofMAC.srcMAC = portB.MAC
	f.expectDrop(t, portA, spoofMAC.bytes(t), portA.ID, DropSpoofMAC)

	spoofIP := good
	spoofIP.src = portB.IPs[0]
	f.expectDrop(t, portA, spoofIP.bytes(t), portA.ID, DropSpoofIP)

	secondary := good
	secondary.src = portA.IPs[1]
	f.expectDeliver(t, portA, secondary.bytes(t), portB, 64)

	// a registered port's frames on an unregistered device
	var ret uint32
	port, reason, ok := f.dropDelta(t, func() { ret, _ = run(t, f.d.objs.MeridianFromPort, 99, 0, good.bytes(t)) })
	if ret != actShot || !ok || port != 0 || reason != DropUnknownPort {
		t.Fatalf("unknown ifindex: verdict %d, drop %d/%v", ret, port, reason)
	}
}

func arpFrame(t *testing.T, srcMAC net.HardwareAddr, op uint16, spa, tpa netip.Addr) []byte {
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: srcMAC, SourceProtAddress: spa.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: tpa.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestARP(t *testing.T) {
	f := newFixture(t)
	a := portA.IPs[0]
	answered := []struct {
		name   string
		target netip.Addr
	}{
		{"gateway", gateways[1]},
		{"same-subnet port (proxy)", portB.IPs[0]},
		{"other-subnet port (proxy)", portC.IPs[0]},
	}
	for _, tc := range answered {
		t.Run(tc.name, func(t *testing.T) {
			ret, out := f.fromPort(t, portA, arpFrame(t, portA.MAC, layers.ARPRequest, a, tc.target))
			if ret != actRedirect {
				t.Fatalf("verdict %d, want redirect (reply)", ret)
			}
			pkt := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
			eth := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			arp, _ := pkt.Layer(layers.LayerTypeARP).(*layers.ARP)
			if arp == nil {
				t.Fatalf("no ARP in reply: %v", pkt)
			}
			if arp.Operation != layers.ARPReply ||
				!bytes.Equal(arp.SourceHwAddress, routerMAC) || !bytes.Equal(arp.SourceProtAddress, tc.target.AsSlice()) ||
				!bytes.Equal(arp.DstHwAddress, portA.MAC) || !bytes.Equal(arp.DstProtAddress, a.AsSlice()) ||
				!bytes.Equal(eth.SrcMAC, routerMAC) || !bytes.Equal(eth.DstMAC, portA.MAC) {
				t.Fatalf("bad reply: %+v / %+v", eth, arp)
			}
		})
	}
	dropped := []struct {
		name   string
		pkt    []byte
		reason DropReason
	}{
		{"unknown target", arpFrame(t, portA.MAC, layers.ARPRequest, a, ip("10.0.1.99")), DropARP},
		{"own address (DAD)", arpFrame(t, portA.MAC, layers.ARPRequest, a, a), DropARP},
		{"other VPC's address", arpFrame(t, portA.MAC, layers.ARPRequest, a, ip("10.0.3.3")), DropARP},
		{"reply from workload", arpFrame(t, portA.MAC, layers.ARPReply, a, gateways[1]), DropARP},
		{"spoofed sender IP", arpFrame(t, portA.MAC, layers.ARPRequest, portB.IPs[0], gateways[1]), DropSpoofIP},
	}
	for _, tc := range dropped {
		t.Run(tc.name, func(t *testing.T) { f.expectDrop(t, portA, tc.pkt, portA.ID, tc.reason) })
	}
	t.Run("ipv6 frame", func(t *testing.T) {
		pkt := from(portA, portB.IPs[0]).bytes(t)
		binary.BigEndian.PutUint16(pkt[12:], 0x86dd)
		f.expectDrop(t, portA, pkt, portA.ID, DropNotIPv4)
	})
}

func TestSecurityGroups(t *testing.T) {
	f := newFixture(t)
	vpcNet := netip.MustParsePrefix("10.0.0.0/16")
	const web = 500 // remote group of A's addresses
	f.groups[100] = fw.GroupMembers{web: portA.IPs}
	f.policies[1] = fw.SecurityGroupPolicy{ID: 1, Rules: []fw.SGRule{
		{ID: 11, Direction: fw.Egress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 90}, RemoteCIDR: vpcNet},
		{ID: 12, Direction: fw.Egress, Protocol: fw.ProtoICMP, ICMP: &fw.ICMPMatch{Type: 8, AnyCode: true}, RemoteCIDR: vpcNet},
	}}
	f.policies[2] = fw.SecurityGroupPolicy{ID: 2, Rules: []fw.SGRule{
		{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteGroup: web},
	}}
	f.install(t)
	events, err := f.d.DropEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	toB := from(portA, portB.IPs[0])
	f.expectDeliver(t, portA, toB.bytes(t), portB, 64)

	t.Run("egress denied", func(t *testing.T) {
		p := toB
		p.dport = 22
		f.expectDrop(t, portA, p.bytes(t), portA.ID, DropSGEgress)
		ev := nextEvent(t, events)
		// The event carries the dropped frame (short enough to be whole).
		if frame := p.bytes(t); ev.Length != len(frame) || !bytes.Equal(ev.Frame, frame) {
			t.Fatalf("event frame %d bytes of %d: %x, want %x", len(ev.Frame), ev.Length, ev.Frame, frame)
		}
		ev.Frame, ev.Length = nil, 0
		want := DropEvent{Reason: DropSGEgress, Rule: 0, Port: portA.ID, Direction: fw.Egress, VPC: 100,
			Src: portA.IPs[0], Dst: portB.IPs[0], Protocol: fw.ProtoTCP, SrcPort: 40000, DstPort: 22}
		if !reflect.DeepEqual(ev, want) {
			t.Fatalf("event %+v, want %+v", ev, want)
		}
	})
	t.Run("ingress denied by port", func(t *testing.T) {
		p := toB
		p.dport = 85 // A may send it, B does not take it
		f.expectDrop(t, portA, p.bytes(t), portB.ID, DropSGIngress)
		if ev := nextEvent(t, events); ev.Reason != DropSGIngress || ev.Port != portB.ID || ev.Direction != fw.Ingress {
			t.Fatalf("event %+v", ev)
		}
	})
	t.Run("ingress denied by remote group", func(t *testing.T) {
		// C is not in the group B admits
		f.expectDrop(t, portC, from(portC, portB.IPs[0]).bytes(t), portB.ID, DropSGIngress)
		nextEvent(t, events)
	})
	t.Run("remote group member by secondary address", func(t *testing.T) {
		p := toB
		p.src = portA.IPs[1]
		p.sport = 40001
		f.expectDeliver(t, portA, p.bytes(t), portB, 64)
	})
	t.Run("icmp type rule", func(t *testing.T) {
		echo := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: portC.IPs[0], proto: fw.ProtoICMP, icmpType: 8, icmpID: 9}
		f.expectDeliver(t, portA, echo.bytes(t), portC, 63)
		ts := echo
		ts.icmpType = 13 // timestamp: not allowed
		f.expectDrop(t, portA, ts.bytes(t), portA.ID, DropSGEgress)
		if ev := nextEvent(t, events); ev.Protocol != fw.ProtoICMP || ev.DstPort != 13<<8 {
			t.Fatalf("event %+v", ev)
		}
	})
	t.Run("many port spans (port set)", func(t *testing.T) {
		var rules []fw.SGRule
		for i := range 12 {
			p := uint16(1000 + 10*i)
			rules = append(rules, fw.SGRule{ID: uint32(300 + i), Direction: fw.Ingress, Protocol: fw.ProtoTCP,
				Ports: fw.PortRange{From: p, To: p}, RemoteCIDR: vpcNet})
		}
		f.policies[3] = fw.SecurityGroupPolicy{ID: 3, Rules: rules}
		f.policies[1] = allowAll(1)
		f.install(t)
		p := from(portA, portC.IPs[0])
		p.dport = 1030
		f.expectDeliver(t, portA, p.bytes(t), portC, 63)
		p.dport = 1031
		f.expectDrop(t, portA, p.bytes(t), portC.ID, DropSGIngress)
		nextEvent(t, events)
	})
	noEvent(t, events)
}

func TestConntrackReplyPasses(t *testing.T) {
	f := newFixture(t)
	// A may open to B:80, B may accept it; neither allows anything else.
	f.policies[1] = fw.SecurityGroupPolicy{ID: 1, Rules: []fw.SGRule{
		{ID: 11, Direction: fw.Egress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteCIDR: netip.PrefixFrom(portB.IPs[0], 32)},
	}}
	f.policies[2] = fw.SecurityGroupPolicy{ID: 2, Rules: []fw.SGRule{
		{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteCIDR: netip.PrefixFrom(portA.IPs[0], 32)},
	}}
	f.install(t)
	before, err := f.d.ConntrackStats()
	if err != nil {
		t.Fatal(err)
	}

	syn := from(portA, portB.IPs[0])
	f.expectDeliver(t, portA, syn.bytes(t), portB, 64)
	reply := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: portA.IPs[0], proto: fw.ProtoTCP, sport: 80, dport: 40000, flags: "SA"}
	f.expectDeliver(t, portB, reply.bytes(t), portA, 64)
	ack := syn
	ack.flags = "A"
	f.expectDeliver(t, portA, ack.bytes(t), portB, 64)

	// B opening its own connection to A is policy's business again
	other := reply
	other.sport, other.dport, other.flags = 5000, 80, "S"
	f.expectDrop(t, portB, other.bytes(t), portB.ID, DropSGEgress)

	// after RST the entry is closed: a new SYN sees policy (and passes)
	rst := syn
	rst.flags = "R"
	f.expectDeliver(t, portA, rst.bytes(t), portB, 64)
	f.expectDeliver(t, portA, syn.bytes(t), portB, 64)

	after, err := f.d.ConntrackStats()
	if err != nil {
		t.Fatal(err)
	}
	if after.Inserts-before.Inserts != 2 || after.Hits-before.Hits < 3 || after.InsertFailures != before.InsertFailures {
		t.Fatalf("conntrack stats before %+v after %+v", before, after)
	}
}

func TestNetworkACL(t *testing.T) {
	f := newFixture(t)
	subnet1 := netip.MustParsePrefix("10.0.1.0/24")
	anyNet := netip.MustParsePrefix("0.0.0.0/0")
	tcp80 := fw.PortRange{From: 80, To: 80}
	// subnet 2 (C): ingress HTTP from subnet 1 except from A's secondary
	// address; egress only what rule 300 lets out.
	f.acls[2] = &fw.ACL{ID: 77, Rules: []fw.ACLRule{
		{ID: 701, Number: 100, Direction: fw.Ingress, Action: fw.Deny, Protocol: fw.ProtoTCP, Ports: tcp80, CIDR: netip.PrefixFrom(portA.IPs[1], 32)},
		{ID: 702, Number: 200, Direction: fw.Ingress, Action: fw.Allow, Protocol: fw.ProtoTCP, Ports: tcp80, CIDR: subnet1},
		{ID: 703, Number: 300, Direction: fw.Ingress, Action: fw.Deny, Protocol: fw.ProtoAny, CIDR: anyNet},
		{ID: 704, Number: 50, Direction: fw.Ingress, Action: fw.Allow, Protocol: fw.ProtoUDP, CIDR: anyNet},
		{ID: 705, Number: 60, Direction: fw.Ingress, Action: fw.Deny, Protocol: fw.ProtoUDP, Ports: fw.PortRange{From: 53, To: 53}, CIDR: anyNet},
	}}
	f.install(t)
	events, err := f.d.DropEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	syn := from(portA, portC.IPs[0])
	f.expectDeliver(t, portA, syn.bytes(t), portC, 63)

	t.Run("deny before allow by number", func(t *testing.T) {
		p := syn
		p.src = portA.IPs[1]
		f.expectDrop(t, portA, p.bytes(t), portC.ID, DropACLIngress)
		if ev := nextEvent(t, events); ev.Rule != 701 || ev.Port != portC.ID || ev.Direction != fw.Ingress {
			t.Fatalf("event %+v, want rule 701", ev)
		}
	})
	t.Run("allow before deny by number", func(t *testing.T) {
		dns := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: portC.IPs[0], proto: fw.ProtoUDP, sport: 3333, dport: 53}
		f.expectDeliver(t, portA, dns.bytes(t), portC, 63) // 50 allows before 60 denies
	})
	t.Run("catch-all deny rule", func(t *testing.T) {
		p := syn
		p.dport = 22
		f.expectDrop(t, portA, p.bytes(t), portC.ID, DropACLIngress)
		if ev := nextEvent(t, events); ev.Rule != 703 {
			t.Fatalf("event %+v, want rule 703", ev)
		}
	})
	t.Run("stateless: the reply needs its own rule", func(t *testing.T) {
		reply := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: portA.IPs[0], proto: fw.ProtoTCP, sport: 80, dport: 40000, flags: "SA"}
		f.expectDrop(t, portC, reply.bytes(t), portC.ID, DropACLEgress)
		if ev := nextEvent(t, events); ev.Rule != 0 || ev.Direction != fw.Egress {
			t.Fatalf("event %+v, want default deny (rule 0)", ev)
		}
		f.acls[2].Rules = append(f.acls[2].Rules, fw.ACLRule{ID: 706, Number: 100, Direction: fw.Egress, Action: fw.Allow,
			Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 1024, To: 65535}, CIDR: subnet1})
		f.install(t)
		f.expectDeliver(t, portC, reply.bytes(t), portA, 63)
	})
	t.Run("acl removed from subnet", func(t *testing.T) {
		f.acls[2] = nil
		f.install(t)
		p := syn
		p.dport = 22
		f.expectDeliver(t, portA, p.bytes(t), portC, 63)
		if err := f.d.DeleteACL(77); err != nil {
			t.Fatal(err)
		}
	})
	noEvent(t, events)
}

func TestRouting(t *testing.T) {
	f := newFixture(t)
	t.Run("same subnet keeps TTL", func(t *testing.T) {
		f.expectDeliver(t, portA, from(portA, portB.IPs[0]).bytes(t), portB, 64)
	})
	t.Run("other subnet decrements TTL", func(t *testing.T) {
		ip4 := f.expectDeliver(t, portA, from(portA, portC.IPs[0]).bytes(t), portC, 63)
		if ip4.SrcIP.String() != "10.0.1.10" || ip4.DstIP.String() != "10.0.2.30" {
			t.Fatalf("addresses changed: %v -> %v", ip4.SrcIP, ip4.DstIP)
		}
	})
	t.Run("TTL 1 same subnet passes", func(t *testing.T) {
		p := from(portA, portB.IPs[0])
		p.ttl = 1
		f.expectDeliver(t, portA, p.bytes(t), portB, 1)
	})
	t.Run("TTL 1 across subnets dropped", func(t *testing.T) {
		p := from(portA, portC.IPs[0])
		p.ttl = 1
		f.expectDrop(t, portA, p.bytes(t), portA.ID, DropTTLExceeded)
	})
	t.Run("remote node", func(t *testing.T) {
		in := from(portA, remoteIP).bytes(t)
		ret, out := f.fromPort(t, portA, in)
		if ret != actRedirect {
			t.Fatalf("verdict %d, want redirect to the overlay", ret)
		}
		// The tunnel key is skb metadata a test run does not return; the
		// receiving side is covered by TestOverlay. The inner frame leaves
		// with its TTL decremented (subnet 1 -> 2), MACs untouched.
		if out[14+8] != 63 || !bytes.Equal(out[6:12], portA.MAC) {
			t.Fatalf("inner frame: ttl %d src %v", out[14+8], net.HardwareAddr(out[6:12]))
		}
		checkIPChecksum(t, out[14:34])
	})
	t.Run("no route", func(t *testing.T) {
		f.expectDrop(t, portA, from(portA, ip("10.9.9.9")).bytes(t), portA.ID, DropNoRoute)
	})
	t.Run("overlay device unset", func(t *testing.T) {
		if err := f.d.SetOverlayDevice(0); err != nil {
			t.Fatal(err)
		}
		defer f.d.SetOverlayDevice(overlayIfx)
		p := from(portA, remoteIP)
		p.sport = 40100
		f.expectDrop(t, portA, p.bytes(t), portA.ID, DropNoRoute)
	})
}

func TestVPCIsolation(t *testing.T) {
	f := newFixture(t)
	// Same addresses, different VPCs: each reaches its own neighbour.
	f.expectDeliver(t, portA, from(portA, ip("10.0.1.20")).bytes(t), portB, 64)
	f.expectDeliver(t, portD, from(portD, ip("10.0.1.20")).bytes(t), portE, 64)
	// 10.0.2.30 exists in VPC 100 only.
	f.expectDrop(t, portD, from(portD, portC.IPs[0]).bytes(t), portD.ID, DropNoRoute)
	// D may not claim A's MAC, and A's address on D is D's own address.
	spoof := from(portD, ip("10.0.1.20"))
	spoof.srcMAC = portA.MAC
	f.expectDrop(t, portD, spoof.bytes(t), portD.ID, DropSpoofMAC)
}

func TestOverlay(t *testing.T) {
	f := newFixture(t)
	f.policies[2] = fw.SecurityGroupPolicy{ID: 2, Rules: []fw.SGRule{
		{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteCIDR: netip.MustParsePrefix("10.0.2.0/24")},
	}}
	f.install(t)
	in := frame{srcMAC: mac("02:99:00:00:00:01"), src: remoteIP, dst: portB.IPs[0], proto: fw.ProtoTCP, sport: 1234, dport: 80, flags: "S", ttl: 63}

	t.Run("delivered to the VNI's port", func(t *testing.T) {
		ret, out := f.fromOverlay(t, 100, in.bytes(t))
		if ret != actRedirect {
			t.Fatalf("verdict %d", ret)
		}
		checkDelivered(t, out, portB, 63)
		ret, out = f.fromOverlay(t, 200, in.bytes(t))
		if ret != actRedirect {
			t.Fatalf("vni 200: verdict %d", ret)
		}
		checkDelivered(t, out, portE, 63)
	})
	drops := []struct {
		name   string
		vni    uint32
		mutate func(*frame)
		port   uint32
		reason DropReason
	}{
		{"ingress policy", 100, func(p *frame) { p.dport = 81 }, portB.ID, DropSGIngress},
		{"not a local port", 100, func(p *frame) { p.dst = remoteIP }, 0, DropNotLocal},
		{"unknown VPC", 300, func(p *frame) {}, 0, DropNoRoute},
		{"fragment", 100, func(p *frame) { p.moreFragments = true }, 0, DropFragment},
	}
	for _, tc := range drops {
		t.Run(tc.name, func(t *testing.T) {
			p := in
			tc.mutate(&p)
			var ret uint32
			port, reason, ok := f.dropDelta(t, func() { ret, _ = f.fromOverlay(t, tc.vni, p.bytes(t)) })
			if ret != actShot || !ok || port != tc.port || reason != tc.reason {
				t.Fatalf("verdict %d drop %v port %d %v, want port %d %v", ret, ok, port, reason, tc.port, tc.reason)
			}
		})
	}
	t.Run("reply to an overlay flow passes egress via conntrack", func(t *testing.T) {
		f.policies[2] = fw.SecurityGroupPolicy{ID: 2, Rules: []fw.SGRule{
			{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteCIDR: netip.MustParsePrefix("10.0.2.0/24")},
		}}
		f.install(t)
		p := in
		p.sport = 999
		if ret, _ := f.fromOverlay(t, 100, p.bytes(t)); ret != actRedirect {
			t.Fatalf("syn: verdict %d", ret)
		}
		reply := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: remoteIP, proto: fw.ProtoTCP, sport: 80, dport: 999, flags: "SA"}
		if ret, _ := f.fromPort(t, portB, reply.bytes(t)); ret != actRedirect {
			t.Fatalf("reply: verdict %d", ret)
		}
	})
	t.Run("no tunnel metadata: next program", func(t *testing.T) {
		if ret, _ := run(t, f.d.objs.MeridianFromOverlay, overlayIfx, 0, in.bytes(t)); ret != actTCXNext {
			t.Fatalf("verdict %#x, want TCX_NEXT", ret)
		}
	})
}

func TestMalformed(t *testing.T) {
	f := newFixture(t)
	good := from(portA, portB.IPs[0])
	mangle := func(fn func(b []byte) []byte) []byte { return fn(good.bytes(t)) }
	cases := []struct {
		name   string
		pkt    []byte
		reason DropReason // 0: delivered
	}{
		{"IHL below 5", mangle(func(b []byte) []byte { b[14] = 0x44; return b }), DropMalformed},
		{"IP version 6 in an IPv4 frame", mangle(func(b []byte) []byte { b[14] = 0x65; return b }), DropMalformed},
		{"IHL beyond the frame", mangle(func(b []byte) []byte { b[14] = 0x4f; return b[:14+40] }), DropMalformed},
		{"total length beyond the frame", mangle(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 1400); return b }), DropMalformed},
		{"total length below the header", mangle(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 16); return b }), DropMalformed},
		{"truncated TCP header", mangle(func(b []byte) []byte {
			b = b[:14+20+10]
			binary.BigEndian.PutUint16(b[16:], 30)
			return b
		}), DropMalformed},
		{"TCP header cut by total length", mangle(func(b []byte) []byte { binary.BigEndian.PutUint16(b[16:], 30); return b }), DropMalformed},
		{"TCP data offset below 5", mangle(func(b []byte) []byte { b[14+20+12] = 0x40; return b }), DropMalformed},
		{"first fragment", func() []byte { p := good; p.moreFragments = true; return p.bytes(t) }(), DropFragment},
		{"later fragment", func() []byte { p := good; p.fragOffset = 100; p.proto = 0xfd; return p.bytes(t) }(), DropFragment},
		{"IP options are skipped", func() []byte { p := good; p.ipOptions = true; return p.bytes(t) }(), 0},
		{"trailing padding beyond total length", mangle(func(b []byte) []byte { return append(b, 0, 0, 0, 0) }), 0},
		{"truncated UDP", func() []byte {
			p := good
			p.proto = fw.ProtoUDP
			b := p.bytes(t)[:14+20+4]
			binary.BigEndian.PutUint16(b[16:], 24)
			return b
		}(), DropMalformed},
		{"truncated ICMP", func() []byte {
			p := good
			p.proto = fw.ProtoICMP
			b := p.bytes(t)[:14+20+4]
			binary.BigEndian.PutUint16(b[16:], 24)
			return b
		}(), DropMalformed},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.reason == 0 {
				// distinct flows so conntrack state does not leak between cases
				binary.BigEndian.PutUint16(tc.pkt[14+int(tc.pkt[14]&0xf)*4:], uint16(41000+i))
				ip4 := f.expectDeliver(t, portA, tc.pkt, portB, 64)
				if len(ip4.Options) == 0 && tc.name == "IP options are skipped" {
					t.Fatalf("options lost")
				}
				return
			}
			f.expectDrop(t, portA, tc.pkt, portA.ID, tc.reason)
		})
	}
	// BPF_PROG_TEST_RUN refuses frames shorter than Ethernet, and IPv4
	// frames shorter than Ethernet + 20 bytes, so those never reach the
	// program in a test; the program's own bounds checks cover them on a
	// real device.
	for _, n := range []int{10, 14, 14 + 12} {
		var ctx skbContext
		ctx[skbIngressIfindex] = uint32(portA.Ifindex)
		if _, err := f.d.objs.MeridianFromPort.Run(&ebpf.RunOptions{Data: good.bytes(t)[:n], Context: ctx}); err == nil {
			t.Errorf("test run accepted a %d-byte IPv4 frame: add it to the cases above", n)
		}
	}
}
