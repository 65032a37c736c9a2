package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// ---- Meridian vs nftables at 10, 1,000 and 10,000 rules, packets/s ----

// BenchmarkRulesetThroughput's small-UDP figure is bounded by iperf3's
// one-syscall-per-datagram sender (≈25 kpps here whatever the path), so it
// cannot show how much faster Meridian's data path is than a long nftables
// chain. This benchmark drives the same two paths with trafgen, which
// writes frames through a packet mmap ring (no socket, no per-datagram
// syscall), and counts what the server side receives.

// ppsIfName is the client's and the server's interface in both pairs:
// nftPair names its veth ends eth0, and Meridian's workloads get
// plumbing.DefaultWorkloadIfName.
const ppsIfName = plumbing.DefaultWorkloadIfName

// ppsSrcPort is the UDP source port of the generated frames; only the
// destination port (iperfPort) and the source address matter to the rules.
const ppsSrcPort = 40000

// udpFrame returns a 60-byte Ethernet frame (64 on the wire with the FCS)
// carrying a UDP datagram from src to dst:iperfPort with 18 zero bytes of
// payload and valid IPv4 and UDP checksums, so the server's stack counts it
// as a good datagram rather than a checksum error.
func udpFrame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr) []byte {
	const payload = 18
	f := make([]byte, 14+20+8+payload)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+payload))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = 17
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], inetChecksum(ip))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], ppsSrcPort)
	binary.BigEndian.PutUint16(udp[2:], iperfPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+payload))
	// The UDP checksum covers a pseudo-header (addresses, zero, protocol,
	// UDP length) before the datagram; inetChecksum (probe.go) sums a slice.
	sum := append(append(append(append([]byte{}, s4[:]...), d4[:]...), 0, 17, 0, byte(8+payload)), udp...)
	c := inetChecksum(sum)
	if c == 0 {
		c = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return f
}

// trafgenConf renders frame as a trafgen packet configuration: one packet,
// its bytes in hex.
func trafgenConf(frame []byte) string {
	hex := make([]string, len(frame))
	for i, c := range frame {
		hex[i] = fmt.Sprintf("0x%02x", c)
	}
	return "{ " + strings.Join(hex, ", ") + " }\n"
}

// linkStats is the part of `ip -s -j link show` the benchmark reads.
type linkStats struct {
	Address string `json:"address"`
	Stats64 struct {
		RX struct {
			Packets uint64 `json:"packets"`
		} `json:"rx"`
		TX struct {
			Packets uint64 `json:"packets"`
		} `json:"tx"`
	} `json:"stats64"`
}

// readLink reads an interface's MAC address and packet counters in ns.
func readLink(ctx context.Context, ns, ifName string) (linkStats, error) {
	out, err := Exec(ctx, ns, "ip", "-s", "-j", "link", "show", "dev", ifName)
	if err != nil {
		return linkStats{}, err
	}
	var ls []linkStats
	if err := json.Unmarshal([]byte(out), &ls); err != nil || len(ls) != 1 {
		return linkStats{}, fmt.Errorf("ip link show %s in %s: %v: %s", ifName, ns, err, out)
	}
	return ls[0], nil
}

// neighborMAC returns the link-layer address ns resolved for dst on ifName:
// the destination MAC that the kernel itself would put on a frame to dst
// (the server's MAC on the plain veth, whatever Meridian answers ARP with
// on its path).
func neighborMAC(ctx context.Context, ns, ifName string, dst netip.Addr) (net.HardwareAddr, error) {
	out, err := Exec(ctx, ns, "ip", "-j", "neigh", "show", dst.String(), "dev", ifName)
	if err != nil {
		return nil, err
	}
	var entries []struct {
		LLAddr string `json:"lladdr"`
	}
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) == 0 || entries[0].LLAddr == "" {
		return nil, fmt.Errorf("no neighbor entry for %s on %s in %s: %v: %s", dst, ifName, ns, err, out)
	}
	return net.ParseMAC(entries[0].LLAddr)
}

// udpDelivered returns how many UDP datagrams have reached the UDP layer
// of ns intact: InDatagrams (to a socket) + NoPorts (no socket), from
// /proc/net/snmp, which shows the reading process's namespace. Both paths
// under test end in the server's stack — past the nftables input hook on
// the plain veth, past Meridian's tc redirect on its path — so this one
// counter is "delivered" for both, and no socket sits in the hot path to
// overflow and drop. InErrors is left out: with no socket it counts only
// checksum failures, which would mean the generated frame is wrong.
func udpDelivered(ctx context.Context, ns string) (uint64, error) {
	out, err := Exec(ctx, ns, "cat", "/proc/net/snmp")
	if err != nil {
		return 0, err
	}
	var head []string
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		var sum uint64
		for i, name := range head {
			if i < len(f) && (name == "InDatagrams" || name == "NoPorts") {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					return 0, fmt.Errorf("/proc/net/snmp in %s: %s=%q: %w", ns, name, f[i], err)
				}
				sum += v
			}
		}
		return sum, nil
	}
	return 0, fmt.Errorf("/proc/net/snmp in %s: no Udp lines", ns)
}

// ppsSample is one trafgen run: what the client's interface sent and what
// the server's UDP layer received per second over the measured window.
type ppsSample struct {
	sentKpps, deliveredKpps float64
}

// ppsCap bounds every trafgen run by count (-n) as well as by the time the
// benchmark lets it run, so a run the cleanup somehow missed still ends by
// itself (50 M frames: under a minute at this machine's veth rates).
const ppsCap = 50_000_000

// trafgenRun sends conf from ifName in p.client with one trafgen process
// for warm+window, and returns the rates measured over window after a
// warm-up (the ring filling, the flow's first packets through conntrack).
// trafgen is stopped by its own process group (it may fork per CPU) when
// the run ends, and by tb's cleanup if the benchmark fails first.
func trafgenRun(tb testing.TB, p rulesPair, conf string, warm, window time.Duration) (ppsSample, error) {
	ctx := tb.Context()
	// --cpus 1: one sender, like iperf3's one client, leaving the other
	// vCPU to the receive side and the rest of the machine. --no-sock-mem
	// and --notouch-irq: trafgen otherwise tunes global socket memory
	// sysctls and NIC IRQ affinity, which are not this test's to change.
	cmd := Command(context.Background(), p.client, "trafgen", "--dev", ppsIfName, "--conf", conf,
		"--num", strconv.Itoa(ppsCap), "--cpus", "1", "--no-sock-mem", "--notouch-irq", "--no-cpu-stats")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Own process group, so one kill reaches any child trafgen forks;
	// Pdeathsig, so it dies with the test binary even if no cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return ppsSample{}, fmt.Errorf("start trafgen in %s: %w", p.client, err)
	}
	// nsenter execs trafgen in place, so this PID (and group) is trafgen's.
	pgid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	tb.Cleanup(stop)
	defer stop()

	type point struct {
		at              time.Time
		sent, delivered uint64
	}
	read := func() (point, error) {
		ls, err := readLink(ctx, p.client, ppsIfName)
		if err != nil {
			return point{}, err
		}
		d, err := udpDelivered(ctx, p.server)
		return point{at: time.Now(), sent: ls.Stats64.TX.Packets, delivered: d}, err
	}
	select {
	case err := <-done:
		stopped = true
		return ppsSample{}, fmt.Errorf("trafgen in %s exited during warm-up: %v\n%s", p.client, err, out.String())
	case <-time.After(warm):
	}
	p0, err := read()
	if err != nil {
		return ppsSample{}, err
	}
	select {
	case err := <-done:
		stopped = true
		return ppsSample{}, fmt.Errorf("trafgen in %s exited before the window ended: %v\n%s", p.client, err, out.String())
	case <-time.After(window):
	}
	p1, err := read()
	if err != nil {
		return ppsSample{}, err
	}
	secs := p1.at.Sub(p0.at).Seconds()
	s := ppsSample{
		sentKpps:      float64(p1.sent-p0.sent) / secs / 1e3,
		deliveredKpps: float64(p1.delivered-p0.delivered) / secs / 1e3,
	}
	// Nothing delivered means the frame or the path is wrong (a wrong MAC,
	// a rule that drops it), not a rate: a zero would make the ratio
	// meaningless, so fail instead.
	if s.deliveredKpps == 0 {
		return s, fmt.Errorf("%s sent %.1f kpps, %s received none\n%s", p.client, s.sentKpps, p.server, out.String())
	}
	return s, nil
}

// BenchmarkRulesetPacketRate puts the rulesets of BenchmarkRulesetThroughput
// (10, 1,000 and 10,000 rules that never match, then the allow for the
// client's UDP to iperfPort) on the same two paths — an nftables input chain
// on a plain veth, and Meridian's data path programmed directly — and sends
// 64-byte UDP frames that match the final allow with trafgen from the client
// namespace, as fast as one sender can. It reports what reaches the server's
// UDP layer, in thousands of packets per second: the median of 5 windows of
// 2 s per path, alternating between the paths; and Meridian's ratio over
// nftables at each size (target at 10,000 rules: >= 5).
func BenchmarkRulesetPacketRate(b *testing.B) {
	needTools(b, "trafgen", "nft", "ip")
	r := Setup(b, Topology{Nodes: []Node{{Name: "node-1"}}}, Options{BinDir: testBins, Until: StageFabric})
	pairs := map[string]rulesPair{"meridian": meridianPair(b, r), "nftables": nftPair(b, r)}
	paths := []string{"meridian", "nftables"}
	confs := map[string]string{} // trafgen configuration per path, once its neighbor is resolved
	const reps = 5
	const warm, window = 500 * time.Millisecond, 2 * time.Second
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			rules := benchRuleset(n)
			for _, p := range paths {
				start := time.Now()
				if err := pairs[p].install(rules); err != nil {
					b.Fatalf("install %d rules on %s: %v", n, p, err)
				}
				b.Logf("%s: %d rules installed in %v", p, n, time.Since(start).Round(time.Millisecond))
				// Also resolves the server's address on the client (ARP),
				// which the frames' destination MAC is read from.
				assertFiltered(b, pairs[p].client, netip.AddrPortFrom(rulesServer, iperfPort+1))
				if confs[p] == "" {
					confs[p] = writeTrafgenConf(b, r, p, pairs[p])
				}
			}
			sent := map[string][]float64{}
			res, err := alternate(paths, reps, func(p string) (float64, error) {
				s, err := trafgenRun(b, pairs[p], confs[p], warm, window)
				sent[p] = append(sent[p], s.sentKpps)
				return s.deliveredKpps, err
			})
			if err != nil {
				b.Fatal(err)
			}
			for _, p := range paths {
				b.ReportMetric(res[p], p+"-kpps")
				b.Logf("%d rules, %s: delivered %.1f kpps (median), client sent %.1f kpps (median)",
					n, p, res[p], median(sent[p]))
			}
			ratio := res["meridian"] / res["nftables"]
			b.ReportMetric(ratio, "meridian/nftables")
			b.Logf("%d rules: meridian/nftables %.2f (target at 10,000 rules >= 5)", n, ratio)
		})
	}
}

// writeTrafgenConf writes the frame for path p into the run directory: from
// the client's MAC and address to the MAC the client resolved for the
// server, UDP to iperfPort, which the final allow of every ruleset admits.
func writeTrafgenConf(b *testing.B, r *Run, path string, p rulesPair) string {
	b.Helper()
	ls, err := readLink(b.Context(), p.client, ppsIfName)
	if err != nil {
		b.Fatal(err)
	}
	src, err := net.ParseMAC(ls.Address)
	if err != nil {
		b.Fatalf("client MAC %q: %v", ls.Address, err)
	}
	dst, err := neighborMAC(b.Context(), p.client, ppsIfName, rulesServer)
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(r.RunDir(), "trafgen-"+path+".cfg")
	if err := os.WriteFile(file, []byte(trafgenConf(udpFrame(dst, src, rulesClient, rulesServer))), 0o600); err != nil {
		b.Fatal(err)
	}
	b.Logf("%s: frames %s -> %s", path, src, dst)
	return file
}
