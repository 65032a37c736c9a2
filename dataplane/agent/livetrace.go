package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// Live trace (issue [6], part 2): the agent's half. Each LiveTrace call
// takes a filter slot of the data path (datapath.SetTraceFilters) for as
// long as it runs; one goroutine reads the trace ring while any trace runs,
// groups the events of each packet (they share a random packet id and end
// with the program's verdict) and hands whole packets to the trace whose
// filter took them.

// liveTracer is shared by the LiveTrace calls of one agent.
type liveTracer struct {
	a *Agent

	mu       sync.Mutex
	slots    [datapath.MaxTraceFilters]*traceSession
	nextID   uint32
	reader   *datapath.TraceReader // open while a trace runs
	readDone chan struct{}
}

type traceSession struct {
	filter datapath.TraceFilter
	slot   int
	out    chan []datapath.TraceEvent // whole packets
	lost   uint64                     // packets the caller was too slow for (under liveTracer.mu)
}

// traceQueue bounds the packets waiting for a slow caller.
const traceQueue = 256

// liveTraceServer serves LiveTraceLocalService on the local socket.
type liveTraceServer struct {
	agentv1.UnimplementedLiveTraceLocalServiceServer
	t *liveTracer
}

func newLiveTraceServer(a *Agent) *liveTraceServer {
	return &liveTraceServer{t: &liveTracer{a: a}}
}

// start installs f in a free slot and, for the first trace, opens the ring.
func (lt *liveTracer) start(f datapath.TraceFilter) (*traceSession, error) {
	lt.mu.Lock()
	defer lt.mu.Unlock()
	slot := -1
	for i, s := range lt.slots {
		if s == nil {
			slot = i
			break
		}
	}
	if slot < 0 {
		return nil, status.Errorf(codes.ResourceExhausted, "%d live traces already run on node %s", datapath.MaxTraceFilters, lt.a.cfg.Node)
	}
	lt.nextID++
	f.ID = lt.nextID
	s := &traceSession{filter: f, slot: slot, out: make(chan []datapath.TraceEvent, traceQueue)}
	if lt.reader == nil {
		r, err := lt.a.dp.TraceEvents()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "live trace: %v", err)
		}
		lt.reader, lt.readDone = r, make(chan struct{})
		go lt.read(r, lt.readDone)
	}
	lt.slots[slot] = s
	if err := lt.install(); err != nil {
		lt.slots[slot] = nil
		return nil, status.Errorf(codes.InvalidArgument, "live trace: %v", err)
	}
	return s, nil
}

// install writes the slots' filters; under lt.mu.
func (lt *liveTracer) install() error {
	fs := make([]datapath.TraceFilter, len(lt.slots))
	var n uint32 // slots the programs look at: up to the last one used
	for i, s := range lt.slots {
		if s != nil {
			fs[i] = s.filter
			n = uint32(i) + 1
		}
	}
	// The XDP load balancer reads the same filters: it looks at fewer
	// slots before they are rewritten and at more only after, as the
	// data path's programs do (datapath.SetTraceFilters).
	g := &lt.a.nslb
	g.mu.Lock()
	cur := g.traceN
	g.mu.Unlock()
	if n < cur {
		if err := g.setTraceActive(n); err != nil {
			return err
		}
	}
	if err := lt.a.dp.SetTraceFilters(fs); err != nil {
		return err
	}
	return g.setTraceActive(n)
}

// stop frees s's slot; the last trace closes the ring reader.
func (lt *liveTracer) stop(s *traceSession) {
	lt.mu.Lock()
	lt.slots[s.slot] = nil
	if err := lt.install(); err != nil {
		lt.a.log.Error("live trace: remove filter", "err", err)
	}
	var r *datapath.TraceReader
	var done chan struct{}
	idle := true
	for _, x := range lt.slots {
		idle = idle && x == nil
	}
	if idle {
		r, done = lt.reader, lt.readDone
		lt.reader, lt.readDone = nil, nil
	}
	lt.mu.Unlock()
	if r != nil {
		r.Close()
		<-done
	}
}

// read groups events into packets until the reader is closed.
func (lt *liveTracer) read(r *datapath.TraceReader, done chan struct{}) {
	defer close(done)
	pending := map[uint32][]datapath.TraceEvent{}
	for {
		ev, err := r.Read()
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				lt.a.log.Error("live trace: read events", "err", err)
			}
			return
		}
		pkt := append(pending[ev.Packet], ev)
		if ev.Stage != datapath.TraceEnd {
			// A packet whose end never comes (its events did not fit
			// the ring) must not pile up.
			if len(pending) > 4096 {
				clear(pending)
			}
			pending[ev.Packet] = pkt
			continue
		}
		delete(pending, ev.Packet)
		lt.mu.Lock()
		for _, s := range lt.slots {
			if s == nil || s.filter.ID != ev.ID {
				continue
			}
			select {
			case s.out <- pkt:
			default:
				s.lost++
			}
		}
		lt.mu.Unlock()
	}
}

// parseMatch reads an address or a CIDR; "" matches anything.
func parseMatch(what, v string) (netip.Prefix, error) {
	if v == "" {
		return netip.Prefix{}, nil
	}
	if p, err := netip.ParsePrefix(v); err == nil && p.Addr().Is4() {
		return p.Masked(), nil
	}
	if a, err := netip.ParseAddr(v); err == nil && a.Is4() {
		return netip.PrefixFrom(a, 32), nil
	}
	return netip.Prefix{}, status.Errorf(codes.InvalidArgument, "%s %q: want an IPv4 address or CIDR", what, v)
}

// traceFilter turns a request into this node's filter: the port's own
// packets on its node, its VPC's packets from the overlay elsewhere.
func (a *Agent) traceFilter(r *agentv1.LiveTraceRequest) (datapath.TraceFilter, string, error) {
	f := datapath.TraceFilter{VPC: r.Vni, Protocol: uint8(r.Protocol), SrcPort: uint16(r.SrcPort), DstPort: uint16(r.DstPort), Rate: r.Rate}
	if r.Protocol > 255 || r.SrcPort > 65535 || r.DstPort > 65535 {
		return f, "", status.Errorf(codes.InvalidArgument, "protocol %d, ports %d/%d: out of range", r.Protocol, r.SrcPort, r.DstPort)
	}
	var err error
	if f.Src, err = parseMatch("src", r.Src); err != nil {
		return f, "", err
	}
	if f.Dst, err = parseMatch("dst", r.Dst); err != nil {
		return f, "", err
	}
	where := "packets arriving over VXLAN or, on a gateway, from the fabric"
	if r.Port == "" {
		return f, where, nil
	}
	a.mu.Lock()
	x := agentv1.IndexObjects(a.desired)
	a.mu.Unlock()
	var p *agentv1.Port
	if id, err := strconv.ParseUint(r.Port, 10, 32); err == nil {
		p = x.Ports[uint32(id)]
	} else {
		for _, q := range x.Ports {
			if q.GetName() == r.Port {
				p = q
			}
		}
	}
	if p == nil {
		return f, "", status.Errorf(codes.NotFound, "port %s is not in node %s's desired state", r.Port, a.cfg.Node)
	}
	if f.VPC == 0 {
		f.VPC = x.VPCs[p.GetVpcId()].GetVni()
	}
	if p.GetNode() == a.cfg.Node {
		f.Port = p.GetId()
		where = "packets sent by port " + p.GetName()
	} else {
		where = fmt.Sprintf("packets of VNI %d arriving over VXLAN or, on a gateway, from the fabric (port %s is on node %s)", f.VPC, p.GetName(), p.GetNode())
	}
	return f, where, nil
}

// LiveTrace installs the filter, streams the packets it takes and removes it.
func (s *liveTraceServer) LiveTrace(r *agentv1.LiveTraceRequest, stream agentv1.LiveTraceLocalService_LiveTraceServer) error {
	a := s.t.a
	if a.dp == nil {
		return status.Error(codes.FailedPrecondition, "live trace reads the eBPF data path's programs; this node uses the OVN realization (use ovn-trace)")
	}
	f, where, err := a.traceFilter(r)
	if err != nil {
		return err
	}
	sess, err := s.t.start(f)
	if err != nil {
		return err
	}
	ended := "cancelled"
	var traced uint64
	defer func() {
		counts, cerr := a.dp.TraceCounts(sess.slot + 1)
		s.t.stop(sess)
		sum := &agentv1.LiveTraceSummary{Traced: traced, EndedBy: ended}
		if cerr == nil {
			sum.Capped = counts[sess.slot].Capped
		}
		// The caller may be gone (cancelled): the summary is best effort.
		stream.Send(&agentv1.LiveTraceResponse{Node: a.cfg.Node, Summary: sum})
		a.log.Info("live trace ended", "filter", where, "traced", traced, "capped", sum.Capped, "ended_by", ended)
	}()
	a.log.Info("live trace started", "filter", where, "slot", sess.slot)
	if err := stream.Send(&agentv1.LiveTraceResponse{Node: a.cfg.Node, Started: true}); err != nil {
		return err
	}
	ctx := stream.Context()
	if r.DurationMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(r.DurationMs)*time.Millisecond)
		defer cancel()
	}
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && stream.Context().Err() == nil {
				ended = "duration"
				return nil
			}
			return status.FromContextError(ctx.Err()).Err()
		case evs := <-sess.out:
			traced++
			if err := stream.Send(&agentv1.LiveTraceResponse{Node: a.cfg.Node, Packets: []*agentv1.LiveTracePacket{a.renderTrace(evs)}}); err != nil {
				ended = "error"
				return err
			}
			if r.MaxPackets > 0 && traced >= r.MaxPackets {
				ended = "count"
				return nil
			}
		}
	}
}

// cDropNames are the data path's drop reasons as the model trace names them
// (bpf/c/maps.h DROP_* without the prefix) where the counters' names differ.
var cDropNames = map[datapath.DropReason]string{
	datapath.DropSpoofMAC: "SPOOF_MAC", datapath.DropSpoofIP: "SPOOF_IP", datapath.DropNATExhausted: "NAT_EXHAUSTED",
	datapath.DropNATProtocol: "NAT_PROTO", datapath.DropNoNATGateway: "NO_NAT", datapath.DropFIB: "FIB",
}

// DropReasonName is reason as the model trace's Reason says it.
func dropReasonName(r datapath.DropReason) string {
	if n, ok := cDropNames[r]; ok {
		return n
	}
	return strings.ToUpper(strings.ReplaceAll(r.String(), "-", "_"))
}

// dropStage is the model trace's stage of a drop reason.
func dropStage(r datapath.DropReason) string {
	if s, ok := gatewayDropStage(r); ok { // livetrace_gateway.go
		return s
	}
	switch r {
	case datapath.DropSGEgress, datapath.DropSGIngress, datapath.DropACLEgress, datapath.DropACLIngress:
		return r.String()
	case datapath.DropSpoofIP, datapath.DropSpoofMAC:
		return "anti-spoofing"
	case datapath.DropNoRoute, datapath.DropTTLExceeded, datapath.DropNotLocal:
		return "route"
	}
	return "drop"
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

func describePacket(e datapath.TraceEvent) string {
	switch e.Protocol {
	case 6, 17:
		s := fmt.Sprintf("%s %s:%d -> %s:%d", protoName(e.Protocol), e.Src, e.SrcPort, e.Dst, e.DstPort)
		if e.Protocol == 6 {
			var fl []string
			for _, f := range []struct {
				bit  uint8
				name string
			}{{0x02, "SYN"}, {0x10, "ACK"}, {0x01, "FIN"}, {0x04, "RST"}} {
				if e.TCPFlags&f.bit != 0 {
					fl = append(fl, f.name)
				}
			}
			if len(fl) > 0 {
				s += " [" + strings.Join(fl, ",") + "]"
			}
		}
		return s
	case 1:
		return fmt.Sprintf("icmp %s -> %s type %d code %d", e.Src, e.Dst, e.DstPort>>8, e.DstPort&0xff)
	}
	return fmt.Sprintf("%s %s -> %s", protoName(e.Protocol), e.Src, e.Dst)
}

// monotonicOffset converts bpf_ktime_get_ns (CLOCK_MONOTONIC) to wall time.
func monotonicOffset() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano()) - time.Duration(ts.Nano())
}

// renderTrace names the objects and rules of a packet's events from the
// node's desired state, as the model trace names them.
func (a *Agent) renderTrace(evs []datapath.TraceEvent) *agentv1.LiveTracePacket {
	a.mu.Lock()
	x := agentv1.IndexObjects(a.desired)
	var gw *gwNames // livetrace_gateway.go; only for packets with such stages
	for _, e := range evs {
		if e.Stage >= datapath.TraceGatewayIn {
			gw = newGWNames(a.desired)
			break
		}
	}
	a.mu.Unlock()
	out := &agentv1.LiveTracePacket{Node: a.cfg.Node}
	portName := func(id uint32) string {
		if p := x.Ports[id]; p != nil {
			return p.GetName()
		}
		return fmt.Sprintf("port %d", id)
	}
	nodeOf := func(ip netip.Addr) string {
		for _, p := range x.Peers {
			if p.GetUnderlayIp() == ip.String() {
				return fmt.Sprintf("node %s (underlay %s)", p.GetNode(), ip)
			}
		}
		return "underlay " + ip.String()
	}
	subnetOf := func(port uint32) *agentv1.Subnet { return x.Subnets[x.Ports[port].GetSubnetId()] }
	aclRule := func(port uint32, id uint32) (string, string) {
		acl := x.NetworkACLs[subnetOf(port).GetNetworkAclId()]
		for _, r := range acl.GetRules() {
			if r.GetId() == id {
				return acl.GetName(), strconv.Itoa(int(r.GetNumber()))
			}
		}
		return acl.GetName(), "*"
	}
	groupsOf := func(port uint32) string {
		var names []string
		for _, g := range x.Ports[port].GetSecurityGroupIds() {
			if sg := x.SecurityGroups[g]; sg != nil {
				names = append(names, sg.GetName())
			}
		}
		if len(names) == 0 {
			return portName(port)
		}
		return strings.Join(names, ", ")
	}
	sgOfRule := func(port, id uint32) string {
		for _, g := range x.Ports[port].GetSecurityGroupIds() {
			for _, r := range x.SecurityGroups[g].GetRules() {
				if r.GetId() == id {
					return x.SecurityGroups[g].GetName()
				}
			}
		}
		return groupsOf(port)
	}
	var delivered, tunneled, fabric bool
	var xdp bool           // entered the XDP load balancer: its verdicts are XDP's
	var dst netip.AddrPort // the traced packet's destination, as it entered
	var proto uint8        // the traced packet's
	var gwObject string    // what a drop at the gateway is about
	for _, e := range evs {
		st := &agentv1.LiveTraceStage{Stage: e.Stage.String(), Verdict: "pass"}
		switch e.Stage {
		case datapath.TraceEntry:
			out.TimestampUnixNano = int64(e.Time + monotonicOffset())
			out.Packet = describePacket(e)
			proto = e.Protocol
			dst = netip.AddrPortFrom(e.Dst, e.DstPort)
			switch e.Prog {
			case datapath.TraceFromOverlay:
				out.Entered = "overlay"
				st.Detail = fmt.Sprintf("arrived over VXLAN (VNI %d) on node %s", e.VPC, a.cfg.Node)
			case datapath.TraceFromLB:
				out.Entered = "uplink"
				xdp = true
				st.Object = e.Src.String()
				st.Detail = fmt.Sprintf("arrived from the fabric on gateway %s's uplink, for a load balancer's VIP (XDP, VNI %d)", a.cfg.Node, e.VPC)
			case datapath.TraceFromUplink:
				out.Entered = "uplink"
				st.Object = e.Src.String()
				st.Detail = fmt.Sprintf("arrived from the fabric on gateway %s's uplink", a.cfg.Node)
				if e.VPC != 0 {
					st.Detail += fmt.Sprintf(", for VNI %d", e.VPC)
				}
			default:
				out.Entered = "port " + portName(e.Port)
				st.Object = portName(e.Port)
				st.Detail = fmt.Sprintf("sent by the port on node %s (VNI %d)", a.cfg.Node, e.VPC)
			}
		case datapath.TraceSpoof:
			st.Object = portName(e.Port)
			st.Detail = "the source address is one of the port's"
		case datapath.TraceConntrack:
			st.Detail = "NEW: no entry, the packet goes through policy"
			if e.A != 0 {
				st.Detail = "ESTABLISHED: an entry of an allowed connection; security groups are skipped"
				if e.B == 1 {
					st.Detail += " (a reply)"
				}
			}
		case datapath.TraceACLEgress, datapath.TraceACLIngress:
			if e.B == 0 {
				st.Object = subnetOf(e.Port).GetName()
				st.Detail = "the subnet has no network ACL: allowed"
				break
			}
			st.Object, st.Rule = aclRule(e.Port, e.A)
			st.Detail = fmt.Sprintf("rule %s allows", st.Rule)
		case datapath.TraceSGEgress, datapath.TraceSGIngress:
			if e.B == 1 {
				st.Verdict, st.Object = "skip", portName(e.Port)
				st.Detail = "established connection: security groups are stateful"
				break
			}
			st.Object, st.Rule = sgOfRule(e.Port, e.A), fmt.Sprintf("#%d", e.A)
			st.Detail = fmt.Sprintf("rule %d of %s allows", e.A, st.Object)
		case datapath.TraceRoute:
			switch e.A {
			case 1:
				st.Rule, st.Object = "local", portName(e.B)
				st.Detail = "the destination is port " + portName(e.B) + " on this node"
				if out.Entered != "overlay" { // as the model says it
					out.Stages = append(out.Stages, st)
					st = &agentv1.LiveTraceStage{Stage: "forward", Verdict: "pass", Object: portName(e.B),
						Detail: "destination port is on the same node: no tunnel"}
				}
			case 2:
				st.Rule = "remote"
				st.Detail = "the destination is on " + nodeOf(datapath.AddrOfU32(e.B))
			case 0:
				st.Rule = "outside"
				st.Detail = "outside the VPC's routes: to the gateway at " + nodeOf(datapath.AddrOfU32(e.B))
			}
		case datapath.TraceGatewayIn, datapath.TraceNAT, datapath.TraceGatewayOut, datapath.TraceService:
			if e.Stage == datapath.TraceService && datapath.ServiceHow(e.Kind) == datapath.ServiceXDP {
				id, _ := a.nslb.backendOfSlot(e.B) // the slot -> LbBackend id
				e.B = id
			}
			if obj := gw.renderGateway(st, e, proto, out.Entered, portName); obj != "" {
				gwObject = obj
			}
			fabric = fabric || e.Stage == datapath.TraceGatewayOut
		case datapath.TraceTunnel:
			tunneled = true
			st.Detail = fmt.Sprintf("VXLAN VNI %d to %s", e.B, nodeOf(datapath.AddrOfU32(e.A)))
		case datapath.TraceDeliver:
			delivered = true
			st.Verdict, st.Object = "deliver", portName(e.Port)
			st.Detail = "delivered to port " + portName(e.Port)
		case datapath.TraceDrop:
			reason := e.Reason()
			st.Stage, st.Verdict = dropStage(reason), "drop"
			out.DropReason = dropReasonName(reason)
			switch reason {
			case datapath.DropACLEgress, datapath.DropACLIngress:
				st.Object, st.Rule = aclRule(e.Port, e.B)
				st.Detail = fmt.Sprintf("rule %s denies", st.Rule)
				if st.Rule == "*" {
					st.Detail = "no rule matches: the default rule denies"
				}
			case datapath.DropSGEgress, datapath.DropSGIngress:
				st.Object, st.Rule = groupsOf(e.Port), "none"
				st.Detail = "no rule of the port's security groups allows it"
			case datapath.DropLBNoBackend:
				st.Object = portName(e.Port)
				if e.Port == 0 { // the gateway's XDP load balancer
					st.Object = "VIP " + dst.String()
				}
				st.Detail = "no usable backend: every backend is unhealthy, draining or removed"
			case datapath.DropNATNoFlow, datapath.DropEIPUnbound, datapath.DropNATProtocol, datapath.DropNoNATGateway,
				datapath.DropNATExhausted, datapath.DropFIB:
				st.Object = gwObject // the gateway stage's elastic IP or NAT gateway
				if st.Object == "" {
					st.Object = "gateway " + a.cfg.Node
				}
				st.Detail = "dropped at the gateway: " + reason.String()
			default:
				st.Object = portName(e.Port)
				st.Detail = "dropped: " + reason.String()
			}
		case datapath.TraceEnd:
			if xdp {
				out.Verdict = xdpVerdict(int32(e.A), tunneled)
				continue
			}
			switch {
			case int32(e.A) == 2:
				out.Verdict = "DROPPED"
			case int32(e.A) == -1: // TCX_NEXT: not for the data path
				out.Verdict = "TO_HOST"
			case delivered:
				out.Verdict = "DELIVERED"
			case tunneled:
				out.Verdict = "TUNNELED"
			case fabric:
				out.Verdict = "TO_FABRIC"
			default:
				out.Verdict = fmt.Sprintf("tc verdict %d", int32(e.A))
			}
			continue
		}
		out.Stages = append(out.Stages, st)
	}
	return out
}

// xdpVerdict is a traced packet's verdict in the XDP load balancer.
func xdpVerdict(v int32, tunneled bool) string {
	switch v {
	case 1: // XDP_DROP
		return "DROPPED"
	case 2: // XDP_PASS: the gateway's tc programs and the host see it
		return "TO_HOST"
	case 3, 4: // XDP_TX, XDP_REDIRECT
		if tunneled {
			return "TUNNELED"
		}
		return "FORWARDED"
	}
	return fmt.Sprintf("xdp verdict %d", v)
}
