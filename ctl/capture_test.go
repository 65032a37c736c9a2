package ctl

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket/pcapgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// TestParseBPF: tcpdump's -ddd output, and what is not.
func TestParseBPF(t *testing.T) {
	prog, err := parseBPF("4\n40 0 0 12\n21 0 1 2048\n6 0 0 262144\n6 0 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(prog) != 4 || prog[1].Code != 21 || prog[1].Jf != 1 || prog[1].K != 2048 || prog[2].K != 262144 {
		t.Fatalf("program %v", prog)
	}
	for _, tc := range []struct{ in, want string }{
		{"", "is not an instruction count"},
		{"0\n", "0 instructions"},
		{"5000\n", "5000 instructions"},
		{"2\n6 0 0 0\n", "2 instructions announced, 1 lines follow"},
		{"1\n6 0 0\n", `is not "code jt jf k"`},
		{"1\n65536 0 0 0\n", "value out of range"},
		{"1\n6 256 0 0\n", "value out of range"},
		{"1\n6 0 0 4294967296\n", "value out of range"},
		{"1\n6 0 -1 0\n", "invalid syntax"},
	} {
		if _, err := parseBPF(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseBPF(%q): %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

// TestCompileFilter: tcpdump compiles for Ethernet with the snap length as
// the accept value; a bad expression is tcpdump's own message.
func TestCompileFilter(t *testing.T) {
	prog, err := compileFilter(context.Background(), "udp port 53", 200)
	if err != nil {
		t.Fatal(err)
	}
	last := prog[len(prog)-2] // ... ret #snaplen, ret #0
	if prog[0].Code != 0x28 || prog[0].K != 12 || last.Code != 6 || last.K != 200 {
		t.Fatalf("program %v: want ldh [12] first and ret #200", prog)
	}
	if _, err := compileFilter(context.Background(), "port 99999", 200); err == nil || !strings.Contains(err.Error(), `bad filter "port 99999"`) {
		t.Fatalf("bad port: %v", err)
	}
}

// FuzzParseBPF: whatever tcpdump (or anything in its place) prints, the
// parser returns a program of 1 to 4096 instructions whose fields fit
// struct sock_filter, or an error; it never panics.
func FuzzParseBPF(f *testing.F) {
	f.Add("4\n40 0 0 12\n21 0 1 2048\n6 0 0 262144\n6 0 0 0\n")
	f.Add("1\n6 0 0 0")
	f.Add("2\n\n6 0 0 0\n")
	f.Add("1\n 6\t0 0 0 \n")
	f.Fuzz(func(t *testing.T, s string) {
		prog, err := parseBPF(s)
		if err != nil {
			return
		}
		if len(prog) < 1 || len(prog) > captureMaxFilterInsns {
			t.Fatalf("%d instructions from %q", len(prog), s)
		}
		for _, in := range prog {
			if in.Code > 0xffff || in.Jt > 0xff || in.Jf > 0xff {
				t.Fatalf("instruction %v from %q", in, s)
			}
		}
	})
}

// TestPcapngSinkComments: the pcapng written for --drops reads back with
// pcapgo, packet by packet, lengths and bytes intact around the comments
// of every padding length (tshark reading the comments is in
// dataplane/agent's TestCaptureReplaysLikeLive).
func TestPcapngSinkComments(t *testing.T) {
	var buf bytes.Buffer
	sink, err := newPcapngSink(&buf, 128, "drops on node n1")
	if err != nil {
		t.Fatal(err)
	}
	var want []*agentv1.CapturedPacket
	for i := range 8 {
		p := &agentv1.CapturedPacket{TimestampUnixNano: time.Date(2026, 1, 1, 0, 0, 0, i, time.UTC).UnixNano(),
			Length: uint32(1000 + i), Data: bytes.Repeat([]byte{byte(i)}, 60+i), DropReason: strings.Repeat("r", i+1), DropRule: uint32(i)}
		want = append(want, p)
		if err := sink.packet(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.flush(); err != nil {
		t.Fatal(err)
	}
	r, err := pcapgo.NewNgReader(&buf, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if !bytes.Equal(data, w.Data) || ci.Length != int(w.Length) || ci.Timestamp.UnixNano() != w.TimestampUnixNano {
			t.Fatalf("packet %d: %d bytes of %d at %v, want %d of %d at %v", i, len(data), ci.Length, ci.Timestamp,
				len(w.Data), w.Length, time.Unix(0, w.TimestampUnixNano))
		}
	}
	if _, _, err := r.ReadPacketData(); err == nil {
		t.Fatal("a packet after the last")
	}
	if got := dropComment(&agentv1.CapturedPacket{DropReason: "acl-egress", DropRule: 70, DropRuleNumber: 100, DropPort: 1, DropDirection: "egress"}); got != "drop reason=acl-egress rule=70 (#100) port=1 direction=egress" {
		t.Fatal(got)
	}
	// A drop that is not by policy has no rule to name.
	if got := dropComment(&agentv1.CapturedPacket{DropReason: "spoofed-ip", DropPort: 1, DropDirection: "egress"}); got != "drop reason=spoofed-ip port=1 direction=egress" {
		t.Fatal(got)
	}
}

// notHereAgent is an agent's local API on which no port is attached.
type notHereAgent struct {
	agentv1.UnimplementedLocalAgentServiceServer
}

func (notHereAgent) Capture(r *agentv1.CaptureRequest, _ agentv1.LocalAgentService_CaptureServer) error {
	return status.Errorf(codes.NotFound, "port %s is not attached on node node-1", r.Port)
}

// TestCaptureNamesThePortsNode: a port the local agent does not have is
// looked up through the API, and the error says which node it is on.
func TestCaptureNamesThePortsNode(t *testing.T) {
	grpcAddr, _ := startController(t)
	sdir, err := os.MkdirTemp("", "mcapctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sdir) })
	socket := filepath.Join(sdir, "agent.sock")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	agentv1.RegisterLocalAgentServiceServer(g, notHereAgent{})
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := func(args ...string) error {
		full := append([]string{"--config=", "--endpoint", grpcAddr, "--token", "demo-admin-token"}, args...)
		return Run(ctx, full, Streams{In: strings.NewReader(""), Out: io.Discard, Err: io.Discard}, func(string) string { return "" })
	}
	if err := run("apply", "-f", "../examples/topology.yaml"); err != nil {
		t.Fatal(err)
	}
	err = run("capture", "--port", "projects/demo/ports/web-2", "--agent-socket", socket)
	if err == nil || !strings.Contains(err.Error(), "not attached on node node-1: the port is on nodes/node-2: run meridianctl capture there") {
		t.Fatalf("capture of another node's port: %v", err)
	}
	t.Logf("error: %v", err)
	err = run("capture", "--port", "projects/demo/ports/nope", "--agent-socket", socket)
	if err == nil || !strings.Contains(err.Error(), "does not know it either") {
		t.Fatalf("capture of an unknown port: %v", err)
	}
}
