package lb

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// dropProgram is the floor: an XDP program that returns XDP_DROP.
func dropProgram(tb testing.TB) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, xdpDrop), asm.Return()},
	})
	if err != nil {
		tb.Fatalf("load XDP_DROP program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// BenchmarkXDPPerPacket measures the program with the test-run facility
// (1,000,000 repeats per measurement) on a 74-byte TCP frame to a VIP with
// 3 backends and a 65,537-entry table:
//   - hit: an established flow (ACK): parse, VIP lookup, connection-table
//     lookup, backend check, VXLAN encapsulation;
//   - new: a SYN: the same, but the backend from the Maglev table and a
//     connection-table write;
//   - pass: a frame to the VIP's address on another port: what every
//     packet that is not for a VIP pays (parse, VIP lookup, XDP_PASS);
//   - drop: a program that only returns XDP_DROP, the floor.
//
// The load balancer runs through lb_xdp_bench, which takes the outer
// headers off again after each run (test runs reuse the buffer), one more
// bpf_xdp_adjust_head than in production.
func BenchmarkXDPPerPacket(b *testing.B) {
	l := loadTest(b)
	mustSet(b, l, svcMsg(1, 80, 0, 1, 2, 3))
	drop := dropProgram(b)
	ack := clientPkt(client, 40000)
	ack.payload = 0
	syn := ack
	syn.flags = fSYN
	other := ack
	other.dport = 81
	ackFrame, synFrame, otherFrame := ack.bytes(b), syn.bytes(b), other.bytes(b)
	if ret, _ := run(b, l.objs.LbXdp, ackFrame); ret != xdpTX { // the flow is in the table
		b.Fatalf("verdict %d, want XDP_TX", ret)
	}
	const repeat = 1_000_000
	measure := func(p *ebpf.Program, frame []byte, want uint32) float64 {
		ret, d, err := p.Benchmark(frame, repeat, nil)
		if err != nil {
			b.Fatalf("test run: %v", err)
		}
		if ret != want {
			b.Fatalf("verdict %d, want %d", ret, want)
		}
		return float64(d.Nanoseconds())
	}
	var hit, fresh, pass, floor float64
	before, err := l.Stats()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		floor += measure(drop, ackFrame, xdpDrop)
		hit += measure(l.objs.LbXdpBench, ackFrame, xdpTX)
		fresh += measure(l.objs.LbXdpBench, synFrame, xdpTX)
		pass += measure(l.objs.LbXdp, otherFrame, xdpPass)
	}
	b.StopTimer()
	after, err := l.Stats()
	if err != nil {
		b.Fatal(err)
	}
	// The SYN runs went through the Maglev table and wrote the connection
	// table each time; the ACK runs did not.
	if got := after.NewFlows - before.NewFlows; got < uint64(b.N)*repeat {
		b.Fatalf("%d new flows in %d SYN runs", got, b.N*repeat)
	}
	n := float64(b.N)
	b.ReportMetric(hit/n, "ns/hit")
	b.ReportMetric(fresh/n, "ns/new-flow")
	b.ReportMetric(pass/n, "ns/pass")
	b.ReportMetric(floor/n, "ns/drop")
	b.ReportMetric(hit/floor, "hit/drop")
	b.ReportMetric(fresh/floor, "new/drop")
}

// BenchmarkXDPPerPacketFIB is BenchmarkXDPPerPacket's hit with the outer
// headers from bpf_fib_lookup (Config.FIB) instead of a static next hop:
// test runs inside the gateway namespace of the veth topology, so the
// lookup finds the route and neighbour of the backend node (and the
// program redirects to the underlay veth). Both in the same run.
func BenchmarkXDPPerPacketFIB(b *testing.B) {
	tp := newTopo(b)
	l, err := Load(Options{MaxServices: 4, MaxBackends: 64, ConnTableSize: 4096})
	if err != nil {
		b.Fatalf("load (needs root and BPF): %v", err)
	}
	b.Cleanup(func() { l.Close() })
	mustSet(b, l, vethService(80, 6))
	underlayIP := netip.MustParseAddr("172.31.251.1")
	static := Config{UnderlayIP: underlayIP, MTU: 1550, RouterMAC: routerMAC,
		NextHopMAC: tp.b1MAC, SourceMAC: tp.g1MAC, OutIfindex: tp.g1}
	fib := Config{UnderlayIP: underlayIP, MTU: 1550, RouterMAC: routerMAC, FIB: true}
	ack := clientPkt(netip.AddrFrom4([4]byte(tp.clientIP)), 40000)
	ack.payload = 0
	frame := ack.bytes(b)
	const repeat = 1_000_000
	measure := func(c Config) float64 {
		if err := l.Configure(c); err != nil {
			b.Fatal(err)
		}
		var d float64
		inNS(b, tp.gw, func() {
			// Received on lo (a test run's default), whose forwarding
			// the topology turned on with the rest.
			ret, dur, rerr := l.objs.LbXdpBench.Benchmark(frame, repeat, nil)
			err = rerr
			if err == nil && ret != xdpRedirect {
				err = fmt.Errorf("verdict %d, want XDP_REDIRECT", ret)
			}
			if err == nil {
				var st Stats
				if st, err = l.Stats(); err == nil && st.FIBFailed != 0 {
					err = fmt.Errorf("FIB lookups failed: %+v", st)
				}
			}
			d = float64(dur.Nanoseconds())
		})
		if err != nil {
			b.Fatalf("test run: %v", err)
		}
		return d
	}
	var st, fb float64
	b.ResetTimer()
	for range b.N {
		st += measure(static)
		fb += measure(fib)
	}
	n := float64(b.N)
	b.ReportMetric(st/n, "ns/hit-static")
	b.ReportMetric(fb/n, "ns/hit-fib")
	b.ReportMetric(fb/st, "fib/static")
}
