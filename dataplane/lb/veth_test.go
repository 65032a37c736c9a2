package lb

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// vethService is the service of the namespace tests and benchmarks: three
// backends on the node behind the gateway's underlay (172.31.251.2).
func vethService(port uint32, proto uint32) *agentv1.LbService {
	s := svcMsg(1, port, 0, 1, 2, 3)
	s.Protocol = proto
	for _, b := range s.Backends {
		b.NodeIp = "172.31.251.2"
	}
	return s
}

// TestXDPOnVethForwardsToBackendNode attaches the load balancer (driver
// mode) to the uplink veth of a gateway namespace; a client namespace opens
// TCP connections to the VIP and the SYNs arrive at the backend node's
// namespace VXLAN-encapsulated: outer headers from the routing and
// neighbour tables (FIB mode), redirected to the underlay veth; inner
// frame the client's, with the MACs of the Maglev-chosen backend port and
// the VPC router. Traffic not for the VIP still reaches the gateway's stack.
func TestXDPOnVethForwardsToBackendNode(t *testing.T) {
	tp := newTopo(t)
	l, err := Load(Options{MaxServices: 4, MaxBackends: 64, ConnTableSize: 4096})
	if err != nil {
		t.Fatalf("load (needs root and BPF): %v", err)
	}
	t.Cleanup(func() { l.Close() })
	if err := l.Configure(Config{UnderlayIP: netip.MustParseAddr("172.31.251.1"), MTU: 1550,
		RouterMAC: routerMAC, FIB: true}); err != nil {
		t.Fatal(err)
	}
	s := vethService(80, 6)
	mustSet(t, l, s)
	choose := chooser(t, s)
	inNS(t, tp.gw, func() {
		err = l.Attach(tp.g0, ModeDriver)
	})
	if err != nil {
		t.Fatal(err)
	}
	// The underlay veth's peer needs an XDP program to receive frames
	// redirected into the veth.
	attachXDP(t, tp.be, tp.b1, newCounter(t, xdpPass).prog)
	fd := capture(t, tp.be, tp.b1)

	for i := range 3 {
		// A dial that nobody answers: its SYN is what we look for.
		var sport uint16
		done := make(chan error, 1)
		go func() {
			done <- inNSErr(tp.cli, func() {
				d := net.Dialer{Timeout: 500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: tp.clientIP, Port: 41000 + i}}
				c, err := d.Dial("tcp4", "203.0.113.10:80")
				if err == nil {
					c.Close()
				}
			})
		}()
		sport = uint16(41000 + i)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		frame, err := readUntil(ctx, fd, func(b []byte) bool {
			e, err := decodeEncap(b)
			return err == nil && len(e.inner) >= 14+20+20 && binary.BigEndian.Uint16(e.inner[14+20:]) == sport
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err != nil {
			st, _ := l.Stats()
			t.Fatalf("connection %d: no encapsulated SYN reached the backend node: %v (counters %+v)", i, err, st)
		}
		e := parseEncap(t, frame)
		want := choose(netip.AddrFrom4([4]byte(tp.clientIP)), sport)
		if !bytes.Equal(e.outerEth.SrcMAC, tp.g1MAC) || !bytes.Equal(e.outerEth.DstMAC, tp.b1MAC) {
			t.Errorf("outer Ethernet %s -> %s, want g1 %s -> b1 %s", e.outerEth.SrcMAC, e.outerEth.DstMAC, tp.g1MAC, tp.b1MAC)
		}
		if !e.outerIP.SrcIP.Equal(tp.gwUnder) || !e.outerIP.DstIP.Equal(tp.beUnder) || e.vxlan.VNI != 7 {
			t.Errorf("outer %v -> %v VNI %d", e.outerIP.SrcIP, e.outerIP.DstIP, e.vxlan.VNI)
		}
		if !bytes.Equal(e.inner[0:6], mustMAC(backend(want).PortMac)) || !bytes.Equal(e.inner[6:12], routerMAC) {
			t.Errorf("inner MACs %x -> %x, want router -> backend %d", e.inner[6:12], e.inner[0:6], want)
		}
		in := gopacket.NewPacket(e.inner, layers.LayerTypeEthernet, gopacket.Default)
		ip, _ := in.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		tcp, _ := in.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if ip == nil || tcp == nil || !ip.SrcIP.Equal(tp.clientIP) || !ip.DstIP.Equal(net.IP{203, 0, 113, 10}) ||
			tcp.DstPort != 80 || !tcp.SYN || tcp.ACK {
			t.Fatalf("inner packet is not the client's SYN: %v", in)
		}
		if !checksumOK(e.inner[14:34]) || !l4ChecksumOK(e.inner[14:]) {
			t.Errorf("inner checksums broken: the backend would drop it")
		}
	}
	st, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Packets < 3 || st.FIBFailed != 0 || st.Services[1].NewFlows < 3 {
		t.Errorf("counters %+v", st)
	}
	// The next hop changes (here its neighbour entry): within the 100 ms
	// the program reuses a FIB answer, packets follow.
	moved := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	ipCmd(t, "-n", tp.gw, "neigh", "replace", "172.31.251.2", "lladdr", moved.String(), "dev", "g1", "nud", "permanent")
	time.Sleep(150 * time.Millisecond)
	done := make(chan error, 1)
	go func() {
		done <- inNSErr(tp.cli, func() {
			d := net.Dialer{Timeout: 500 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: tp.clientIP, Port: 41100}}
			if c, err := d.Dial("tcp4", "203.0.113.10:80"); err == nil {
				c.Close()
			}
		})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	frame, err := readUntil(ctx, fd, func(b []byte) bool {
		e, err := decodeEncap(b)
		return err == nil && len(e.inner) >= 14+20+20 && binary.BigEndian.Uint16(e.inner[14+20:]) == 41100
	})
	cancel()
	if derr := <-done; derr != nil {
		t.Fatal(derr)
	}
	if err != nil {
		t.Fatalf("after the next hop changed, nothing arrived: %v", err)
	}
	if e := parseEncap(t, frame); !bytes.Equal(e.outerEth.DstMAC, moved) {
		t.Errorf("150 ms after the neighbour changed, outer destination %s, want %s", e.outerEth.DstMAC, moved)
	}
	// Not for a VIP: the gateway's own stack still answers.
	nsExec(t, tp.cli, "ping", "-c", "1", "-W", "2", "172.31.250.1")
}

// TestDSRThroughVXLAN: whole connections through the load balancer. HTTP
// requests from the client namespace reach a server on a backend node
// whose Linux VXLAN device decapsulates what the XDP program sent (static
// next hop, redirect to the underlay veth), and the replies, from the VIP,
// go straight back through the gateway's routing: the load balancer sees
// only the client's direction.
func TestDSRThroughVXLAN(t *testing.T) {
	tp := newTopo(t)
	portMAC := tp.backendNode(t)
	l, err := Load(Options{MaxServices: 4, MaxBackends: 64, ConnTableSize: 4096})
	if err != nil {
		t.Fatalf("load (needs root and BPF): %v", err)
	}
	t.Cleanup(func() { l.Close() })
	s := vethService(80, 6)
	for _, b := range s.Backends {
		b.PortMac = portMAC
	}
	mustSet(t, l, s)
	if err := l.Configure(Config{UnderlayIP: netip.MustParseAddr("172.31.251.1"), MTU: 1550, RouterMAC: routerMAC,
		NextHopMAC: tp.b1MAC, SourceMAC: tp.g1MAC, OutIfindex: tp.g1}); err != nil {
		t.Fatal(err)
	}
	inNS(t, tp.gw, func() { err = l.Attach(tp.g0, ModeDriver) })
	if err != nil {
		t.Fatal(err)
	}
	// The transport dials on goroutines of its own: each dial switches
	// its locked thread into the client namespace to make the socket.
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		var derr error
		if err := inNSErr(tp.cli, func() { c, derr = (&net.Dialer{}).DialContext(ctx, network, addr) }); err != nil {
			return nil, err
		}
		return c, derr
	}
	// A new connection each time (no keep-alive): a SYN, data and FIN
	// through the load balancer, replies around it.
	c := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dial}}
	for i := range 5 {
		var body []byte
		resp, err := c.Get("http://203.0.113.10/")
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		if err != nil || string(body) != "ok\n" {
			st, _ := l.Stats()
			t.Fatalf("request %d through the load balancer: %q, %v (counters %+v)", i, body, err, st)
		}
	}
	st, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Each connection: SYN, the request, ACKs and FIN from the client;
	// nothing from the server passed through the load balancer.
	if st.Services[1].NewFlows < 5 || st.Packets < 5*3 {
		t.Errorf("counters %+v: want at least 5 new flows and 15 packets", st)
	}
}
