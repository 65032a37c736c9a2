package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/bpf"
)

// ReplayDirection says which half of the pipeline a replayed frame enters.
type ReplayDirection int

const (
	// ReplayFromPort: the frame is sent by the port's workload (the port's
	// own program: anti-spoofing, egress and, for local destinations,
	// ingress policy).
	ReplayFromPort ReplayDirection = iota
	// ReplayToPort: the frame arrives for the port over VXLAN from another
	// node, in the port's VPC (the overlay program: ingress policy).
	ReplayToPort
)

func (d ReplayDirection) String() string {
	if d == ReplayToPort {
		return "to-port"
	}
	return "from-port"
}

// Verdict is what the data path did with a replayed frame.
type Verdict string

const (
	VerdictDrop     Verdict = "drop"
	VerdictDeliver  Verdict = "deliver"   // to a port on this node
	VerdictTunnel   Verdict = "tunnel"    // VXLAN to another node or a gateway
	VerdictARPReply Verdict = "arp-reply" // answered back to the port
	VerdictRedirect Verdict = "redirect"  // elsewhere (a gateway's uplink)
	VerdictPass     Verdict = "pass"      // left to the host stack / the next program
)

// ReplayResult is the data path's answer for one frame.
type ReplayResult struct {
	Verdict      Verdict
	Reason       DropReason // for VerdictDrop; 0 if no counter said why
	DropPort     uint32     // port whose counter counted the drop (0: before a port was known)
	OutPort      uint32     // for VerdictDeliver
	TunnelRemote netip.Addr // for VerdictTunnel
	Gateway      bool       // the tunnel leads to a gateway (no VPC route for the destination)
	VNI          uint32
	ConntrackHit bool     // part of a tracked connection: security groups were not consulted
	Stages       []string // the pipeline's stages up to the verdict, in order
	Frame        []byte   // the frame as the data path left it (nil for drops)
	// Allowed: for VerdictDeliver and VerdictTunnel, the rules that let the
	// packet through (from the test entries' context; see REPLAY_RULES in
	// bpf/c/meridian.c). Rule ids as the controller gave them; 0: no
	// network ACL, or security groups skipped (ConntrackHit), or a side
	// this node does not run (the egress side of a ReplayToPort, the
	// ingress side of a tunnelled packet).
	Allowed *AllowedBy
}

// AllowedBy are the rules that allowed a forwarded packet.
type AllowedBy struct {
	ACLEgress, SGEgress, ACLIngress, SGIngress uint32
}

// Errors of Replay that are the caller's: nothing ran.
var (
	ErrReplayInput       = errors.New("invalid replay input")
	ErrReplayPortNotHere = errors.New("port not on this node")
)

// Limits of a replay. BPF_PROG_TEST_RUN takes an skb of at most about a
// page, and a request bounds its own work.
const (
	MaxReplayPackets = 10000
	MaxReplayFrame   = 3500
	minReplayFrame   = 14 // an Ethernet header
)

// skb context words (struct __sk_buff, in 32-bit words).
const (
	ctxMark           = 2
	ctxPriority       = 8
	ctxIngressIfindex = 9
	ctxCB0            = 12
	ctxWords          = 48
)

// Replay runs frames through port's pipeline with BPF_PROG_TEST_RUN: no
// packet is sent, but the live maps are used, so each frame leaves what a
// real one would: a conntrack entry for an accepted new flow, a drop
// counter increment and a drop event for a dropped one. Every frame and the
// port are checked before any runs, so bad input changes nothing.
func (d *Datapath) Replay(port uint32, dir ReplayDirection, frames [][]byte) ([]ReplayResult, error) {
	if dir != ReplayFromPort && dir != ReplayToPort {
		return nil, fmt.Errorf("%w: replay on port %d: unknown direction %d", ErrReplayInput, port, dir)
	}
	if len(frames) == 0 {
		return nil, fmt.Errorf("%w: replay on port %d: no packets", ErrReplayInput, port)
	}
	if len(frames) > MaxReplayPackets {
		return nil, fmt.Errorf("%w: replay on port %d: %d packets, at most %d per replay", ErrReplayInput, port, len(frames), MaxReplayPackets)
	}
	for i, f := range frames {
		if len(f) < minReplayFrame || len(f) > MaxReplayFrame {
			return nil, fmt.Errorf("%w: replay on port %d: packet %d is %d bytes, want an Ethernet frame of %d to %d bytes",
				ErrReplayInput, port, i, len(f), minReplayFrame, MaxReplayFrame)
		}
	}
	var info bpf.MeridianPortInfo
	if err := d.objs.Ports.Lookup(port, &info); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("replay: port %d is not on this node: %w", port, ErrReplayPortNotHere)
		}
		return nil, fmt.Errorf("replay: look up port %d: %w", port, err)
	}

	// The drop and conntrack counters are per CPU and a test run runs on
	// the calling CPU: pinned to one CPU, the counters that moved there
	// during a run are the run's (barring a real packet on that CPU in the
	// same microseconds).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var saved unix.CPUSet
	if err := unix.SchedGetaffinity(0, &saved); err != nil {
		return nil, fmt.Errorf("replay: get CPU affinity: %w", err)
	}
	cpu := -1
	for c := 0; c < len(saved)*64; c++ {
		if saved.IsSet(c) {
			cpu = c
			break
		}
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return nil, fmt.Errorf("replay: pin to CPU %d: %w", cpu, err)
	}
	defer unix.SchedSetaffinity(0, &saved)

	prog := d.objs.MeridianFromPortTest
	if dir == ReplayToPort {
		prog = d.objs.MeridianFromOverlayMark
	}
	out := make([]ReplayResult, 0, len(frames))
	for i, f := range frames {
		r, err := d.replayOne(prog, cpu, port, info, dir, f)
		if err != nil {
			return nil, fmt.Errorf("replay on port %d: packet %d: %w", port, i, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func (d *Datapath) replayOne(prog *ebpf.Program, cpu int, port uint32, info bpf.MeridianPortInfo,
	dir ReplayDirection, frame []byte) (ReplayResult, error) {
	var ctx, ctxOut [ctxWords]uint32
	if dir == ReplayFromPort {
		ctx[ctxIngressIfindex] = info.Ifindex
	} else {
		// The overlay test entry takes the VNI (the VPC) from the mark.
		ctx[ctxMark] = info.Vpc
		d.overlayIfindex(&ctx)
	}
	dropsBefore, err := d.dropsOn(cpu)
	if err != nil {
		return ReplayResult{}, err
	}
	ctBefore, err := d.ctHitsOn(cpu)
	if err != nil {
		return ReplayResult{}, err
	}
	data := make([]byte, len(frame)+512)
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: data, Context: ctx, ContextOut: &ctxOut})
	if err != nil {
		return ReplayResult{}, fmt.Errorf("test run: %w", err)
	}
	dropsAfter, err := d.dropsOn(cpu)
	if err != nil {
		return ReplayResult{}, err
	}
	ctAfter, err := d.ctHitsOn(cpu)
	if err != nil {
		return ReplayResult{}, err
	}
	r := ReplayResult{ConntrackHit: ctAfter > ctBefore}
	for k, v := range dropsAfter {
		if v != dropsBefore[k] && (r.Reason == 0 || k.Port == port) {
			r.Reason, r.DropPort = DropReason(k.Reason), k.Port
		}
	}
	dst, hasDst := ipv4Dst(frame)
	switch ret {
	case tcActShot:
		r.Verdict = VerdictDrop
	case tcActRedirect:
		r.Frame = trimFrame(data, frame)
		switch {
		case ctxOut[ctxCB0] != 0:
			r.Verdict, r.TunnelRemote, r.VNI = VerdictTunnel, addrOf(ctxOut[ctxCB0]), ctxOut[ctxCB0+1]
			r.Gateway = !hasDst || !d.hasRoute(info.Vpc, dst)
		case len(frame) >= 14 && frame[12] == 0x08 && frame[13] == 0x06:
			r.Verdict = VerdictARPReply
		default:
			r.Verdict = VerdictRedirect
			if hasDst {
				var e bpf.MeridianRouteEntry
				if err := d.objs.Routes.Lookup(bpf.MeridianRouteKey{Prefixlen: 64, Vpc: info.Vpc, Ip: be32(dst)}, &e); err == nil && e.Kind == routeLocal {
					r.Verdict, r.OutPort = VerdictDeliver, e.Port
				}
			}
		}
	default:
		r.Verdict = VerdictPass
		r.Frame = trimFrame(data, frame)
	}
	if r.Verdict == VerdictDeliver || r.Verdict == VerdictTunnel {
		// The test entries leave the allowing rules in the context.
		r.Allowed = &AllowedBy{ACLIngress: ctxOut[ctxCB0+3], SGIngress: ctxOut[ctxCB0+4]}
		if dir == ReplayFromPort {
			r.Allowed.ACLEgress, r.Allowed.SGEgress = ctxOut[ctxMark], ctxOut[ctxPriority]
		}
	}
	r.Stages = stages(dir, port, info, r)
	return r, nil
}

// trimFrame cuts the output buffer to the frame's length: test run does
// not say how long the output is, and the programs never change a frame's
// length on these paths.
func trimFrame(out, in []byte) []byte {
	return append([]byte(nil), out[:len(in)]...)
}

// overlayIfindex sets the ingress ifindex of an overlay replay to the
// node's VXLAN device, where such frames really arrive.
func (d *Datapath) overlayIfindex(ctx *[ctxWords]uint32) {
	var cfg bpf.MeridianNodeConfig
	if err := d.objs.NodeCfg.Lookup(uint32(0), &cfg); err == nil {
		ctx[ctxIngressIfindex] = cfg.VxlanIfindex
	}
}

func (d *Datapath) hasRoute(vpc uint32, dst netip.Addr) bool {
	var e bpf.MeridianRouteEntry
	err := d.objs.Routes.Lookup(bpf.MeridianRouteKey{Prefixlen: 64, Vpc: vpc, Ip: be32(dst)}, &e)
	return err == nil && e.Kind != routeDrop
}

func ipv4Dst(frame []byte) (netip.Addr, bool) {
	if len(frame) < 34 || frame[12] != 0x08 || frame[13] != 0x00 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(frame[30:34])), true
}

// dropsOn reads the drop counters of one CPU.
func (d *Datapath) dropsOn(cpu int) (map[bpf.MeridianDropKey]uint64, error) {
	m := map[bpf.MeridianDropKey]uint64{}
	var k bpf.MeridianDropKey
	var perCPU []uint64
	it := d.objs.Drops.Iterate()
	for it.Next(&k, &perCPU) {
		if cpu < len(perCPU) {
			m[k] = perCPU[cpu]
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read drop counters: %w", err)
	}
	return m, nil
}

// ctHitsOn reads the conntrack hit counter (index 2, see ConntrackStats)
// of one CPU.
func (d *Datapath) ctHitsOn(cpu int) (uint64, error) {
	var perCPU []uint64
	if err := d.objs.CtStats.Lookup(uint32(2), &perCPU); err != nil {
		return 0, fmt.Errorf("read conntrack hits: %w", err)
	}
	if cpu >= len(perCPU) {
		return 0, nil
	}
	return perCPU[cpu], nil
}

// stage is one step of a pipeline and the drop reasons it decides.
type stage struct {
	name    string
	reasons []DropReason
}

// The pipelines' order, as in bpf/c/meridian.c (from_port, from_overlay).
var (
	fromPortStages = []stage{
		{"port", []DropReason{DropUnknownPort}},
		{"anti-spoofing and parsing", []DropReason{DropMalformed, DropSpoofMAC, DropSpoofIP, DropNotIPv4, DropFragment, DropARP}},
		{"egress network ACL", []DropReason{DropACLEgress}},
		{"egress security groups", []DropReason{DropSGEgress}},
		{"route", []DropReason{DropNoRoute, DropTTLExceeded, DropNoGateway, DropEIPUnbound, DropNoNATGateway, DropNATExhausted, DropNATProtocol, DropFIB,
			DropLBNoBackend}}, // a service VIP with no backend: nowhere to route it
		{"ingress network ACL", []DropReason{DropACLIngress}},
		{"ingress security groups", []DropReason{DropSGIngress}},
	}
	toPortStages = []stage{
		{"parsing", []DropReason{DropMalformed, DropNotIPv4, DropFragment}},
		{"route", []DropReason{DropNoRoute, DropNotLocal, DropNATNoFlow, DropNATProtocol, DropNATExhausted, DropFIB, DropEIPUnbound, DropNoNATGateway}},
		{"ingress network ACL", []DropReason{DropACLIngress}},
		{"ingress security groups", []DropReason{DropSGIngress}},
	}
)

// stages describes the run: every stage before the one that dropped passed
// (the pipeline is a fixed sequence), and a forwarded packet passed them
// all. Stages a verdict cannot show are not invented.
func stages(dir ReplayDirection, port uint32, info bpf.MeridianPortInfo, r ReplayResult) []string {
	list := fromPortStages
	var out []string
	if dir == ReplayToPort {
		list = toPortStages
		out = append(out, fmt.Sprintf("from the overlay: VNI %d (port %d's VPC)", info.Vpc, port))
	}
	if r.Verdict == VerdictARPReply {
		return append(out, fmt.Sprintf("port %d (ifindex %d): passed", port, info.Ifindex),
			"ARP request answered by the virtual router")
	}
	for _, s := range list {
		decided := false
		for _, reason := range s.reasons {
			if r.Verdict == VerdictDrop && reason == r.Reason {
				decided = true
			}
		}
		if r.Verdict == VerdictDrop && r.Reason == DropUnknownSubnet && s.name == "route" {
			decided = true // a port's subnet is looked up around the route
		}
		if decided {
			return append(out, fmt.Sprintf("%s: dropped (%v, counted at port %d)", s.name, r.Reason, r.DropPort))
		}
		if r.Verdict == VerdictDrop && r.Reason == 0 {
			break
		}
		detail := "passed"
		switch {
		case s.name == "port":
			detail = fmt.Sprintf("%d (ifindex %d, VPC %d, subnet %d)", port, info.Ifindex, info.Vpc, info.Subnet)
		case s.name == "route" && r.Verdict == VerdictDeliver:
			detail = fmt.Sprintf("local port %d", r.OutPort)
		case s.name == "route" && r.Verdict == VerdictTunnel && r.Gateway:
			detail = fmt.Sprintf("outside the VPC, via gateway %v", r.TunnelRemote)
		case s.name == "route" && r.Verdict == VerdictDrop && r.DropPort != 0 && (r.Reason == DropSGIngress || r.Reason == DropACLIngress):
			// dropped by the destination's ingress policy: counted at it
			detail = fmt.Sprintf("local port %d", r.DropPort)
		case s.name == "route" && r.Verdict == VerdictTunnel:
			detail = fmt.Sprintf("remote node %v", r.TunnelRemote)
		}
		if r.ConntrackHit && (s.name == "egress security groups" || s.name == "ingress security groups") {
			detail = "skipped (established connection in conntrack)"
		}
		if s.name == "port" {
			out = append(out, "port "+detail)
			continue
		}
		out = append(out, s.name+": "+detail)
	}
	switch r.Verdict {
	case VerdictDrop:
		out = append(out, "dropped without a counted reason")
	case VerdictDeliver:
		out = append(out, fmt.Sprintf("delivered to port %d", r.OutPort))
	case VerdictTunnel:
		to := "node"
		if r.Gateway {
			to = "gateway"
		}
		out = append(out, fmt.Sprintf("tunnelled to %s %v (VNI %d)", to, r.TunnelRemote, r.VNI))
	case VerdictRedirect:
		out = append(out, "redirected (not to a port of this node)")
	case VerdictPass:
		out = append(out, "passed to the host stack")
	}
	return out
}

// BPF return codes.
const (
	tcActShot     = 2
	tcActRedirect = 7
)
