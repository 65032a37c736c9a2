package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/ctl"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/fw"
)

// replayNode is a data path with two ports of VPC 100, subnet 1: A (id 1,
// projects/p/ports/a) and B (id 2), B admitting TCP 80 only; and an agent
// serving its local API on a socket of its own.
type replayNode struct {
	dp     *datapath.Datapath
	socket string
	macA   net.HardwareAddr
	macB   net.HardwareAddr
}

func newReplayNode(t *testing.T) *replayNode {
	t.Helper()
	dir := t.TempDir()
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a private bpffs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	dp, err := datapath.Open(filepath.Join(bpffs, "node"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Unpin(); dp.Close() })

	n := &replayNode{dp: dp, macA: net.HardwareAddr{2, 0, 0, 0, 0, 0xa}, macB: net.HardwareAddr{2, 0, 0, 0, 0, 0xb}}
	any4 := netip.MustParsePrefix("0.0.0.0/0")
	ports := []datapath.Port{
		{ID: 1, Ifindex: 11, MAC: n.macA, IPs: []netip.Addr{netip.MustParseAddr("10.0.1.10")}, VPC: 100, Subnet: 1, SGPolicy: 1},
		{ID: 2, Ifindex: 12, MAC: n.macB, IPs: []netip.Addr{netip.MustParseAddr("10.0.1.20")}, VPC: 100, Subnet: 1, SGPolicy: 2},
	}
	for _, p := range ports {
		if err := dp.UpsertPort(p); err != nil {
			t.Fatal(err)
		}
		if err := dp.UpsertRoute(datapath.Route{VPC: 100, Prefix: netip.PrefixFrom(p.IPs[0], 32), LocalPort: p.ID}); err != nil {
			t.Fatal(err)
		}
	}
	if err := dp.UpsertSubnet(datapath.Subnet{ID: 1, Gateway: netip.MustParseAddr("10.0.1.1"), RouterMAC: RouterMAC}); err != nil {
		t.Fatal(err)
	}
	c, err := fw.CompileSecurityGroups(100, []fw.SecurityGroupPolicy{
		{ID: 1, Rules: []fw.SGRule{{ID: 11, Direction: fw.Egress, RemoteCIDR: any4}, {ID: 12, Direction: fw.Ingress, RemoteCIDR: any4}}},
		{ID: 2, Rules: []fw.SGRule{{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteCIDR: any4},
			{ID: 22, Direction: fw.Egress, RemoteCIDR: any4}}},
	}, fw.GroupMembers{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.ApplySecurityGroups(c); err != nil {
		t.Fatal(err)
	}

	a := &Agent{cfg: Config{Node: "node-1"}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp,
		desired: map[string]*agentv1.Object{
			"port/1": {Key: "port/1", Body: &agentv1.Object_Port{Port: &agentv1.Port{Id: 1, Name: "projects/p/ports/a", VpcId: 100, SubnetId: 1}}},
		}}
	// The drop events read as in Run: replay names a policy drop's rule
	// from the event its test run sent.
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { defer close(watched); a.watchDrops(ctx) }()
	t.Cleanup(func() { cancel(); <-watched })
	// A short path: unix socket paths are limited to 108 bytes.
	sdir, err := os.MkdirTemp("", "mrpl")
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
	t.Cleanup(func() { g.Stop(); <-done })
	return n
}

func tcpFrame(t *testing.T, srcMAC net.HardwareAddr, src, dst string, sport, dport uint16, syn, ack bool) []byte {
	t.Helper()
	ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: syn, ACK: ack, Seq: 1, Window: 1000}
	if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: srcMAC, DstMAC: RouterMAC, EthernetType: layers.EthernetTypeIPv4}, ip4, tcp)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writePcap writes frames as a pcap file; captured[i] < len(frame) cuts a
// frame as a small snap length would.
func writePcap(t *testing.T, frames [][]byte, captured map[int]int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "capture.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for i, fr := range frames {
		data := fr
		if n, ok := captured[i]; ok {
			data = fr[:n]
		}
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, int64(i)), CaptureLength: len(data), Length: len(fr)}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func (n *replayNode) meridianctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append(args, "--agent-socket", n.socket, "--config", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := ctl.Run(ctx, args, ctl.Streams{In: strings.NewReader(""), Out: &out, Err: &errb}, func(string) string { return "" })
	return out.String(), err
}

// state is what a replay could change: drop counters and conntrack.
func (n *replayNode) state(t *testing.T) string {
	t.Helper()
	d, err := n.dp.Drops()
	if err != nil {
		t.Fatal(err)
	}
	ct, err := n.dp.ConntrackStats()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(struct {
		D  []datapath.DropCount
		CT datapath.ConntrackStats
	}{d, ct})
	return string(b)
}

// TestReplayCapture: a pcap written with pcapgo, replayed through
// meridianctl and the agent's local API, gets the data path's verdicts.
func TestReplayCapture(t *testing.T) {
	n := newReplayNode(t)
	pcap := writePcap(t, [][]byte{
		tcpFrame(t, n.macA, "10.0.1.10", "10.0.1.20", 40000, 80, true, false), // allowed SYN
		tcpFrame(t, n.macA, "10.0.1.10", "10.0.1.20", 40001, 22, true, false), // B's security group
		tcpFrame(t, n.macA, "10.0.1.99", "10.0.1.20", 40002, 80, true, false), // spoofed source
	}, nil)

	out, err := n.meridianctl(t, "replay", pcap, "--port", "projects/p/ports/a")
	if err != nil {
		t.Fatalf("meridianctl replay: %v\n%s", err, out)
	}
	t.Logf("meridianctl replay:\n%s", out)
	for _, want := range []string{
		"packet 1: 10.0.1.10:40000 -> 10.0.1.20:80 TCP SYN\n  verdict: deliver to port 2\n",
		"    egress security groups: passed: security-group rule 11\n", // the rules that allowed it
		"    ingress security groups: passed: security-group rule 21\n",
		"packet 2: 10.0.1.10:40001 -> 10.0.1.20:22 TCP SYN\n  verdict: drop (sg-ingress, port 2, no security-group rule allows)\n",
		"    ingress security groups: dropped (sg-ingress, counted at port 2): no security-group rule allows\n",
		"packet 3: 10.0.1.99:40002 -> 10.0.1.20:80 TCP SYN\n  verdict: drop (spoofed-ip, port 1)\n",
		"3 packets: 1 deliver, 2 drop\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// JSON, by numeric port id: the same verdicts, and the first SYN now
	// meets the conntrack entry its first replay created.
	out, err = n.meridianctl(t, "replay", pcap, "--port", "1", "-o", "json")
	if err != nil {
		t.Fatalf("meridianctl replay -o json: %v\n%s", err, out)
	}
	var resp struct {
		Results []struct {
			Index        uint32
			Verdict      string
			DropReason   string
			OutPort      uint32
			ConntrackHit bool
		}
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	if len(resp.Results) != 3 || resp.Results[0].Verdict != "deliver" || resp.Results[0].OutPort != 2 || !resp.Results[0].ConntrackHit ||
		resp.Results[1].DropReason != "sg-ingress" || resp.Results[2].Index != 2 || resp.Results[2].DropReason != "spoofed-ip" {
		t.Fatalf("results %+v", resp.Results)
	}
}

// TestReplayPcapngToPort: a pcapng capture (tshark's and Wireshark's
// default) of frames arriving for port B over VXLAN.
func TestReplayPcapngToPort(t *testing.T) {
	n := newReplayNode(t)
	path := filepath.Join(t.TempDir(), "in.pcapng")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := pcapgo.NewNgWriter(f, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	remoteMAC := net.HardwareAddr{2, 0x99, 0, 0, 0, 1}
	for _, fr := range [][]byte{
		tcpFrame(t, remoteMAC, "10.0.2.40", "10.0.1.20", 1234, 80, true, false),
		tcpFrame(t, remoteMAC, "10.0.2.40", "10.0.1.20", 1234, 23, true, false),
	} {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, 0), CaptureLength: len(fr), Length: len(fr)}, fr); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := n.meridianctl(t, "replay", path, "--port", "2", "--direction", "to-port")
	if err != nil {
		t.Fatalf("meridianctl replay: %v\n%s", err, out)
	}
	t.Logf("meridianctl replay --direction to-port:\n%s", out)
	for _, want := range []string{
		"packet 1: 10.0.2.40:1234 -> 10.0.1.20:80 TCP SYN\n  verdict: deliver to port 2\n    from the overlay: VNI 100",
		"packet 2: 10.0.2.40:1234 -> 10.0.1.20:23 TCP SYN\n  verdict: drop (sg-ingress, port 2, no security-group rule allows)\n",
		"    route: local port 2\n    ingress network ACL: passed\n    ingress security groups: dropped (sg-ingress, counted at port 2): no security-group rule allows\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestReplayBadInput: bad captures and unknown ports are refused with a
// clear error, and nothing in the data path moves.
func TestReplayBadInput(t *testing.T) {
	n := newReplayNode(t)
	syn := tcpFrame(t, n.macA, "10.0.1.10", "10.0.1.20", 40000, 22, true, false) // would be dropped: counted if it ran
	good := writePcap(t, [][]byte{syn}, nil)
	notPcap := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(notPcap, []byte("this is not a capture at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	snapped := writePcap(t, [][]byte{syn, syn}, map[int]int{1: 40})
	whole, err := os.ReadFile(writePcap(t, [][]byte{syn, syn}, nil))
	if err != nil {
		t.Fatal(err)
	}
	cutFile := filepath.Join(t.TempDir(), "cut.pcap")
	if err := os.WriteFile(cutFile, whole[:len(whole)-10], 0o600); err != nil {
		t.Fatal(err)
	}
	empty := writePcap(t, nil, nil)

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"not a pcap", []string{"replay", notPcap, "--port", "1"}, "is not a pcap or pcapng capture"},
		{"packet cut by snap length", []string{"replay", snapped, "--port", "1"}, "packet 2 is truncated (40 of"},
		{"file cut mid-packet", []string{"replay", cutFile, "--port", "1"}, "packet 2: unexpected EOF (file truncated or corrupt)"},
		{"empty capture", []string{"replay", empty, "--port", "1"}, "the capture has no packets"},
		{"unknown port id", []string{"replay", good, "--port", "77"}, "port 77 is not on node node-1"},
		{"unknown port name", []string{"replay", good, "--port", "projects/p/ports/nope"}, "not in node node-1's desired state"},
		{"bad direction", []string{"replay", good, "--port", "1", "--direction", "sideways"}, `--direction "sideways"`},
		{"missing file", []string{"replay", filepath.Join(t.TempDir(), "nope.pcap"), "--port", "1"}, "open capture"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := n.state(t)
			out, err := n.meridianctl(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q (output %q)", err, tc.want, out)
			}
			t.Logf("error: %v", err)
			if after := n.state(t); after != before {
				t.Fatalf("data path state changed:\n%s\n%s", before, after)
			}
		})
	}

	// A wrong socket says where it looked.
	err = ctl.Run(context.Background(), []string{"replay", good, "--port", "1", "--config", "", "--timeout", "2s",
		"--agent-socket", filepath.Join(t.TempDir(), "none.sock")}, ctl.Streams{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard},
		func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "no agent socket at") {
		t.Fatalf("missing socket: %v", err)
	}
}
