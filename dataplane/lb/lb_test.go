package lb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/lb/maglev"
)

var client = netip.MustParseAddr("198.51.100.7")

func TestVIPHitAndMiss(t *testing.T) {
	l := loadTest(t)
	mustSet(t, l, svcMsg(1, 80, 251, 1, 2, 3))

	hit := clientPkt(client, 40000)
	n := send(t, l, hit)
	if want := nodeOf(goChoice(t, svcMsg(1, 80, 251, 1, 2, 3), client, 40000)); n != want {
		t.Fatalf("sent to %v, Maglev says %v", n, want)
	}

	misses := map[string]pkt{
		"other port":    func() pkt { p := hit; p.dport = 81; return p }(),
		"other address": func() pkt { p := hit; p.dst = netip.MustParseAddr("203.0.113.11"); return p }(),
		"UDP to a TCP listener": func() pkt {
			p := hit
			p.proto = layers.IPProtocolUDP
			return p
		}(),
	}
	before, _ := l.Stats()
	for name, p := range misses {
		frame := p.bytes(t)
		ret, out := run(t, l.objs.LbXdp, frame)
		if ret != xdpPass || !bytes.Equal(out, frame) {
			t.Errorf("%s: verdict %d (changed: %v), want XDP_PASS unchanged", name, ret, !bytes.Equal(out, frame))
		}
	}
	arp := make([]byte, 42)
	copy(arp, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	binary.BigEndian.PutUint16(arp[12:], 0x0806)
	if ret, _ := run(t, l.objs.LbXdp, arp); ret != xdpPass {
		t.Errorf("ARP: verdict %d, want XDP_PASS", ret)
	}
	after, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if after.Passed-before.Passed != 3 || after.NotIPv4-before.NotIPv4 != 1 {
		t.Errorf("passed %d, not IPv4 %d; want 3 and 1", after.Passed-before.Passed, after.NotIPv4-before.NotIPv4)
	}
	if s := after.Services[1]; s.Packets != 1 || s.NewFlows != 1 || s.Bytes != uint64(len(hit.bytes(t))) {
		t.Errorf("service counters %+v, want 1 packet, 1 new flow, %d bytes", s, len(hit.bytes(t)))
	}

	// Deleted, the VIP is not matched any more.
	if err := l.DeleteService(1); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(t, l.objs.LbXdp, hit.bytes(t)); ret != xdpPass {
		t.Errorf("after DeleteService: verdict %d, want XDP_PASS", ret)
	}
}

func TestEncapsulationBytes(t *testing.T) {
	l := loadTest(t)
	s := svcMsg(1, 80, 251, 1, 2, 3)
	mustSet(t, l, s)
	p := clientPkt(client, 40001)
	p.tos = 0x28
	p.payload = 300
	frame := p.bytes(t)
	ret, out := run(t, l.objs.LbXdp, frame)
	if ret != xdpTX {
		t.Fatalf("verdict %d, want XDP_TX", ret)
	}
	e := parseEncap(t, out)
	want := goChoice(t, s, client, 40001)
	if !bytes.Equal(e.outerEth.DstMAC, nextHopMAC) || !bytes.Equal(e.outerEth.SrcMAC, uplinkMAC) ||
		e.outerEth.EthernetType != layers.EthernetTypeIPv4 {
		t.Errorf("outer Ethernet %s -> %s type %v", e.outerEth.SrcMAC, e.outerEth.DstMAC, e.outerEth.EthernetType)
	}
	ip := e.outerIP
	if !ip.SrcIP.Equal(underlay.AsSlice()) || !ip.DstIP.Equal(nodeOf(want).AsSlice()) {
		t.Errorf("outer IPv4 %v -> %v, want %v -> %v", ip.SrcIP, ip.DstIP, underlay, nodeOf(want))
	}
	if ip.TTL != 64 || ip.Protocol != layers.IPProtocolUDP || ip.Flags != layers.IPv4DontFragment ||
		ip.TOS != 0x28 || ip.FragOffset != 0 {
		t.Errorf("outer IPv4 ttl %d proto %v flags %v tos %#x", ip.TTL, ip.Protocol, ip.Flags, ip.TOS)
	}
	h, err := maglev.FlowHash(client, vip, 40001, 80, 6)
	if err != nil {
		t.Fatal(err)
	}
	if e.udp.SrcPort != layers.UDPPort(0xc000|h>>18) || e.udp.Checksum != 0 {
		t.Errorf("UDP source port %d checksum %#x, want %d and 0", e.udp.SrcPort, e.udp.Checksum, 0xc000|h>>18)
	}
	if e.vxlan.VNI != 7 || !bytes.Equal(out[42:46], []byte{0x08, 0, 0, 0}) || out[49] != 0 {
		t.Errorf("VXLAN header %x, want VNI 7", out[42:50])
	}
	if err := sameExceptMACs(e.inner, frame, mustMAC(backend(want).PortMac), routerMAC); err != nil {
		t.Error(err)
	}
	// The inner frame is what meridian_from_overlay parses: a routed frame
	// to the VIP with its TCP checksum intact.
	inner := gopacket.NewPacket(e.inner, layers.LayerTypeEthernet, gopacket.Default)
	if inner.ErrorLayer() != nil {
		t.Errorf("inner frame: %v", inner.ErrorLayer().Error())
	}
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// TestMaglevChoiceEqualsGo: for 1,000 random flows, the backend the XDP
// program picks is the one lb/maglev picks (same hash, same table), with
// and without source-IP persistence, on a full-size table with weights.
func TestMaglevChoiceEqualsGo(t *testing.T) {
	l := loadTest(t)
	s := svcMsg(1, 80, 0, 1, 2, 3, 4, 5)
	s.Backends[1].Weight = 3
	s.Backends[4].Weight = 2
	mustSet(t, l, s)
	sp := svcMsg(2, 443, 65521, 1, 2, 3)
	sp.SourceIpPersistence = true
	mustSet(t, l, sp)

	choose, chooseP := chooser(t, s), chooser(t, sp)
	r := rand.New(rand.NewPCG(1, 2))
	counts := map[int]int{}
	for range 1000 {
		src, sport := randClient(r)
		got := nodeIndex(t, send(t, l, clientPkt(src, sport)))
		if want := choose(src, sport); got != want {
			t.Fatalf("flow %v:%d: XDP chose backend %d, lb/maglev %d", src, sport, got, want)
		}
		counts[got]++
		p := clientPkt(src, sport)
		p.dport = 443
		got = nodeIndex(t, send(t, l, p))
		if want := chooseP(src, 0); got != want {
			t.Fatalf("persistent flow %v:%d: XDP chose backend %d, lb/maglev %d", src, sport, got, want)
		}
		// Same client, another port: the same backend.
		p.sport++
		if again := nodeIndex(t, send(t, l, p)); again != got {
			t.Fatalf("source-IP persistence: %v went to %d then %d", src, got, again)
		}
	}
	if len(counts) != 5 {
		t.Errorf("1,000 flows reached %d of 5 backends: %v", len(counts), counts)
	}
}

// TestConnectionTableStickiness: established flows keep their backend when
// a backend is added (even those the new table sends elsewhere); a SYN
// takes the new table.
func TestConnectionTableStickiness(t *testing.T) {
	l := loadTest(t)
	s := svcMsg(1, 80, 251, 1, 2, 3)
	mustSet(t, l, s)
	r := rand.New(rand.NewPCG(3, 4))
	type flow struct {
		src   netip.Addr
		sport uint16
		node  netip.Addr
	}
	var flows []flow
	for range 300 {
		src, sport := randClient(r)
		p := clientPkt(src, sport)
		p.flags = fSYN
		flows = append(flows, flow{src, sport, send(t, l, p)})
	}
	s2 := svcMsg(1, 80, 251, 1, 2, 3, 4)
	mustSet(t, l, s2)
	remapped := 0
	for _, f := range flows {
		if n := send(t, l, clientPkt(f.src, f.sport)); n != f.node {
			t.Fatalf("flow %v:%d moved from %v to %v after a backend was added", f.src, f.sport, f.node, n)
		}
		if nodeOf(goChoice(t, s2, f.src, f.sport)) != f.node {
			remapped++
		}
	}
	if remapped == 0 {
		t.Fatal("the new table sends no flow elsewhere: the test proves nothing")
	}
	// A new connection on the same 5-tuple (SYN) follows the new table.
	for _, f := range flows {
		want := nodeOf(goChoice(t, s2, f.src, f.sport))
		if want == f.node {
			continue
		}
		p := clientPkt(f.src, f.sport)
		p.flags = fSYN
		if n := send(t, l, p); n != want {
			t.Fatalf("SYN of %v:%d went to %v, the table says %v", f.src, f.sport, n, want)
		}
		if n := send(t, l, clientPkt(f.src, f.sport)); n != want {
			t.Fatalf("after the SYN, %v:%d went to %v, want %v", f.src, f.sport, n, want)
		}
		break
	}
	t.Logf("%d of %d flows would have moved without the connection table", remapped, len(flows))
}

// TestBackendChangesMoveFlows: removing or failing a backend moves its
// flows (to the new table's choice) and only its flows; a draining backend
// keeps its flows but gets no new ones.
func TestBackendChangesMoveFlows(t *testing.T) {
	for _, change := range []string{"removed", "unhealthy", "unbound", "draining"} {
		t.Run(change, func(t *testing.T) {
			l := loadTest(t)
			s := svcMsg(1, 80, 251, 1, 2, 3)
			mustSet(t, l, s)
			r := rand.New(rand.NewPCG(5, 6))
			type flow struct {
				src   netip.Addr
				sport uint16
				node  int
			}
			var flows []flow
			for range 200 {
				src, sport := randClient(r)
				flows = append(flows, flow{src, sport, nodeIndex(t, send(t, l, clientPkt(src, sport)))})
			}
			s2 := svcMsg(1, 80, 251, 1, 2, 3)
			switch change {
			case "removed":
				s2 = svcMsg(1, 80, 251, 1, 3)
			case "unhealthy":
				s2.Backends[1].Healthy = false
			case "unbound":
				s2.Backends[1].Node, s2.Backends[1].NodeIp, s2.Backends[1].PortMac = "", "", ""
			case "draining":
				s2.Backends[1].Draining = true
			}
			mustSet(t, l, s2)
			moved := 0
			for _, f := range flows {
				got := nodeIndex(t, send(t, l, clientPkt(f.src, f.sport)))
				switch {
				case f.node != 2 && got != f.node:
					t.Fatalf("flow %v:%d on backend %d moved to %d", f.src, f.sport, f.node, got)
				case f.node == 2 && change == "draining" && got != 2:
					t.Fatalf("flow %v:%d left draining backend 2 for %d", f.src, f.sport, got)
				case f.node == 2 && change != "draining":
					if want := goChoice(t, s2, f.src, f.sport); got != want {
						t.Fatalf("flow %v:%d of backend 2 went to %d, the new table says %d", f.src, f.sport, got, want)
					}
					moved++
				}
			}
			if change != "draining" && moved == 0 {
				t.Fatal("no flow was on backend 2: the test proves nothing")
			}
			for range 200 { // new flows never reach backend 2
				src, sport := randClient(r)
				p := clientPkt(src, sport)
				p.flags = fSYN
				if got := nodeIndex(t, send(t, l, p)); got == 2 {
					t.Fatalf("new flow %v:%d went to backend 2 (%s)", src, sport, change)
				}
			}
		})
	}
}

func TestNoBackendDrops(t *testing.T) {
	l := loadTest(t)
	s := svcMsg(1, 80, 251, 1)
	s.Backends[0].Healthy = false
	mustSet(t, l, s)
	if ret, _ := run(t, l.objs.LbXdp, clientPkt(client, 1234).bytes(t)); ret != xdpDrop {
		t.Fatalf("no healthy backend: verdict %d, want XDP_DROP", ret)
	}
	st, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.NoBackend != 1 || st.Services[1].NoBackend != 1 {
		t.Errorf("no-backend counters %d/%d, want 1/1", st.NoBackend, st.Services[1].NoBackend)
	}
}

func TestUnconfiguredDrops(t *testing.T) {
	l, err := Load(Options{MaxServices: 4, MaxBackends: 16, ConnTableSize: 1024})
	if err != nil {
		t.Fatalf("load (needs root and BPF): %v", err)
	}
	defer l.Close()
	mustSet(t, l, svcMsg(1, 80, 251, 1))
	if ret, _ := run(t, l.objs.LbXdp, clientPkt(client, 1).bytes(t)); ret != xdpDrop {
		t.Fatalf("verdict %d before Configure, want XDP_DROP", ret)
	}
	if st, _ := l.Stats(); st.Unconfigured != 1 {
		t.Errorf("unconfigured counter %d, want 1", st.Unconfigured)
	}
}

// TestFragmentationNeeded: a DF packet that does not fit the uplink MTU
// once encapsulated gets ICMP type 3 code 4 from the VIP with MTU - 50;
// without DF it is dropped.
func TestFragmentationNeeded(t *testing.T) {
	l := loadTest(t)
	mustSet(t, l, svcMsg(1, 80, 251, 1, 2, 3))
	p := clientPkt(client, 40000)
	p.payload = testMTU - 50 - 40 // exactly fits: IPv4 + TCP + payload = MTU - 50
	send(t, l, p)
	p.payload++
	frame := p.bytes(t)
	ret, out := run(t, l.objs.LbXdp, frame)
	if ret != xdpTX {
		t.Fatalf("too big: verdict %d, want XDP_TX (ICMP)", ret)
	}
	pk := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := pk.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := pk.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	icmp, _ := pk.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if eth == nil || ip == nil || icmp == nil {
		t.Fatalf("not Ethernet/IPv4/ICMP: %v", pk)
	}
	if !bytes.Equal(eth.DstMAC, clientMAC) || !bytes.Equal(eth.SrcMAC, uplinkMAC) {
		t.Errorf("MACs %s -> %s, want back to %s", eth.SrcMAC, eth.DstMAC, clientMAC)
	}
	if !ip.SrcIP.Equal(vip.AsSlice()) || !ip.DstIP.Equal(client.AsSlice()) || ip.Protocol != layers.IPProtocolICMPv4 ||
		ip.TTL != 64 || int(ip.Length) != len(out)-14 || len(out) != 14+20+8+28 {
		t.Errorf("IPv4 %v -> %v proto %v ttl %d len %d (frame %d)", ip.SrcIP, ip.DstIP, ip.Protocol, ip.TTL, ip.Length, len(out))
	}
	if !checksumOK(out[14:34]) || !checksumOK(out[34:]) {
		t.Errorf("checksums: IPv4 %v ICMP %v", checksumOK(out[14:34]), checksumOK(out[34:]))
	}
	// gopacket recomputes the checksum from the decoded layer too.
	if icmp.TypeCode != layers.CreateICMPv4TypeCode(3, 4) {
		t.Errorf("ICMP %v, want destination unreachable / fragmentation needed", icmp.TypeCode)
	}
	if mtu := binary.BigEndian.Uint16(out[34+6:]); mtu != testMTU-50 {
		t.Errorf("next-hop MTU %d, want %d", mtu, testMTU-50)
	}
	if !bytes.Equal(out[42:], frame[14:14+28]) {
		t.Errorf("quote %x, want the original IPv4 header + 8 bytes %x", out[42:], frame[14:42])
	}
	p.df = false
	if ret, _ := run(t, l.objs.LbXdp, p.bytes(t)); ret != xdpDrop {
		t.Errorf("too big without DF: verdict %d, want XDP_DROP", ret)
	}
	st, _ := l.Stats()
	if st.ICMPSent != 1 || st.Services[1].ICMPSent != 1 || st.TooBig != 1 {
		t.Errorf("counters: ICMP sent %d/%d, too big %d; want 1/1/1", st.ICMPSent, st.Services[1].ICMPSent, st.TooBig)
	}
}

// icmpError builds an ICMP error from a router on the path about the
// backend's reply vip:vport -> client:cport.
func icmpError(t testing.TB, typ, code uint8, cl netip.Addr, cport uint16) []byte {
	t.Helper()
	reply := pkt{src: vip, dst: cl, sport: 80, dport: cport, proto: layers.IPProtocolTCP, flags: fACK, payload: 1400, df: true}
	quoted := reply.bytes(t)[14 : 14+20+8]
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 60, Protocol: layers.IPProtocolICMPv4,
		SrcIP: net.IP{198, 51, 100, 1}, DstIP: vip.AsSlice()}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(typ, code)}
	if code == 4 {
		icmp.Seq = 1400
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, icmp, gopacket.Payload(quoted)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestICMPErrorRelayed: an ICMP error about a VIP flow goes to the flow's
// backend (the connection table's, else the table's choice for the
// reversed quoted tuple), unchanged but for its MACs; other ICMP passes.
func TestICMPErrorRelayed(t *testing.T) {
	l := loadTest(t)
	s := svcMsg(1, 80, 251, 1, 2, 3)
	mustSet(t, l, s)
	// Pin a flow to a backend the table no longer names: the relay must
	// follow the connection table.
	const cport = 41000
	first := nodeIndex(t, send(t, l, clientPkt(client, cport)))
	var others []int
	for _, i := range []int{1, 2, 3} {
		if i != first {
			others = append(others, i)
		}
	}
	s2 := svcMsg(1, 80, 251, append([]int{first}, others...)...)
	s2.Backends[0].Draining = true // flows stay, the table moves on
	mustSet(t, l, s2)

	for _, tc := range []struct{ typ, code uint8 }{{3, 4}, {11, 0}, {3, 1}} {
		frame := icmpError(t, tc.typ, tc.code, client, cport)
		ret, out := run(t, l.objs.LbXdp, frame)
		if ret != xdpTX {
			t.Fatalf("ICMP %d/%d: verdict %d, want XDP_TX", tc.typ, tc.code, ret)
		}
		e := parseEncap(t, out)
		if got := nodeIndex(t, netip.AddrFrom4([4]byte(e.outerIP.DstIP.To4()))); got != first {
			t.Errorf("ICMP %d/%d relayed to backend %d, the flow is on %d", tc.typ, tc.code, got, first)
		}
		if err := sameExceptMACs(e.inner, frame, mustMAC(backend(first).PortMac), routerMAC); err != nil {
			t.Error(err)
		}
	}
	// A flow the table knows nothing of: the Maglev choice of the flow.
	other := netip.MustParseAddr("198.51.100.99")
	_, out := run(t, l.objs.LbXdp, icmpError(t, 3, 4, other, 5555))
	e := parseEncap(t, out)
	if got, want := nodeIndex(t, netip.AddrFrom4([4]byte(e.outerIP.DstIP.To4()))), goChoice(t, s2, other, 5555); got != want {
		t.Errorf("relay of an unknown flow went to %d, Maglev says %d", got, want)
	}
	// Echo requests to the VIP and errors about other addresses are not ours.
	echo := icmpError(t, 8, 0, client, cport)
	if ret, _ := run(t, l.objs.LbXdp, echo); ret != xdpPass {
		t.Errorf("echo request: verdict %d, want XDP_PASS", ret)
	}
	notOurs := icmpError(t, 3, 4, client, cport)
	notOurs[14+20+8+12] = 1 // quoted source is not the VIP any more
	if ret, _ := run(t, l.objs.LbXdp, notOurs); ret != xdpPass {
		t.Errorf("error about another address: verdict %d, want XDP_PASS", ret)
	}
	st, _ := l.Stats()
	if st.Services[1].ICMPRelayed != 4 || st.Services[1].NewFlows != 1 {
		t.Errorf("relayed %d new flows %d, want 4 and 1 (relays never create flows): %+v", st.Services[1].ICMPRelayed, st.Services[1].NewFlows, st)
	}
}

// TestMalformedPassed: truncated or inconsistent frames and fragments are
// passed on unchanged, counted; IP options to a VIP are forwarded intact.
func TestMalformedPassed(t *testing.T) {
	l := loadTest(t)
	mustSet(t, l, svcMsg(1, 80, 251, 1, 2, 3))
	good := clientPkt(client, 40000).bytes(t)
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"Ethernet only":     good[:14],
		"half an IPv4 hdr":  good[:24],
		"no TCP header":     good[:34],
		"half a TCP header": good[:44],
		"IHL 4":             mod(func(b []byte) []byte { b[14] = 0x44; return b }),
		"IPv6 version":      mod(func(b []byte) []byte { b[14] = 0x65; return b }),
		"total length beyond the frame": mod(func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[16:], uint16(len(b)))
			return b
		}),
		"total length shorter than the headers": mod(func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[16:], 30)
			return b
		}),
		"IHL beyond the frame": mod(func(b []byte) []byte { b[14] = 0x4f; return b[:60] }),
		"first fragment":       mod(func(b []byte) []byte { b[20] = 0x20; return b }),
		"later fragment":       mod(func(b []byte) []byte { b[20], b[21] = 0x00, 0x10; return b }),
	}
	for name, frame := range cases {
		ret, out := run(t, l.objs.LbXdp, frame)
		if ret != xdpPass || !bytes.Equal(out, frame) {
			t.Errorf("%s: verdict %d (changed %v), want XDP_PASS unchanged", name, ret, !bytes.Equal(out, frame))
		}
	}
	st, _ := l.Stats()
	if st.Malformed != uint64(len(cases)-2) || st.Fragments != 2 {
		t.Errorf("malformed %d fragments %d, want %d and 2", st.Malformed, st.Fragments, len(cases)-2)
	}
	if st.Packets != 0 {
		t.Errorf("%d malformed packets forwarded", st.Packets)
	}
	p := clientPkt(client, 40000)
	p.options = true
	frame := p.bytes(t)
	ret, out := run(t, l.objs.LbXdp, frame)
	if ret != xdpTX {
		t.Fatalf("IP options: verdict %d, want XDP_TX", ret)
	}
	e := parseEncap(t, out)
	if err := sameExceptMACs(e.inner, frame, e.inner[0:6], routerMAC); err != nil {
		t.Error(err)
	}
}

// FuzzXDP runs the program on arbitrary frames: it passes them unchanged,
// drops them, or transmits a well-formed encapsulation of the frame (MACs
// aside) or a well-formed ICMP error; never anything else.
func FuzzXDP(f *testing.F) {
	l := loadTest(f)
	mustSet(f, l, svcMsg(1, 80, 251, 1, 2, 3))
	us := svcMsg(2, 53, 251, 1, 2)
	us.Protocol = 17
	mustSet(f, l, us)
	for _, p := range []pkt{clientPkt(client, 1), {src: client, dst: vip, sport: 5, dport: 53, proto: layers.IPProtocolUDP}} {
		f.Add(p.bytes(f))
	}
	big := clientPkt(client, 2)
	big.payload = 1500
	f.Add(big.bytes(f))
	f.Add(icmpError(f, 3, 4, client, 3))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 { // the kernel refuses shorter test input
			return
		}
		ret, out := run(t, l.objs.LbXdp, frame)
		switch ret {
		case xdpPass:
			if !bytes.Equal(out, frame) {
				t.Fatalf("XDP_PASS changed the frame")
			}
		case xdpDrop:
		case xdpTX:
			if e, err := decodeEncap(out); err == nil {
				if err := sameExceptMACs(e.inner, frame, e.inner[0:6], routerMAC); err != nil {
					t.Fatalf("encapsulated something else: %v", err)
				}
				return
			}
			if len(out) != 70 || !checksumOK(out[14:34]) || !checksumOK(out[34:]) || out[34] != 3 || out[35] != 4 ||
				!bytes.Equal(out[42:], frame[14:42]) {
				t.Fatalf("XDP_TX of neither an encapsulation nor an ICMP error: %x", out)
			}
		default:
			t.Fatalf("verdict %d", ret)
		}
	})
}

// TestSetServiceRejectsBadInput: invalid listeners get an error naming
// the service and the problem, and change nothing: the installed service
// forwards as before, no VIP is added.
func TestSetServiceRejectsBadInput(t *testing.T) {
	l := loadTest(t)
	good := svcMsg(1, 80, 251, 1, 2, 3)
	mustSet(t, l, good)
	before := send(t, l, clientPkt(client, 40000))
	bad := map[string]func(s *agentv1.LbService){
		"IPv6 VIP":           func(s *agentv1.LbService) { s.Vip = "2001:db8::1" },
		"no VIP":             func(s *agentv1.LbService) { s.Vip = "" },
		"port 0":             func(s *agentv1.LbService) { s.Port = 0 },
		"port 70000":         func(s *agentv1.LbService) { s.Port = 70000 },
		"ICMP":               func(s *agentv1.LbService) { s.Protocol = 1 },
		"VNI 0":              func(s *agentv1.LbService) { s.Vni = 0 },
		"VNI 2^24":           func(s *agentv1.LbService) { s.Vni = 1 << 24 },
		"table not prime":    func(s *agentv1.LbService) { s.MaglevSize = 250 },
		"bad port MAC":       func(s *agentv1.LbService) { s.Backends[0].PortMac = "02:00" },
		"bad node address":   func(s *agentv1.LbService) { s.Backends[1].NodeIp = "node-2" },
		"weight 300":         func(s *agentv1.LbService) { s.Backends[2].Weight = 300 },
		"backend id twice":   func(s *agentv1.LbService) { s.Backends[1].Id = s.Backends[0].Id },
		"address:port twice": func(s *agentv1.LbService) { s.Backends[1].Address = s.Backends[0].Address },
		"IPv6 backend":       func(s *agentv1.LbService) { s.Backends[0].Address = "2001:db8::5" },
		"internal listener":  func(s *agentv1.LbService) { s.Internal = true },
	}
	for name, change := range bad {
		for _, id := range []uint32{1, 2} { // an update and a new service
			s := svcMsg(id, 80, 251, 4, 5, 6)
			if id == 2 {
				s.Port = 8080
			}
			change(s)
			err := l.SetService(s)
			if err == nil {
				t.Errorf("%s (service %d): accepted", name, id)
				continue
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("service %d", id)) {
				t.Errorf("%s: error %q does not name the service", name, err)
			}
		}
	}
	// Another service may not take the same VIP, port and protocol.
	if err := l.SetService(svcMsg(3, 80, 251, 4)); err == nil || !strings.Contains(err.Error(), "already service 1") {
		t.Errorf("duplicate VIP: %v", err)
	}
	if after := send(t, l, clientPkt(client, 40000)); after != before {
		t.Errorf("flow moved from %v to %v after rejected updates", before, after)
	}
	n := nodeIndex(t, send(t, l, clientPkt(netip.MustParseAddr("198.51.100.77"), 1)))
	if n < 1 || n > 3 {
		t.Errorf("a new flow went to backend %d, not one of the installed service's", n)
	}
	p := clientPkt(client, 1)
	p.dport = 8080
	if ret, _ := run(t, l.objs.LbXdp, p.bytes(t)); ret != xdpPass {
		t.Errorf("rejected service 2's VIP is matched (verdict %d)", ret)
	}
	st, _ := l.Stats()
	if len(st.Services) != 1 {
		t.Errorf("%d services installed, want 1", len(st.Services))
	}
}
