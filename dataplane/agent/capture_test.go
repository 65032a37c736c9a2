package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/ctl"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// captureNode is an agent on a private node namespace whose two ports are
// plumbed by the agent's own plumbing into workload namespaces of their
// own and programmed by a reconcile: web-1 (id 1, 10.0.1.10, subnet 1,
// whose network ACL denies TCP 23 out) and db-1 (id 2, 10.0.2.20, subnet 2,
// security group admitting TCP 80 only). The agent's local API is served
// on a socket; its drop events are read as in Run.
type captureNode struct {
	a      *Agent
	socket string
	nsWeb  string // workload namespace paths
	nsDB   string
	node   netns.NsHandle
	stops  []func()
}

const (
	capWeb = "projects/cap/ports/web-1"
	capDB  = "projects/cap/ports/db-1"
)

func newCaptureNode(t testing.TB, dp *datapath.Datapath) *captureNode {
	t.Helper()
	node, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	n := &captureNode{node: node}
	world := metricsWorld()
	world["port/1"].GetPort().Name = capWeb
	world["port/2"].GetPort().Name = capDB
	a := &Agent{
		cfg: Config{Node: "n1", StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp,
		plumb: netlinkPlumber{}, desired: map[string]*agentv1.Object{}, changed: make(chan struct{}, 1), errs: map[string]string{},
		attach: map[string]*attachment{}, applied: newApplied(),
	}
	n.a = a
	for _, w := range []struct {
		port, mac, addr, gw string
		id                  uint32
		path                *string
	}{
		{capWeb, "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1", 1, &n.nsWeb},
		{capDB, "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1", 2, &n.nsDB},
	} {
		// An unnamed namespace, known by the path of the test's own open
		// descriptor: it goes with the process even if the test dies.
		ns, err := netns.New() // enters it
		if err != nil {
			t.Fatalf("create workload namespace: %v", err)
		}
		t.Cleanup(func() { ns.Close() })
		if err := netns.Set(node); err != nil {
			t.Fatalf("back to the node namespace: %v", err)
		}
		*w.path = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))
		mac, _ := net.ParseMAC(w.mac)
		spec := WorkloadSpec{HostName: hostIfName(w.id), NetnsPath: *w.path, IfName: "eth0", MAC: mac,
			Addrs: []netip.Prefix{netip.MustParsePrefix(w.addr)}, Gateway: netip.MustParseAddr(w.gw), MTU: 1500}
		if err := a.plumb.EnsureWorkload(spec); err != nil {
			t.Fatalf("plumb %s: %v", w.port, err)
		}
		a.attach[w.port] = &attachment{Port: w.port, PortID: w.id, NetnsPath: *w.path, IfName: "eth0", HostIf: hostIfName(w.id)}
	}
	var ups []*agentv1.Object
	for _, o := range world {
		ups = append(ups, o)
	}
	a.applyResponse(&agentv1.SyncResponse{Snapshot: true, Version: 1, Upserts: ups})
	a.reconcileOnce()
	if len(a.errs) != 0 {
		t.Fatalf("reconcile errors: %v", a.errs)
	}
	for _, at := range a.attach {
		if !at.Ready {
			t.Fatalf("port %s not ready: %s", at.Port, at.Error)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.watchDrops(ctx) }()
	n.stops = append(n.stops, func() { cancel(); wg.Wait() })

	sdir, err := os.MkdirTemp("", "mcap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sdir) })
	n.socket = filepath.Join(sdir, "agent.sock")
	lis, err := net.Listen("unix", n.socket)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	agentv1.RegisterLocalAgentServiceServer(g, &localServer{a: a})
	done := make(chan struct{})
	go func() { defer close(done); g.Serve(lis) }()
	n.stops = append(n.stops, func() { g.Stop(); <-done })
	return n
}

// close stops the agent's server and drop reader; the tests defer it inside
// inPrivateNetns, so both end before the data path closes.
func (n *captureNode) close() {
	for i := len(n.stops) - 1; i >= 0; i-- {
		n.stops[i]()
	}
	n.stops = nil
}

// in runs fn on this (locked) thread inside the namespace at path.
func (n *captureNode) in(t testing.TB, path string, fn func()) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(n.node); err != nil {
			t.Fatalf("back to the node namespace: %v", err)
		}
	}()
	fn()
}

// readySignal is a writer (a CLI's stderr) that closes ready once what was
// written contains mark: the CLI says its capture or trace runs.
type readySignal struct {
	mark  string
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{}
	once  sync.Once
}

func newReadySignal(mark string) *readySignal {
	return &readySignal{mark: mark, ready: make(chan struct{})}
}

func (r *readySignal) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf.Write(p)
	if strings.Contains(r.buf.String(), r.mark) {
		r.once.Do(func() { close(r.ready) })
	}
	return len(p), nil
}

func (r *readySignal) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

type ctlRun struct {
	out  bytes.Buffer
	err  *readySignal
	done chan error
}

// start runs meridianctl in the background and waits until its capture runs.
func (n *captureNode) start(t testing.TB, ctx context.Context, args ...string) *ctlRun {
	t.Helper()
	r := &ctlRun{err: newReadySignal("capturing on"), done: make(chan error, 1)}
	args = append(args, "--agent-socket", n.socket, "--config", "")
	go func() {
		r.done <- ctl.Run(ctx, args, ctl.Streams{In: strings.NewReader(""), Out: &r.out, Err: r.err}, func(string) string { return "" })
	}()
	select {
	case <-r.ready():
	case err := <-r.done:
		t.Fatalf("meridianctl %v ended before capturing: %v\n%s", args, err, r.err)
	case <-time.After(10 * time.Second):
		t.Fatalf("meridianctl %v: no capture after 10 s\n%s", args, r.err)
	}
	return r
}

func (r *ctlRun) ready() chan struct{} { return r.err.ready }

func (r *ctlRun) wait(t testing.TB) string {
	t.Helper()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("meridianctl: %v\n%s", err, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("meridianctl did not end")
	}
	return r.out.String()
}

// traffic sends, from web-1: a TCP connection to db-1:80 that carries
// "hello" (allowed), SYNs to db-1:22 (db-1's security group drops them)
// and to db-1:23 (web-1's subnet ACL drops them), and a UDP datagram to
// db-1:53 (dropped by db-1's group). db-1 listens on 80 and 22.
func (n *captureNode) traffic(t *testing.T) {
	t.Helper()
	var l80, l22 net.Listener
	n.in(t, n.nsDB, func() {
		var err error
		if l80, err = net.Listen("tcp4", "10.0.2.20:80"); err != nil {
			t.Fatal(err)
		}
		if l22, err = net.Listen("tcp4", "10.0.2.20:22"); err != nil {
			t.Fatal(err)
		}
	})
	defer l80.Close()
	defer l22.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l80.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	type result struct {
		port string
		err  error
	}
	results := make(chan result, 3)
	n.in(t, n.nsWeb, func() {
		// Dialled on this thread: the sockets are made in web-1's namespace.
		for _, port := range []string{"80", "22", "23"} {
			// Long enough for a loaded machine to connect; short enough
			// that a dropped SYN is not sent again (after 1 s).
			timeout := 700 * time.Millisecond
			if port == "80" {
				timeout = 5 * time.Second
			}
			c, err := net.DialTimeout("tcp4", "10.0.2.20:"+port, timeout)
			if err == nil {
				_, err = c.Write([]byte("hello"))
				c.Close()
			}
			results <- result{port, err}
		}
		u, err := net.Dial("udp4", "10.0.2.20:53")
		if err != nil {
			t.Fatal(err)
		}
		u.Write([]byte("query"))
		u.Close()
	})
	for range 3 {
		r := <-results
		if (r.port == "80") != (r.err == nil) {
			t.Fatalf("connection to db-1:%s: %v; want only port 80 to connect", r.port, r.err)
		}
	}
	if s := <-got; s != "hello" {
		t.Fatalf("db-1:80 received %q", s)
	}
}

// badTraffic sends from web-1 what the data path drops for reasons of its
// own, not by policy: a UDP datagram to db-1:9999 with a spoofed source
// (10.0.1.99, written raw on web-1's eth0) and one to 192.0.2.1:9, an
// address outside every route of the VPC with no gateway (no-route).
func (n *captureNode) badTraffic(t *testing.T) {
	t.Helper()
	n.in(t, n.nsWeb, func() {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
			SrcIP: net.IPv4(10, 0, 1, 99).To4(), DstIP: net.IPv4(10, 0, 2, 20).To4()}
		udp := &layers.UDP{SrcPort: 5555, DstPort: 9999}
		if err := udp.SetNetworkLayerForChecksum(ip4); err != nil {
			t.Fatal(err)
		}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: ifc.HardwareAddr, DstMAC: RouterMAC, EthernetType: layers.EthernetTypeIPv4}, ip4, udp,
			gopacket.Payload("spoofed")); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Sendto(fd, buf.Bytes(), 0, &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}); err != nil {
			t.Fatalf("send the spoofed frame: %v", err)
		}
		u, err := net.Dial("udp4", "192.0.2.1:9")
		if err != nil {
			t.Fatal(err)
		}
		u.Write([]byte("nowhere"))
		u.Close()
	})
}

// tsharkFields reads a capture with tshark, one []string of fields per packet.
func tsharkFields(t *testing.T, path string, fields ...string) [][]string {
	t.Helper()
	args := []string{"-r", path, "-T", "fields", "-E", "separator=|"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	cmd := exec.Command("tshark", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %v: %v\n%s (hack/deps.sh installs tshark)", args, err, stderr.String())
	}
	var rows [][]string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			rows = append(rows, strings.Split(l, "|"))
		}
	}
	return rows
}

// flowKey names a TCP/UDP frame independently of what routing changed (MACs, TTL).
func flowKey(frame []byte) string {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	ip4, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip4 == nil {
		return ""
	}
	switch l4 := p.TransportLayer().(type) {
	case *layers.TCP:
		return fmt.Sprintf("tcp %v:%d>%v:%d seq %d ack %d syn %v fin %v", ip4.SrcIP, l4.SrcPort, ip4.DstIP, l4.DstPort, l4.Seq, l4.Ack, l4.SYN, l4.FIN)
	case *layers.UDP:
		return fmt.Sprintf("udp %v:%d>%v:%d", ip4.SrcIP, l4.SrcPort, ip4.DstIP, l4.DstPort)
	}
	return ""
}

func readFrames(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var src interface {
		ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	}
	if strings.HasSuffix(path, ".pcapng") {
		src, err = pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	} else {
		src, err = pcapgo.NewReader(f)
	}
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var frames [][]byte
	for {
		data, _, err := src.ReadPacketData()
		if err == io.EOF {
			return frames
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		frames = append(frames, data)
	}
}

// TestCaptureReplaysLikeLive: while web-1 talks to db-1, meridianctl
// captures web-1's outgoing TCP (pcap), what db-1 receives, and the
// node's drops (pcapng). tshark reads the captures back with the expected
// packets and none the filter excludes; replaying web-1's capture through
// meridianctl replay gives, frame by frame, what the live data path did:
// delivered to db-1 exactly when db-1's capture has the frame, dropped
// exactly when the drop capture has it, for the same reason.
func TestCaptureReplaysLikeLive(t *testing.T) {
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Fatalf("tshark is needed (hack/deps.sh installs it): %v", err)
	}
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		n := newCaptureNode(t, dp)
		defer n.close()
		dir := t.TempDir()
		webPcap, dbPcap, dropsPcap := filepath.Join(dir, "web.pcap"), filepath.Join(dir, "db.pcap"), filepath.Join(dir, "drops.pcapng")
		ctx := context.Background()
		const d = "--duration=6s" // the traffic takes about 1.5 s
		web := n.start(t, ctx, "capture", "--port", capWeb, "--direction", "from-port", "-w", webPcap, d, "tcp")
		db := n.start(t, ctx, "capture", "--port", "2", "--direction", "to-port", "-w", dbPcap, d)
		drops := n.start(t, ctx, "capture", "--drops", "-w", dropsPcap, d)
		if c, err := dp.DropCapture(); err != nil || c != 1 {
			t.Fatalf("during one drop capture the data path counts %d (%v), want 1", c, err)
		}
		n.traffic(t)
		n.badTraffic(t)
		for _, r := range []*ctlRun{web, db, drops} {
			r.wait(t)
			t.Logf("meridianctl: %s", r.err)
			if !strings.Contains(r.err.String(), "(ended by duration); 0 dropped by the agent") {
				t.Fatalf("summary: %s", r.err)
			}
		}

		// web-1's capture, as tshark reads it: only TCP, only from web-1;
		// the connection to 80 whole, SYNs to 22 and 23.
		rows := tsharkFields(t, webPcap, "ip.src", "ip.dst", "ip.proto", "tcp.dstport", "tcp.flags.syn", "tcp.flags.ack", "tcp.len")
		dports := map[string]int{}
		var data80 bool
		for _, r := range rows {
			if r[0] != "10.0.1.10" || r[1] != "10.0.2.20" || r[2] != "6" {
				t.Fatalf("web-1 capture has %v: want only TCP from 10.0.1.10 to 10.0.2.20", r)
			}
			if r[4] == "1" || r[4] == "True" {
				dports[r[3]]++
			}
			data80 = data80 || (r[3] == "80" && r[6] == "5")
		}
		t.Logf("web-1 capture: %d frames, SYNs by port %v", len(rows), dports)
		if dports["80"] != 1 || dports["22"] < 1 || dports["23"] < 1 || !data80 || len(rows) < 6 {
			t.Fatalf("web-1 capture: SYNs by port %v, hello to 80 seen %v, %d frames: want one SYN to 80, SYNs to 22 and 23, the data", dports, data80, len(rows))
		}

		// The drop capture: reason, rule, port and direction in the comments.
		comments := map[string]string{}
		dropRows := tsharkFields(t, dropsPcap, "frame.comment", "ip.proto", "tcp.dstport", "udp.dstport")
		for _, r := range dropRows {
			comments[r[1]+"/"+r[2]+r[3]] = r[0]
		}
		t.Logf("drop comments: %v", comments)
		for k, want := range map[string]string{
			"6/22":    "drop reason=sg-ingress rule=0 port=2 direction=ingress",
			"6/23":    "drop reason=acl-egress rule=70 (#100) port=1 direction=egress",
			"17/53":   "drop reason=sg-ingress rule=0 port=2 direction=ingress",
			"17/9999": "drop reason=spoofed-ip port=1 direction=egress", // not a policy drop: no rule
			"17/9":    "drop reason=no-route port=1 direction=egress",
		} {
			if comments[k] != want {
				t.Errorf("drop of %s: comment %q, want %q", k, comments[k], want)
			}
		}
		policy := 0
		for _, c := range comments {
			if strings.Contains(c, " rule=") {
				policy++
			}
		}
		if policy != 3 {
			t.Errorf("drops %v: want policy drops of only 22, 23 and 53", comments)
		}
		if c, err := dp.DropCapture(); err != nil || c != 0 {
			t.Fatalf("after the drop capture the data path counts %d (%v), want 0", c, err)
		}

		// With no drop capture, the same frames make no events: a
		// subscriber of the agent's drop reader sees nothing of them.
		sub := n.a.dropSubs.subscribe()
		n.badTraffic(t)
		time.Sleep(300 * time.Millisecond)
		n.a.dropSubs.unsubscribe(sub)
		close(sub.ch)
		for ev := range sub.ch {
			t.Errorf("no drop capture runs, yet an event: %v at port %d", ev.Reason, ev.Port)
		}

		// Replay web-1's capture: each frame's verdict is what happened live.
		out, err := n.meridianctl(t, "replay", webPcap, "--port", capWeb, "-o", "json")
		if err != nil {
			t.Fatalf("replay: %v\n%s", err, out)
		}
		var resp struct {
			Results []struct {
				Index          uint32
				Verdict        string
				DropReason     string
				OutPort        uint32
				RuleKnown      bool
				DropRule       uint32
				DropRuleNumber uint32
				DropAcl        string
				AllowKnown     bool
				AclEgressRule  uint32
				AclIngressRule uint32
			}
		}
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatal(err)
		}
		delivered := map[string]bool{}
		for _, f := range readFrames(t, dbPcap) {
			delivered[flowKey(f)] = true
		}
		dropped := map[string]string{}
		for i, f := range readFrames(t, dropsPcap) {
			dropped[flowKey(f)] = strings.Fields(dropRows[i][0])[1]
		}
		frames := readFrames(t, webPcap)
		if len(resp.Results) != len(frames) {
			t.Fatalf("%d results for %d frames", len(resp.Results), len(frames))
		}
		verdicts := map[string]int{}
		for i, r := range resp.Results {
			k := flowKey(frames[i])
			live := "lost"
			switch {
			case delivered[k]:
				live = "deliver"
			case dropped[k] != "":
				live = "drop " + strings.TrimPrefix(dropped[k], "reason=")
			}
			got := r.Verdict
			if r.Verdict == "drop" {
				got += " " + r.DropReason
			}
			if got != live {
				t.Errorf("frame %d (%s): replay %q, live %q", i+1, k, got, live)
			}
			// The deciding rule, as the drop capture named it.
			switch {
			case r.DropReason == "acl-egress" && (!r.RuleKnown || r.DropRule != 70 || r.DropRuleNumber != 100 || r.DropAcl != "acl 7"):
				t.Errorf("frame %d (%s): ACL drop by rule %d #%d of %q (known %v), want rule 70, #100 of acl 7", i+1, k, r.DropRule, r.DropRuleNumber, r.DropAcl, r.RuleKnown)
			case r.DropReason == "sg-ingress" && (!r.RuleKnown || r.DropRule != 0):
				t.Errorf("frame %d (%s): security-group drop by rule %d (known %v), want 0: no rule allows", i+1, k, r.DropRule, r.RuleKnown)
			case r.Verdict == "deliver" && (!r.AllowKnown || r.AclEgressRule != 71 || r.AclIngressRule != 0):
				// web-1's subnet ACL lets it out by rule 71 (#200); db-1's subnet has none
				t.Errorf("frame %d (%s): delivered, allowed by ACL rules %d out, %d in (known %v); want 71 out, none in", i+1, k, r.AclEgressRule, r.AclIngressRule, r.AllowKnown)
			}
			verdicts[got]++
		}
		t.Logf("replayed %d frames: %v", len(frames), verdicts)
		if verdicts["drop sg-ingress"] < 1 || verdicts["drop acl-egress"] < 1 || verdicts["deliver"] < 4 {
			t.Fatalf("verdicts %v: want deliveries and both kinds of drop", verdicts)
		}
		// As the CLI prints it.
		out, err = n.meridianctl(t, "replay", webPcap, "--port", capWeb)
		if err != nil {
			t.Fatalf("replay: %v\n%s", err, out)
		}
		for _, want := range []string{
			"  verdict: drop (acl-egress, port 1, rule #100 of acl 7)\n",
			"    egress network ACL: dropped (acl-egress, counted at port 1): rule #100 of network ACL acl 7 (rule id 70)\n",
			"  verdict: drop (sg-ingress, port 2, no security-group rule allows)\n",
			"    egress network ACL: passed: rule #200 of network ACL acl 7 (rule id 71)\n",
			"    ingress network ACL: passed: no network ACL\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("replay output lacks %q:\n%s", want, out)
			}
		}
	})
}

func (n *captureNode) meridianctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append(args, "--agent-socket", n.socket, "--config", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := ctl.Run(ctx, args, ctl.Streams{In: strings.NewReader(""), Out: &out, Err: &errb}, func(string) string { return "" })
	return out.String(), err
}

// TestCaptureLiveLinesAndCancel: without -w each frame is one decoded line;
// -s cuts frames but keeps their length; -c ends the capture; Ctrl-C (the
// context) ends one cleanly.
func TestCaptureLiveLinesAndCancel(t *testing.T) {
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		n := newCaptureNode(t, dp)
		defer n.close()
		// -s 42 keeps the UDP header (14 + 20 + 8 bytes); the length
		// printed is still the frame's own.
		run := n.start(t, context.Background(), "capture", "--port", capWeb, "--direction", "to-port", "-c", "3", "-s", "42", "udp", "port", "7000")
		n.in(t, n.nsDB, func() {
			u, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 0, 2, 20), Port: 5555}, &net.UDPAddr{IP: net.IPv4(10, 0, 1, 10), Port: 7000})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			for i := range 5 {
				u.Write([]byte(fmt.Sprintf("datagram %d", i)))
			}
		})
		out := run.wait(t)
		t.Logf("meridianctl capture:\n%s%s", out, run.err)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !strings.Contains(run.err.String(), "3 frames captured (ended by count)") {
			t.Fatalf("want 3 lines and the count's summary, got %q", out)
		}
		for _, l := range lines {
			if !strings.HasSuffix(l, " to-port 10.0.2.20:5555 -> 10.0.1.10:7000 UDP, length 52 (42 captured)") {
				t.Fatalf("line %q", l)
			}
		}

		ctx, cancel := context.WithCancel(context.Background())
		run = n.start(t, ctx, "capture", "--port", capWeb)
		cancel()
		select {
		case err := <-run.done:
			if err != nil {
				t.Fatalf("cancelled capture: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a cancelled capture did not end")
		}
		if !strings.Contains(run.err.String(), "frames captured; stopped") {
			t.Fatalf("cancelled capture said %q", run.err)
		}
	})
}

// TestCaptureBadInput: mistakes are refused with a clear error before any
// capture starts (no file is written, the agent opens nothing).
func TestCaptureBadInput(t *testing.T) {
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		n := newCaptureNode(t, dp)
		defer n.close()
		dir := t.TempDir()
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"unknown port name", []string{"--port", "projects/cap/ports/nope"}, "port projects/cap/ports/nope is not attached on node n1"},
			{"unknown port id", []string{"--port", "77"}, "port 77 is not attached on node n1"},
			{"no port", nil, "--port is required"},
			{"bad filter", []string{"--port", capWeb, "tcp", "port", "80", "and"}, `bad filter "tcp port 80 and": can't parse filter expression: syntax error`},
			{"unknown filter word", []string{"--port", capWeb, "tcpp"}, `bad filter "tcpp"`},
			{"bad direction", []string{"--port", capWeb, "--direction", "sideways"}, `--direction "sideways"`},
			{"zero snaplen", []string{"--port", capWeb, "-s", "0"}, "--snaplen 0"},
			{"drops of an unknown port", []string{"--drops", "--port", "projects/cap/ports/nope"}, "not in node n1's desired state"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".pcap")
				args := append([]string{"capture", "-w", path, "-c", "1"}, tc.args...)
				out, err := n.meridianctl(t, args...)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want one containing %q (output %q)", err, tc.want, out)
				}
				t.Logf("error: %v", err)
				if _, err := os.Stat(path); !os.IsNotExist(err) {
					t.Fatalf("%s was written", path)
				}
			})
		}
		// A socket where there is none says where it looked.
		err := ctl.Run(context.Background(), []string{"capture", "--port", capWeb, "--config", "", "--agent-socket", filepath.Join(dir, "none.sock")},
			ctl.Streams{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), "no agent socket at") {
			t.Fatalf("missing socket: %v", err)
		}
	})
}

// fastSource produces n frames of size bytes as fast as it can; spent is
// closed once it has produced them all.
type fastSource struct {
	n, size int
	sent    atomic.Int64
	spent   chan struct{}
	closed  chan struct{}
	once    sync.Once
}

func newFastSource(n, size int) *fastSource {
	return &fastSource{n: n, size: size, spent: make(chan struct{}), closed: make(chan struct{})}
}

func (s *fastSource) next() (*agentv1.CapturedPacket, error) {
	if s.sent.Load() == int64(s.n) {
		<-s.closed
		return nil, io.EOF
	}
	if s.sent.Add(1) == int64(s.n) {
		close(s.spent)
	}
	return &agentv1.CapturedPacket{Data: make([]byte, s.size), Length: uint32(s.size)}, nil
}

// kernelDrops: like a socket, 7 while open and nothing to say once closed.
func (s *fastSource) kernelDrops() uint64 {
	select {
	case <-s.closed:
		return 0
	default:
		return 7
	}
}
func (s *fastSource) close() { s.once.Do(func() { close(s.closed) }) }

// TestCaptureBoundedBuffer: a client that does not read makes the agent
// drop and count frames, never hold more than its queue's bound.
func TestCaptureBoundedBuffer(t *testing.T) {
	src := newFastSource(20000, 1500)
	release := make(chan struct{})
	var sent int
	send := func(m *agentv1.CaptureResponse) error {
		<-release // the client is stuck until the source is spent
		sent += len(m.Packets)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-src.spent
		close(release)
		// The unstuck client now takes what the queue held; a window for
		// it, since nothing announces an empty queue (the summary must
		// count those frames as sent, the rest as dropped).
		time.Sleep(200 * time.Millisecond)
		cancel()
	}()
	sum, err := runCapture(ctx, src, 0, send)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary %+v", sum)
	if sum.DroppedBuffer == 0 || sum.Packets+sum.DroppedBuffer != uint64(src.n) || int(sum.Packets) != sent || sum.DroppedKernel != 7 {
		t.Fatalf("summary %+v (sent %d): want drops, sent + dropped = %d, and the source's 7 kernel drops", sum, sent, src.n)
	}
	if max := captureQueueBytes/1500 + captureBatchFrames + 1; int(sum.Packets) > max {
		t.Fatalf("%d frames passed a stuck client: the queue holds at most %d", sum.Packets, max)
	}
}

// TestCaptureClientGone: a client that goes away while frames flow ends
// the capture with the error and a summary; the source is closed.
func TestCaptureClientGone(t *testing.T) {
	src := newFastSource(1000, 100)
	sum, err := runCapture(context.Background(), src, 0, func(*agentv1.CaptureResponse) error { return io.ErrClosedPipe })
	if !errors.Is(err, io.ErrClosedPipe) || sum == nil || !strings.HasPrefix(sum.EndedBy, "client gone") {
		t.Fatalf("summary %+v, error %v", sum, err)
	}
	select {
	case <-src.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the source was not closed")
	}
}
