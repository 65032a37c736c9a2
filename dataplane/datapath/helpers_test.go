package datapath

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
)

// Test-run return codes.
const (
	actShot     = 2
	actRedirect = 7
	actTCXNext  = 0xffffffff
)

// privateBPFFS mounts a bpffs instance of its own for the test, so tests
// need no /sys/fs/bpf and never see each other's pins.
func privateBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a private bpffs on %s (tests need root and CONFIG_BPF_SYSCALL): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func openTest(t testing.TB) *Datapath {
	t.Helper()
	pin := filepath.Join(privateBPFFS(t), "meridian", "node1")
	d, err := Open(pin)
	if err != nil {
		t.Fatalf("open data path: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Unpin(); err != nil {
			t.Errorf("unpin: %v", err)
		}
		if err := d.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return d
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// The fixture: VPC 100 with subnets 1 (10.0.1.0/24: ports A, B) and 2
// (10.0.2.0/24: port C here, 10.0.2.40 on a remote node); VPC 200 reuses
// 10.0.1.0/24 (subnet 3: ports D, E) to prove isolation. Ifindices are
// fake: test runs take the ingress ifindex from the context.
var (
	routerMAC   = mac("02:52:00:00:00:01")
	remoteIP    = ip("10.0.2.40")
	remoteNode  = ip("192.0.2.2")
	overlayIfx  = 20
	portA       = Port{ID: 1, Ifindex: 11, MAC: mac("02:00:00:00:00:0a"), IPs: []netip.Addr{ip("10.0.1.10"), ip("10.0.1.11")}, VPC: 100, Subnet: 1, SGPolicy: 1}
	portB       = Port{ID: 2, Ifindex: 12, MAC: mac("02:00:00:00:00:0b"), IPs: []netip.Addr{ip("10.0.1.20")}, VPC: 100, Subnet: 1, SGPolicy: 2}
	portC       = Port{ID: 3, Ifindex: 13, MAC: mac("02:00:00:00:00:0c"), IPs: []netip.Addr{ip("10.0.2.30")}, VPC: 100, Subnet: 2, SGPolicy: 3}
	portD       = Port{ID: 4, Ifindex: 14, MAC: mac("02:00:00:00:00:0d"), IPs: []netip.Addr{ip("10.0.1.10")}, VPC: 200, Subnet: 3, SGPolicy: 4}
	portE       = Port{ID: 5, Ifindex: 15, MAC: mac("02:00:00:00:00:0e"), IPs: []netip.Addr{ip("10.0.1.20")}, VPC: 200, Subnet: 3, SGPolicy: 5}
	fixturePort = []Port{portA, portB, portC, portD, portE}
	gateways    = map[uint32]netip.Addr{1: ip("10.0.1.1"), 2: ip("10.0.2.1"), 3: ip("10.0.1.1")}
)

// allowAll is a policy that lets everything in and out.
func allowAll(id uint32) fw.SecurityGroupPolicy {
	any4 := netip.MustParsePrefix("0.0.0.0/0")
	return fw.SecurityGroupPolicy{ID: id, Rules: []fw.SGRule{
		{ID: id*1000 + 1, Direction: fw.Egress, RemoteCIDR: any4},
		{ID: id*1000 + 2, Direction: fw.Ingress, RemoteCIDR: any4},
	}}
}

// net is the fixture's desired state; tests change it and install again.
type fixture struct {
	d        *Datapath
	policies map[uint32]fw.SecurityGroupPolicy // by policy id
	groups   map[uint32]fw.GroupMembers        // by VPC
	acls     map[uint32]*fw.ACL                // by subnet
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{
		d:        openTest(t),
		policies: map[uint32]fw.SecurityGroupPolicy{},
		groups:   map[uint32]fw.GroupMembers{100: {}, 200: {}},
		acls:     map[uint32]*fw.ACL{},
	}
	for _, p := range fixturePort {
		f.policies[p.SGPolicy] = allowAll(p.SGPolicy)
		if err := f.d.UpsertPort(p); err != nil {
			t.Fatal(err)
		}
		for _, a := range p.IPs {
			if err := f.d.UpsertRoute(Route{VPC: p.VPC, Prefix: netip.PrefixFrom(a, 32), LocalPort: p.ID}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.d.UpsertRoute(Route{VPC: 100, Prefix: netip.PrefixFrom(remoteIP, 32), RemoteNode: remoteNode, Subnet: 2}); err != nil {
		t.Fatal(err)
	}
	if err := f.d.SetOverlayDevice(overlayIfx); err != nil {
		t.Fatal(err)
	}
	f.install(t)
	return f
}

func vpcOfPolicy(id uint32) uint32 {
	for _, p := range fixturePort {
		if p.SGPolicy == id {
			return p.VPC
		}
	}
	return 0
}

// install compiles and writes subnets, ACLs and policies.
func (f *fixture) install(t testing.TB) {
	t.Helper()
	for sub, gw := range gateways {
		s := Subnet{ID: sub, Gateway: gw, RouterMAC: routerMAC}
		if acl := f.acls[sub]; acl != nil {
			c, err := fw.CompileACL(acl)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.d.ApplyACL(c); err != nil {
				t.Fatal(err)
			}
			s.ACL = acl.ID
		}
		if err := f.d.UpsertSubnet(s); err != nil {
			t.Fatal(err)
		}
	}
	for _, vpc := range []uint32{100, 200} {
		var ps []fw.SecurityGroupPolicy
		for id, p := range f.policies {
			if vpcOfPolicy(id) == vpc {
				ps = append(ps, p)
			}
		}
		c, err := fw.CompileSecurityGroups(vpc, ps, f.groups[vpc])
		if err != nil {
			t.Fatal(err)
		}
		if err := f.d.ApplySecurityGroups(c); err != nil {
			t.Fatal(err)
		}
	}
}

// frame describes a test packet; zero fields get defaults.
type frame struct {
	srcMAC, dstMAC net.HardwareAddr
	src, dst       netip.Addr
	proto          uint8
	sport, dport   uint16
	flags          string // TCP: any of "SAFR"
	icmpType       uint8
	icmpCode       uint8
	icmpID         uint16
	ttl            uint8
	ipOptions      bool
	moreFragments  bool
	fragOffset     uint16
	quotedBytes    []byte // ICMP: payload (an error's quoted packet)
}

func (f frame) bytes(t testing.TB) []byte {
	t.Helper()
	dstMAC := f.dstMAC
	if dstMAC == nil {
		dstMAC = routerMAC
	}
	eth := &layers.Ethernet{SrcMAC: f.srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ttl := f.ttl
	if ttl == 0 {
		ttl = 64
	}
	ip4 := &layers.IPv4{Version: 4, TTL: ttl, Protocol: layers.IPProtocol(f.proto),
		SrcIP: f.src.AsSlice(), DstIP: f.dst.AsSlice(), FragOffset: f.fragOffset, Id: 7}
	if f.moreFragments {
		ip4.Flags = layers.IPv4MoreFragments
	}
	if f.ipOptions {
		ip4.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
	}
	ls := []gopacket.SerializableLayer{eth, ip4}
	switch f.proto {
	case fw.ProtoTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport), Seq: 1, Window: 1000}
		for _, c := range f.flags {
			switch c {
			case 'S':
				tcp.SYN = true
			case 'A':
				tcp.ACK = true
			case 'F':
				tcp.FIN = true
			case 'R':
				tcp.RST = true
			}
		}
		if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, tcp, gopacket.Payload("hello"))
	case fw.ProtoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		if err := udp.SetNetworkLayerForChecksum(ip4); err != nil {
			t.Fatal(err)
		}
		ls = append(ls, udp, gopacket.Payload("hello"))
	case fw.ProtoICMP:
		payload := gopacket.Payload("ping")
		if f.quotedBytes != nil {
			payload = f.quotedBytes
		}
		ls = append(ls, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(f.icmpType, f.icmpCode), Id: f.icmpID, Seq: 1}, payload)
	default:
		ls = append(ls, gopacket.Payload("opaque payload"))
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize %+v: %v", f, err)
	}
	return buf.Bytes()
}

// from returns a TCP frame from port p's first address (and MAC) to dst.
func from(p Port, dst netip.Addr) frame {
	return frame{srcMAC: p.MAC, src: p.IPs[0], dst: dst, proto: fw.ProtoTCP, sport: 40000, dport: 80, flags: "S"}
}

// skbContext is struct __sk_buff as BPF_PROG_TEST_RUN takes it; only the
// fields the kernel accepts on input are ever set.
type skbContext [48]uint32

const (
	skbMark           = 2
	skbIngressIfindex = 9
)

// run runs prog on pkt as if received on ifindex (or, for the overlay test
// entry, with VNI mark) and returns the verdict and the frame after it.
func run(t testing.TB, prog *ebpf.Program, ifindex int, mark uint32, pkt []byte) (uint32, []byte) {
	t.Helper()
	var ctx skbContext
	ctx[skbIngressIfindex] = uint32(ifindex)
	ctx[skbMark] = mark
	out := make([]byte, len(pkt)+512)
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out, Context: ctx})
	if err != nil {
		t.Fatalf("test run of %v: %v", prog, err)
	}
	return ret, out
}

func (f *fixture) fromPort(t testing.TB, p Port, pkt []byte) (uint32, []byte) {
	t.Helper()
	return run(t, f.d.objs.MeridianFromPort, p.Ifindex, 0, pkt)
}

func (f *fixture) fromOverlay(t testing.TB, vni uint32, pkt []byte) (uint32, []byte) {
	t.Helper()
	return run(t, f.d.objs.MeridianFromOverlayMark, overlayIfx, vni, pkt)
}

// drops returns the drop counters as a map.
func (f *fixture) drops(t testing.TB) map[bpf.MeridianDropKey]uint64 {
	t.Helper()
	ds, err := f.d.Drops()
	if err != nil {
		t.Fatal(err)
	}
	m := map[bpf.MeridianDropKey]uint64{}
	for _, c := range ds {
		m[bpf.MeridianDropKey{Port: c.Port, Reason: uint32(c.Reason)}] = c.Packets
	}
	return m
}

// dropDelta runs fn and returns the single (port, reason) whose counter
// moved, or ok=false if none did. More than one moving is a failure.
func (f *fixture) dropDelta(t testing.TB, fn func()) (port uint32, reason DropReason, ok bool) {
	t.Helper()
	before := f.drops(t)
	fn()
	after := f.drops(t)
	for k, v := range after {
		if v == before[k] {
			continue
		}
		if ok {
			t.Fatalf("more than one drop counter moved: %v", after)
		}
		if v != before[k]+1 {
			t.Fatalf("drop counter %+v moved by %d", k, v-before[k])
		}
		port, reason, ok = k.Port, DropReason(k.Reason), true
	}
	return port, reason, ok
}

// nextEvent returns the next drop event, or fails after a second.
func nextEvent(t testing.TB, r *EventReader) DropEvent {
	t.Helper()
	r.SetDeadline(time.Now().Add(time.Second))
	ev, err := r.Read()
	if err != nil {
		t.Fatalf("read drop event: %v", err)
	}
	return ev
}

// noEvent asserts the ring is empty.
func noEvent(t testing.TB, r *EventReader) {
	t.Helper()
	r.SetDeadline(time.Now())
	if ev, err := r.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("unexpected drop event %+v (err %v)", ev, err)
	}
}
