package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Helpers of the data-plane benchmarks (bench_test.go): namespaces and
// links outside what the harness builds, iperf3 runs, statistics and process
// logs. Everything they create is recorded in the Run (namespaces) or
// registered with tb.Cleanup (processes), so a failed benchmark leaves
// nothing behind.

// benchNetns creates a namespace of the run's own (unique name, removed by
// Close) that the topology does not describe, e.g. a baseline workload.
func benchNetns(tb testing.TB, r *Run, name string) string {
	tb.Helper()
	ns, err := r.createNetns(tb.Context(), name)
	if err != nil {
		tb.Fatal(err)
	}
	return ns
}

// script runs each line as one command inside ns and stops at the first
// failure. Setup of baselines reads as the commands an operator would
// type, which is the point of a baseline.
func script(tb testing.TB, ns string, lines ...string) {
	tb.Helper()
	for _, l := range lines {
		if _, err := Exec(tb.Context(), ns, strings.Fields(l)...); err != nil {
			tb.Fatal(err)
		}
	}
}

// iperfPort is where every benchmark's iperf3 server listens; each server
// is in a namespace of its own, so they never collide.
const iperfPort = 5201

// iperfServer starts `iperf3 -s` in ns, waits until it listens and stops it
// (by its PID) when tb ends.
func iperfServer(tb testing.TB, ns string) {
	tb.Helper()
	// Not CommandContext: the server must outlive the setup's context and
	// is stopped by the cleanup below instead.
	cmd := Command(context.Background(), ns, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start iperf3 server in %s: %v", ns, err)
	}
	// nsenter execs iperf3 in place, so this PID is the server's.
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := Exec(tb.Context(), ns, "ss", "-Hltn", "sport = :"+strconv.Itoa(iperfPort))
		if err == nil && strings.TrimSpace(out) != "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("iperf3 server in %s does not listen: %v %s", ns, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// iperfMode is what one iperf3 client run measures.
type iperfMode int

const (
	// iperfTCP: one TCP stream, bulk; the result is Gbit/s received.
	iperfTCP iperfMode = iota
	// iperfUDPSmall: 64-byte UDP datagrams sent as fast as the sender can;
	// the result is thousands of datagrams received per second. Small
	// packets make per-packet costs (a rule walk) visible where TCP's
	// 64 KiB GSO segments hide them.
	iperfUDPSmall
)

func (m iperfMode) unit() string {
	if m == iperfUDPSmall {
		return "kpps"
	}
	return "Gbit/s"
}

// iperfReport is the part of iperf3's JSON output the benchmarks read.
type iperfReport struct {
	End struct {
		SumReceived struct {
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		Sum struct {
			Seconds     float64 `json:"seconds"`
			Packets     float64 `json:"packets"`
			LostPackets float64 `json:"lost_packets"`
		} `json:"sum"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperf runs one iperf3 client in ns against dst for secs seconds.
func iperf(ctx context.Context, ns string, dst netip.Addr, mode iperfMode, secs int) (float64, error) {
	argv := []string{"iperf3", "-J", "-c", dst.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs)}
	if mode == iperfUDPSmall {
		argv = append(argv, "-u", "-b", "0", "-l", "64")
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs+20)*time.Second)
	defer cancel()
	// Output only: iperf3 reports its errors in the JSON too.
	out, err := Command(ctx, ns, argv...).Output()
	var rep iperfReport
	if jerr := json.Unmarshal(out, &rep); jerr != nil || rep.Error != "" || err != nil {
		return 0, fmt.Errorf("iperf3 in %s to %s: %v %s (%v)", ns, dst, err, rep.Error, jerr)
	}
	if mode == iperfUDPSmall {
		s := rep.End.Sum
		if s.Seconds == 0 {
			return 0, fmt.Errorf("iperf3 in %s to %s: no UDP summary", ns, dst)
		}
		return (s.Packets - s.LostPackets) / s.Seconds / 1e3, nil
	}
	return rep.End.SumReceived.BitsPerSecond / 1e9, nil
}

// alternate measures every path reps times, cycling through the paths in
// each repetition so that slow drifts of a shared VM (other tenants,
// thermal, page cache) hit every path alike, and returns each path's
// median.
func alternate(paths []string, reps int, measure func(path string) (float64, error)) (map[string]float64, error) {
	samples := map[string][]float64{}
	for range reps {
		for _, p := range paths {
			v, err := measure(p)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			samples[p] = append(samples[p], v)
		}
	}
	med := map[string]float64{}
	for p, s := range samples {
		med[p] = median(s)
	}
	return med, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile is the nearest-rank percentile (0 < p <= 100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// workloadAddr is a workload's IPv4 address, failing tb if it has none.
func workloadAddr(tb testing.TB, r *Run, name string) netip.Addr {
	tb.Helper()
	a, err := r.Addr(name)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// needTools fails early, with the fix, when a benchmark's tools are absent.
func needTools(tb testing.TB, tools ...string) {
	tb.Helper()
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			tb.Fatalf("%s not found: run hack/deps.sh", t)
		}
	}
}

// logTimes returns the times of a process log's JSON lines whose msg is
// msg, in file order (a process logs in time order).
func logTimes(path, msg string) ([]time.Time, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []time.Time
	for line := range strings.Lines(string(b)) {
		var e struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == msg {
			out = append(out, e.Time)
		}
	}
	return out, nil
}

// firstAt returns how long after t the first of times (sorted) at or
// after t came, and false if none did.
func firstAt(times []time.Time, t time.Time) (time.Duration, bool) {
	i, _ := slices.BinarySearchFunc(times, t, time.Time.Compare)
	if i == len(times) {
		return 0, false
	}
	return times[i].Sub(t), true
}
