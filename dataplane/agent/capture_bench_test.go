package agent

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// iperf3 runs one TCP stream from web-1 to db-1:80 (the port db-1's
// security group admits) for secs seconds and returns Gbit/s received.
func (n *captureNode) iperf3(b *testing.B, secs string) float64 {
	b.Helper()
	out, err := exec.Command("nsenter", "--net="+n.nsWeb, "iperf3", "-c", "10.0.2.20", "-p", "80", "-t", secs, "-J").Output()
	if err != nil {
		b.Fatalf("iperf3 client: %v\n%s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		b.Fatalf("iperf3 result %v: %s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond / 1e9
}

// BenchmarkCaptureIperf3: what a running capture costs the port's traffic.
// One TCP stream through the real data path (web-1 -> db-1, two tcx
// programs, bpf_redirect_peer), without a capture (the baseline, in the same
// run), with a capture on web-1 whose filter matches nothing (the kernel runs
// the filter on every frame), and with one that takes every frame's first
// 96 bytes to the CLI (pcap on a discarded stdout).
func BenchmarkCaptureIperf3(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 is needed (hack/deps.sh installs it): %v", err)
	}
	inPrivateNetns(b, func(dp *datapath.Datapath) {
		n := newCaptureNode(b, dp)
		defer n.close()
		srv := exec.Command("nsenter", "--net="+n.nsDB, "iperf3", "-s", "-p", "80")
		srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // not left behind if the benchmark dies
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { srv.Process.Signal(syscall.SIGKILL); srv.Wait() })
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			out, _ := exec.Command("nsenter", "--net="+n.nsDB, "ss", "-Hltn", "sport = :80").Output()
			if strings.TrimSpace(string(out)) != "" {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("iperf3 server does not listen")
			}
		}
		const secs = "3"
		withCapture := func(args ...string) float64 {
			ctx, cancel := context.WithCancel(context.Background())
			run := n.start(b, ctx, append([]string{"capture", "--port", capWeb, "-w", "-"}, args...)...)
			g := n.iperf3(b, secs)
			cancel()
			run.wait(b)
			return g
		}
		var off, none, all float64
		b.ResetTimer()
		for range b.N {
			off += n.iperf3(b, secs)
			none += withCapture("udp", "port", "9")
			all += withCapture("-s", "96")
		}
		k := float64(b.N)
		b.ReportMetric(off/k, "Gbit/s-off")
		b.ReportMetric(none/k, "Gbit/s-nomatch")
		b.ReportMetric(all/k, "Gbit/s-all")
		b.ReportMetric(none/off, "nomatch/off")
		b.ReportMetric(all/off, "all/off")
	})
}
