package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

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

// Connection churn runs in processes of its own, as workloads do: in the
// agent's process the churn's Go runtime (its scheduler, its garbage
// collector) would share the agent's, and the flow-log writer's priority
// (flowlog.go) would not apply to it. The test binary is re-run as the
// client or the server: churnRoleEnv names the role.
const churnRoleEnv = "MERIDIAN_CHURN_ROLE"

// TestFlowLogChurnHelper is the child process of connRate and
// startChurnServer; run by go test, it returns at once.
func TestFlowLogChurnHelper(t *testing.T) {
	switch os.Getenv(churnRoleEnv) {
	case "":
		return
	case "server":
		// Accept and close until killed; ready once listening.
		ln, err := net.Listen("tcp4", os.Getenv("CHURN_ADDR"))
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		for {
			c, err := ln.Accept()
			if err != nil {
				continue
			}
			c.Close()
		}
	case "client":
		// 4 workers open and close connections for CHURN_DURATION;
		// prints the connections per second.
		d, err := time.ParseDuration(os.Getenv("CHURN_DURATION"))
		if err != nil {
			fmt.Println("duration:", err)
			os.Exit(1)
		}
		var n atomic.Int64
		var failed atomic.Value
		var wg sync.WaitGroup
		start := time.Now()
		deadline := start.Add(d)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					c, err := net.DialTimeout("tcp4", os.Getenv("CHURN_ADDR"), 5*time.Second)
					if err != nil {
						failed.Store(err)
						return
					}
					c.(*net.TCPConn).SetLinger(0) // RST: no TIME_WAIT pile-up between runs
					c.Close()
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			fmt.Println("dial:", err)
			os.Exit(1)
		}
		fmt.Printf("%f\n", float64(n.Load())/time.Since(start).Seconds())
		os.Exit(0)
	}
}

// churnCmd runs the test binary in ns as role.
func churnCmd(ctx context.Context, ns netns.NsHandle, role, addr string, d time.Duration) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+nsPath(ns), "--", os.Args[0],
		"-test.run", "^TestFlowLogChurnHelper$", "-test.count", "1")
	cmd.Env = append(os.Environ(), churnRoleEnv+"="+role, "CHURN_ADDR="+addr, "CHURN_DURATION="+d.String())
	return cmd
}

// churnServer is the accept-and-close server process.
type churnServer struct{ pid int }

// startChurnServer runs the accept-and-close server in ns until the
// benchmark ends.
func startChurnServer(tb testing.TB, ns netns.NsHandle, addr string) *churnServer {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := churnCmd(ctx, ns, "server", addr, 0)
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("churn server: %v", err)
	}
	tb.Cleanup(func() { cancel(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		tb.Fatalf("churn server: %q %v", line, err)
	}
	return &churnServer{pid: cmd.Process.Pid} // nsenter execs: the same process
}

// cpu is the CPU time the server's threads have used (schedstat: ns).
func (s *churnServer) cpu(tb testing.TB) time.Duration {
	tb.Helper()
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", s.pid))
	if err != nil || len(stats) == 0 {
		tb.Fatalf("churn server threads: %v", err)
	}
	var total time.Duration
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // a thread that ended
		}
		f := strings.Fields(string(b))
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			tb.Fatalf("%s: %q", p, b)
		}
		total += time.Duration(ns)
	}
	return total
}

// selfCPU is this process's CPU time: the agent's (and the benchmark's).
func selfCPU(tb testing.TB) time.Duration {
	tb.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// churn is one connection-churn measurement.
type churn struct {
	rate float64       // connections per second
	cpu  time.Duration // CPU per connection: client + server + agent
}

// connRate runs the churn client in web against the server for d. The
// CPU per connection adds the client's, the server's and this process's
// (the agent's) CPU time: the packets' kernel and BPF work runs in the
// sending process's system calls (veth delivers in the sender's
// context), so it is in these too. Unlike the rate, it does not move with
// what else the machine runs.
func connRate(tb testing.TB, web *flowWorkload, srv *churnServer, d time.Duration) churn {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+15*time.Second)
	defer cancel()
	self0, srv0 := selfCPU(tb), srv.cpu(tb)
	cmd := churnCmd(ctx, web.ns, "client", "10.0.2.20:81", d)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("connection churn: %v: %s", err, out)
	}
	used := selfCPU(tb) - self0 + srv.cpu(tb) - srv0 + cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	rate, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || rate <= 0 {
		tb.Fatalf("connection churn printed %q", out)
	}
	return churn{rate: rate, cpu: time.Duration(float64(used) / (rate * d.Seconds()))}
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
// 1,000,000/s limit, records written to a file: two records per
// connection, one per port). Measurements come in pairs, off and on back to
// back (which goes first alternates), and each pair gives a ratio: the
// machine's drift (other tenants of a shared VM, a loaded 2-vCPU box)
// moves both halves of a pair alike, so the median of the pair ratios is
// steadier than a ratio of medians. 3 iperf3 pairs, 7 churn pairs; then 5
// churn pairs against a flow log with the API's defaults (1,000 new flows/s
// per node: *-defaults). Before each measurement the agent has finished
// with the previous one's flows (settle). Reported: medians, the median pair
// ratio on/off (1.0 = no cost; target >= 0.95) and the lowest and highest
// pair ratio, for the rate and for connections per CPU-second.
func BenchmarkFlowLogCost(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatal("iperf3 is required (hack/deps.sh installs it)")
	}
	path := filepath.Join(b.TempDir(), "flows.jsonl")
	inPrivateNetns(b, func(dp *datapath.Datapath) {
		web := newFlowWorkload(b, "flweb", "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1")
		db := newFlowWorkload(b, "fldb", "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1")
		on := flowLogWorld(path, 1, 1000000, 1000000)
		// A flow log as the API makes it when only its scope is given:
		// sampling 1, 1,000 new flows/s per node, burst 1,000.
		byDefault := flowLogWorld(path, 1, 1000, 1000)
		off := flowLogWorld(path, 1, 0, 0)
		delete(off, "flowlog/9")
		for _, w := range []map[string]*agentv1.Object{on, byDefault, off} {
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
		churnSrv := startChurnServer(b, db.ns, "10.0.2.20:81")
		// iperf3 -s binds its port some time after it starts.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			out, err := exec.Command("nsenter", "--net="+nsPath(db.ns), "--", "ss", "-Hltn", "sport = :80").Output()
			if err == nil && len(bytes.TrimSpace(out)) > 0 {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("iperf3 -s not listening on port 80 after 10 s (ss: %v)", err)
			}
		}

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
		version := uint64(10)
		onWorld := on // what "on" is for pair
		// pair measures off and on back to back (first: which goes first).
		pair := func(first bool, measure func(enabled bool)) {
			for _, enabled := range []bool{first, !first} {
				version++
				if enabled {
					apply(onWorld, version)
				} else {
					apply(off, version)
				}
				settle(b, a)
				measure(enabled)
			}
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			var g, c [2][]float64 // [0] off, [1] on
			var cpu [2][]time.Duration
			var gRatio, cRatio, cpuRatio []float64
			at := func(enabled bool) int {
				if enabled {
					return 1
				}
				return 0
			}
			for p := range 3 {
				pair(p%2 == 1, func(enabled bool) {
					g[at(enabled)] = append(g[at(enabled)], iperf3(b, web, 3*time.Second))
				})
				gRatio = append(gRatio, g[1][p]/g[0][p])
			}
			for p := range 7 {
				pair(p%2 == 1, func(enabled bool) {
					r := connRate(b, web, churnSrv, 2*time.Second)
					c[at(enabled)] = append(c[at(enabled)], r.rate)
					cpu[at(enabled)] = append(cpu[at(enabled)], r.cpu)
				})
				cRatio = append(cRatio, c[1][p]/c[0][p])
				// A rate ratio: CPU per connection off / on.
				cpuRatio = append(cpuRatio, float64(cpu[0][p])/float64(cpu[1][p]))
			}
			st, _ := dp.FlowLogStats()
			b.Logf("iperf3 Gbit/s off %.2f on %.2f; connections/s off %.0f on %.0f; CPU per connection off %v on %v; "+
				"pair ratios on/off: iperf3 %.3f, connections/s %.3f, connections per CPU-second %.3f; data path logged %d flows, rate-limited %d",
				g[0], g[1], c[0], c[1], cpu[0], cpu[1], gRatio, cRatio, cpuRatio, st.Emitted, st.RateLimited)
			b.ReportMetric(median(g[0]), "gbps-off")
			b.ReportMetric(median(g[1]), "gbps-on")
			b.ReportMetric(median(gRatio), "throughput-ratio")
			b.ReportMetric(median(c[0]), "conns/s-off")
			b.ReportMetric(median(c[1]), "conns/s-on")
			b.ReportMetric(median(cRatio), "connrate-ratio")
			b.ReportMetric(slices.Min(cRatio), "connrate-ratio-min")
			b.ReportMetric(slices.Max(cRatio), "connrate-ratio-max")
			b.ReportMetric(median(cpuRatio), "conns-per-cpu-ratio")
			// The same churn against a flow log with the API's defaults.
			onWorld = byDefault
			var dRatio, dCPURatio []float64
			for p := range 5 {
				var r [2]churn
				pair(p%2 == 1, func(enabled bool) { r[at(enabled)] = connRate(b, web, churnSrv, 2*time.Second) })
				dRatio = append(dRatio, r[1].rate/r[0].rate)
				dCPURatio = append(dCPURatio, float64(r[0].cpu)/float64(r[1].cpu))
			}
			onWorld = on
			b.Logf("with the API's defaults (1,000 flows/s): pair ratios connections/s %.3f, connections per CPU-second %.3f", dRatio, dCPURatio)
			b.ReportMetric(median(dRatio), "connrate-ratio-defaults")
			b.ReportMetric(median(dCPURatio), "conns-per-cpu-ratio-defaults")
			b.ReportMetric(slices.Min(cpuRatio), "conns-per-cpu-ratio-min")
			b.ReportMetric(slices.Max(cpuRatio), "conns-per-cpu-ratio-max")
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
