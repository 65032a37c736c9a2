package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// liveTraceCommand is `meridianctl live-trace`: the data path reports the
// stages real packets matching a filter went through, on every node asked.
func (a *app) liveTraceCommand() *cobra.Command {
	var (
		sockets                     []string
		req                         agentv1.LiveTraceRequest
		proto                       string
		duration                    time.Duration
		model                       bool
		srcPort, dstPort, rate, vni uint32
	)
	cmd := &cobra.Command{
		Use:   "live-trace --port PORT [--dst ADDRESS] [-p PROTOCOL] [--dport N] [--agent-socket SOCKET]...",
		Short: "Trace real packets through the data plane: the stages the eBPF programs took, on each node",
		Long: `live-trace marks the real packets that match a filter and reports, stage by
stage, what the eBPF programs did with them: conntrack, network ACL and
security-group rules, route, tunnel to which node, delivery, or the drop with
its reason and rule; on a gateway, the public address a packet from the
fabric was for (gateway), the translation (nat: elastic IP, NAT gateway,
port mapping) and the exit toward the fabric (uplink); for a load-balancer
VIP, the backend chosen (load-balancer). The stages have the names of meridianctl trace's, so
the two can be read side by side: trace says what the model means, live-trace
what the data plane did.

The agent of each node given by --agent-socket (repeat it; default the local
agent) installs the filter: on the port's node it takes the packets the port
sends, on other nodes the packets of the port's VPC that arrive over VXLAN
(after decapsulation) and, on a gateway, those that arrive from the fabric
for an elastic IP, port mapping or NAT flow of that VPC (as they arrived:
--dst is the public address there), so a packet is followed across nodes. Nothing is sent:
run the traffic (or wait for it). Each node traces at most --rate packets per
second of the filter (matching packets over it are counted, not traced).

--model also asks the controller for the model trace of the same packet
(from --port to --dst) and says, for each traced packet, whether the data
plane agrees with it.

eBPF nodes only (OVN: ovn-trace).`,
		Example: `  meridianctl live-trace --port projects/p/ports/web-1 --dst 10.0.2.20 -p tcp --dport 22 --count 1
  # from the internet to web-1's elastic IP, on a gateway and on web-1's node
  meridianctl live-trace --vni 100 --src 203.0.113.2 -p tcp \
      --agent-socket /run/meridian/agent.sock --agent-socket /tmp/gw1.sock
  meridianctl live-trace --port projects/p/ports/web-1 --dst 10.0.2.20 -p tcp --dport 22 --model \
      --agent-socket /run/meridian/agent.sock --agent-socket /tmp/node2.sock --duration 30s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := protocolNumber(proto)
			if err != nil {
				return err
			}
			req.Protocol, req.SrcPort, req.DstPort, req.Rate, req.Vni = p, srcPort, dstPort, rate, vni
			if duration < 0 {
				return errors.New("--duration must not be negative")
			}
			req.DurationMs = uint32(duration.Milliseconds())
			if model && (req.Port == "" || req.Dst == "") {
				return errors.New("--model needs --port (the source) and --dst (an address)")
			}
			if len(sockets) == 0 {
				sockets = []string{DefaultAgentSocket}
			}
			var mt *v1.PacketTrace
			if model {
				if mt, err = a.modelTrace(cmd.Context(), &req); err != nil {
					return err
				}
				if a.output == formatTable {
					printTrace(a.Out, "model", mt)
					a.printf("\n")
				}
			}
			return a.liveTrace(cmd.Context(), sockets, &req, mt)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&sockets, "agent-socket", nil, "unix socket of a node agent's local API (repeat for several nodes; default "+DefaultAgentSocket+")")
	f.StringVar(&req.Port, "port", "", "the port whose packets to trace: projects/{project}/ports/{port} or its id")
	f.StringVar(&req.Src, "src", "", "source address or CIDR")
	f.StringVar(&req.Dst, "dst", "", "destination address or CIDR")
	f.StringVarP(&proto, "protocol", "p", "", "tcp, udp, icmp or a number (default any)")
	f.Uint32Var(&srcPort, "sport", 0, "source port (default any)")
	f.Uint32Var(&dstPort, "dport", 0, "destination port (default any)")
	f.Uint32Var(&vni, "vni", 0, "the VPC's VNI (default the port's, or any)")
	f.DurationVar(&duration, "duration", 0, "stop after this long (default: until interrupted or --count)")
	f.Uint64Var(&req.MaxPackets, "count", 0, "stop after this many traced packets on a node (default no limit)")
	f.Uint32Var(&rate, "rate", 0, "most packets per second a node traces (default 100)")
	f.BoolVar(&model, "model", false, "also show the model trace (controller) and compare each packet with it")
	return cmd
}

func protocolNumber(s string) (uint32, error) {
	switch strings.ToLower(s) {
	case "":
		return 0, nil
	case "icmp":
		return 1, nil
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	}
	var n uint32
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n > 255 {
		return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp or a number 0-255", s)
	}
	return n, nil
}

// modelTrace asks the controller for the model's trace of the packet.
func (a *app) modelTrace(ctx context.Context, r *agentv1.LiveTraceRequest) (*v1.PacketTrace, error) {
	if _, err := netip.ParseAddr(r.Dst); err != nil {
		return nil, fmt.Errorf("--model: --dst %q must be one address: %w", r.Dst, err)
	}
	conn, err := a.client()
	if err != nil {
		return nil, err
	}
	req := &v1.TraceRequest{Source: r.Port, Destination: r.Dst, Protocol: protoArg(r.Protocol), SourcePort: r.SrcPort, DestinationPort: r.DstPort}
	var resp *v1.TraceResponse
	err = a.call(ctx, func(ctx context.Context) error {
		resp, err = v1.NewTraceServiceClient(conn).Trace(ctx, req)
		return err
	})
	if err != nil {
		return nil, a.explain("trace", err)
	}
	return resp.GetForward(), nil
}

func protoArg(p uint32) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return fmt.Sprint(p)
}

// liveTrace runs the trace on every agent and prints packets as they come.
func (a *app) liveTrace(ctx context.Context, sockets []string, req *agentv1.LiveTraceRequest, model *v1.PacketTrace) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type msg struct {
		socket string
		resp   *agentv1.LiveTraceResponse
		err    error
	}
	msgs := make(chan msg)
	var wg sync.WaitGroup
	for _, s := range sockets {
		conn, err := grpc.NewClient("unix://"+s, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return fmt.Errorf("agent socket %s: %w", s, err)
		}
		defer conn.Close()
		stream, err := agentv1.NewLiveTraceLocalServiceClient(conn).LiveTrace(ctx, req)
		if err != nil {
			return fmt.Errorf("live trace on %s: %w", s, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return
				}
				select {
				case msgs <- msg{s, r, err}:
				case <-ctx.Done():
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(msgs) }()
	started := 0
	var firstErr error
	for m := range msgs {
		if m.err != nil {
			if ctx.Err() == nil && firstErr == nil {
				firstErr = fmt.Errorf("live trace on %s: %w", m.socket, explainAgent(m.err))
				cancel()
			}
			continue
		}
		r := m.resp
		switch {
		case r.Started:
			started++
			fmt.Fprintf(a.Err, "tracing on node %s (%d of %d)\n", r.Node, started, len(sockets))
		case r.Summary != nil:
			fmt.Fprintf(a.Err, "node %s: %d packets traced, %d over the rate not traced (%s)\n",
				r.Node, r.Summary.Traced, r.Summary.Capped, r.Summary.EndedBy)
		}
		for _, p := range r.Packets {
			if a.output != formatTable {
				b, err := protojson.Marshal(p)
				if err != nil {
					return fmt.Errorf("encode packet: %w", err)
				}
				a.printf("%s\n", b)
				continue
			}
			printLivePacket(a.Out, p, model)
		}
	}
	return firstErr
}

// explainAgent shortens a gRPC status error to its message.
func explainAgent(err error) error {
	if st, ok := status.FromError(err); ok {
		return errors.New(st.Message())
	}
	return err
}

// printLivePacket prints one traced packet as a table of its stages.
func printLivePacket(w io.Writer, p *agentv1.LiveTracePacket, model *v1.PacketTrace) {
	ts := time.Unix(0, p.TimestampUnixNano).UTC().Format("15:04:05.000000")
	fmt.Fprintf(w, "node %s %s %s (from %s)\n", p.Node, ts, p.Packet, p.Entered)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  STAGE\tVERDICT\tOBJECT\tRULE\tDETAIL")
	for _, s := range p.Stages {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", s.Stage, s.Verdict, dash(s.Object), dash(s.Rule), s.Detail)
	}
	tw.Flush()
	verdict := p.Verdict
	if p.DropReason != "" {
		last := p.Stages[len(p.Stages)-1]
		verdict = fmt.Sprintf("DROPPED at %s by %s rule %s (%s)", last.Stage, dash(last.Object), dash(last.Rule), p.DropReason)
	}
	if why := liveVerdicts[verdict]; why != "" {
		verdict += " (" + why + ")"
	}
	fmt.Fprintf(w, "live verdict: %s\n", verdict)
	if model != nil {
		fmt.Fprintf(w, "model: %s\n", CompareLive(model, p))
	}
	fmt.Fprintln(w)
}

// liveVerdicts explains the verdicts of packets that end neither delivered
// nor dropped on the node that traced them.
var liveVerdicts = map[string]string{
	"TUNNELED":  "sent over VXLAN to another node: traced there by the same filter",
	"TO_FABRIC": "left the gateway toward the fabric: beyond Meridian from here",
	"TO_HOST":   "not for a public address this gateway serves: left to the host's stack",
}

// CompareLive says whether a traced packet ended as the model trace says:
// for a drop, at the same stage, by the same object and rule (a network
// ACL rule by its number), with the same reason; else delivered or
// tunnelled where the model delivers. Only the stages of the packet's own
// node are compared: a packet tunnelled to another node is traced again
// there.
func CompareLive(model *v1.PacketTrace, p *agentv1.LiveTracePacket) string {
	var mdrop *v1.TraceStage
	for _, s := range model.GetStages() {
		if s.GetVerdict() == "drop" {
			mdrop = s
		}
	}
	var ldrop *agentv1.LiveTraceStage
	for _, s := range p.GetStages() {
		if s.GetVerdict() == "drop" {
			ldrop = s
		}
	}
	switch {
	case mdrop == nil && ldrop == nil:
		return "ALLOWED, the data plane agrees (" + strings.ToLower(p.GetVerdict()) + " here)"
	case mdrop == nil:
		return fmt.Sprintf("ALLOWED; the data plane DIFFERS: dropped at %s (%s)", ldrop.GetStage(), p.GetDropReason())
	case ldrop == nil:
		return fmt.Sprintf("DROPPED at %s (%s); the data plane DIFFERS: %s here", mdrop.GetStage(), model.GetDropReason(), strings.ToLower(p.GetVerdict()))
	}
	mrule := mdrop.GetRule()
	if i := strings.Index(mrule, ":"); i > 0 { // "100: deny tcp ..." -> "100"
		mrule = mrule[:i]
	}
	desc := fmt.Sprintf("DROPPED at %s by %s rule %s (%s)", mdrop.GetStage(), mdrop.GetObject(), mrule, model.GetDropReason())
	if mdrop.GetStage() == ldrop.GetStage() && mrule == ldrop.GetRule() && mdrop.GetObject() == ldrop.GetObject() &&
		model.GetDropReason() == p.GetDropReason() {
		return desc + ", the data plane agrees"
	}
	return fmt.Sprintf("%s; the data plane DIFFERS: at %s by %s rule %s (%s)", desc, ldrop.GetStage(), ldrop.GetObject(), ldrop.GetRule(), p.GetDropReason())
}
