package ctl

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// traceCommand is `meridianctl trace`: the controller walks a packet
// through the logical model and says which stage, object and rule decided.
func (a *app) traceCommand() *cobra.Command {
	var req v1.TraceRequest
	var icmpType uint32
	cmd := &cobra.Command{
		Use:   "trace --from PORT|ADDRESS --to ADDRESS|PORT -p PROTOCOL [--dport N]",
		Short: "Why was my packet dropped? Walk a packet through the model, stage by stage",
		Long: `trace walks a packet through Meridian's logical model the way the data path
handles it, without sending anything: anti-spoofing, network ACL egress,
security groups egress, VPC route (gateway and NAT for the outside), tunnel,
network ACL ingress, security groups ingress, delivery. Each stage names the
object and the rule that decided.

The packet is traced as the first packet of a connection (conntrack NEW).
--reply also traces the connection's reply as an established packet: it
skips the stateful security groups but not the stateless network ACLs.

When the source port is on a node of the OVN realization and the controller
knows OVN's southbound database (ovn_southbound), the controller also runs
ovn-trace on the packet and its verdict is shown beside the model's, with
whether the two agree; --ovn-detail adds ovn-trace's full output.`,
		Example: `  meridianctl trace --from projects/p/ports/web-1 --to 10.0.2.22 -p tcp --dport 22
  meridianctl trace --from projects/p/ports/web-1 --to projects/p/ports/db -p tcp --dport 5432 --reply -o json
  meridianctl trace --from 198.51.100.7 --to 203.0.113.10 -p tcp --dport 443`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("icmp-type") {
				req.IcmpType = &icmpType
			}
			conn, err := a.client()
			if err != nil {
				return err
			}
			var r *v1.TraceResponse
			err = a.call(cmd.Context(), func(ctx context.Context) error {
				r, err = v1.NewTraceServiceClient(conn).Trace(ctx, &req)
				return err
			})
			if err != nil {
				return a.explain("trace", err)
			}
			if a.output != formatTable {
				return printMessage(a.Out, a.output, r)
			}
			printTrace(a.Out, "forward", r.GetForward())
			printOVNTrace(a.Out, r.GetOvn())
			if r.GetReply() != nil {
				fmt.Fprintln(a.Out)
				printTrace(a.Out, "reply", r.GetReply())
			}
			if r.GetReply() != nil {
				fmt.Fprintf(a.Out, "\nconnection: %s\n", verdictWord(r.GetAllowed()))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Source, "from", "", "source: a port name, or an IPv4 address outside every VPC")
	f.StringVar(&req.Destination, "to", "", "destination: an IPv4 address or a port name")
	f.StringVar(&req.SourceIp, "src-ip", "", "source address of a port's packet (default: the port's first IPv4)")
	f.StringVarP(&req.Protocol, "protocol", "p", "", "tcp, udp, icmp or a protocol number")
	f.Uint32Var(&req.SourcePort, "sport", 0, "TCP/UDP source port (default 40000)")
	f.Uint32Var(&req.DestinationPort, "dport", 0, "TCP/UDP destination port")
	f.StringVar(&req.TcpFlags, "tcp-flags", "", "TCP flags, e.g. SYN or SYN,ACK (default SYN)")
	f.Uint32Var(&icmpType, "icmp-type", 8, "ICMP type")
	f.Uint32Var(&req.IcmpCode, "icmp-code", 0, "ICMP code")
	f.BoolVar(&req.Reply, "reply", false, "also trace the connection's reply as an established packet")
	f.BoolVar(&req.OvnDetail, "ovn-detail", false, "with a source on an OVN node: also print ovn-trace's full output")
	for _, name := range []string{"from", "to", "protocol"} {
		_ = cmd.MarkFlagRequired(name) // the flags exist: cannot fail
	}
	return cmd
}

func verdictWord(allowed bool) string {
	if allowed {
		return "ALLOWED"
	}
	return "DROPPED"
}

// printTrace renders one packet's walk as a table, then its verdict and
// notes.
func printTrace(w interface{ Write([]byte) (int, error) }, what string, t *v1.PacketTrace) {
	fmt.Fprintf(w, "%s: %s (%s)\n", what, t.GetPacket(), t.GetState())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tNODE\tVERDICT\tOBJECT\tRULE\tDETAIL")
	for _, s := range t.GetStages() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.GetStage(), dash(s.GetNode()), s.GetVerdict(), dash(s.GetObject()), dash(s.GetRule()), s.GetDetail())
	}
	_ = tw.Flush() // a failed write shows in the next one
	v := verdictWord(t.GetAllowed())
	if !t.GetAllowed() && len(t.GetStages()) > 0 {
		last := t.GetStages()[len(t.GetStages())-1]
		v += fmt.Sprintf(" at %s by %s", last.GetStage(), dash(last.GetObject()))
		if last.GetRule() != "" {
			v += " rule " + last.GetRule()
		}
		v += " (" + t.GetDropReason() + ")"
	}
	fmt.Fprintf(w, "verdict: %s\n", v)
	for _, n := range t.GetNotes() {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// printOVNTrace renders ovn-trace's verdict on the forward packet, if the
// controller ran it.
func printOVNTrace(w interface{ Write([]byte) (int, error) }, o *v1.OvnTrace) {
	if o == nil {
		return
	}
	if o.GetError() != "" {
		fmt.Fprintf(w, "ovn-trace: failed: %s\n", o.GetError())
		return
	}
	agree := "agrees with the model"
	if !o.GetAgrees() {
		agree = "DISAGREES with the model"
	}
	fmt.Fprintf(w, "ovn-trace: %s: %s (%s)\n", verdictWord(o.GetAllowed()), o.GetVerdict(), agree)
	fmt.Fprintf(w, "ovn-trace microflow on %s: %s\n", o.GetDatapath(), o.GetMicroflow())
	if o.GetText() != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(o.GetText(), "\n"))
	}
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
