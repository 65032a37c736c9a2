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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// frame60 is the benchmarks' frame: 60 bytes of UDP from the client to
// vip:9.
func (tp *topo) frame60(tb testing.TB) []byte {
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
	return buf.Bytes()
}

// trafgenConf writes a trafgen configuration sending frame60 over and
// over.
func (tp *topo) trafgenConf(tb testing.TB) string {
	tb.Helper()
	var words []string
	for _, b := range tp.frame60(tb) {
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
	return attachProg(tb, ns, ifindex, c.prog)
}

func attachProg(tb testing.TB, ns string, ifindex int, p *ebpf.Program) link.Link {
	tb.Helper()
	var ln link.Link
	var err error
	inNS(tb, ns, func() {
		ln, err = link.AttachXDP(link.XDPOptions{Program: p, Interface: ifindex, Flags: link.XDPDriverMode})
	})
	if err != nil {
		tb.Fatalf("attach XDP in %s: %v", ns, err)
	}
	return ln
}

// BenchmarkForwardPPS: packets per second through the gateway of the
// namespace topology (60-byte UDP frames of one flow to the VIP), in one
// run, for each of
//   - drop: XDP_DROP (with a counter) on the gateway's uplink veth: the
//     most the path can take;
//   - redirect: a program that only redirects the frames, unchanged, to
//     the underlay veth (bpf_redirect), counted at the backend node: the
//     veth-to-veth forwarding every XDP forwarder pays here;
//   - lb: the load balancer on the uplink (static next hop) redirecting
//     the encapsulated frames to the underlay veth, counted and dropped by
//     XDP at the backend node;
//   - lb-fib: the same with the next hop from bpf_fib_lookup;
//   - nft: no XDP on the uplink (GRO on, so the veth batches like XDP
//     does); nftables DNAT in the gateway (jhash of the flow over 3 backend
//     addresses), forwarded by the kernel to the underlay veth, counted at
//     the backend node the same way;
//
// with two traffic generators: trafgen on one CPU in the client namespace
// (its socket path costs more per frame than most of what is measured, so
// ratios are compressed toward 1), and, for the XDP paths, frames injected
// with the test-run facility's live-frames mode (2,000,000 per
// measurement), where the gateway's work dominates. nft cannot be measured
// with injected frames: they do not survive the conversion to socket
// buffers (64 of 200,000 reached IP in a trial).
func BenchmarkForwardPPS(b *testing.B) {
	if _, err := exec.LookPath("nft"); err != nil {
		b.Fatalf("nft (nftables) is needed: run hack/deps.sh: %v", err)
	}
	tp := newTopo(b)
	conf := tp.trafgenConf(b)
	frame := tp.frame60(b)
	l, err := Load(Options{MaxServices: 4, MaxBackends: 64, ConnTableSize: 4096})
	if err != nil {
		b.Fatalf("load (needs root and BPF): %v", err)
	}
	b.Cleanup(func() { l.Close() })
	mustSet(b, l, vethService(9, 17))
	at := counters{uplink: newCounter(b, xdpDrop), node: newCounter(b, xdpDrop)}
	const window = 2 * time.Second
	const injected = 2_000_000

	type result struct{ trafgen, inject float64 }
	measure := func(c *counter, inject bool) result {
		r := result{trafgen: tp.rate(b, conf, c, window)}
		if inject {
			r.inject = tp.injectRate(b, frame, injected, c)
		}
		return r
	}
	var drop, fwd, lbStatic, lbFIB, nft result
	add := func(to *result, r result) { to.trafgen += r.trafgen; to.inject += r.inject }
	for range b.N {
		// Floor: drop at the uplink.
		dl := attachIn(b, tp.gw, tp.g0, at.uplink)
		add(&drop, measure(at.uplink, true))
		dl.Close()

		// Bare forwarding: redirect to the underlay veth unchanged.
		be := attachIn(b, tp.be, tp.b1, at.node)
		rl := attachProg(b, tp.gw, tp.g0, redirectProgram(b, tp.g1))
		add(&fwd, measure(at.node, true))
		rl.Close()

		// The load balancer, static next hop, then FIB.
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
			r := measure(at.node, true)
			after, _ := l.Stats()
			if after.Packets == before.Packets || after.FIBFailed != before.FIBFailed {
				b.Fatalf("the load balancer forwarded nothing, or failed: %+v", after)
			}
			if fib {
				add(&lbFIB, r)
			} else {
				add(&lbStatic, r)
			}
			if err := l.Detach(tp.g0); err != nil {
				b.Fatal(err)
			}
		}

		// nftables DNAT over the same path.
		tp.nftDNAT(b)
		nsExec(b, tp.gw, "ethtool", "-K", "g0", "gro", "on")
		add(&nft, measure(at.node, false))
		nsExec(b, tp.gw, "ethtool", "-K", "g0", "gro", "off")
		nsExec(b, tp.gw, "nft", "delete", "table", "ip", "lbbench")
		be.Close()
	}
	n := float64(b.N)
	b.ReportMetric(drop.trafgen/n/1e6, "Mpps-drop")
	b.ReportMetric(lbStatic.trafgen/n/1e6, "Mpps-lb")
	b.ReportMetric(lbFIB.trafgen/n/1e6, "Mpps-lb-fib")
	b.ReportMetric(nft.trafgen/n/1e6, "Mpps-nft")
	b.ReportMetric(lbStatic.trafgen/drop.trafgen, "lb/drop")
	b.ReportMetric(lbFIB.trafgen/drop.trafgen, "lb-fib/drop")
	b.ReportMetric(lbStatic.trafgen/nft.trafgen, "lb/nft")
	b.ReportMetric(fwd.trafgen/n/1e6, "Mpps-redirect")
	b.ReportMetric(lbStatic.trafgen/fwd.trafgen, "lb/redirect")
	b.ReportMetric(drop.inject/n/1e6, "Mpps-inj-drop")
	b.ReportMetric(fwd.inject/n/1e6, "Mpps-inj-redirect")
	b.ReportMetric(lbStatic.inject/fwd.inject, "inj-lb/redirect")
	b.ReportMetric(lbStatic.inject/n/1e6, "Mpps-inj-lb")
	b.ReportMetric(lbFIB.inject/n/1e6, "Mpps-inj-lb-fib")
	b.ReportMetric(lbStatic.inject/drop.inject, "inj-lb/drop")
	b.ReportMetric(lbFIB.inject/drop.inject, "inj-lb-fib/drop")
}

type counters struct{ uplink, node *counter }

// nftDNAT installs the load balancer a user would script here: DNAT of
// vip:9/udp and vip:80/tcp to one of three backend addresses (jhash of
// the flow), the backends' addresses behind the underlay veth.
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

// xdpMd is struct xdp_md, the test run's context.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// injectRate sends n copies of frame out of the client's veth with the
// test-run facility in live-frames mode (an XDP_TX program "received" on
// c0 transmits each frame to its peer, the gateway's uplink): a traffic
// generator costing tens of nanoseconds a frame instead of trafgen's
// socket path, so the gateway's work dominates. Returns the rate counter
// c saw.
func (tp *topo) injectRate(tb testing.TB, frame []byte, n uint32, c *counter) float64 {
	tb.Helper()
	gen, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpTX), asm.Return()},
	})
	if err != nil {
		tb.Fatalf("generator program: %v", err)
	}
	defer gen.Close()
	c0 := c.count(tb)
	var start, end time.Time
	inNS(tb, tp.cli, func() {
		opts := ebpf.RunOptions{Data: frame, Repeat: n, Flags: unix.BPF_F_TEST_XDP_LIVE_FRAMES,
			Context: xdpMd{DataEnd: uint32(len(frame)), IngressIfindex: uint32(tp.c0)}}
		start = time.Now()
		_, err = gen.Run(&opts)
		end = time.Now()
	})
	if err != nil {
		tb.Fatalf("inject frames: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // the last batch's softirq
	got := c.count(tb) - c0
	if got == 0 {
		tb.Fatalf("none of %d injected frames counted", n)
	}
	return float64(got) / end.Sub(start).Seconds()
}

// redirectProgram is an XDP program that redirects every frame to ifindex.
func redirectProgram(tb testing.TB, ifindex int) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, int32(ifindex)),
			asm.Mov.Imm(asm.R2, 0),
			asm.FnRedirect.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		tb.Fatalf("redirect program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}
