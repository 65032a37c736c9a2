package trace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/ovn"
	"github.com/meridian-sdn/meridian/fw"
)

// DefaultOVNTraceTimeout bounds one ovn-trace run: it reads the whole
// southbound database before tracing, which takes well under a second
// even for tens of thousands of logical flows.
const DefaultOVNTraceTimeout = 10 * time.Second

// OVNTracer runs ovn-trace against the OVN southbound database for the
// packets of traces whose source port is on a node of the OVN realization,
// so an operator sees beside the model's verdict what OVN's logical flows
// (what ovn-northd made of Meridian's NB rows) do with the same packet. A
// disagreement means the OVN realization differs from the model: a bug,
// or one of the differences package ovn documents.
type OVNTracer struct {
	// SB is the southbound endpoint ("unix:/run/ovn/ovnsb_db.sock",
	// "tcp:10.0.0.5:6642"; several, comma-separated, for a cluster).
	SB string
	// Binary is the ovn-trace executable (default "ovn-trace" on PATH).
	Binary string
	// Timeout bounds one run (default DefaultOVNTraceTimeout).
	Timeout time.Duration
	// ExternalSwitch is the OVN realization's external switch
	// (ovn.ExternalNetwork.Switch): traces from an outside address enter
	// OVN by its localnet port. "" means the realization has no external
	// network, and such traces get no ovn-trace.
	ExternalSwitch string
}

// OVNVerdict is ovn-trace's verdict on one packet.
type OVNVerdict struct {
	Datapath  string   `json:"datapath"`
	Microflow string   `json:"microflow"`
	Allowed   bool     `json:"allowed"`
	Outputs   []string `json:"outputs,omitempty"`
	DropStage string   `json:"dropStage,omitempty"`
	Verdict   string   `json:"verdict"`
	Text      string   `json:"text,omitempty"` // ovn-trace's detailed output
}

// ErrNotOVN: the trace's source is not a port on a node of the OVN
// realization, so ovn-trace has nothing to say about its packets.
var ErrNotOVN = errors.New("the source is not a port on an OVN node")

// OVNSource returns the source port of req when it is on a node of the OVN
// realization, else an error wrapping ErrNotOVN that says why not.
func (m *Model) OVNSource(req Request) (*agentv1.Port, error) {
	src := m.portsByName[req.From]
	if src == nil {
		return nil, fmt.Errorf("%w: the source is an outside address", ErrNotOVN)
	}
	node := src.GetNode()
	if node == "" {
		return nil, fmt.Errorf("%w: port %s is not bound to a node", ErrNotOVN, src.GetName())
	}
	if p := m.x.Peers[node]; p == nil || p.GetRealization() != "ovn" {
		return nil, fmt.Errorf("%w: port %s is on node %s, which is not an OVN node", ErrNotOVN, src.GetName(), node)
	}
	return src, nil
}

// OVNOutside returns, for a trace from an outside address to a public
// address of a VPC, the VPC, when some gateway node is of the OVN
// realization (they all hold the VPC's gateway port); else an error
// wrapping ErrNotOVN that says why not.
func (m *Model) OVNOutside(req Request, pkt Packet) (uint32, error) {
	if _, err := netip.ParseAddr(req.From); err != nil {
		return 0, fmt.Errorf("%w: the source is a port", ErrNotOVN)
	}
	var vpc uint32
	switch {
	case m.eipByAddr[pkt.Dst] != nil:
		vpc = m.eipByAddr[pkt.Dst].GetVpcId()
	case m.ngwByAddr[pkt.Dst] != nil:
		vpc = m.ngwByAddr[pkt.Dst].GetVpcId()
	}
	if vpc == 0 {
		return 0, fmt.Errorf("%w: %s is no public address of a VPC", ErrNotOVN, pkt.Dst)
	}
	for _, g := range m.gateways {
		if p := m.x.Peers[g.GetNode()]; p != nil && p.GetRealization() == "ovn" {
			return vpc, nil
		}
	}
	return 0, fmt.Errorf("%w: no gateway node is an OVN node", ErrNotOVN)
}

// fabricMAC is the source MAC of a traced packet from the fabric: any
// unicast MAC does (the localnet port has no port security); this one is
// locally administered and says where it comes from.
const fabricMAC = "02:fa:b0:00:00:01"

// OutsideMicroflow returns the ovn-trace datapath and microflow of a
// packet from the fabric to a public address of VPC vpc: in by the
// external switch's localnet port, to the VPC gateway port's MAC.
func OutsideMicroflow(extSwitch string, vpc uint32, pkt Packet) (datapath, microflow string) {
	return extSwitch, fmt.Sprintf("inport == %q && eth.src == %s && eth.dst == %s && ",
		extSwitch+"-localnet", fabricMAC, ovn.GatewayMAC(vpc)) + l4Match(pkt)
}

// Microflow returns the logical switch and the ovn-trace microflow of a
// packet src sends: from its logical switch port, with its MAC, to the
// destination port's MAC when the destination is on the same subnet,
// else to the subnet's router port.
func (m *Model) Microflow(src *agentv1.Port, pkt Packet) (datapath, microflow string, err error) {
	if src.GetMac() == "" {
		return "", "", fmt.Errorf("port %s has no MAC", src.GetName())
	}
	s := m.x.Subnets[src.GetSubnetId()]
	if s == nil {
		return "", "", fmt.Errorf("port %s: its subnet is not in the model", src.GetName())
	}
	dstMAC := ovn.RouterMAC(s.GetId())
	if c, err := netip.ParsePrefix(s.GetCidr()); err == nil && c.Contains(pkt.Dst) {
		if p := m.byAddr[vpcAddr{src.GetVpcId(), pkt.Dst}]; p != nil && p.GetSubnetId() == s.GetId() && p.GetMac() != "" {
			dstMAC = p.GetMac()
		}
	}
	return ovn.SwitchName(s.GetId()), fmt.Sprintf("inport == %q && eth.src == %s && eth.dst == %s && ",
		ovn.LogicalPortName(src.GetId()), src.GetMac(), dstMAC) + l4Match(pkt), nil
}

// l4Match is the IP part of a microflow.
func l4Match(pkt Packet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ip4.src == %s && ip4.dst == %s && ip.ttl == 64", pkt.Src, pkt.Dst)
	switch pkt.Protocol {
	case fw.ProtoTCP:
		fmt.Fprintf(&b, " && tcp && tcp.src == %d && tcp.dst == %d && tcp.flags == 0x%x", pkt.SrcPort, pkt.DstPort, pkt.TCPFlags)
	case fw.ProtoUDP:
		fmt.Fprintf(&b, " && udp && udp.src == %d && udp.dst == %d", pkt.SrcPort, pkt.DstPort)
	case fw.ProtoICMP:
		fmt.Fprintf(&b, " && icmp4 && icmp4.type == %d && icmp4.code == %d", pkt.ICMPType, pkt.ICMPCode)
	default:
		fmt.Fprintf(&b, " && ip.proto == %d", pkt.Protocol)
	}
	return b.String()
}

// ctNew is one --ct flag per conntrack action a trace may meet (each use
// consumes one): every lookup on the way is a new connection's, as the
// model traces a first packet. Unused ones are ignored.
var ctNew = slices.Repeat([]string{"--ct=new"}, 8)

// Trace runs ovn-trace on the forward packet of a trace from src.
func (o *OVNTracer) Trace(ctx context.Context, m *Model, src *agentv1.Port, pkt Packet) (*OVNVerdict, error) {
	dp, mf, err := m.Microflow(src, pkt)
	if err != nil {
		return nil, fmt.Errorf("ovn-trace: %w", err)
	}
	return o.run(ctx, dp, mf)
}

// TraceOutside runs ovn-trace on a packet from the fabric to a public
// address of VPC vpc (see Model.OVNOutside).
func (o *OVNTracer) TraceOutside(ctx context.Context, vpc uint32, pkt Packet) (*OVNVerdict, error) {
	if o.ExternalSwitch == "" {
		return nil, errors.New("ovn-trace: the OVN realization has no external network")
	}
	dp, mf := OutsideMicroflow(o.ExternalSwitch, vpc, pkt)
	return o.run(ctx, dp, mf)
}

func (o *OVNTracer) run(ctx context.Context, dp, mf string) (*OVNVerdict, error) {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultOVNTraceTimeout
	}
	bin := o.Binary
	if bin == "" {
		bin = "ovn-trace"
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"--db=" + o.SB, "--detailed", "--no-leader-only"}, ctNew...)
	cmd := exec.CommandContext(ctx, bin, append(args, dp, mf)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w after %v", ctx.Err(), timeout)
		}
		return nil, fmt.Errorf("ovn-trace on %s: %w: %s", dp, err, bytes.TrimSpace(stderr.Bytes()))
	}
	v, err := parseOVNTrace(stdout.String())
	if err != nil {
		return nil, fmt.Errorf("ovn-trace on %s: %w", dp, err)
	}
	v.Datapath, v.Microflow, v.Text = dp, mf, stdout.String()
	return v, nil
}

var (
	// " 4. ls_out_acl (northd.c:6543): reg0[9] == 1 && (outport == @pg), priority 2000, uuid a205ac53"
	flowLine = regexp.MustCompile(`^\s*\d+\. (\w+) \([^)]*\): (.*), priority (\d+), uuid ([0-9a-f]+)$`)
	// `/* output to "mer-port-9", type "" */`
	outputLine = regexp.MustCompile(`/\* output to "([^"]+)", type "([^"]*)" \*/`)
)

// generatedBy are the OVN actions that replace the traced packet with one
// OVN makes (an ARP or ND request for an unresolved next hop, an ICMP
// error, a TCP reset): what follows them in a trace is that packet's way,
// and the traced one goes no further.
var generatedBy = map[string]string{
	"arp":         "the router has no MAC for the destination and sends an ARP request instead (no port holds the address)",
	"nd_ns":       "the router has no MAC for the destination and sends a neighbour solicitation instead (no port holds the address)",
	"icmp4":       "answered with an ICMP error",
	"icmp4_error": "answered with an ICMP error",
	"icmp6":       "answered with an ICMPv6 error",
	"icmp6_error": "answered with an ICMPv6 error",
	"tcp_reset":   "answered with a TCP reset",
	"sctp_abort":  "answered with an SCTP abort",
	"reject":      "rejected",
}

// parseOVNTrace reads ovn-trace's detailed output: the ports the packet
// leaves by (patch ports between a switch and a router only carry it on)
// and, when it leaves by none, the logical flow that dropped it or the
// packet OVN made instead of it.
func parseOVNTrace(out string) (*OVNVerdict, error) {
	if !strings.Contains(out, "ingress(dp=") {
		return nil, fmt.Errorf("output not understood: %q", firstLine(out))
	}
	v := &OVNVerdict{}
	var last []string // the last logical flow line's submatches
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		// Sections of the detailed output are a heading underlined with
		// dashes: ingress(...), egress(...), ct_next(...), arp, ...
		if i+1 < len(lines) && isUnderline(lines[i+1]) {
			name := strings.TrimSpace(line)
			if j := strings.IndexAny(name, "( "); j >= 0 {
				name = name[:j]
			}
			if why, ok := generatedBy[name]; ok {
				if len(v.Outputs) == 0 && v.DropStage == "" {
					v.Verdict = "not delivered: " + why
					if last != nil {
						v.DropStage = last[1] + " priority " + last[3]
						v.Verdict += " (" + v.DropStage + ")"
					}
				}
				break
			}
			continue
		}
		if f := flowLine.FindStringSubmatch(line); f != nil {
			last = f
			continue
		}
		if o := outputLine.FindStringSubmatch(line); o != nil {
			if o[2] != "patch" && !slices.Contains(v.Outputs, o[1]) {
				v.Outputs = append(v.Outputs, o[1])
			}
			continue
		}
		if strings.TrimSpace(line) == "drop;" && v.DropStage == "" && last != nil {
			prio, _ := strconv.Atoi(last[3])
			v.DropStage = last[1] + " priority " + last[3]
			v.Verdict = "drop at " + v.DropStage + aclTier(last[1], prio) + ": " + last[2]
		}
	}
	v.Allowed = len(v.Outputs) > 0
	switch {
	case v.Allowed:
		v.Verdict = "output to " + strings.Join(v.Outputs, ", ")
	case v.Verdict == "":
		v.Verdict = "drop: no logical flow outputs the packet"
	}
	return v, nil
}

func isUnderline(s string) bool {
	s = strings.TrimSpace(s)
	return len(s) > 0 && strings.Trim(s, "-") == ""
}

// aclTier names the Meridian ACL tier of a logical flow of an ACL stage:
// northd adds 1000 to an NB ACL's priority, and package ovn's priority
// bands say which tier an ACL belongs to.
func aclTier(stage string, lflowPriority int) string {
	if stage != "ls_in_acl" && stage != "ls_out_acl" || lflowPriority < 1000 {
		return ""
	}
	p := lflowPriority - 1000
	switch {
	case p == ovn.PriorityDefaultDeny:
		return " (ACL priority " + strconv.Itoa(p) + ": Meridian's default deny, no security-group rule allows)"
	case p >= ovn.PriorityNACLDefault && p <= ovn.PriorityNACLFirst:
		return " (ACL priority " + strconv.Itoa(p) + ": a network ACL rule)"
	}
	return " (ACL priority " + strconv.Itoa(p) + ")"
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// Proto converts a verdict to its API form; agrees compares it with the
// model's forward verdict.
func (v *OVNVerdict) Proto(modelAllowed, detail bool) *v1.OvnTrace {
	out := &v1.OvnTrace{Datapath: v.Datapath, Microflow: v.Microflow, Allowed: v.Allowed, Outputs: v.Outputs,
		DropStage: v.DropStage, Verdict: v.Verdict, Agrees: v.Allowed == modelAllowed}
	if detail {
		out.Text = v.Text
	}
	return out
}
