package ctl

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// DefaultAgentSocket is where meridian-agent serves its local API.
const DefaultAgentSocket = "/run/meridian/agent.sock"

// Replay limits, as the agent's data path enforces them; checked here too
// so a bad capture is refused before any packet runs.
const (
	replayMaxPackets = 10000
	replayMaxFrame   = 3500
	// replayBatch keeps each request well under gRPC's 4 MiB message limit.
	replayBatch = 500
)

// replayCommand is `meridianctl replay`: the node's agent runs each packet
// of a capture through a port's pipeline with BPF_PROG_TEST_RUN.
func (a *app) replayCommand() *cobra.Command {
	var port, socket, direction string
	cmd := &cobra.Command{
		Use:   "replay FILE.pcap --port PORT [--direction from-port|to-port]",
		Short: "Run the packets of a capture through a port's data-path pipeline (no traffic sent)",
		Long: `replay asks the agent of the node the port is bound to (on its local socket,
so run it on that node) to run each packet of a pcap or pcapng capture through
the port's eBPF pipeline with the kernel's BPF test-run facility. No packet is
sent anywhere; for each packet it prints the verdict (drop and its reason, or
where the packet went: delivered to a port, tunnelled to a node or gateway,
ARP answered, passed to the host) and the pipeline stages up to it.

--direction from-port (the default) runs the packets as sent by the port's
workload; to-port runs them as arriving for the port from another node over
VXLAN in the port's VPC.

The replay uses the live tables, so it has the effects a real packet would:
an accepted new connection creates a conntrack entry (its replies are then
treated as established, as for a real connection), and drops count in the
drop counters and appear in the agent's drop log and metrics. Frames must be
Ethernet, whole (not cut by the capture's snap length) and at most 3500 bytes;
a capture that is not pcap/pcapng or has such a packet is refused before any
packet runs. Only the eBPF realization supports replay (OVN: use ovn-trace).`,
		Example: `  tcpdump -i mp7 -w web.pcap -c 20
  meridianctl replay web.pcap --port projects/p/ports/web-1
  meridianctl replay in.pcapng --port 7 --direction to-port -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := replayDirection(direction)
			if err != nil {
				return err
			}
			if port == "" {
				return errors.New("--port is required: projects/{project}/ports/{port} or the port's numeric id")
			}
			frames, err := readCapture(args[0])
			if err != nil {
				return err
			}
			results, err := a.replay(cmd.Context(), socket, &agentv1.ReplayRequest{Port: port, Direction: dir}, frames)
			if err != nil {
				return err
			}
			if a.output != formatTable {
				return printMessage(a.Out, a.output, &agentv1.ReplayResponse{Results: results})
			}
			printReplay(a.Out, frames, results)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&port, "port", "", "port: projects/{project}/ports/{port} or its numeric id on the node")
	f.StringVar(&socket, "agent-socket", DefaultAgentSocket, "unix socket of the node agent's local API")
	f.StringVar(&direction, "direction", "from-port", "from-port (sent by the workload) or to-port (arriving over VXLAN)")
	return cmd
}

func replayDirection(s string) (agentv1.ReplayRequest_Direction, error) {
	switch s {
	case "from-port", "":
		return agentv1.ReplayRequest_FROM_PORT, nil
	case "to-port":
		return agentv1.ReplayRequest_TO_PORT, nil
	}
	return 0, fmt.Errorf("--direction %q: want from-port or to-port", s)
}

// packetSource is what the pcap and pcapng readers have in common.
type packetSource interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// readCapture reads every frame of a pcap or pcapng file of Ethernet
// frames, refusing the whole file at the first problem.
func readCapture(path string) ([][]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open capture: %w", err)
	}
	defer file.Close()
	br := bufio.NewReader(file)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("%s is not a pcap or pcapng capture: %d bytes", path, len(magic))
	}
	var src packetSource
	var link layers.LinkType
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		ng, err := pcapgo.NewNgReader(br, pcapgo.DefaultNgReaderOptions)
		if err != nil {
			return nil, fmt.Errorf("%s is not a readable pcapng capture: %w", path, err)
		}
		src, link = ng, ng.LinkType()
	} else {
		r, err := pcapgo.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("%s is not a pcap or pcapng capture: %w", path, err)
		}
		src, link = r, r.LinkType()
	}
	if link != layers.LinkTypeEthernet {
		return nil, fmt.Errorf("%s: link type %v, replay needs Ethernet frames (capture on the port's host interface)", path, link)
	}
	var frames [][]byte
	for n := 1; ; n++ {
		data, ci, err := src.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: packet %d: %w (file truncated or corrupt)", path, n, err)
		}
		if ci.CaptureLength < ci.Length {
			return nil, fmt.Errorf("%s: packet %d is truncated (%d of %d bytes captured): capture whole packets (tcpdump -s 0)",
				path, n, ci.CaptureLength, ci.Length)
		}
		if len(data) < 14 || len(data) > replayMaxFrame {
			return nil, fmt.Errorf("%s: packet %d is %d bytes, replay takes Ethernet frames of 14 to %d bytes", path, n, len(data), replayMaxFrame)
		}
		if len(frames) == replayMaxPackets {
			return nil, fmt.Errorf("%s: more than %d packets; cut the capture (editcap -r)", path, replayMaxPackets)
		}
		frames = append(frames, data)
	}
	if len(frames) == 0 {
		return nil, fmt.Errorf("%s: the capture has no packets", path)
	}
	return frames, nil
}

// replay sends the frames to the agent in batches and returns the results
// numbered across batches.
func (a *app) replay(ctx context.Context, socket string, req *agentv1.ReplayRequest, frames [][]byte) ([]*agentv1.ReplayResult, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("agent socket %s: %w", socket, err)
	}
	defer conn.Close()
	cli := agentv1.NewLocalAgentServiceClient(conn)
	var out []*agentv1.ReplayResult
	for start := 0; start < len(frames); start += replayBatch {
		end := min(start+replayBatch, len(frames))
		r := &agentv1.ReplayRequest{Port: req.Port, Direction: req.Direction, Packets: frames[start:end]}
		var resp *agentv1.ReplayResponse
		err := a.call(ctx, func(ctx context.Context) error {
			var err error
			resp, err = cli.Replay(ctx, r)
			return err
		})
		if err != nil {
			if _, serr := os.Stat(socket); serr != nil {
				return nil, fmt.Errorf("replay: no agent socket at %s (run on the port's node, or set --agent-socket): %w", socket, err)
			}
			return nil, fmt.Errorf("replay packets %d-%d on port %s: %s: %w", start+1, end, req.Port,
				status.Code(err), errors.New(status.Convert(err).Message()))
		}
		for _, x := range resp.Results {
			x.Index += uint32(start)
			out = append(out, x)
		}
	}
	return out, nil
}

// printReplay prints one block per packet: a summary of the packet, the
// verdict, then the stages.
func printReplay(w io.Writer, frames [][]byte, results []*agentv1.ReplayResult) {
	counts := map[string]int{}
	for _, r := range results {
		counts[r.Verdict]++
		fmt.Fprintf(w, "packet %d: %s\n", r.Index+1, summarize(frames[r.Index]))
		fmt.Fprintf(w, "  verdict: %s\n", verdictText(r))
		for _, s := range r.Stages {
			fmt.Fprintf(w, "    %s\n", s)
		}
	}
	var parts []string
	for _, v := range []string{"deliver", "tunnel", "arp-reply", "redirect", "pass", "drop"} {
		if counts[v] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[v], v))
		}
	}
	fmt.Fprintf(w, "\n%d packets: %s\n", len(results), strings.Join(parts, ", "))
}

func verdictText(r *agentv1.ReplayResult) string {
	s := r.Verdict
	switch r.Verdict {
	case "drop":
		s += " (" + r.DropReason
		if r.DropPort != 0 {
			s += fmt.Sprintf(", port %d", r.DropPort)
		}
		if r.RuleKnown {
			switch {
			case strings.HasPrefix(r.DropReason, "sg-"):
				s += ", no security-group rule allows"
			case r.DropRule == 0:
				s += ", default deny"
			case r.DropAcl != "":
				s += fmt.Sprintf(", rule #%d of %s", r.DropRuleNumber, r.DropAcl)
			default:
				s += fmt.Sprintf(", rule id %d", r.DropRule)
			}
		}
		s += ")"
	case "deliver":
		s += fmt.Sprintf(" to port %d", r.OutPort)
	case "tunnel":
		s += fmt.Sprintf(" to %s, VNI %d", r.TunnelRemote, r.Vni)
	}
	if r.ConntrackHit {
		s += " [established]"
	}
	return s
}

// summarize describes a frame in one line: addresses, protocol, ports.
func summarize(frame []byte) string {
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.NoCopy)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth == nil {
		return fmt.Sprintf("%d bytes, not Ethernet", len(frame))
	}
	if arp, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		return fmt.Sprintf("ARP %s -> who-has %d.%d.%d.%d", eth.SrcMAC, arp.DstProtAddress[0], arp.DstProtAddress[1], arp.DstProtAddress[2], arp.DstProtAddress[3])
	}
	ip4, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	if ip4 == nil {
		return fmt.Sprintf("%s -> %s %v", eth.SrcMAC, eth.DstMAC, eth.EthernetType)
	}
	switch l4 := p.TransportLayer().(type) {
	case *layers.TCP:
		var flags []string
		for _, f := range []struct {
			on   bool
			name string
		}{{l4.SYN, "SYN"}, {l4.ACK, "ACK"}, {l4.FIN, "FIN"}, {l4.RST, "RST"}, {l4.PSH, "PSH"}} {
			if f.on {
				flags = append(flags, f.name)
			}
		}
		return fmt.Sprintf("%v:%d -> %v:%d TCP %s", ip4.SrcIP, l4.SrcPort, ip4.DstIP, l4.DstPort, strings.Join(flags, ","))
	case *layers.UDP:
		return fmt.Sprintf("%v:%d -> %v:%d UDP", ip4.SrcIP, l4.SrcPort, ip4.DstIP, l4.DstPort)
	}
	if icmp, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok {
		return fmt.Sprintf("%v -> %v ICMP %v", ip4.SrcIP, ip4.DstIP, icmp.TypeCode)
	}
	return fmt.Sprintf("%v -> %v %v", ip4.SrcIP, ip4.DstIP, ip4.Protocol)
}
