package ctl

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

const (
	captureDefaultSnaplen = 262144
	captureMaxFilterInsns = 4096
)

type captureFlags struct {
	port, socket, direction, write string
	count                          uint64
	duration                       time.Duration
	snaplen                        uint32
	drops                          bool
}

// captureCommand is `meridianctl capture`: the node's agent captures on a
// port's interface (or the data path's drops) and streams the frames here.
func (a *app) captureCommand() *cobra.Command {
	var f captureFlags
	cmd := &cobra.Command{
		Use:   "capture --port PORT [FILTER...] [-w FILE|-] [-c N] [--duration D] [--direction from-port|to-port|both] [--drops]",
		Short: "Capture a port's packets (or the packets the data path drops) as pcap, or print them live",
		Long: `capture asks the agent of the node the port is bound to (on its local socket,
so run it on that node) to capture the frames of a port and streams them here.
The filter is in tcpdump's syntax (the words after the flags); it is compiled
to classic BPF with tcpdump here and runs in the kernel on the agent's packet
socket, so frames it rejects are never copied.

The capture runs on the workload's own interface, so it sees what the
workload sends (--direction from-port, before the data path's policy) and
what it receives (to-port, after it); both by default.

-w FILE writes pcap (-w - to standard output, e.g. into tshark -r -); without
-w each frame is printed on one line. -c and --duration stop the capture; so
does Ctrl-C. The agent buffers a bounded amount: frames a slow reader could
not take are dropped and counted, and the counts are printed at the end.

--drops captures the frames the eBPF data path drops by policy (security
groups, network ACLs) at the port (or, without --port, on the whole node),
with the first 128 bytes of each frame; -w writes pcapng whose packet
comments carry the drop reason, the ACL rule, the port and the direction
(tshark -r FILE -T fields -e frame.comment).`,
		Example: `  meridianctl capture --port projects/p/ports/web-1 -c 20 tcp port 80
  meridianctl capture --port projects/p/ports/web-1 --direction to-port -w web.pcap 'udp or icmp'
  meridianctl capture --port 7 -w - | tshark -r -
  meridianctl capture --drops --port projects/p/ports/db-1 --duration 1m -w drops.pcapng`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.capture(cmd.Context(), f, strings.Join(args, " "))
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.port, "port", "", "port: projects/{project}/ports/{port} or its numeric id on the node (--drops: optional)")
	fl.StringVar(&f.socket, "agent-socket", DefaultAgentSocket, "unix socket of the node agent's local API")
	fl.StringVar(&f.direction, "direction", "both", "from-port (sent by the workload), to-port (received by it) or both")
	fl.StringVarP(&f.write, "write", "w", "", "write the frames to this file (- for standard output) instead of printing them: pcap, or pcapng with --drops")
	fl.Uint64VarP(&f.count, "count", "c", 0, "stop after this many frames (0: no limit)")
	fl.DurationVar(&f.duration, "duration", 0, "stop after this long (0: until Ctrl-C)")
	fl.Uint32VarP(&f.snaplen, "snaplen", "s", captureDefaultSnaplen, "bytes kept of each frame (replay needs whole frames)")
	fl.BoolVar(&f.drops, "drops", false, "capture the frames the data path drops, with the reason and rule")
	return cmd
}

func captureDirection(s string) (agentv1.CaptureRequest_Direction, error) {
	switch s {
	case "both", "":
		return agentv1.CaptureRequest_BOTH, nil
	case "from-port":
		return agentv1.CaptureRequest_FROM_PORT, nil
	case "to-port":
		return agentv1.CaptureRequest_TO_PORT, nil
	}
	return 0, fmt.Errorf("--direction %q: want from-port, to-port or both", s)
}

// captureRequest checks the flags and compiles the filter: every mistake is
// found here, before the agent starts anything.
func (a *app) captureRequest(ctx context.Context, f captureFlags, expr string) (*agentv1.CaptureRequest, error) {
	dir, err := captureDirection(f.direction)
	if err != nil {
		return nil, err
	}
	if f.port == "" && !f.drops {
		return nil, errors.New("--port is required: projects/{project}/ports/{port} or the port's numeric id")
	}
	if f.snaplen == 0 || f.snaplen > captureDefaultSnaplen {
		return nil, fmt.Errorf("--snaplen %d: want 1 to %d", f.snaplen, captureDefaultSnaplen)
	}
	if f.duration < 0 {
		return nil, fmt.Errorf("--duration %v: want a positive duration", f.duration)
	}
	req := &agentv1.CaptureRequest{Port: f.port, Direction: dir, FilterExpression: expr, Snaplen: f.snaplen,
		MaxPackets: f.count, DurationMs: uint32(f.duration.Milliseconds()), Drops: f.drops}
	if strings.TrimSpace(expr) != "" {
		req.Filter, err = compileFilter(ctx, expr, int(f.snaplen))
		if err != nil {
			return nil, err
		}
	}
	return req, nil
}

// compileFilter compiles a tcpdump filter expression for Ethernet frames
// with tcpdump itself (libpcap's compiler: the language users know, and no
// cgo here). It opens no interface.
func compileFilter(ctx context.Context, expr string, snaplen int) ([]*agentv1.BpfInstruction, error) {
	path, err := exec.LookPath("tcpdump")
	if err != nil {
		return nil, fmt.Errorf("filter %q: compiling a filter needs tcpdump (apt-get install tcpdump): %w", expr, err)
	}
	cmd := exec.CommandContext(ctx, path, "-ddd", "-s", strconv.Itoa(snaplen), "-y", "EN10MB", "--", expr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(stderr.String()), "tcpdump: "))
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("bad filter %q: %s", expr, msg)
	}
	prog, err := parseBPF(string(out))
	if err != nil {
		return nil, fmt.Errorf("filter %q: tcpdump's program: %w", expr, err)
	}
	return prog, nil
}

// parseBPF reads a classic BPF program as `tcpdump -ddd` prints it: the
// number of instructions, then one "code jt jf k" line each, in decimal.
func parseBPF(text string) ([]*agentv1.BpfInstruction, error) {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	n, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil {
		return nil, fmt.Errorf("first line %q is not an instruction count", lines[0])
	}
	if n < 1 || n > captureMaxFilterInsns {
		return nil, fmt.Errorf("%d instructions: want 1 to %d", n, captureMaxFilterInsns)
	}
	if len(lines)-1 != n {
		return nil, fmt.Errorf("%d instructions announced, %d lines follow", n, len(lines)-1)
	}
	prog := make([]*agentv1.BpfInstruction, 0, n)
	for i, l := range lines[1:] {
		fields := strings.Fields(l)
		if len(fields) != 4 {
			return nil, fmt.Errorf("instruction %d: %q is not \"code jt jf k\"", i, l)
		}
		var v [4]uint64
		for j, bits := range []int{16, 8, 8, 32} {
			v[j], err = strconv.ParseUint(fields[j], 10, bits)
			if err != nil {
				return nil, fmt.Errorf("instruction %d: %q: %w", i, l, err)
			}
		}
		prog = append(prog, &agentv1.BpfInstruction{Code: uint32(v[0]), Jt: uint32(v[1]), Jf: uint32(v[2]), K: uint32(v[3])})
	}
	return prog, nil
}

// captureSink is where captured frames go: a pcap or pcapng file, or lines.
type captureSink interface {
	packet(p *agentv1.CapturedPacket) error
	flush() error
}

func (a *app) capture(ctx context.Context, f captureFlags, expr string) error {
	req, err := a.captureRequest(ctx, f, expr)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+f.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("agent socket %s: %w", f.socket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := agentv1.NewLocalAgentServiceClient(conn).Capture(ctx, req)
	if err == nil {
		// The first message says the capture runs (or why it cannot):
		// nothing is written before it.
		var first *agentv1.CaptureResponse
		first, err = stream.Recv()
		if err == nil {
			return a.receiveCapture(ctx, f, req, first, stream)
		}
	}
	return a.captureError(ctx, f, err)
}

// captureError explains a refused capture; for a port on another node it
// asks the controller (if one is configured) where the port is.
func (a *app) captureError(ctx context.Context, f captureFlags, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("capture: %w", ctx.Err())
	}
	if _, serr := os.Stat(f.socket); serr != nil {
		return fmt.Errorf("capture: no agent socket at %s (run on the port's node, or set --agent-socket): %w", f.socket, err)
	}
	msg := fmt.Errorf("capture: %s: %w", status.Code(err), errors.New(status.Convert(err).Message()))
	if status.Code(err) != codes.NotFound || !strings.HasPrefix(f.port, "projects/") || a.cfg.Endpoint == "" {
		return msg
	}
	conn, cerr := a.client()
	if cerr != nil {
		return msg
	}
	// A short look-up: the answer only improves the message.
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	p, cerr := v1.NewNetworkServiceClient(conn).GetPort(lctx, &v1.GetPortRequest{Name: f.port})
	switch {
	case status.Code(cerr) == codes.NotFound:
		return fmt.Errorf("%w (the controller at %s does not know it either)", msg, a.cfg.Endpoint)
	case cerr != nil:
		return fmt.Errorf("%w (could not ask the controller at %s where it is: %s)", msg, a.cfg.Endpoint, status.Code(cerr))
	case p.GetNode() == "":
		return fmt.Errorf("%w: the port is bound to no node", msg)
	}
	return fmt.Errorf("%w: the port is on %s: run meridianctl capture there, or forward that node's agent socket "+
		"(ssh -L /tmp/agent.sock:%s NODE) and pass --agent-socket /tmp/agent.sock", msg, p.GetNode(), DefaultAgentSocket)
}

func (a *app) receiveCapture(ctx context.Context, f captureFlags, req *agentv1.CaptureRequest, first *agentv1.CaptureResponse,
	stream grpc.ServerStreamingClient[agentv1.CaptureResponse]) error {
	var out io.Writer = a.Out
	if f.write != "" && f.write != "-" {
		file, err := os.Create(f.write)
		if err != nil {
			return fmt.Errorf("capture: %w", err)
		}
		defer file.Close()
		out = file
	}
	var sink captureSink
	var err error
	switch {
	case f.write == "":
		sink = &lineSink{w: a.Out}
	case f.drops:
		sink, err = newPcapngSink(out, f.snaplen, first.Interface)
	default:
		sink, err = newPcapSink(out, f.snaplen)
	}
	if err != nil {
		return fmt.Errorf("capture: write %s: %w", f.write, err)
	}
	fmt.Fprintf(a.Err, "capturing on %s\n", first.Interface)
	var got uint64
	var sum *agentv1.CaptureSummary
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if ctx.Err() != nil || status.Code(err) == codes.Canceled {
				break // Ctrl-C: what arrived is written
			}
			sink.flush()
			return fmt.Errorf("capture on %s after %d frames: %s: %w", first.Interface, got, status.Code(err),
				errors.New(status.Convert(err).Message()))
		}
		for _, p := range m.Packets {
			if err := sink.packet(p); err != nil {
				return fmt.Errorf("capture: write %s: %w", f.write, err)
			}
			got++
		}
		if err := sink.flush(); err != nil {
			return fmt.Errorf("capture: write %s: %w", f.write, err)
		}
		if m.Summary != nil {
			sum = m.Summary
		}
	}
	if sum == nil {
		fmt.Fprintf(a.Err, "%d frames captured; stopped\n", got)
		return nil
	}
	fmt.Fprintf(a.Err, "%d frames captured (ended by %s); %d dropped by the agent (the reader was too slow), %d by the kernel\n",
		got, sum.EndedBy, sum.DroppedBuffer, sum.DroppedKernel)
	if strings.HasPrefix(sum.EndedBy, "error") {
		return fmt.Errorf("capture on %s: %s", first.Interface, sum.EndedBy)
	}
	return nil
}

type pcapSink struct {
	bw *bufio.Writer
	w  *pcapgo.Writer
}

func newPcapSink(out io.Writer, snaplen uint32) (*pcapSink, error) {
	bw := bufio.NewWriter(out)
	w := pcapgo.NewWriterNanos(bw)
	if err := w.WriteFileHeader(snaplen, layers.LinkTypeEthernet); err != nil {
		return nil, err
	}
	return &pcapSink{bw: bw, w: w}, bw.Flush()
}

func captureInfo(p *agentv1.CapturedPacket) gopacket.CaptureInfo {
	return gopacket.CaptureInfo{Timestamp: time.Unix(0, p.TimestampUnixNano), CaptureLength: len(p.Data),
		Length: max(int(p.Length), len(p.Data))}
}

func (s *pcapSink) packet(p *agentv1.CapturedPacket) error {
	return s.w.WritePacket(captureInfo(p), p.Data)
}
func (s *pcapSink) flush() error { return s.bw.Flush() }

// pcapngSink writes pcapng with a comment on each packet. pcapgo's
// NgWriter writes the section and interface blocks, but its packets carry
// no options, so the enhanced packet blocks are written here.
type pcapngSink struct {
	bw  *bufio.Writer
	buf []byte
}

func newPcapngSink(out io.Writer, snaplen uint32, where string) (*pcapngSink, error) {
	bw := bufio.NewWriter(out)
	ng, err := pcapgo.NewNgWriterInterface(bw, pcapgo.NgInterface{Name: where, LinkType: layers.LinkTypeEthernet,
		SnapLength: snaplen, TimestampResolution: 9},
		pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "meridianctl capture --drops"}})
	if err != nil {
		return nil, err
	}
	if err := ng.Flush(); err != nil {
		return nil, err
	}
	return &pcapngSink{bw: bw}, bw.Flush()
}

// dropComment is what a dropped frame's packet comment says.
// Only policy drops (security groups, network ACLs) have a rule: the
// other reasons (spoofed-ip, no-route, malformed, ...) are the data path's.
func dropComment(p *agentv1.CapturedPacket) string {
	if !strings.HasPrefix(p.DropReason, "sg-") && !strings.HasPrefix(p.DropReason, "acl-") {
		return fmt.Sprintf("drop reason=%s port=%d direction=%s", p.DropReason, p.DropPort, p.DropDirection)
	}
	rule := strconv.FormatUint(uint64(p.DropRule), 10)
	if p.DropRuleNumber != 0 {
		rule += fmt.Sprintf(" (#%d)", p.DropRuleNumber)
	}
	return fmt.Sprintf("drop reason=%s rule=%s port=%d direction=%s", p.DropReason, rule, p.DropPort, p.DropDirection)
}

// epb encodes an enhanced packet block (pcapng, interface 0, nanosecond
// timestamps) with an opt_comment option.
func epb(buf []byte, p *agentv1.CapturedPacket, comment string) []byte {
	pad4 := func(n int) int { return (4 - n%4) % 4 }
	optLen := 0
	if comment != "" {
		optLen = 4 + len(comment) + pad4(len(comment)) + 4 // comment, then opt_endofopt
	}
	total := 28 + len(p.Data) + pad4(len(p.Data)) + optLen + 4
	le := binary.LittleEndian
	buf = buf[:0]
	buf = le.AppendUint32(buf, 6) // enhanced packet block
	buf = le.AppendUint32(buf, uint32(total))
	buf = le.AppendUint32(buf, 0) // interface 0
	ts := uint64(p.TimestampUnixNano)
	buf = le.AppendUint32(buf, uint32(ts>>32))
	buf = le.AppendUint32(buf, uint32(ts))
	buf = le.AppendUint32(buf, uint32(len(p.Data)))
	buf = le.AppendUint32(buf, uint32(max(int(p.Length), len(p.Data))))
	buf = append(buf, p.Data...)
	buf = append(buf, make([]byte, pad4(len(p.Data)))...)
	if comment != "" {
		buf = le.AppendUint16(buf, 1) // opt_comment
		buf = le.AppendUint16(buf, uint16(len(comment)))
		buf = append(buf, comment...)
		buf = append(buf, make([]byte, pad4(len(comment)))...)
		buf = le.AppendUint32(buf, 0) // opt_endofopt
	}
	return le.AppendUint32(buf, uint32(total))
}

func (s *pcapngSink) packet(p *agentv1.CapturedPacket) error {
	var comment string
	if p.DropReason != "" {
		comment = dropComment(p)
	}
	s.buf = epb(s.buf, p, comment)
	_, err := s.bw.Write(s.buf)
	return err
}

func (s *pcapngSink) flush() error { return s.bw.Flush() }

// lineSink prints one line per frame, like tcpdump.
type lineSink struct{ w io.Writer }

func (s *lineSink) packet(p *agentv1.CapturedPacket) error {
	dir := map[agentv1.CapturedPacket_Direction]string{agentv1.CapturedPacket_FROM_PORT: "from-port",
		agentv1.CapturedPacket_TO_PORT: "to-port"}[p.Direction]
	line := time.Unix(0, p.TimestampUnixNano).UTC().Format("15:04:05.000000")
	if dir != "" {
		line += " " + dir
	}
	line += " " + summarize(p.Data) + fmt.Sprintf(", length %d", p.Length)
	if len(p.Data) < int(p.Length) {
		line += fmt.Sprintf(" (%d captured)", len(p.Data))
	}
	if p.DropReason != "" {
		line += " [" + dropComment(p) + "]"
	}
	_, err := fmt.Fprintln(s.w, line)
	return err
}

func (s *lineSink) flush() error { return nil }
