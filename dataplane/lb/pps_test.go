package lb

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// trafgenConf writes a trafgen configuration sending one 60-byte UDP frame
// from the client to vip:9 over and over.
func (tp *topo) trafgenConf(tb testing.TB) string {
	tb.Helper()
	eth := &layers.Ethernet{SrcMAC: tp.c0MAC, DstMAC: tp.g0MAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, Flags: layers.IPv4DontFragment,
		SrcIP: tp.clientIP, DstIP: vip.AsSlice()}
	udp := &layers.UDP{SrcPort: 40000, DstPort: 9}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		tb.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload(make([]byte, 18))); err != nil {
		tb.Fatal(err)
	}
	var words []string
	for _, b := range buf.Bytes() {
		words = append(words, fmt.Sprintf("0x%02x", b))
	}
	path := filepath.Join(tb.TempDir(), "udp60.cfg")
	if err := os.WriteFile(path, []byte("{ "+strings.Join(words, ", ")+" }\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// rate runs trafgen in the client namespace (one CPU) and returns the
// packets per second counter c sees over window, after a warm-up.
func (tp *topo) rate(tb testing.TB, conf string, c *counter, window time.Duration) float64 {
	tb.Helper()
	if _, err := exec.LookPath("trafgen"); err != nil {
		tb.Fatalf("trafgen (netsniff-ng) is needed: run hack/deps.sh: %v", err)
	}
	cmd := exec.Command("ip", "netns", "exec", tp.cli, "trafgen", "--dev", "c0", "--conf", conf,
		"--cpus", "1", "--no-sock-mem", "--notouch-irq", "--no-cpu-stats")
	logf, err := os.Create(filepath.Join(tb.TempDir(), "trafgen.log"))
	if err != nil {
		tb.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	// trafgen forks its workers: a process group of its own lets stop
	// signal exactly the processes started here.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start trafgen: %v", err)
	}
	pgid := cmd.Process.Pid
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		syscall.Kill(-pgid, syscall.SIGINT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
		// The workers may outlive the parent briefly: wait for the
		// group to be gone.
		for i := 0; i < 50 && syscall.Kill(-pgid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		syscall.Kill(-pgid, syscall.SIGKILL)
	}
	defer stop()
	time.Sleep(500 * time.Millisecond)
	c0, t0 := c.count(tb), time.Now()
	time.Sleep(window)
	c1, t1 := c.count(tb), time.Now()
	stop()
	if c1 == c0 {
		log, _ := os.ReadFile(logf.Name())
		tb.Fatalf("no packet counted in %v; trafgen said: %s", window, log)
	}
	return float64(c1-c0) / t1.Sub(t0).Seconds()
}

func attachIn(tb testing.TB, ns string, ifindex int, c *counter) link.Link {
	tb.Helper()
	var ln link.Link
	var err error
	inNS(tb, ns, func() {
		ln, err = link.AttachXDP(link.XDPOptions{Program: c.prog, Interface: ifindex, Flags: link.XDPDriverMode})
	})
	if err != nil {
		tb.Fatalf("attach XDP in %s: %v", ns, err)
	}
	return ln
}

// BenchmarkForwardPPS: packets per second through the gateway of the
// namespace topology (trafgen on one CPU in the client namespace, 60-byte
// UDP frames of one flow to the VIP), in one run:
//   - drop: XDP_DROP (with a counter) on the gateway's uplink veth: the
//     most the path can take;
//   - lb: the load balancer on the uplink (static next hop) redirecting
//     the encapsulated frames to the underlay veth, counted and dropped by
//     XDP at the backend node;
//   - lb-fib: the same with the next hop from bpf_fib_lookup;
//   - nft: no XDP on the uplink; nftables DNAT in the gateway
//     (jhash of the flow over 3 backend addresses), forwarded by the
//     kernel to the underlay veth, counted at the backend node the same
//     way.
func BenchmarkForwardPPS(b *testing.B) {
	if _, err := exec.LookPath("nft"); err != nil {
		b.Fatalf("nft (nftables) is needed: run hack/deps.sh: %v", err)
	}
	tp := newTopo(b)
	conf := tp.trafgenConf(b)
	l, err := Load(Options{MaxServices: 4, MaxBackends: 64, ConnTableSize: 4096})
	if err != nil {
		b.Fatalf("load (needs root and BPF): %v", err)
	}
	b.Cleanup(func() { l.Close() })
	mustSet(b, l, vethService(9, 17))
	at := counters{uplink: newCounter(b, xdpDrop), node: newCounter(b, xdpDrop)}
	const window = 2 * time.Second

	var drop, lbStatic, lbFIB, nft float64
	for range b.N {
		// Floor: drop at the uplink.
		dl := attachIn(b, tp.gw, tp.g0, at.uplink)
		drop += tp.rate(b, conf, at.uplink, window)
		dl.Close()

		// The load balancer, static next hop, then FIB.
		be := attachIn(b, tp.be, tp.b1, at.node)
		for _, fib := range []bool{false, true} {
			c := Config{UnderlayIP: netip.MustParseAddr("172.31.251.1"), MTU: 1550, RouterMAC: routerMAC,
				NextHopMAC: tp.b1MAC, SourceMAC: tp.g1MAC, OutIfindex: tp.g1}
			if fib {
				c = Config{UnderlayIP: netip.MustParseAddr("172.31.251.1"), MTU: 1550, RouterMAC: routerMAC, FIB: true}
			}
			if err := l.Configure(c); err != nil {
				b.Fatal(err)
			}
			inNS(b, tp.gw, func() { err = l.Attach(tp.g0, ModeDriver) })
			if err != nil {
				b.Fatal(err)
			}
			before, _ := l.Stats()
			r := tp.rate(b, conf, at.node, window)
			after, _ := l.Stats()
			if after.Packets == before.Packets || after.FIBFailed != before.FIBFailed {
				b.Fatalf("the load balancer forwarded nothing, or failed: %+v", after)
			}
			if fib {
				lbFIB += r
			} else {
				lbStatic += r
			}
			if err := l.Detach(tp.g0); err != nil {
				b.Fatal(err)
			}
		}

		// nftables DNAT over the same path.
		tp.nftDNAT(b)
		nft += tp.rate(b, conf, at.node, window)
		nsExec(b, tp.gw, "nft", "delete", "table", "ip", "lbbench")
		be.Close()
	}
	n := float64(b.N)
	b.ReportMetric(drop/n/1e6, "Mpps-drop")
	b.ReportMetric(lbStatic/n/1e6, "Mpps-lb")
	b.ReportMetric(lbFIB/n/1e6, "Mpps-lb-fib")
	b.ReportMetric(nft/n/1e6, "Mpps-nft")
	b.ReportMetric(lbStatic/drop, "lb/drop")
	b.ReportMetric(lbFIB/drop, "lb-fib/drop")
	b.ReportMetric(lbStatic/nft, "lb/nft")
}

type counters struct{ uplink, node *counter }

// nftDNAT installs the load balancer a user would script here: DNAT of
// vip:9/udp and vip:80/tcp to one of three backend addresses (jhash of
// the flow), with
// the backends' addresses behind the underlay veth.
func (tp *topo) nftDNAT(tb testing.TB) {
	tb.Helper()
	for _, a := range []string{"172.31.251.11", "172.31.251.12", "172.31.251.13"} {
		ipCmd(tb, "-n", tp.gw, "neigh", "replace", a, "lladdr", tp.b1MAC.String(), "dev", "g1", "nud", "permanent")
	}
	rules := `table ip lbbench {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 203.0.113.10 udp dport 9 dnat to jhash ip saddr . udp sport mod 3 map { 0 : 172.31.251.11, 1 : 172.31.251.12, 2 : 172.31.251.13 }
		ip daddr 203.0.113.10 tcp dport 80 dnat to jhash ip saddr . tcp sport mod 3 map { 0 : 172.31.251.11, 1 : 172.31.251.12, 2 : 172.31.251.13 }
	}
}
`
	path := filepath.Join(tb.TempDir(), "lb.nft")
	if err := os.WriteFile(path, []byte(rules), 0o600); err != nil {
		tb.Fatal(err)
	}
	nsExec(tb, tp.gw, "nft", "-f", path)
}
