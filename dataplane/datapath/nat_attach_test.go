package datapath

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNetns creates a network namespace and returns with the thread back in
// from. It is unnamed: it goes away with its last handle and interface.
func newNetns(t testing.TB, from netns.NsHandle) netns.NsHandle {
	t.Helper()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := netns.Set(from); err != nil {
		t.Fatalf("back to netns: %v", err)
	}
	return ns
}

// inNs runs fn with the (locked) thread in ns, then returns it to back.
func inNs(t testing.TB, ns, back netns.NsHandle, fn func()) {
	t.Helper()
	if err := netns.Set(ns); err != nil {
		t.Fatalf("enter netns: %v", err)
	}
	defer func() {
		if err := netns.Set(back); err != nil {
			t.Fatalf("leave netns: %v", err)
		}
	}()
	fn()
}

// vethBetween creates a veth pair in the current namespace and moves the
// second end to peerNs; each end gets an address (/24) and comes up.
func vethBetween(t testing.TB, here netns.NsHandle, name string, addr netip.Addr, peerNs netns.NsHandle, peerName string, peerAddr netip.Addr) (netlink.Link, netlink.Link) {
	t.Helper()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("veth %s-%s: %s: %v", name, peerName, what, err)
		}
	}
	must("add", netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peerName}))
	l, err := netlink.LinkByName(name)
	must("find", err)
	p, err := netlink.LinkByName(peerName)
	must("find peer", err)
	must("move peer", netlink.LinkSetNsFd(p, int(peerNs)))
	must("address", netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}))
	must("up", netlink.LinkSetUp(l))
	inNs(t, peerNs, here, func() {
		p, err = netlink.LinkByName(peerName)
		must("find moved peer", err)
		must("peer address", netlink.AddrAdd(p, &netlink.Addr{IPNet: &net.IPNet{IP: peerAddr.AsSlice(), Mask: net.CIDRMask(24, 32)}}))
		must("peer up", netlink.LinkSetUp(p))
	})
	return l, p
}

// addVXLAN creates an external-mode VXLAN device in the current namespace.
func addVXLAN(t testing.TB, name string, local netip.Addr) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: 1500}, FlowBased: true, Port: 4789,
		SrcAddr: local.AsSlice()}); err != nil {
		t.Fatalf("add vxlan %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

// ping sends one ICMP echo from the current namespace and returns the
// address the reply came from.
func ping(t testing.TB, dst netip.Addr, id uint16) (netip.Addr, error) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("raw ICMP socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2}); err != nil {
		return netip.Addr{}, err
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: id, Seq: 1}, gopacket.Payload("meridian")); err != nil {
		return netip.Addr{}, err
	}
	if err := unix.Sendto(fd, buf.Bytes(), 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
		return netip.Addr{}, fmt.Errorf("send echo to %v: %w", dst, err)
	}
	rb := make([]byte, 1500)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		n, from, err := unix.Recvfrom(fd, rb, 0)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("no echo reply from %v: %w", dst, err)
		}
		ihl := int(rb[0]&0xf) * 4
		if n < ihl+8 || rb[ihl] != 0 || binary.BigEndian.Uint16(rb[ihl+4:]) != id {
			continue // our own request, or someone else's
		}
		return netip.AddrFrom4(from.(*unix.SockaddrInet4).Addr), nil
	}
	return netip.Addr{}, fmt.Errorf("no echo reply from %v", dst)
}

// gwTopology is a workload node (two workloads, VXLAN), a gateway node
// (VXLAN, uplink) and an outside host on the uplink's link, each in a
// namespace of its own, with the data paths attached: w1 has an elastic
// IP, w2 is behind a NAT gateway (ports 20000-20999) on the gateway.
type gwTopology struct {
	node, gwNs, outNs    netns.NsHandle
	w1, w2               *workload
	dn, dg               *Datapath
	vx2, uplink          netlink.Link
	nodeIP, gwIP, outIP  netip.Addr
	uplinkIP, eip, natIP netip.Addr
}

// newGatewayTopology builds it; the calling thread must be locked in node.
func newGatewayTopology(t testing.TB, node netns.NsHandle, bpffs string) *gwTopology {
	g := &gwTopology{node: node, gwNs: newNetns(t, node), outNs: newNetns(t, node),
		nodeIP: ip("192.0.2.1"), gwIP: ip("192.0.2.2"), uplinkIP: ip("203.0.113.1"), outIP: ip("203.0.113.2"),
		eip: ip("198.51.100.10"), natIP: ip("198.51.100.20")}
	subnetGW := ip("10.0.1.1")
	g.w1 = newWorkload(t, node, "ng1", ip("10.0.1.10"), subnetGW) // elastic IP
	g.w2 = newWorkload(t, node, "ng2", ip("10.0.1.20"), subnetGW) // behind the NAT gateway

	// underlay between the nodes, uplink from the gateway to outside
	vethBetween(t, node, "ngu1", g.nodeIP, g.gwNs, "ngu2", g.gwIP)
	inNs(t, g.gwNs, node, func() {
		g.uplink, _ = vethBetween(t, g.gwNs, "ngup0", g.uplinkIP, g.outNs, "ngup1", g.outIP)
	})
	inNs(t, g.outNs, node, func() {
		// the fabric: public addresses are routed to the gateway
		if err := netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4(198, 51, 100, 0), Mask: net.CIDRMask(24, 32)},
			Gw: g.uplinkIP.AsSlice()}); err != nil {
			t.Fatalf("outside route to the public addresses: %v", err)
		}
	})

	// workload node
	vx1 := addVXLAN(t, "ngvx1", g.nodeIP)
	dn, err := Open(filepath.Join(bpffs, "node"))
	if err != nil {
		t.Fatal(err)
	}
	g.dn = dn
	t.Cleanup(func() { dn.Unpin(); dn.Close() })
	for i, w := range []*workload{g.w1, g.w2} {
		p := Port{ID: uint32(i + 1), Ifindex: w.host.Attrs().Index, MAC: w.mac, IPs: []netip.Addr{w.address}, VPC: 100, Subnet: 1, SGPolicy: 1}
		if err := dn.UpsertPort(p); err != nil {
			t.Fatal(err)
		}
		if err := dn.UpsertRoute(Route{VPC: 100, Prefix: netip.PrefixFrom(w.address, 32), LocalPort: p.ID}); err != nil {
			t.Fatal(err)
		}
		if err := dn.Attach(HookPort, p.Ifindex); err != nil {
			t.Fatal(err)
		}
	}
	if err := dn.UpsertSubnet(Subnet{ID: 1, Gateway: subnetGW, RouterMAC: gwRouterMAC}); err != nil {
		t.Fatal(err)
	}
	compileAndApply(t, dn, 100, allowAll(1))
	if err := dn.Attach(HookOverlay, vx1.Attrs().Index); err != nil {
		t.Fatal(err)
	}
	for _, e := range []Egress{
		{VPC: 100, Prefix: netip.PrefixFrom(g.w1.address, 32)},
		{VPC: 100, Prefix: netip.MustParsePrefix("10.0.1.0/24"), NATOwner: g.gwIP, NATGateway: 7},
	} {
		if err := dn.UpsertEgress(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := dn.SetGateways([]netip.Addr{g.gwIP}); err != nil {
		t.Fatal(err)
	}

	// gateway node
	dg, err := Open(filepath.Join(bpffs, "gateway"))
	if err != nil {
		t.Fatal(err)
	}
	g.dg = dg
	t.Cleanup(func() { dg.Unpin(); dg.Close() })
	inNs(t, g.gwNs, node, func() {
		g.vx2 = addVXLAN(t, "ngvx2", g.gwIP)
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/ngvx2/forwarding", []byte("1"), 0); err != nil {
			t.Fatalf("forwarding on the gateway's VXLAN device: %v", err)
		}
	})
	g.attachGateway(t)
	if err := dg.UpsertElasticIP(ElasticIP{Address: g.eip, VPC: 100, PrivateIP: g.w1.address, PortMAC: g.w1.mac, Node: g.nodeIP}); err != nil {
		t.Fatal(err)
	}
	if err := dg.UpsertNATGateway(NATGateway{ID: 7, VPC: 100, Addresses: []netip.Addr{g.natIP},
		SNAT: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}, PortMin: 20000, PortMax: 20999}); err != nil {
		t.Fatal(err)
	}
	return g
}

// attachGateway attaches the gateway's programs (overlay and uplink).
func (g *gwTopology) attachGateway(t testing.TB) {
	inNs(t, g.gwNs, g.node, func() {
		if err := g.dg.Attach(HookOverlay, g.vx2.Attrs().Index); err != nil {
			t.Fatal(err)
		}
		if err := g.dg.Attach(HookUplink, g.uplink.Attrs().Index); err != nil {
			t.Fatal(err)
		}
	})
}

// TestGatewayRealTraffic runs elastic IPs and a NAT gateway on real
// namespaces (gwTopology). The outside host pings and opens TCP to a
// workload through its elastic IP and the workload sees its real address;
// the other workload's connection to the outside host arrives from the NAT
// gateway's address; and a workload reaching the other's elastic IP goes
// through the gateway and back (hairpin).
func TestGatewayRealTraffic(t *testing.T) {
	bpffs := privateBPFFS(t)
	inNewNetns(t, func(node netns.NsHandle) {
		g := newGatewayTopology(t, node, bpffs)
		w1, w2, dn, dg := g.w1, g.w2, g.dn, g.dg
		outNs, eip, natIP, outIP := g.outNs, g.eip, g.natIP, g.outIP
		var err error
		drops := func() string {
			a, _ := dn.Drops()
			b, _ := dg.Drops()
			return fmt.Sprintf("node %v, gateway %v", a, b)
		}

		// 1. ping the elastic IP from outside
		inNs(t, outNs, node, func() {
			from, err := ping(t, eip, 4242)
			if err != nil {
				t.Fatalf("ping %v: %v (drops: %s)", eip, err, drops())
			}
			if from != eip {
				t.Fatalf("echo reply from %v, want %v", from, eip)
			}
		})

		// 2. TCP to the elastic IP: the workload sees the outside host
		var lis net.Listener
		inNs(t, w1.ns, node, func() {
			if lis, err = net.Listen("tcp4", w1.address.String()+":8080"); err != nil {
				t.Fatal(err)
			}
		})
		t.Cleanup(func() { lis.Close() })
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := lis.Accept()
			if err == nil {
				accepted <- c
			}
			close(accepted)
		}()
		var c net.Conn
		inNs(t, outNs, node, func() {
			d := net.Dialer{Timeout: 3 * time.Second}
			if c, err = d.Dial("tcp4", eip.String()+":8080"); err != nil {
				t.Fatalf("connect to %v:8080: %v (drops: %s)", eip, err, drops())
			}
		})
		defer c.Close()
		var sc net.Conn
		select {
		case sc = <-accepted:
		case <-time.After(3 * time.Second):
			t.Fatal("workload accepted nothing")
		}
		defer sc.Close()
		if got := sc.RemoteAddr().(*net.TCPAddr).IP.String(); got != outIP.String() {
			t.Fatalf("workload sees the connection from %s, want the outside host %v", got, outIP)
		}
		echoOver(t, c, sc, 64<<10)

		// 3. NAT gateway: w2's connection arrives from the NAT address
		var outLis net.Listener
		inNs(t, outNs, node, func() {
			if outLis, err = net.Listen("tcp4", outIP.String()+":9090"); err != nil {
				t.Fatal(err)
			}
		})
		t.Cleanup(func() { outLis.Close() })
		outSeen := make(chan net.Addr, 4)
		go func() {
			for {
				c, err := outLis.Accept()
				if err != nil {
					return
				}
				outSeen <- c.RemoteAddr()
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
		remoteOf := make(chan net.Addr, 1)
		go func() {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			remoteOf <- c.RemoteAddr()
			io.Copy(c, c)
		}()
		inNs(t, w2.ns, node, func() {
			d := net.Dialer{Timeout: 3 * time.Second}
			nc, err := d.Dial("tcp4", outIP.String()+":9090")
			if err != nil {
				t.Fatalf("w2 -> outside through the NAT gateway: %v (drops: %s)", err, drops())
			}
			defer nc.Close()
			echoOver(t, nc, nil, 64<<10)
			// 4. hairpin: w2 reaches w1 through w1's elastic IP
			hc, err := d.Dial("tcp4", eip.String()+":8080")
			if err != nil {
				t.Fatalf("w2 -> w1's elastic IP (hairpin): %v (drops: %s)", err, drops())
			}
			defer hc.Close()
			echoOver(t, hc, nil, 1<<10)
			// both connections are open: two active flows
			st, err := dg.NATStats()
			if err != nil || len(st) != 1 || st[0].ActiveFlows != 2 {
				t.Fatalf("NAT stats %+v, %v: want 2 active flows", st, err)
			}
		})
		select {
		case a := <-remoteOf:
			if h := a.(*net.TCPAddr); h.IP.String() != natIP.String() || h.Port < 20000 || h.Port > 20999 {
				t.Fatalf("hairpin connection arrived from %v, want %v:20000-20999", a, natIP)
			}
		case <-time.After(time.Second):
			t.Fatal("hairpin connection not accepted")
		}
		select {
		case a := <-outSeen:
			if h := a.(*net.TCPAddr); h.IP.String() != natIP.String() || h.Port < 20000 || h.Port > 20999 {
				t.Fatalf("outside host sees w2's connection from %v, want %v:20000-20999", a, natIP)
			}
		case <-time.After(time.Second):
			t.Fatal("outside host accepted nothing")
		}
	})
}

// echoOver writes n bytes on c and reads them back; if peer is set, it is
// the accepted end and echoes them.
func echoOver(t testing.TB, c, peer net.Conn, n int) {
	t.Helper()
	if peer != nil {
		go io.Copy(peer, peer)
	}
	msg := make([]byte, n)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo over %v -> %v: %v", c.LocalAddr(), c.RemoteAddr(), err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	for i := range got {
		if got[i] != msg[i] {
			t.Fatalf("byte %d corrupted", i)
		}
	}
}

// TestNATExhaustionRealTraffic: a NAT gateway with two ports serves two
// connections; a third fails cleanly and is counted, the open connections
// keep working, the gateway host answers as before; once a port is free
// again (its flow closed and timed out) a new connection gets through.
func TestNATExhaustionRealTraffic(t *testing.T) {
	bpffs := privateBPFFS(t)
	inNewNetns(t, func(node netns.NsHandle) {
		g := newGatewayTopology(t, node, bpffs)
		if err := g.dg.UpsertNATGateway(NATGateway{ID: 7, VPC: 100, Addresses: []netip.Addr{g.natIP},
			SNAT: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}, PortMin: 30000, PortMax: 30001}); err != nil {
			t.Fatal(err)
		}
		var lis net.Listener
		var err error
		inNs(t, g.outNs, node, func() { lis, err = net.Listen("tcp4", g.outIP.String()+":9090") })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lis.Close() })
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); io.Copy(c, c) }()
			}
		}()
		exhausted := func() uint64 {
			st, err := g.dg.NATStats()
			if err != nil || len(st) != 1 {
				t.Fatalf("NAT stats %+v, %v", st, err)
			}
			return st[0].PortExhausted
		}
		inNs(t, g.w2.ns, node, func() {
			d := net.Dialer{Timeout: 2 * time.Second}
			var open []net.Conn
			for i := range 2 {
				c, err := d.Dial("tcp4", g.outIP.String()+":9090")
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				defer c.Close()
				open = append(open, c)
			}
			short := net.Dialer{Timeout: 500 * time.Millisecond}
			if c, err := short.Dial("tcp4", g.outIP.String()+":9090"); err == nil {
				c.Close()
				t.Fatal("a third connection got through two ports")
			}
			if n := exhausted(); n == 0 {
				t.Fatal("port exhaustion not counted")
			}
			for _, c := range open {
				echoOver(t, c, nil, 1<<10)
			}
			// a closed flow's port comes back after its timeout
			if err := g.dg.SetNATTimeouts(NATTimeouts{TCPClosed: 50 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			open[0].Close()
			// The port is free once the closed flow's 50 ms have passed:
			// retry (a refused attempt is counted, not fatal) until then.
			var c net.Conn
			var err error
			for deadline := time.Now().Add(5 * time.Second); ; {
				if c, err = short.Dial("tcp4", g.outIP.String()+":9090"); err == nil || time.Now().After(deadline) {
					break
				}
			}
			if err != nil {
				t.Fatalf("no connection once a port was free again: %v (exhausted %d)", err, exhausted())
			}
			defer c.Close()
			echoOver(t, c, nil, 1<<10)
		})
		// the gateway host is unaffected: it answers on its uplink
		inNs(t, g.outNs, node, func() {
			if from, err := ping(t, g.uplinkIP, 77); err != nil || from != g.uplinkIP {
				t.Fatalf("gateway host after exhaustion: reply from %v, %v", from, err)
			}
		})
		if ds, _ := g.dg.Drops(); !hasDrop(ds, DropNATExhausted) {
			t.Fatalf("gateway drops %v, want nat-port-exhausted", ds)
		}
	})
}

func hasDrop(ds []DropCount, r DropReason) bool {
	for _, d := range ds {
		if d.Reason == r && d.Packets > 0 {
			return true
		}
	}
	return false
}
