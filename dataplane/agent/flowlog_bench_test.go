package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// nsPath names a namespace handle of this process for nsenter.
func nsPath(ns netns.NsHandle) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns)) }

// iperf3 runs one iperf3 client in the web workload against the server in
// db for d and returns the received rate in Gbit/s.
func iperf3(tb testing.TB, web *flowWorkload, d time.Duration) float64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net="+nsPath(web.ns), "--", "iperf3", "-c", "10.0.2.20", "-p", "80",
		"-t", fmt.Sprint(int(d.Seconds())), "-J").Output()
	if err != nil {
		tb.Fatalf("iperf3 client: %v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		tb.Fatalf("iperf3 output: %v", err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}

// connRate opens and closes TCP connections from web to db:81 for d, one
// at a time per worker, and returns connections per second.
func connRate(tb testing.TB, web *flowWorkload, d time.Duration) float64 {
	tb.Helper()
	const workers = 4
	var n atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	errc := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Sockets belong to the namespace they are made in: make
			// them on a thread that is in the workload.
			if err := withNetns(web.ns, func() error {
				for time.Now().Before(deadline) {
					c, err := net.DialTimeout("tcp4", "10.0.2.20:81", time.Second)
					if err != nil {
						return err
					}
					c.(*net.TCPConn).SetLinger(0) // RST: no TIME_WAIT pile-up between runs
					c.Close()
					n.Add(1)
				}
				return nil
			}); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		tb.Fatalf("connection rate: %v", err)
	default:
	}
	return float64(n.Load()) / d.Seconds()
}

// withNetns runs fn on a locked thread in ns and retires the thread if it
// cannot be put back.
func withNetns(ns netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err == nil {
		runtime.UnlockOSThread()
	}
	return ferr
}

// settle waits until the agent has written the records of the flows of
// the previous measurement (they end within an interval of 1 s), so its
// work on one measurement's flows does not land in the next one's window:
// the benchmark measures each setting's own cost.
func settle(tb testing.TB, a *Agent) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		a.flowlogs.mu.Lock()
		n := len(a.flowlogs.flows) + len(a.flowlogs.rejects)
		a.flowlogs.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatal("the agent still tracks flows 10 s after a measurement")
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkFlowLogCost: what flow logging costs the data path. Two
// workloads on one node, real veths with the port program attached; the
// same iperf3 (one TCP stream, 3 s) and the same connection churn (4
// workers opening and closing TCP connections, 2 s) with no flow log and
// with a flow log on the whole VPC logging every flow (sampling 1, a
// 1,000,000/s limit, records written to a file), alternated three times.
// Before each measurement the agent has finished with the previous one's
// flows (settle). Reported: medians and on/off ratios (1.0 = no cost;
// target >= 0.95).
func BenchmarkFlowLogCost(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatal("iperf3 is required (hack/deps.sh installs it)")
	}
	path := filepath.Join(b.TempDir(), "flows.jsonl")
	inPrivateNetns(b, func(dp *datapath.Datapath) {
		web := newFlowWorkload(b, "flweb", "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1")
		db := newFlowWorkload(b, "fldb", "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1")
		on := flowLogWorld(path, 1, 1000000, 1000000)
		off := flowLogWorld(path, 1, 0, 0)
		delete(off, "flowlog/9")
		for _, w := range []map[string]*agentv1.Object{on, off} {
			// db-1 takes TCP 81 too (the churn's port)
			sg2 := w["sg/2"].GetSecurityGroup()
			sg2.Rules = append(sg2.Rules, &agentv1.Rule{Id: 23, Ingress: true, Protocol: 6, PortMin: 81, PortMax: 81, IcmpType: -1, IcmpCode: -1})
		}
		a := startFlowLogAgent(b, dp, off, nil)

		// Servers in db: iperf3 on 80, an accept-and-close loop on 81.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		srv := exec.CommandContext(ctx, "nsenter", "--net="+nsPath(db.ns), "--", "iperf3", "-s", "-p", "80")
		if err := srv.Start(); err != nil {
			b.Fatalf("iperf3 server: %v", err)
		}
		defer func() { cancel(); srv.Wait() }()
		var ln net.Listener
		if err := withNetns(db.ns, func() (err error) { ln, err = net.Listen("tcp4", "10.0.2.20:81"); return err }); err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				c.Close()
			}
		}()
		time.Sleep(300 * time.Millisecond) // iperf3 -s binding its port

		apply := func(w map[string]*agentv1.Object, version uint64) {
			var ups []*agentv1.Object
			for _, o := range w {
				ups = append(ups, o)
			}
			a.applyResponse(&agentv1.SyncResponse{Snapshot: true, Version: version, Upserts: ups})
			a.reconcileOnce()
			if len(a.errs) != 0 {
				b.Fatalf("reconcile: %v", a.errs)
			}
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			var gOff, gOn, cOff, cOn []float64
			version := uint64(10)
			for round := range 3 {
				for _, enabled := range []bool{round%2 == 1, round%2 == 0} { // alternate which goes first
					version++
					if enabled {
						apply(on, version)
					} else {
						apply(off, version)
					}
					settle(b, a)
					g := iperf3(b, web, 3*time.Second)
					settle(b, a)
					c := connRate(b, web, 2*time.Second)
					if enabled {
						gOn, cOn = append(gOn, g), append(cOn, c)
					} else {
						gOff, cOff = append(gOff, g), append(cOff, c)
					}
				}
			}
			st, _ := dp.FlowLogStats()
			b.Logf("iperf3 Gbit/s off %v on %v; connections/s off %v on %v; data path logged %d flows, rate-limited %d",
				gOff, gOn, cOff, cOn, st.Emitted, st.RateLimited)
			b.ReportMetric(median(gOff), "gbps-off")
			b.ReportMetric(median(gOn), "gbps-on")
			b.ReportMetric(median(gOn)/median(gOff), "throughput-ratio")
			b.ReportMetric(median(cOff), "conns/s-off")
			b.ReportMetric(median(cOn), "conns/s-on")
			b.ReportMetric(median(cOn)/median(cOff), "connrate-ratio")
		}
	})
}

// BenchmarkFlowLogRecordPath: the agent's CPU per logged flow, from the
// new-flow event to its line in the file: newFlow for 10,000 flows, then
// one flush that reads their counters (batched), encodes and writes the
// records. No traffic: the flows' conntrack entries do not exist, so each
// gets the record of a flow gone before its first interval (the same work
// as an ended flow's). Reported in ns per flow; compare with the CPU a
// connection costs the node (BenchmarkFlowLogCost).
func BenchmarkFlowLogRecordPath(b *testing.B) {
	path := filepath.Join(b.TempDir(), "flows.jsonl")
	inPrivateNetns(b, func(dp *datapath.Datapath) {
		newFlowWorkload(b, "flweb", "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1")
		newFlowWorkload(b, "fldb", "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1")
		// Nothing else runs the agent's flow-log writer: the benchmark
		// calls what its goroutines would.
		f := newFlowLogAgent(b, dp, flowLogWorld(path, 1, 1000000, 1000000)).flowlogs
		var slot uint8
		f.mu.Lock()
		for s := range f.bySlot {
			slot = s
		}
		f.mu.Unlock()
		const n = 10000
		evs := make([]datapath.FlowEvent, n)
		mono, err := datapath.MonotonicNow()
		if err != nil {
			b.Fatal(err)
		}
		for i := range evs {
			evs[i] = datapath.FlowEvent{Key: datapath.FlowKey{VPC: 1, Src: netip.MustParseAddr("10.0.1.10"),
				Dst: netip.MustParseAddr("10.0.2.20"), SrcPort: uint16(10000 + i), DstPort: 81, Protocol: 6},
				Port: 1, Slot: slot, Direction: 1, SGRule: 11, ACLRule: 100, Bytes: 60, Mono: mono}
		}
		var total time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			best := time.Duration(math.MaxInt64)
			for range 5 {
				start := time.Now()
				for _, ev := range evs {
					f.newFlow(ev)
				}
				f.flush(time.Now().Add(2*time.Second), false)
				best = min(best, time.Since(start))
				f.mu.Lock()
				left := len(f.flows)
				f.mu.Unlock()
				if left != 0 || f.records == 0 {
					b.Fatalf("%d flows left after the flush, %d records", left, f.records)
				}
			}
			total += best
		}
		b.ReportMetric(float64(total.Nanoseconds())/float64(b.N*n), "ns/flow")
	})
}
