package trace

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
)

// ErrInvalid is wrapped by errors about the request (unknown port, bad
// address): nothing was traced.
var ErrInvalid = errors.New("invalid trace request")

// TCP flags a request may set.
const (
	FlagFIN uint8 = 0x01
	FlagSYN uint8 = 0x02
	FlagRST uint8 = 0x04
	FlagACK uint8 = 0x10
)

// Request is the packet to trace and where it comes from.
type Request struct {
	// From is the source: a port's name ("projects/p/ports/x"), or an IPv4
	// address outside every VPC (a host on the internet or the fabric).
	From string
	// SrcIP is the packet's source address when From is a port; zero
	// means the port's first IPv4 address. Another address tests
	// anti-spoofing.
	SrcIP netip.Addr
	// To is the destination: an IPv4 address, or a port's name (its first
	// IPv4 address).
	To                 string
	Protocol           uint8 // fw.ProtoTCP, ...; 0 is refused (a packet has one)
	SrcPort, DstPort   uint16
	TCPFlags           uint8 // informational: policy sees every first packet
	ICMPType, ICMPCode uint8
	// Reply also traces the reply of the connection the packet opens, as
	// an established packet (conntrack hit), if the packet gets through.
	Reply bool
}

// Packet is a packet as the stages see it.
type Packet struct {
	Src      netip.Addr `json:"src"`
	Dst      netip.Addr `json:"dst"`
	Protocol uint8      `json:"protocol"`
	SrcPort  uint16     `json:"srcPort,omitempty"`
	DstPort  uint16     `json:"dstPort,omitempty"`
	TCPFlags uint8      `json:"tcpFlags,omitempty"`
	ICMPType uint8      `json:"icmpType,omitempty"`
	ICMPCode uint8      `json:"icmpCode,omitempty"`
}

func (p Packet) fw() fw.Packet {
	return fw.Packet{Src: p.Src, Dst: p.Dst, Protocol: p.Protocol, SrcPort: p.SrcPort, DstPort: p.DstPort,
		ICMPType: p.ICMPType, ICMPCode: p.ICMPCode}
}

func (p Packet) String() string {
	switch p.Protocol {
	case fw.ProtoTCP, fw.ProtoUDP:
		s := fmt.Sprintf("%s %s:%d -> %s:%d", protoName(p.Protocol), p.Src, p.SrcPort, p.Dst, p.DstPort)
		if p.Protocol == fw.ProtoTCP && p.TCPFlags != 0 {
			s += " [" + flagNames(p.TCPFlags) + "]"
		}
		return s
	case fw.ProtoICMP:
		return fmt.Sprintf("icmp %s -> %s type %d code %d", p.Src, p.Dst, p.ICMPType, p.ICMPCode)
	}
	return fmt.Sprintf("%s %s -> %s", protoName(p.Protocol), p.Src, p.Dst)
}

// Verdicts of a stage.
const (
	Pass    = "pass"    // the stage let the packet on
	Drop    = "drop"    // the stage dropped it
	Skip    = "skip"    // the stage does not apply to this packet
	Deliver = "deliver" // the packet reached its destination
)

// Stage is one step of the walk.
type Stage struct {
	Stage   string `json:"stage"`
	Node    string `json:"node,omitempty"`   // the node doing it
	Object  string `json:"object,omitempty"` // API name of the deciding object
	Rule    string `json:"rule,omitempty"`   // the deciding rule or route
	Verdict string `json:"verdict"`
	Detail  string `json:"detail,omitempty"`
}

// Trace is the walk of one packet.
type Trace struct {
	// State is the packet's conntrack state: NEW (a first packet: policy
	// applies) or ESTABLISHED (a reply of an allowed connection: security
	// groups are skipped, network ACLs still apply).
	State   string  `json:"state"`
	Packet  Packet  `json:"packet"`
	Stages  []Stage `json:"stages"`
	Allowed bool    `json:"allowed"`
	// Reason is the data path's drop reason (bpf/c/maps.h DROP_*, without
	// the prefix) when the packet is dropped.
	Reason string   `json:"reason,omitempty"`
	Notes  []string `json:"notes,omitempty"`
}

// Result is a trace and, if asked, the trace of the connection's reply.
type Result struct {
	Forward Trace  `json:"forward"`
	Reply   *Trace `json:"reply,omitempty"`
	// Allowed: the packet gets through and, when the reply was traced,
	// the reply gets back (what a connection needs).
	Allowed bool `json:"allowed"`
}

// Conntrack states.
const (
	StateNew         = "NEW"
	StateEstablished = "ESTABLISHED"
)

// Trace walks req through the model.
func (m *Model) Trace(req Request) (*Result, error) {
	if req.Protocol == 0 {
		return nil, fmt.Errorf("%w: protocol: a packet has one (tcp, udp, icmp or a number)", ErrInvalid)
	}
	pkt := Packet{Protocol: req.Protocol, SrcPort: req.SrcPort, DstPort: req.DstPort, TCPFlags: req.TCPFlags,
		ICMPType: req.ICMPType, ICMPCode: req.ICMPCode}
	if req.Protocol == fw.ProtoTCP && pkt.TCPFlags == 0 {
		pkt.TCPFlags = FlagSYN
	}
	var src *agentv1.Port
	if a, err := netip.ParseAddr(req.From); err == nil {
		if !a.Is4() {
			return nil, fmt.Errorf("%w: from %s: only IPv4 is traced (the data path is IPv4-only)", ErrInvalid, a)
		}
		pkt.Src = a
	} else {
		src = m.portsByName[req.From]
		if src == nil {
			return nil, fmt.Errorf("%w: from %q: no such port (give a port name or an IPv4 address)", ErrInvalid, req.From)
		}
		pkt.Src = req.SrcIP
		if !pkt.Src.IsValid() {
			ips := ipv4s(src.GetIps())
			if len(ips) == 0 {
				return nil, fmt.Errorf("%w: port %s has no IPv4 address: give the source address", ErrInvalid, src.GetName())
			}
			pkt.Src = ips[0]
		} else if !pkt.Src.Is4() {
			return nil, fmt.Errorf("%w: source address %s: only IPv4 is traced", ErrInvalid, pkt.Src)
		}
	}
	dst, err := m.destination(req.To, src)
	if err != nil {
		return nil, err
	}
	pkt.Dst = dst

	res := &Result{}
	w := &walk{m: m, t: &res.Forward}
	w.t.State, w.t.Packet = StateNew, pkt
	var end endpoint
	if src != nil {
		end = w.fromPort(src, pkt, false)
	} else {
		end = w.fromOutside(pkt, nil)
	}
	w.finish()
	res.Allowed = res.Forward.Allowed
	if !req.Reply || !res.Forward.Allowed {
		if req.Reply {
			res.Forward.Notes = append(res.Forward.Notes, "no reply traced: the first packet does not get through, so there is no connection")
		}
		return res, nil
	}
	reply := replyOf(end.pkt)
	res.Reply = &Trace{State: StateEstablished, Packet: reply}
	rw := &walk{m: m, t: res.Reply}
	switch {
	case end.port != nil:
		rw.fromPort(end.port, reply, true)
		rw.unLoadBalance(w.lb) // the reply's source back to the VIP (lb.go)
	case src != nil:
		// The reply of a connection to the outside comes back from the
		// fabric to the public address the gateway translated to.
		reply.Dst = end.public
		res.Reply.Packet = reply
		rw.fromOutside(reply, &established{port: src, private: pkt.Src, privatePort: pkt.SrcPort})
	default:
		rw.t.Notes = append(rw.t.Notes, "the destination is outside Meridian: its reply is not traced")
	}
	rw.finish()
	res.Allowed = res.Forward.Allowed && res.Reply.Allowed
	return res, nil
}

// destination resolves To: an address, or a port name (in the source's
// VPC when there is a source port).
func (m *Model) destination(to string, src *agentv1.Port) (netip.Addr, error) {
	if a, err := netip.ParseAddr(to); err == nil {
		if !a.Is4() {
			return netip.Addr{}, fmt.Errorf("%w: to %s: only IPv4 is traced", ErrInvalid, a)
		}
		return a, nil
	}
	p := m.portsByName[to]
	if p == nil {
		return netip.Addr{}, fmt.Errorf("%w: to %q: no such port (give an IPv4 address or a port name)", ErrInvalid, to)
	}
	ips := ipv4s(p.GetIps())
	if len(ips) == 0 {
		return netip.Addr{}, fmt.Errorf("%w: port %s has no IPv4 address", ErrInvalid, to)
	}
	if src != nil && src.GetVpcId() != p.GetVpcId() {
		return netip.Addr{}, fmt.Errorf("%w: port %s is in another VPC than %s: VPCs do not reach each other; trace to its address to see the packet dropped",
			ErrInvalid, to, src.GetName())
	}
	return ips[0], nil
}

// replyOf is the packet answering p.
func replyOf(p Packet) Packet {
	r := Packet{Src: p.Dst, Dst: p.Src, Protocol: p.Protocol, SrcPort: p.DstPort, DstPort: p.SrcPort}
	switch p.Protocol {
	case fw.ProtoTCP:
		r.TCPFlags = FlagSYN | FlagACK
	case fw.ProtoICMP:
		if p.ICMPType == 8 { // echo request -> echo reply
			r.ICMPType = 0
		}
	}
	return r
}

// endpoint is where a forward walk ended: at a port (port set), or leaving
// for the outside from public (the translated source address).
type endpoint struct {
	port   *agentv1.Port
	public netip.Addr
	pkt    Packet // the packet as it arrived (translated)
}

// established carries the connection a reply from the outside belongs to.
type established struct {
	port        *agentv1.Port
	private     netip.Addr
	privatePort uint16
}

type walk struct {
	m    *Model
	t    *Trace
	done bool
	lb   *lbChoice // the load-balancer translation of the packet, if any (lb.go)
}

func (w *walk) add(s Stage) { w.t.Stages = append(w.t.Stages, s) }

func (w *walk) drop(s Stage, reason string) {
	s.Verdict = Drop
	w.add(s)
	w.t.Reason = reason
	w.done = true
}

func (w *walk) note(format string, a ...any) {
	w.t.Notes = append(w.t.Notes, fmt.Sprintf(format, a...))
}

func (w *walk) finish() {
	n := len(w.t.Stages)
	w.t.Allowed = n > 0 && w.t.Stages[n-1].Verdict == Deliver
	if w.t.State == StateNew {
		w.note("traced as the first packet of a connection (conntrack NEW): security groups and network ACLs apply")
	}
}

// realization of a node: "ebpf" (the default) or "ovn".
func (w *walk) realization(node string) string {
	if p := w.m.x.Peers[node]; p != nil && p.GetRealization() != "" {
		return p.GetRealization()
	}
	return "ebpf"
}

func (w *walk) nodeDesc(node string) string {
	p := w.m.x.Peers[node]
	if p == nil {
		return node + " (not registered)"
	}
	return fmt.Sprintf("%s (%s, underlay %s)", node, w.realization(node), p.GetUnderlayIp())
}

// fromPort walks a packet a port sends: meridian_from_port.
func (w *walk) fromPort(src *agentv1.Port, pkt Packet, est bool) endpoint {
	x := w.m.x
	node := src.GetNode()
	if node == "" {
		w.drop(Stage{Stage: "source", Object: src.GetName(),
			Detail: "the port is not bound to a node: nothing is attached to send or receive"}, "UNKNOWN_PORT")
		return endpoint{}
	}
	sub := x.Subnets[src.GetSubnetId()]
	vpc := x.VPCs[src.GetVpcId()]
	if sub == nil || vpc == nil {
		w.drop(Stage{Stage: "source", Node: node, Object: src.GetName(),
			Detail: "the port's subnet or VPC is not in the model"}, "UNKNOWN_SUBNET")
		return endpoint{}
	}
	if w.m.x.Peers[node] == nil {
		w.note("node %s is not registered: no agent runs the port's pipeline", node)
	}
	w.add(Stage{Stage: "source", Node: node, Object: src.GetName(), Verdict: Pass,
		Detail: fmt.Sprintf("on node %s; subnet %s (%s), VPC %s (VNI %d)", w.nodeDesc(node), sub.GetName(), sub.GetCidr(), vpc.GetName(), vpc.GetVni())})

	// Anti-spoofing: the source address must be the port's.
	spoof := Stage{Stage: "anti-spoofing", Node: node, Object: src.GetName()}
	own := false
	for _, a := range ipv4s(src.GetIps()) {
		own = own || a == pkt.Src
	}
	switch {
	case own:
		spoof.Verdict, spoof.Detail = Pass, fmt.Sprintf("source %s is an address of the port", pkt.Src)
		w.add(spoof)
	case src.GetSourceDestCheck():
		spoof.Detail = fmt.Sprintf("source %s is not an address of the port (%s) and its source/destination check is on",
			pkt.Src, strings.Join(src.GetIps(), ", "))
		w.drop(spoof, "SPOOF_IP")
		return endpoint{}
	case w.realization(node) == "ebpf":
		spoof.Detail = fmt.Sprintf("source %s is not an address of the port; its source/destination check is off, but the eBPF data path "+
			"checks every port's sources regardless (not realized yet)", pkt.Src)
		w.drop(spoof, "SPOOF_IP")
		return endpoint{}
	default:
		spoof.Verdict, spoof.Detail = Pass, fmt.Sprintf("source %s is not an address of the port, but its source/destination check is off", pkt.Src)
		w.add(spoof)
	}

	if !est {
		var ok bool
		if pkt, ok = w.loadBalance(node, src, pkt); !ok { // east-west VIP (lb.go)
			return endpoint{}
		}
	}
	w.conntrack(node, est)
	if !w.acl(node, sub, fw.Egress, pkt) {
		return endpoint{}
	}
	if !w.sg(node, src, fw.Egress, pkt, est) {
		return endpoint{}
	}
	dst, end := w.route(node, src, sub, vpc, pkt)
	if w.done || dst == nil {
		return end
	}
	return w.toPort(node, dst, pkt, est)
}

func (w *walk) conntrack(node string, est bool) {
	if est {
		w.add(Stage{Stage: "conntrack", Node: node, Verdict: Pass,
			Detail: "ESTABLISHED: a reply of an allowed connection; security groups are skipped, network ACLs are not (stateless)"})
		return
	}
	w.add(Stage{Stage: "conntrack", Node: node, Verdict: Pass, Detail: "NEW: no entry, the packet goes through policy"})
}

// toPort is the receiving half: tunnel to the port's node, ACL ingress of
// its subnet, security-group ingress, delivery (meridian_from_overlay, or
// the local branch of meridian_from_port).
func (w *walk) toPort(from string, dst *agentv1.Port, pkt Packet, est bool) endpoint {
	x := w.m.x
	node := dst.GetNode()
	vpc := x.VPCs[dst.GetVpcId()]
	if node == from {
		w.add(Stage{Stage: "forward", Node: node, Object: dst.GetName(), Verdict: Pass,
			Detail: "destination port is on the same node: no tunnel"})
	} else {
		w.add(Stage{Stage: "tunnel", Node: from, Object: dst.GetName(), Verdict: Pass,
			Detail: fmt.Sprintf("VXLAN VNI %d to node %s", vpc.GetVni(), w.nodeDesc(node))})
		w.conntrack(node, est)
	}
	dsub := x.Subnets[dst.GetSubnetId()]
	if dsub == nil {
		w.drop(Stage{Stage: "destination", Node: node, Object: dst.GetName(), Detail: "the port's subnet is not in the model"}, "UNKNOWN_SUBNET")
		return endpoint{}
	}
	if !w.acl(node, dsub, fw.Ingress, pkt) {
		return endpoint{}
	}
	if !w.sg(node, dst, fw.Ingress, pkt, est) {
		return endpoint{}
	}
	w.add(Stage{Stage: "deliver", Node: node, Object: dst.GetName(), Verdict: Deliver,
		Detail: fmt.Sprintf("delivered to port %s (%s)", dst.GetName(), strings.Join(dst.GetIps(), ", "))})
	return endpoint{port: dst, pkt: pkt}
}

// acl evaluates the network ACL of subnet sub in direction d.
func (w *walk) acl(node string, sub *agentv1.Subnet, d fw.Direction, pkt Packet) bool {
	name := "acl-" + d.String()
	id := sub.GetNetworkAclId()
	if id == 0 {
		w.add(Stage{Stage: name, Node: node, Object: sub.GetName(), Verdict: Pass, Detail: "the subnet has no network ACL: allowed"})
		return true
	}
	obj := w.m.x.NetworkACLs[id]
	if obj == nil {
		w.drop(Stage{Stage: name, Node: node, Object: sub.GetName(),
			Detail: fmt.Sprintf("the subnet's network ACL %d is not in the model: the data path denies", id)}, "ACL_"+strings.ToUpper(d.String()))
		return false
	}
	acl, err := fw.ACLOf(obj)
	if err != nil {
		// The agent installs none of it, and the data path denies
		// through a network ACL it does not hold.
		w.note("%v: the agent cannot install this network ACL, so the data path denies everything through it", err)
		acl = &fw.ACL{ID: obj.GetId()}
	}
	allowed, rid := acl.Evaluate(d, pkt.fw())
	s := Stage{Stage: name, Node: node, Object: obj.GetName()}
	remote := "destination " + pkt.Dst.String()
	if d == fw.Ingress {
		remote = "source " + pkt.Src.String()
	}
	if rid == 0 {
		s.Rule = "*"
		s.Detail = fmt.Sprintf("no %s rule matches (%s): the default rule denies", d, remote)
		w.drop(s, "ACL_"+strings.ToUpper(d.String()))
		return false
	}
	r := ruleByID(obj.GetRules(), rid)
	s.Rule = fmt.Sprintf("%d: %s", r.GetNumber(), describeRule(r, nil))
	if allowed {
		s.Verdict, s.Detail = Pass, fmt.Sprintf("rule %d (the lowest number matching %s) allows", r.GetNumber(), remote)
		w.add(s)
		return true
	}
	s.Detail = fmt.Sprintf("rule %d (the lowest number matching %s) denies", r.GetNumber(), remote)
	w.drop(s, "ACL_"+strings.ToUpper(d.String()))
	return false
}

// sg evaluates the security groups of port p in direction d (new flows).
func (w *walk) sg(node string, p *agentv1.Port, d fw.Direction, pkt Packet, est bool) bool {
	name := "sg-" + d.String()
	if est {
		w.add(Stage{Stage: name, Node: node, Object: p.GetName(), Verdict: Skip,
			Detail: "established connection: security groups are stateful, conntrack lets the reply through"})
		return true
	}
	reason := "SG_" + strings.ToUpper(d.String())
	groups := p.GetSecurityGroupIds()
	if len(groups) == 0 {
		w.drop(Stage{Stage: name, Node: node, Object: p.GetName(), Rule: "none",
			Detail: "the port is in no security group: nothing is allowed"}, reason)
		return false
	}
	members := w.m.members[p.GetVpcId()]
	fp := pkt.fw()
	var names []string
	for _, g := range groups {
		obj := w.m.x.SecurityGroups[g]
		if obj == nil {
			continue
		}
		names = append(names, obj.GetName())
		rules, err := fw.SGRulesOf(obj)
		if err != nil {
			w.note("%v: the agent installs none of this group's rules", err)
		}
		pol := fw.SecurityGroupPolicy{ID: g, Rules: rules}
		if ok, rid := pol.Evaluate(d, fp, members); ok {
			w.add(Stage{Stage: name, Node: node, Object: obj.GetName(), Rule: ruleDesc(obj, rid, w.m.x.SecurityGroups), Verdict: Pass,
				Detail: fmt.Sprintf("rule %d of %s allows", rid, obj.GetName())})
			return true
		}
	}
	remote := "to " + pkt.Dst.String()
	if d == fw.Ingress {
		remote = "from " + pkt.Src.String()
	}
	w.drop(Stage{Stage: name, Node: node, Object: strings.Join(names, ", "), Rule: "none",
		Detail: fmt.Sprintf("no %s rule of the port's security groups allows %s %s%s", d, protoName(pkt.Protocol), remote,
			considered(w.m, groups, d))}, reason)
	return false
}

// considered lists the rules of direction d that were looked at (the first
// few), so a person sees what would have had to match.
func considered(m *Model, groups []uint32, d fw.Direction) string {
	const show = 5
	var out []string
	n := 0
	for _, g := range groups {
		for _, r := range m.x.SecurityGroups[g].GetRules() {
			if r.GetIngress() != (d == fw.Ingress) {
				continue
			}
			if n < show {
				out = append(out, fmt.Sprintf("#%d %s", r.GetId(), describeRule(r, m.x.SecurityGroups)))
			}
			n++
		}
	}
	switch {
	case n == 0:
		return fmt.Sprintf(" (the groups have no %s rule)", d)
	case n > show:
		out = append(out, fmt.Sprintf("and %d more", n-show))
	}
	return " (" + d.String() + " rules: " + strings.Join(out, "; ") + ")"
}

func ruleDesc(sg *agentv1.SecurityGroup, id uint32, groups map[uint32]*agentv1.SecurityGroup) string {
	return fmt.Sprintf("#%d: %s", id, describeRule(ruleByID(sg.GetRules(), id), groups))
}

// ruleByID finds a rule of one object: rule IDs are unique within it.
func ruleByID(rules []*agentv1.Rule, id uint32) *agentv1.Rule {
	for _, r := range rules {
		if r.GetId() == id {
			return r
		}
	}
	return nil
}

// describeRule renders a compiled rule as a person reads it.
func describeRule(r *agentv1.Rule, groups map[uint32]*agentv1.SecurityGroup) string {
	var b strings.Builder
	if r.GetNumber() != 0 || !r.GetAllow() {
		if r.GetAllow() {
			b.WriteString("allow ")
		} else {
			b.WriteString("deny ")
		}
	}
	if r.GetIngress() {
		b.WriteString("ingress ")
	} else {
		b.WriteString("egress ")
	}
	b.WriteString(protoName(uint8(r.GetProtocol())))
	switch {
	case r.GetPortMin() != 0 || r.GetPortMax() != 0:
		if r.GetPortMin() == r.GetPortMax() {
			fmt.Fprintf(&b, "/%d", r.GetPortMin())
		} else {
			fmt.Fprintf(&b, "/%d-%d", r.GetPortMin(), r.GetPortMax())
		}
	case r.GetProtocol() == uint32(fw.ProtoICMP) && r.GetIcmpType() >= 0:
		fmt.Fprintf(&b, " type %d", r.GetIcmpType())
		if r.GetIcmpCode() >= 0 {
			fmt.Fprintf(&b, " code %d", r.GetIcmpCode())
		}
	}
	remote := r.GetCidr()
	switch {
	case r.GetRemoteGroupId() != 0:
		remote = "group " + strconv.FormatUint(uint64(r.GetRemoteGroupId()), 10)
		if g := groups[r.GetRemoteGroupId()]; g != nil {
			remote = "group " + g.GetName()
		}
	case remote == "":
		remote = "anywhere"
	}
	if r.GetIngress() {
		b.WriteString(" from " + remote)
	} else {
		b.WriteString(" to " + remote)
	}
	return b.String()
}

func protoName(p uint8) string {
	switch p {
	case 0:
		return "all"
	case fw.ProtoICMP:
		return "icmp"
	case fw.ProtoTCP:
		return "tcp"
	case fw.ProtoUDP:
		return "udp"
	}
	return "proto " + strconv.Itoa(int(p))
}

func flagNames(f uint8) string {
	var out []string
	for _, n := range []struct {
		bit  uint8
		name string
	}{{FlagSYN, "SYN"}, {FlagACK, "ACK"}, {FlagFIN, "FIN"}, {FlagRST, "RST"}} {
		if f&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}
