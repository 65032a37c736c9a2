package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meridian-sdn/meridian/fw"
)

const skbCB0 = 12 // __sk_buff.cb[0], in 32-bit words

// tunnelOut is the verdict of a test entry, the frame after it and the
// tunnel key it set (cb[0], cb[1], see the test entries in meridian.c).
type tunnelOut struct {
	verdict uint32
	frame   []byte
	remote  netip.Addr // invalid: no tunnel key
	vni     uint32
}

// runTunnel runs a test entry on pkt received on ifindex, with the overlay
// VNI in mark and its outer source in cb[0].
func runTunnel(t testing.TB, prog *ebpf.Program, ifindex int, vni uint32, outerSrc netip.Addr, pkt []byte) tunnelOut {
	t.Helper()
	var ctx, ctxOut skbContext
	ctx[skbIngressIfindex] = uint32(ifindex)
	ctx[skbMark] = vni
	if outerSrc.IsValid() {
		ctx[skbCB0] = be32(outerSrc)
	}
	out := make([]byte, len(pkt)+512)
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out, Context: ctx, ContextOut: &ctxOut})
	if err != nil {
		t.Fatalf("test run of %v: %v", prog, err)
	}
	r := tunnelOut{verdict: ret, frame: out, vni: ctxOut[skbCB0+1]}
	if ctxOut[skbCB0] != 0 {
		r.remote = addrOf(ctxOut[skbCB0])
	}
	return r
}

// decoded is a translated frame, parsed, with its checksums verified.
type decoded struct {
	eth  *layers.Ethernet
	ip   *layers.IPv4
	tcp  *layers.TCP
	udp  *layers.UDP
	icmp *layers.ICMPv4
}

func (d decoded) src() netip.Addr { a, _ := netip.AddrFromSlice(d.ip.SrcIP); return a }
func (d decoded) dst() netip.Addr { a, _ := netip.AddrFromSlice(d.ip.DstIP); return a }

// ports returns the TCP/UDP ports, or the ICMP echo id twice.
func (d decoded) ports() (uint16, uint16) {
	switch {
	case d.tcp != nil:
		return uint16(d.tcp.SrcPort), uint16(d.tcp.DstPort)
	case d.udp != nil:
		return uint16(d.udp.SrcPort), uint16(d.udp.DstPort)
	case d.icmp != nil:
		return d.icmp.Id, d.icmp.Id
	}
	return 0, 0
}

// onesSum is the Internet checksum sum of b, folded.
func onesSum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return sum
}

// decodeChecked parses an output frame and verifies its IPv4 header
// checksum and its L4 checksum (TCP and UDP with the pseudo header, ICMP
// over the message).
func decodeChecked(t testing.TB, frame []byte) decoded {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var d decoded
	d.eth, _ = pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	d.ip, _ = pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if d.eth == nil || d.ip == nil {
		t.Fatalf("frame does not decode: %v", pkt)
	}
	d.tcp, _ = pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	d.udp, _ = pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	d.icmp, _ = pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	ihl := int(d.ip.IHL) * 4
	ipb := frame[14 : 14+int(d.ip.Length)]
	if s := onesSum(0, ipb[:ihl]); s != 0xffff {
		t.Fatalf("IPv4 header checksum wrong (sum %#x)", s)
	}
	l4 := ipb[ihl:]
	switch d.ip.Protocol {
	case layers.IPProtocolTCP, layers.IPProtocolUDP:
		if d.ip.Protocol == layers.IPProtocolUDP && binary.BigEndian.Uint16(l4[6:]) == 0 {
			break // no checksum
		}
		var ph [12]byte
		copy(ph[0:4], ipb[12:16])
		copy(ph[4:8], ipb[16:20])
		ph[9] = uint8(d.ip.Protocol)
		binary.BigEndian.PutUint16(ph[10:], uint16(len(l4)))
		if s := onesSum(onesSum(0, ph[:]), l4); s != 0xffff {
			t.Fatalf("%v checksum wrong (sum %#x)", d.ip.Protocol, s)
		}
	case layers.IPProtocolICMPv4:
		if s := onesSum(0, l4); s != 0xffff {
			t.Fatalf("ICMP checksum wrong (sum %#x)", s)
		}
	}
	return d
}

// ---- workload node ----

func TestEgressToGateway(t *testing.T) {
	f := newFixture(t)
	gws := []netip.Addr{ip("192.0.2.101"), ip("192.0.2.102"), ip("192.0.2.103")}
	owner := ip("192.0.2.109")
	if err := f.d.SetGateways(gws); err != nil {
		t.Fatal(err)
	}
	// A's first address has an elastic IP; subnet 2 (C) is behind a NAT
	// gateway, and so is A's subnet, whose /24 the /32 must beat.
	for _, e := range []Egress{
		{VPC: 100, Prefix: netip.MustParsePrefix("10.0.1.10/32")},
		{VPC: 100, Prefix: netip.MustParsePrefix("10.0.2.0/24"), NATOwner: owner, NATGateway: 7},
		{VPC: 100, Prefix: netip.MustParsePrefix("10.0.1.0/24"), NATOwner: owner, NATGateway: 7},
	} {
		if err := f.d.UpsertEgress(e); err != nil {
			t.Fatal(err)
		}
	}
	outside := ip("203.0.113.2")
	toGateway := func(t *testing.T, p Port, fr frame) tunnelOut {
		t.Helper()
		var r tunnelOut
		port, reason, dropped := f.dropDelta(t, func() { r = runTunnel(t, f.d.objs.MeridianFromPortTest, p.Ifindex, 0, netip.Addr{}, fr.bytes(t)) })
		if dropped || r.verdict != actRedirect {
			t.Fatalf("verdict %d (drop at port %d: %v), want redirect to a gateway", r.verdict, port, reason)
		}
		if r.vni != p.VPC {
			t.Fatalf("VNI %d, want %d", r.vni, p.VPC)
		}
		d := decodeChecked(t, r.frame)
		if d.src() != fr.src || d.dst() != fr.dst || d.ip.TTL != 63 {
			t.Fatalf("inner packet %v -> %v TTL %d, want %v -> %v TTL 63 (routed, not translated)", d.src(), d.dst(), d.ip.TTL, fr.src, fr.dst)
		}
		return r
	}

	t.Run("elastic IP: a live gateway by flow hash", func(t *testing.T) {
		seen := map[netip.Addr]int{}
		for sport := uint16(40000); sport < 40064; sport++ {
			fr := from(portA, outside)
			fr.sport = sport
			first := toGateway(t, portA, fr)
			if !slicesContains(gws, first.remote) {
				t.Fatalf("sent to %v, not a gateway", first.remote)
			}
			fr.flags = "A"
			if again := toGateway(t, portA, fr); again.remote != first.remote {
				t.Fatalf("flow moved from gateway %v to %v", first.remote, again.remote)
			}
			seen[first.remote]++
		}
		if len(seen) != len(gws) {
			t.Fatalf("64 flows used gateways %v, want all %d", seen, len(gws))
		}
	})
	t.Run("NAT gateway: its owner", func(t *testing.T) {
		if r := toGateway(t, portC, from(portC, outside)); r.remote != owner {
			t.Fatalf("sent to %v, want the owner %v", r.remote, owner)
		}
		// A's secondary address has no elastic IP: its subnet's NAT gateway
		fr := from(portA, outside)
		fr.src = portA.IPs[1]
		if r := toGateway(t, portA, fr); r.remote != owner {
			t.Fatalf("secondary address sent to %v, want the owner %v", r.remote, owner)
		}
	})
	t.Run("neither: dropped, no route", func(t *testing.T) {
		f.expectDrop(t, portD, from(portD, outside).bytes(t), portD.ID, DropNoRoute)
	})
	t.Run("inside the VPC CIDR: never to a gateway", func(t *testing.T) {
		if err := f.d.UpsertVPCPrefix(100, netip.MustParsePrefix("10.0.0.0/16")); err != nil {
			t.Fatal(err)
		}
		f.expectDrop(t, portA, from(portA, ip("10.0.9.9")).bytes(t), portA.ID, DropNoRoute)
		f.expectDrop(t, portA, arpFrame(t, portA.MAC, layers.ARPRequest, portA.IPs[0], ip("10.0.1.99")), portA.ID, DropARP)
		toGateway(t, portA, from(portA, outside)) // outside still goes out
	})
	t.Run("policy still applies", func(t *testing.T) {
		f.policies[3] = fw.SecurityGroupPolicy{ID: 3, Rules: []fw.SGRule{
			{ID: 31, Direction: fw.Egress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 443, To: 443}, RemoteCIDR: netip.MustParsePrefix("0.0.0.0/0")},
		}}
		f.install(t)
		fr := from(portC, outside)
		fr.sport = 41000
		f.expectDrop(t, portC, fr.bytes(t), portC.ID, DropSGEgress)
		fr.dport = 443
		toGateway(t, portC, fr)
		// the reply comes back over the overlay from the gateway, with the
		// outside host's real address, and passes through conntrack
		reply := frame{srcMAC: mac("02:99:00:00:00:01"), src: outside, dst: portC.IPs[0], proto: fw.ProtoTCP,
			sport: 443, dport: 41000, flags: "SA", ttl: 63}
		ret, out := f.fromOverlay(t, 100, reply.bytes(t))
		if ret != actRedirect {
			t.Fatalf("reply from the gateway: verdict %d, drops %v", ret, f.drops(t))
		}
		checkDelivered(t, out, portC, 63)
		// an unsolicited packet from outside meets the port's policy
		unsolicited := reply
		unsolicited.sport, unsolicited.dport, unsolicited.flags = 5555, 22, "S"
		var r uint32
		port, reason, _ := f.dropDelta(t, func() { r, _ = f.fromOverlay(t, 100, unsolicited.bytes(t)) })
		if r != actShot || port != portC.ID || reason != DropSGIngress {
			t.Fatalf("unsolicited: verdict %d drop %d %v", r, port, reason)
		}
	})
	t.Run("no live gateway", func(t *testing.T) {
		if err := f.d.SetGateways(nil); err != nil {
			t.Fatal(err)
		}
		fr := from(portA, outside)
		fr.sport = 42000
		f.expectDrop(t, portA, fr.bytes(t), portA.ID, DropNoGateway)
	})
	t.Run("bad input changes nothing", func(t *testing.T) {
		if err := f.d.UpsertEgress(Egress{VPC: 100, Prefix: netip.MustParsePrefix("2001:db8::/64")}); err == nil {
			t.Fatal("IPv6 egress prefix accepted")
		}
		if err := f.d.SetGateways(make([]netip.Addr, 17)); err == nil {
			t.Fatal("17 gateways accepted")
		}
	})
}

func slicesContains(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// ---- gateway node ----

// The gateway fixture: elastic IP eipA -> A (10.0.1.10 on nodeA), eipC ->
// C (10.0.2.30 on nodeC); NAT gateway 7 with address natAddr for subnet
// 10.0.2.0/24, ports 1024-65535, and a port mapping natAddr:8080/tcp ->
// C:80. The uplink is a veth in the test's own namespace, with the outside
// host on its link and a route to farNet through a router whose MAC is not
// known yet.
var (
	eipA, eipC  = ip("198.51.100.10"), ip("198.51.100.11")
	natAddr     = ip("198.51.100.20")
	nodeA       = ip("192.0.2.11")
	nodeC       = ip("192.0.2.13")
	outsideHost = ip("203.0.113.2")
	outsideMAC  = mac("02:00:5e:00:00:99")
	farHost     = ip("100.64.0.9")
	gwRouterMAC = mac("0a:4d:52:00:00:01")
	uplinkMAC   = mac("02:00:5e:00:01:01")
)

type gateway struct {
	*fixture
	uplink int            // ifindex of the uplink in the test namespace
	ns     netns.NsHandle // the test namespace
}

// run is t.Run with the subtest's thread in the gateway's namespace: a
// subtest runs on a goroutine of its own, and bpf_fib_lookup in a test run
// sees the namespace of the thread that runs it.
func (g *gateway) run(t *testing.T, name string, fn func(t *testing.T)) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("get netns: %v", err)
		}
		defer orig.Close()
		if err := netns.Set(g.ns); err != nil {
			runtime.UnlockOSThread()
			t.Fatalf("enter the gateway namespace: %v", err)
		}
		defer func() {
			if err := netns.Set(orig); err != nil {
				t.Errorf("restore netns: %v (thread retired)", err)
				return
			}
			runtime.UnlockOSThread()
		}()
		fn(t)
	})
}

func natGateway7() NATGateway {
	return NATGateway{ID: 7, VPC: 100, Addresses: []netip.Addr{natAddr}, SNAT: []netip.Prefix{netip.MustParsePrefix("10.0.2.0/24")},
		PortMin: 1024, PortMax: 65535, Mappings: []PortMapping{
			{Protocol: 6, Address: natAddr, PublicPort: 8080, PrivateIP: portC.IPs[0], PrivatePort: 80, PortMAC: portC.MAC, Node: nodeC},
		}}
}

// newGateway builds the gateway fixture; fn runs inside the namespace
// (bpf_fib_lookup reads the routes of the calling thread's namespace).
func newGateway(t testing.TB, fn func(g *gateway)) {
	inNewNetns(t, func(node netns.NsHandle) {
		must := func(what string, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("gateway fixture: %s: %v", what, err)
			}
		}
		must("add uplink", netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "gup0", HardwareAddr: uplinkMAC}, PeerName: "gup1"}))
		up, err := netlink.LinkByName("gup0")
		must("find uplink", err)
		peer, err := netlink.LinkByName("gup1")
		must("find peer", err)
		must("address", netlink.AddrAdd(up, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(203, 0, 113, 1), Mask: net.CIDRMask(24, 32)}}))
		must("up", netlink.LinkSetUp(up))
		must("peer up", netlink.LinkSetUp(peer))
		must("outside neighbour", netlink.NeighAdd(&netlink.Neigh{LinkIndex: up.Attrs().Index, Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: outsideHost.AsSlice(), HardwareAddr: outsideMAC}))
		must("route to the far network", netlink.RouteAdd(&netlink.Route{LinkIndex: up.Attrs().Index,
			Dst: &net.IPNet{IP: net.IPv4(100, 64, 0, 0), Mask: net.CIDRMask(10, 32)}, Gw: net.IPv4(203, 0, 113, 254)}))
		must("forwarding", os.WriteFile("/proc/sys/net/ipv4/conf/gup0/forwarding", []byte("1"), 0))

		g := &gateway{fixture: newFixture(t), uplink: up.Attrs().Index, ns: node}
		must("eip A", g.d.UpsertElasticIP(ElasticIP{Address: eipA, VPC: 100, PrivateIP: portA.IPs[0], PortMAC: portA.MAC, Node: nodeA}))
		must("eip C", g.d.UpsertElasticIP(ElasticIP{Address: eipC, VPC: 100, PrivateIP: portC.IPs[0], PortMAC: portC.MAC, Node: nodeC}))
		must("nat gateway", g.d.UpsertNATGateway(natGateway7()))
		fn(g)
	})
}

// inbound runs a frame from the fabric through the uplink program.
func (g *gateway) inbound(t testing.TB, fr frame) tunnelOut {
	t.Helper()
	if fr.srcMAC == nil {
		fr.srcMAC = outsideMAC
	}
	if fr.dstMAC == nil {
		fr.dstMAC = uplinkMAC
	}
	return runTunnel(t, g.d.objs.MeridianFromUplinkTest, g.uplink, 0, netip.Addr{}, fr.bytes(t))
}

// outbound runs a frame decapsulated from VNI 100, sent by node, through
// the overlay program.
func (g *gateway) outbound(t testing.TB, node netip.Addr, fr frame) tunnelOut {
	t.Helper()
	if fr.dstMAC == nil {
		fr.dstMAC = gwRouterMAC
	}
	return runTunnel(t, g.d.objs.MeridianFromOverlayMark, g.uplink, 100, node, fr.bytes(t))
}

// expectToPort checks a frame was sent over the overlay to node with VNI
// 100, routed to the port (MACs router -> port, TTL 63) and returns it.
func expectToPort(t *testing.T, r tunnelOut, node netip.Addr, p Port) decoded {
	t.Helper()
	if r.verdict != actRedirect || r.remote != node || r.vni != 100 {
		t.Fatalf("verdict %d to %v VNI %d, want redirect to %v VNI 100", r.verdict, r.remote, r.vni, node)
	}
	d := decodeChecked(t, r.frame)
	if !bytes.Equal(d.eth.DstMAC, p.MAC) || !bytes.Equal(d.eth.SrcMAC, gwRouterMAC) || d.ip.TTL != 63 {
		t.Fatalf("frame %v -> %v TTL %d, want %v -> %v TTL 63", d.eth.SrcMAC, d.eth.DstMAC, d.ip.TTL, gwRouterMAC, p.MAC)
	}
	return d
}

// expectToFabric checks a frame was sent out of the uplink to the outside
// host's MAC and returns it.
func expectToFabric(t *testing.T, g *gateway, r tunnelOut) decoded {
	t.Helper()
	if r.verdict != actRedirect {
		t.Fatalf("verdict %d, want redirect to the uplink (drops %v)", r.verdict, g.drops(t))
	}
	d := decodeChecked(t, r.frame)
	if !bytes.Equal(d.eth.DstMAC, outsideMAC) || !bytes.Equal(d.eth.SrcMAC, uplinkMAC) {
		t.Fatalf("frame %v -> %v, want %v -> %v (next hop by bpf_fib_lookup)", d.eth.SrcMAC, d.eth.DstMAC, uplinkMAC, outsideMAC)
	}
	return d
}

func (g *gateway) expectGatewayDrop(t *testing.T, reason DropReason, run func() tunnelOut) {
	t.Helper()
	var r tunnelOut
	_, got, ok := g.dropDelta(t, func() { r = run() })
	if r.verdict != actShot || !ok || got != reason {
		t.Fatalf("verdict %d, drop %v (counted %v), want %v", r.verdict, got, ok, reason)
	}
}

func TestElasticIPTranslation(t *testing.T) {
	newGateway(t, func(g *gateway) {
		g.run(t, "inbound TCP: destination to the port, over the overlay", func(t *testing.T) {
			in := frame{src: outsideHost, dst: eipA, proto: fw.ProtoTCP, sport: 5555, dport: 80, flags: "S"}
			d := expectToPort(t, g.inbound(t, in), nodeA, portA)
			if d.src() != outsideHost || d.dst() != portA.IPs[0] || d.tcp.SrcPort != 5555 || d.tcp.DstPort != 80 {
				t.Fatalf("translated to %v:%d -> %v:%d", d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort)
			}
		})
		g.run(t, "inbound UDP and ICMP", func(t *testing.T) {
			udp := frame{src: outsideHost, dst: eipC, proto: fw.ProtoUDP, sport: 5353, dport: 53}
			if d := expectToPort(t, g.inbound(t, udp), nodeC, portC); d.dst() != portC.IPs[0] || d.udp.DstPort != 53 {
				t.Fatalf("UDP translated to %v:%d", d.dst(), d.udp.DstPort)
			}
			echo := frame{src: outsideHost, dst: eipA, proto: fw.ProtoICMP, icmpType: 8, icmpID: 99}
			if d := expectToPort(t, g.inbound(t, echo), nodeA, portA); d.dst() != portA.IPs[0] || d.icmp.Id != 99 {
				t.Fatalf("echo translated to %v id %d", d.dst(), d.icmp.Id)
			}
		})
		g.run(t, "outbound: source to the elastic IP, out of the uplink", func(t *testing.T) {
			out := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: outsideHost, proto: fw.ProtoTCP, sport: 80, dport: 5555, flags: "SA", ttl: 63}
			d := expectToFabric(t, g, g.outbound(t, nodeA, out))
			if d.src() != eipA || d.dst() != outsideHost || d.tcp.SrcPort != 80 || d.tcp.DstPort != 5555 {
				t.Fatalf("translated to %v:%d -> %v:%d", d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort)
			}
			reply := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: outsideHost, proto: fw.ProtoICMP, icmpType: 0, icmpID: 99, ttl: 63}
			if d := expectToFabric(t, g, g.outbound(t, nodeA, reply)); d.src() != eipA || d.icmp.Id != 99 {
				t.Fatalf("echo reply translated to %v id %d", d.src(), d.icmp.Id)
			}
			udp := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: outsideHost, proto: fw.ProtoUDP, sport: 53, dport: 5353, ttl: 63}
			if d := expectToFabric(t, g, g.outbound(t, nodeA, udp)); d.src() != eipA || d.udp.SrcPort != 53 {
				t.Fatalf("UDP translated to %v:%d", d.src(), d.udp.SrcPort)
			}
		})
		g.run(t, "next hop not resolved yet: redirect_neigh", func(t *testing.T) {
			out := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: farHost, proto: fw.ProtoTCP, sport: 80, dport: 5555, flags: "SA", ttl: 63}
			r := g.outbound(t, nodeA, out)
			if r.verdict != actRedirect {
				t.Fatalf("verdict %d, want redirect (drops %v)", r.verdict, g.drops(t))
			}
			if d := decodeChecked(t, r.frame); d.src() != eipA {
				t.Fatalf("source %v, want %v", d.src(), eipA)
			}
		})
		g.run(t, "hairpin: a port reaching an elastic IP of its VPC", func(t *testing.T) {
			// A -> C's elastic IP: the gateway translates the source to A's
			// elastic IP and the destination to C, and sends it to C's node
			// (on 443: C:80/tcp is a port mapping's target, whose replies
			// leave from the mapping's address)
			out := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: eipC, proto: fw.ProtoTCP, sport: 40000, dport: 443, flags: "S", ttl: 64}
			d := expectToPort(t, g.outbound(t, nodeA, out), nodeC, portC)
			if d.src() != eipA || d.dst() != portC.IPs[0] || d.tcp.SrcPort != 40000 || d.tcp.DstPort != 443 {
				t.Fatalf("hairpin translated to %v:%d -> %v:%d", d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort)
			}
			// and C's reply to A's elastic IP reaches A from C's elastic IP
			back := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: eipA, proto: fw.ProtoTCP, sport: 443, dport: 40000, flags: "SA", ttl: 64}
			d = expectToPort(t, g.outbound(t, nodeC, back), nodeA, portA)
			if d.src() != eipC || d.dst() != portA.IPs[0] {
				t.Fatalf("hairpin reply translated to %v -> %v", d.src(), d.dst())
			}
		})
		g.run(t, "not for a public address: left to the host", func(t *testing.T) {
			own := frame{src: outsideHost, dst: ip("203.0.113.1"), proto: fw.ProtoTCP, sport: 5555, dport: 179, flags: "S"}
			if r := g.inbound(t, own); r.verdict != actTCXNext {
				t.Fatalf("verdict %#x, want TCX_NEXT", r.verdict)
			}
			arp := arpFrame(t, outsideMAC, layers.ARPRequest, outsideHost, ip("203.0.113.1"))
			if r := runTunnel(t, g.d.objs.MeridianFromUplinkTest, g.uplink, 0, netip.Addr{}, arp); r.verdict != actTCXNext {
				t.Fatalf("ARP: verdict %#x, want TCX_NEXT", r.verdict)
			}
		})
		g.run(t, "drops", func(t *testing.T) {
			if err := g.d.UpsertElasticIP(ElasticIP{Address: eipA, VPC: 100, PrivateIP: portA.IPs[0], PortMAC: portA.MAC}); err != nil {
				t.Fatal(err)
			}
			in := frame{src: outsideHost, dst: eipA, proto: fw.ProtoTCP, sport: 5555, dport: 80, flags: "S"}
			g.expectGatewayDrop(t, DropEIPUnbound, func() tunnelOut { return g.inbound(t, in) })
			ttl := in
			ttl.dst, ttl.ttl = eipC, 1
			g.expectGatewayDrop(t, DropTTLExceeded, func() tunnelOut { return g.inbound(t, ttl) })
			// a source with neither elastic IP nor NAT gateway
			stray := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: outsideHost, proto: fw.ProtoTCP, sport: 1, dport: 2, flags: "S", ttl: 63}
			g.expectGatewayDrop(t, DropNoRoute, func() tunnelOut { return g.outbound(t, nodeA, stray) })
			// released: A's address is no longer translated either way
			if err := g.d.DeleteElasticIP(eipA); err != nil {
				t.Fatal(err)
			}
			if r := g.inbound(t, in); r.verdict != actTCXNext {
				t.Fatalf("released elastic IP: verdict %#x, want TCX_NEXT", r.verdict)
			}
			out := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: outsideHost, proto: fw.ProtoTCP, sport: 80, dport: 5555, flags: "SA", ttl: 63}
			g.expectGatewayDrop(t, DropNoRoute, func() tunnelOut { return g.outbound(t, nodeA, out) })
		})
		g.run(t, "bad input changes nothing", func(t *testing.T) {
			bad := []ElasticIP{
				{Address: ip("2001:db8::1"), VPC: 100, PrivateIP: portA.IPs[0], PortMAC: portA.MAC},
				{Address: eipC, VPC: 0, PrivateIP: portA.IPs[0], PortMAC: portA.MAC},
				{Address: eipC, VPC: 100, PrivateIP: portA.IPs[0], PortMAC: nil},
			}
			for _, e := range bad {
				if err := g.d.UpsertElasticIP(e); err == nil {
					t.Fatalf("accepted %+v", e)
				}
			}
			in := frame{src: outsideHost, dst: eipC, proto: fw.ProtoUDP, sport: 5353, dport: 53}
			expectToPort(t, g.inbound(t, in), nodeC, portC)
		})
	})
}

// natFlow sends an outbound frame from C through the NAT gateway and
// returns the public port it got.
func natFlow(t *testing.T, g *gateway, fr frame) uint16 {
	t.Helper()
	d := expectToFabric(t, g, g.outbound(t, nodeC, fr))
	if d.src() != natAddr || d.dst() != fr.dst {
		t.Fatalf("translated to %v -> %v, want %v -> %v", d.src(), d.dst(), natAddr, fr.dst)
	}
	sport, dport := d.ports()
	if d.icmp == nil && dport != fr.dport {
		t.Fatalf("destination port changed %d -> %d", fr.dport, dport)
	}
	return sport
}

func TestNATGateway(t *testing.T) {
	newGateway(t, func(g *gateway) {
		// C goes through the NAT gateway once it has no elastic IP
		if err := g.d.DeleteElasticIP(eipC); err != nil {
			t.Fatal(err)
		}
		syn := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: outsideHost, proto: fw.ProtoTCP, sport: 40000, dport: 80, flags: "S", ttl: 63}
		var public uint16
		g.run(t, "TCP: a source port from the range, kept for the flow", func(t *testing.T) {
			public = natFlow(t, g, syn)
			if public < 1024 {
				t.Fatalf("public port %d outside 1024-65535", public)
			}
			ack := syn
			ack.flags = "A"
			if again := natFlow(t, g, ack); again != public {
				t.Fatalf("flow moved from port %d to %d", public, again)
			}
		})
		g.run(t, "TCP reply: back to the port's node and port", func(t *testing.T) {
			reply := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoTCP, sport: 80, dport: public, flags: "SA"}
			d := expectToPort(t, g.inbound(t, reply), nodeC, portC)
			if d.src() != outsideHost || d.dst() != portC.IPs[0] || d.tcp.DstPort != 40000 || d.tcp.SrcPort != 80 {
				t.Fatalf("reply translated to %v:%d -> %v:%d", d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort)
			}
		})
		g.run(t, "UDP and ICMP echo", func(t *testing.T) {
			udp := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: outsideHost, proto: fw.ProtoUDP, sport: 5353, dport: 53, ttl: 63}
			up := natFlow(t, g, udp)
			in := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoUDP, sport: 53, dport: up}
			if d := expectToPort(t, g.inbound(t, in), nodeC, portC); d.udp.DstPort != 5353 {
				t.Fatalf("UDP reply to port %d", d.udp.DstPort)
			}
			echo := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: outsideHost, proto: fw.ProtoICMP, icmpType: 8, icmpID: 77, ttl: 63}
			id := natFlow(t, g, echo)
			reply := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoICMP, icmpType: 0, icmpID: id}
			if d := expectToPort(t, g.inbound(t, reply), nodeC, portC); d.icmp.Id != 77 || d.dst() != portC.IPs[0] {
				t.Fatalf("echo reply to %v id %d, want id 77", d.dst(), d.icmp.Id)
			}
		})
		g.run(t, "unsolicited inbound is dropped", func(t *testing.T) {
			in := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoTCP, sport: 80, dport: public + 1, flags: "S"}
			if public == 65535 {
				in.dport = public - 1
			}
			g.expectGatewayDrop(t, DropNATNoFlow, func() tunnelOut { return g.inbound(t, in) })
			other := frame{src: ip("203.0.113.3"), dst: natAddr, proto: fw.ProtoTCP, sport: 80, dport: public, flags: "SA"}
			g.expectGatewayDrop(t, DropNATNoFlow, func() tunnelOut { return g.inbound(t, other) })
			g.expectGatewayDrop(t, DropNATProtocol, func() tunnelOut {
				return g.inbound(t, frame{src: outsideHost, dst: natAddr, proto: 47})
			})
		})
		g.run(t, "port mapping: inbound to the port, replies from the mapping", func(t *testing.T) {
			in := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoTCP, sport: 6000, dport: 8080, flags: "S"}
			d := expectToPort(t, g.inbound(t, in), nodeC, portC)
			if d.dst() != portC.IPs[0] || d.tcp.DstPort != 80 || d.src() != outsideHost || d.tcp.SrcPort != 6000 {
				t.Fatalf("mapped to %v:%d -> %v:%d", d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort)
			}
			reply := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: outsideHost, proto: fw.ProtoTCP, sport: 80, dport: 6000, flags: "SA", ttl: 63}
			if p := natFlow(t, g, reply); p != 8080 {
				t.Fatalf("mapping reply from port %d, want 8080", p)
			}
		})
		g.run(t, "stats", func(t *testing.T) {
			st, err := g.d.NATStats()
			if err != nil {
				t.Fatal(err)
			}
			// TCP, UDP and echo flows; the port mapping holds no state
			if len(st) != 1 || st[0].ID != 7 || st[0].ActiveFlows != 3 || st[0].PortExhausted != 0 {
				t.Fatalf("stats %+v, want gateway 7 with 3 active flows", st)
			}
		})
		g.run(t, "not the owner: no new flows", func(t *testing.T) {
			ng := natGateway7()
			ng.SNAT = nil
			if err := g.d.UpsertNATGateway(ng); err != nil {
				t.Fatal(err)
			}
			fr := syn
			fr.sport = 40001
			g.expectGatewayDrop(t, DropNoRoute, func() tunnelOut { return g.outbound(t, nodeC, fr) })
			// the mapping is stateless and still served
			in := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoTCP, sport: 6001, dport: 8080, flags: "S"}
			expectToPort(t, g.inbound(t, in), nodeC, portC)
		})
		g.run(t, "deleted: flows and addresses gone", func(t *testing.T) {
			if err := g.d.DeleteNATGateway(7); err != nil {
				t.Fatal(err)
			}
			n := 0
			var k [20]byte
			var v [40]byte
			for it := g.d.objs.Nat.Iterate(); it.Next(&k, &v); {
				n++
			}
			if n != 0 {
				t.Fatalf("%d NAT entries left", n)
			}
			reply := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoTCP, sport: 80, dport: public, flags: "A"}
			if r := g.inbound(t, reply); r.verdict != actTCXNext {
				t.Fatalf("verdict %#x, want TCX_NEXT", r.verdict)
			}
		})
		g.run(t, "bad input changes nothing", func(t *testing.T) {
			bad := []NATGateway{
				{ID: 0, VPC: 100, Addresses: []netip.Addr{natAddr}},
				{ID: 8, VPC: 100},
				{ID: 8, VPC: 100, Addresses: []netip.Addr{natAddr}, PortMin: 2000, PortMax: 1999},
				{ID: 8, VPC: 100, Addresses: []netip.Addr{natAddr}, Mappings: []PortMapping{{Protocol: 1, Address: natAddr, PublicPort: 1, PrivateIP: portC.IPs[0], PrivatePort: 1, PortMAC: portC.MAC}}},
				{ID: 8, VPC: 100, Addresses: []netip.Addr{natAddr}, Mappings: []PortMapping{{Protocol: 6, Address: eipA, PublicPort: 1, PrivateIP: portC.IPs[0], PrivatePort: 1, PortMAC: portC.MAC}}},
			}
			for _, ng := range bad {
				if err := g.d.UpsertNATGateway(ng); err == nil {
					t.Fatalf("accepted %+v", ng)
				}
			}
			if st, err := g.d.NATStats(); err != nil || len(st) != 0 {
				t.Fatalf("stats %+v, %v: want none", st, err)
			}
		})
	})
}

// TestNATPortExhaustion: a NAT gateway with two ports serves two flows to
// one destination, refuses and counts the third, and serves it once a
// port's flow has expired; ports come back flow after flow (no leak).
func TestNATPortExhaustion(t *testing.T) {
	newGateway(t, func(g *gateway) {
		// C goes through the NAT gateway once it has no elastic IP
		if err := g.d.DeleteElasticIP(eipC); err != nil {
			t.Fatal(err)
		}
		ng := natGateway7()
		ng.PortMin, ng.PortMax, ng.Mappings = 2000, 2001, nil
		if err := g.d.UpsertNATGateway(ng); err != nil {
			t.Fatal(err)
		}
		// Long enough that a loaded machine (CI runs packages in
		// parallel) cannot expire a flow between the allocations and the
		// refusals that follow them: at 50 ms it once did.
		const udpTimeout = time.Second
		if err := g.d.SetNATTimeouts(NATTimeouts{UDP: udpTimeout}); err != nil {
			t.Fatal(err)
		}
		udp := func(sport uint16) frame {
			return frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: outsideHost, proto: fw.ProtoUDP, sport: sport, dport: 53, ttl: 63}
		}
		stats := func() NATStats {
			t.Helper()
			st, err := g.d.NATStats()
			if err != nil || len(st) != 1 {
				t.Fatalf("stats %+v, %v", st, err)
			}
			return st[0]
		}
		p1, p2 := natFlow(t, g, udp(1)), natFlow(t, g, udp(2))
		if p1 == p2 || min(p1, p2) != 2000 || max(p1, p2) != 2001 {
			t.Fatalf("ports %d and %d, want 2000 and 2001", p1, p2)
		}
		g.expectGatewayDrop(t, DropNATExhausted, func() tunnelOut { return g.outbound(t, nodeC, udp(3)) })
		g.expectGatewayDrop(t, DropNATExhausted, func() tunnelOut { return g.outbound(t, nodeC, udp(3)) })
		if st := stats(); st.PortExhausted != 2 || st.ActiveFlows != 2 {
			t.Fatalf("stats %+v, want 2 exhausted, 2 active", st)
		}
		// an existing flow keeps working while the table is full
		if p := natFlow(t, g, udp(1)); p != p1 {
			t.Fatalf("flow 1 moved to port %d", p)
		}
		// another destination has its own ports
		other := udp(3)
		other.dst = ip("203.0.113.7")
		if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: g.uplink, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: other.dst.AsSlice(), HardwareAddr: outsideMAC}); err != nil {
			t.Fatal(err)
		}
		natFlow(t, g, other)

		// expiry frees the ports, cycle after cycle
		for cycle := range 5 {
			time.Sleep(udpTimeout + 10*time.Millisecond)
			a, b := natFlow(t, g, udp(uint16(100+2*cycle))), natFlow(t, g, udp(uint16(101+2*cycle)))
			if a == b {
				t.Fatalf("cycle %d: both flows on port %d", cycle, a)
			}
			g.expectGatewayDrop(t, DropNATExhausted, func() tunnelOut { return g.outbound(t, nodeC, udp(999)) })
		}
		if st := stats(); st.PortExhausted != 7 || st.ActiveFlows != 2 {
			t.Fatalf("stats %+v, want 7 exhausted, 2 active", st)
		}
	})
}

// icmpError builds an ICMP error (type, code) from src to dst quoting the
// IPv4 header and first 8 bytes of the packet quoted.
func icmpError(t testing.TB, srcMAC net.HardwareAddr, src, dst netip.Addr, typ, code uint8, quoted frame) frame {
	t.Helper()
	quoted.srcMAC = mac("02:00:00:00:00:01")
	q := quoted.bytes(t)[14:]
	q = q[:20+8]
	return frame{srcMAC: srcMAC, src: src, dst: dst, proto: fw.ProtoICMP, icmpType: typ, icmpCode: code, quotedBytes: q}
}

// checkQuoted verifies the quoted header's checksum and returns the quoted
// addresses and first two 16-bit words of its L4 header (ports), and the
// echo id at bytes 4-5.
func checkQuoted(t *testing.T, d decoded) (src, dst netip.Addr, sport, dport, id uint16) {
	t.Helper()
	q := d.icmp.Payload
	if len(q) < 28 {
		t.Fatalf("quoted packet is %d bytes", len(q))
	}
	if s := onesSum(0, q[:20]); s != 0xffff {
		t.Fatalf("quoted IPv4 checksum wrong (sum %#x)", s)
	}
	src, _ = netip.AddrFromSlice(q[12:16])
	dst, _ = netip.AddrFromSlice(q[16:20])
	return src, dst, binary.BigEndian.Uint16(q[20:]), binary.BigEndian.Uint16(q[22:]), binary.BigEndian.Uint16(q[24:])
}

// TestICMPErrorsTranslated: errors about translated flows have their outer
// and quoted headers translated both ways, checksums fixed.
func TestICMPErrorsTranslated(t *testing.T) {
	newGateway(t, func(g *gateway) {
		router := ip("203.0.113.2") // on the uplink's link, like the outside host
		g.run(t, "inbound about an elastic IP's packet: fragmentation needed", func(t *testing.T) {
			left := frame{src: eipA, dst: ip("203.0.113.9"), proto: fw.ProtoTCP, sport: 80, dport: 5555, flags: "A"}
			e := icmpError(t, outsideMAC, router, eipA, 3, 4, left)
			d := expectToPort(t, g.inbound(t, e), nodeA, portA)
			qs, qd, sp, dp, _ := checkQuoted(t, d)
			if d.dst() != portA.IPs[0] || d.src() != router || qs != portA.IPs[0] || qd != ip("203.0.113.9") || sp != 80 || dp != 5555 {
				t.Fatalf("translated to %v -> %v quoting %v:%d -> %v:%d", d.src(), d.dst(), qs, sp, qd, dp)
			}
			if d.icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 4) {
				t.Fatalf("type/code %v", d.icmp.TypeCode)
			}
		})
		g.run(t, "outbound from an elastic IP's port: port unreachable", func(t *testing.T) {
			came := frame{src: outsideHost, dst: portA.IPs[0], proto: fw.ProtoUDP, sport: 5353, dport: 53}
			e := icmpError(t, portA.MAC, portA.IPs[0], outsideHost, 3, 3, came)
			d := expectToFabric(t, g, g.outbound(t, nodeA, e))
			qs, qd, sp, dp, _ := checkQuoted(t, d)
			if d.src() != eipA || d.dst() != outsideHost || qs != outsideHost || qd != eipA || sp != 5353 || dp != 53 {
				t.Fatalf("translated to %v -> %v quoting %v:%d -> %v:%d", d.src(), d.dst(), qs, sp, qd, dp)
			}
		})
		if err := g.d.DeleteElasticIP(eipC); err != nil {
			t.Fatal(err)
		}
		var public uint16
		g.run(t, "inbound about a NAT flow", func(t *testing.T) {
			syn := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: ip("203.0.113.9"), proto: fw.ProtoUDP, sport: 40000, dport: 53, ttl: 63}
			if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: g.uplink, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: syn.dst.AsSlice(), HardwareAddr: outsideMAC}); err != nil {
				t.Fatal(err)
			}
			public = natFlow(t, g, syn)
			left := frame{src: natAddr, dst: syn.dst, proto: fw.ProtoUDP, sport: public, dport: 53}
			d := expectToPort(t, g.inbound(t, icmpError(t, outsideMAC, router, natAddr, 3, 3, left)), nodeC, portC)
			qs, qd, sp, dp, _ := checkQuoted(t, d)
			if d.dst() != portC.IPs[0] || qs != portC.IPs[0] || qd != syn.dst || sp != 40000 || dp != 53 {
				t.Fatalf("translated to %v quoting %v:%d -> %v:%d", d.dst(), qs, sp, qd, dp)
			}
			// about an echo request: the quoted id is translated back
			echo := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: syn.dst, proto: fw.ProtoICMP, icmpType: 8, icmpID: 77, ttl: 63}
			id := natFlow(t, g, echo)
			req := frame{src: natAddr, dst: syn.dst, proto: fw.ProtoICMP, icmpType: 8, icmpID: id}
			d = expectToPort(t, g.inbound(t, icmpError(t, outsideMAC, router, natAddr, 11, 0, req)), nodeC, portC)
			if _, _, _, _, qid := checkQuoted(t, d); qid != 77 {
				t.Fatalf("quoted echo id %d, want 77", qid)
			}
		})
		g.run(t, "outbound about a port mapping's connection", func(t *testing.T) {
			came := frame{src: outsideHost, dst: portC.IPs[0], proto: fw.ProtoTCP, sport: 6000, dport: 80, flags: "S"}
			d := expectToFabric(t, g, g.outbound(t, nodeC, icmpError(t, portC.MAC, portC.IPs[0], outsideHost, 3, 3, came)))
			qs, qd, sp, dp, _ := checkQuoted(t, d)
			if d.src() != natAddr || qs != outsideHost || qd != natAddr || sp != 6000 || dp != 8080 {
				t.Fatalf("translated from %v quoting %v:%d -> %v:%d", d.src(), qs, sp, qd, dp)
			}
		})
		g.run(t, "about nothing translated: dropped", func(t *testing.T) {
			left := frame{src: natAddr, dst: ip("203.0.113.9"), proto: fw.ProtoUDP, sport: public + 1, dport: 53}
			g.expectGatewayDrop(t, DropNATNoFlow, func() tunnelOut {
				return g.inbound(t, icmpError(t, outsideMAC, router, natAddr, 3, 3, left))
			})
			spoof := frame{src: eipC, dst: ip("203.0.113.9"), proto: fw.ProtoUDP, sport: 1, dport: 53}
			g.expectGatewayDrop(t, DropMalformed, func() tunnelOut {
				return g.inbound(t, icmpError(t, outsideMAC, router, natAddr, 3, 3, spoof))
			})
		})
	})
}

// TestNATClosedTCPHoldsPort: a closed TCP flow keeps its public port (the
// remote may hold it in TIME_WAIT) from other inside tuples, and gets it
// back when the same inside tuple opens a connection again.
func TestNATClosedTCPHoldsPort(t *testing.T) {
	newGateway(t, func(g *gateway) {
		if err := g.d.DeleteElasticIP(eipC); err != nil {
			t.Fatal(err)
		}
		ng := natGateway7()
		ng.PortMin, ng.PortMax, ng.Mappings = 3000, 3001, nil
		if err := g.d.UpsertNATGateway(ng); err != nil {
			t.Fatal(err)
		}
		tcp := func(sport uint16, flags string) frame {
			return frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: outsideHost, proto: fw.ProtoTCP, sport: sport, dport: 80, flags: flags, ttl: 63}
		}
		a := natFlow(t, g, tcp(1, "S"))
		natFlow(t, g, tcp(1, "R")) // closed
		b := natFlow(t, g, tcp(2, "S"))
		if a == b {
			t.Fatalf("a new inside tuple got the closed flow's port %d", a)
		}
		g.expectGatewayDrop(t, DropNATExhausted, func() tunnelOut { return g.outbound(t, nodeC, tcp(3, "S")) })
		if again := natFlow(t, g, tcp(1, "S")); again != a {
			t.Fatalf("reopened inside tuple got port %d, want its own %d back", again, a)
		}
		if st, err := g.d.NATStats(); err != nil || len(st) != 1 || st[0].ActiveFlows != 2 || st[0].PortExhausted != 1 {
			t.Fatalf("stats %+v, %v: want 2 active, 1 exhausted", st, err)
		}
	})
}
