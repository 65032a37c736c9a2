package lb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/lb/maglev"
)

// XDP verdicts.
const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var (
	routerMAC  = net.HardwareAddr{0x0a, 0x4d, 0x52, 0x00, 0x00, 0x01}
	uplinkMAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	nextHopMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0xfe}
	clientMAC  = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x99} // the ToR, as seen by the gateway
	underlay   = netip.MustParseAddr("192.0.2.1")
	vip        = netip.MustParseAddr("203.0.113.10")
)

const testMTU = 1500

func loadTest(t testing.TB) *LB {
	t.Helper()
	l, err := Load(Options{MaxServices: 16, MaxBackends: 1024, ConnTableSize: 1 << 16})
	if err != nil {
		t.Fatalf("load (needs root and BPF): %v", err)
	}
	t.Cleanup(func() { l.Close() })
	if err := l.Configure(Config{UnderlayIP: underlay, MTU: testMTU, RouterMAC: routerMAC,
		NextHopMAC: nextHopMAC, SourceMAC: uplinkMAC}); err != nil {
		t.Fatal(err)
	}
	return l
}

func backend(i int) *agentv1.LbBackend {
	return &agentv1.LbBackend{
		Id:      uint32(i),
		Address: fmt.Sprintf("10.0.1.%d", i),
		Port:    8080,
		Weight:  1,
		PortId:  uint32(100 + i),
		PortMac: fmt.Sprintf("02:4d:52:00:01:%02x", i),
		Node:    fmt.Sprintf("node%d", i),
		NodeIp:  fmt.Sprintf("192.0.2.%d", 10+i),
		Healthy: true,
	}
}

// nodeOf is the node address of backend i (see backend).
func nodeOf(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}) }

func svcMsg(id uint32, port uint32, size uint32, n ...int) *agentv1.LbService {
	s := &agentv1.LbService{Id: id, Name: fmt.Sprintf("lb/l%d", id), VpcId: 7, Vni: 7, Vip: vip.String(),
		Port: port, Protocol: 6, MaglevSize: size}
	for _, i := range n {
		s.Backends = append(s.Backends, backend(i))
	}
	return s
}

func mustSet(t testing.TB, l *LB, s *agentv1.LbService) {
	t.Helper()
	if err := l.SetService(s); err != nil {
		t.Fatal(err)
	}
}

// chooser returns the backend id lb/maglev picks for a flow of s (-1:
// none), computing s's table once.
func chooser(t testing.TB, s *agentv1.LbService) func(src netip.Addr, sport uint16) int {
	t.Helper()
	var mb []maglev.Backend
	var ids []int
	for _, b := range s.Backends {
		if !b.Healthy || b.Draining || b.NodeIp == "" {
			continue
		}
		mb = append(mb, maglev.Backend{Key: fmt.Sprintf("%s:%d", b.Address, b.Port), Weight: max(b.Weight, 1)})
		ids = append(ids, int(b.Id))
	}
	size := s.MaglevSize
	if size == 0 {
		size = maglev.DefaultSize
	}
	table, err := maglev.Table(mb, size)
	if err != nil {
		t.Fatal(err)
	}
	return func(src netip.Addr, sport uint16) int {
		var h uint32
		var err error
		if s.SourceIpPersistence {
			h, err = maglev.FlowHash(src, netip.MustParseAddr(s.Vip), 0, 0, 0)
		} else {
			h, err = maglev.FlowHash(src, netip.MustParseAddr(s.Vip), sport, uint16(s.Port), uint8(s.Protocol))
		}
		if err != nil {
			t.Fatal(err)
		}
		i := maglev.Lookup(table, h)
		if i == maglev.Empty {
			return -1
		}
		return ids[i]
	}
}

// goChoice is chooser for one flow.
func goChoice(t testing.TB, s *agentv1.LbService, src netip.Addr, sport uint16) int {
	t.Helper()
	return chooser(t, s)(src, sport)
}

type tcpFlags uint8

const (
	fSYN tcpFlags = 1 << iota
	fACK
)

// pkt describes a client packet to build.
type pkt struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        layers.IPProtocol
	flags        tcpFlags
	payload      int // bytes of payload
	df           bool
	tos          uint8
	options      bool // one IPv4 option (NOP padding to 4 bytes)
}

func clientPkt(src netip.Addr, sport uint16) pkt {
	return pkt{src: src, dst: vip, sport: sport, dport: 80, proto: layers.IPProtocolTCP, flags: fACK, payload: 20, df: true}
}

func (p pkt) bytes(t testing.TB) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: uplinkMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 61, Id: 4321, TOS: p.tos, Protocol: p.proto,
		SrcIP: p.src.AsSlice(), DstIP: p.dst.AsSlice()}
	if p.df {
		ip.Flags = layers.IPv4DontFragment
	}
	if p.options {
		ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	}
	payload := gopacket.Payload(bytes.Repeat([]byte{0xab}, p.payload))
	var l4 gopacket.SerializableLayer
	switch p.proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: 1000, Ack: 2000,
			SYN: p.flags&fSYN != 0, ACK: p.flags&fACK != 0, Window: 1000}
		tcp.SetNetworkLayerForChecksum(ip)
		l4 = tcp
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		udp.SetNetworkLayerForChecksum(ip)
		l4 = udp
	default:
		t.Fatalf("no builder for protocol %v", p.proto)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, l4, payload); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// run runs prog once on frame and returns the verdict and the frame after.
func run(t testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(frame)+256)
	opts := ebpf.RunOptions{Data: frame, DataOut: out}
	ret, err := prog.Run(&opts)
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return ret, opts.DataOut
}

// encap is a parsed VXLAN encapsulation.
type encap struct {
	outerEth *layers.Ethernet
	outerIP  *layers.IPv4
	udp      *layers.UDP
	vxlan    *layers.VXLAN
	inner    []byte // the inner frame
}

// checksumOK verifies an Internet checksum over b (which includes it).
func checksumOK(b []byte) bool {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return s == 0xffff
}

// parseEncap parses out as Ethernet/IPv4/UDP/VXLAN/inner frame with
// gopacket and checks the outer IPv4 checksum and lengths; it fails the
// test on anything else.
func parseEncap(t testing.TB, out []byte) encap {
	t.Helper()
	e, err := decodeEncap(out)
	if err != nil {
		t.Fatalf("not a well-formed encapsulation: %v\n%x", err, out)
	}
	return e
}

func decodeEncap(out []byte) (encap, error) {
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.DecodeOptions{NoCopy: true})
	var e encap
	var ok bool
	if e.outerEth, ok = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !ok {
		return e, fmt.Errorf("no outer Ethernet")
	}
	if e.outerIP, ok = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ok {
		return e, fmt.Errorf("no outer IPv4")
	}
	if e.udp, ok = p.Layer(layers.LayerTypeUDP).(*layers.UDP); !ok {
		return e, fmt.Errorf("no outer UDP")
	}
	if e.vxlan, ok = p.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN); !ok {
		return e, fmt.Errorf("no VXLAN")
	}
	if len(out) < 50+14 {
		return e, fmt.Errorf("short: %d bytes", len(out))
	}
	if e.outerIP.IHL != 5 || !checksumOK(out[14:34]) {
		return e, fmt.Errorf("outer IPv4 header checksum or length wrong")
	}
	if int(e.outerIP.Length) != len(out)-14 || int(e.udp.Length) != len(out)-34 {
		return e, fmt.Errorf("outer lengths %d/%d for a %d-byte frame", e.outerIP.Length, e.udp.Length, len(out))
	}
	if e.udp.DstPort != 4789 || !e.vxlan.ValidIDFlag {
		return e, fmt.Errorf("UDP port %d, VXLAN I flag %v", e.udp.DstPort, e.vxlan.ValidIDFlag)
	}
	e.inner = out[50:]
	return e, nil
}

// sameExceptMACs reports whether inner is frame with only the Ethernet
// addresses changed, to want's.
func sameExceptMACs(inner, frame []byte, dst, src net.HardwareAddr) error {
	if len(inner) != len(frame) {
		return fmt.Errorf("inner frame is %d bytes, sent %d", len(inner), len(frame))
	}
	if !bytes.Equal(inner[0:6], dst) || !bytes.Equal(inner[6:12], src) {
		return fmt.Errorf("inner MACs %x -> %x, want %s -> %s", inner[6:12], inner[0:6], src, dst)
	}
	if !bytes.Equal(inner[12:], frame[12:]) {
		return fmt.Errorf("inner frame differs beyond the MACs")
	}
	return nil
}

// send runs a client packet through the load balancer, expects it to be
// encapsulated and returns the node it went to.
func send(t testing.TB, l *LB, p pkt) netip.Addr {
	t.Helper()
	frame := p.bytes(t)
	ret, out := run(t, l.objs.LbXdp, frame)
	if ret != xdpTX {
		t.Fatalf("%v:%d -> %v:%d: verdict %d, want XDP_TX", p.src, p.sport, p.dst, p.dport, ret)
	}
	e := parseEncap(t, out)
	dst, _ := netip.AddrFromSlice(e.outerIP.DstIP)
	return dst
}

func nodeIndex(t testing.TB, n netip.Addr) int {
	t.Helper()
	b := n.As4()
	if b[0] != 192 || b[1] != 0 || b[2] != 2 || b[3] <= 10 {
		t.Fatalf("packet sent to %v, not a backend node", n)
	}
	return int(b[3]) - 10
}

func randClient(r interface{ Uint32() uint32 }) (netip.Addr, uint16) {
	v := r.Uint32()
	a := netip.AddrFrom4([4]byte{100, byte(v >> 16), byte(v >> 8), byte(v)})
	return a, uint16(1024 + r.Uint32()%60000)
}
