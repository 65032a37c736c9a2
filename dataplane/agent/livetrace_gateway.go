package agent

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// The live trace's gateway and service stages (datapath.TraceGatewayIn,
// TraceNAT, TraceGatewayOut, TraceService) carry addresses; gwNames finds
// the objects they belong to in the node's desired state, as the model
// trace (controller/trace) names them.
type gwNames struct {
	eipByAddr map[netip.Addr]*agentv1.ElasticIp
	ngwByAddr map[netip.Addr]*agentv1.NatGateway
	ngwByID   map[uint32]*agentv1.NatGateway
	svcByID   map[uint32]*agentv1.LbService
	svcByVIP  map[svcListener]*agentv1.LbService
}

type svcListener struct {
	vip   netip.Addr
	port  uint16
	proto uint8
}

func newGWNames(objs map[string]*agentv1.Object) *gwNames {
	n := &gwNames{eipByAddr: map[netip.Addr]*agentv1.ElasticIp{}, ngwByAddr: map[netip.Addr]*agentv1.NatGateway{},
		ngwByID: map[uint32]*agentv1.NatGateway{}, svcByID: map[uint32]*agentv1.LbService{}, svcByVIP: map[svcListener]*agentv1.LbService{}}
	for _, o := range objs {
		switch {
		case o.GetElasticIp() != nil:
			e := o.GetElasticIp()
			if a, err := netip.ParseAddr(e.GetAddress()); err == nil {
				n.eipByAddr[a] = e
			}
		case o.GetNatGateway() != nil:
			g := o.GetNatGateway()
			n.ngwByID[g.GetId()] = g
			for _, s := range g.GetAddresses() {
				if a, err := netip.ParseAddr(s); err == nil {
					n.ngwByAddr[a] = g
				}
			}
		case o.GetLbService() != nil:
			s := o.GetLbService()
			n.svcByID[s.GetId()] = s
			if a, err := netip.ParseAddr(s.GetVip()); err == nil {
				n.svcByVIP[svcListener{a, uint16(s.GetPort()), uint8(s.GetProtocol())}] = s
			}
		}
	}
	return n
}

// eipName is the elastic IP's API name, else its address.
func (n *gwNames) eipName(a netip.Addr) string {
	if e := n.eipByAddr[a]; e != nil && e.GetName() != "" {
		return e.GetName()
	}
	return "elastic IP " + a.String()
}

// ngwName is the NAT gateway's API name (by address, else by id).
func (n *gwNames) ngwName(a netip.Addr, id uint32) string {
	if g := n.ngwByAddr[a]; g != nil {
		return g.GetName()
	}
	if g := n.ngwByID[id]; g != nil {
		return g.GetName()
	}
	if id != 0 {
		return fmt.Sprintf("NAT gateway %d", id)
	}
	return "NAT gateway of " + a.String()
}

func (n *gwNames) service(id uint32, vip netip.AddrPort, proto uint8) *agentv1.LbService {
	if s := n.svcByID[id]; s != nil && id != 0 {
		return s
	}
	return n.svcByVIP[svcListener{vip.Addr(), vip.Port(), proto}]
}

// apString prints an address and port of a packet of protocol proto: the
// address alone where ports mean nothing (ICMP: the echo id).
func apString(a netip.AddrPort, proto uint8) string {
	if proto != 6 && proto != 17 {
		return a.Addr().String()
	}
	return a.String()
}

// renderGateway fills st for a gateway or service stage. proto is the
// traced packet's; entered where it came in; port names a port id.
// Returns the object a later drop at the gateway is about.
func (n *gwNames) renderGateway(st *agentv1.LiveTraceStage, e datapath.TraceEvent, proto uint8, entered string, portName func(uint32) string) string {
	from, to := apString(e.From, proto), apString(e.To, proto)
	switch e.Stage {
	case datapath.TraceGatewayIn:
		pub := e.To.Addr()
		prefix := ""
		if entered == "overlay" {
			prefix = "hairpin: "
		}
		switch datapath.GatewayMatch(e.Kind) {
		case datapath.GatewayElasticIP:
			st.Object, st.Rule = n.eipName(pub), "elastic IP "+pub.String()
			st.Detail = fmt.Sprintf("%s%s -> %s: the destination is an elastic IP this gateway serves (VNI %d)", prefix, from, to, e.A)
			if x := n.eipByAddr[pub]; x != nil && x.GetPortId() != 0 {
				st.Detail += ", of port " + portName(x.GetPortId())
			}
		case datapath.GatewayNATAddress:
			st.Object, st.Rule = n.ngwName(pub, e.A), "NAT gateway address "+pub.String()
			st.Detail = fmt.Sprintf("%s%s -> %s: the destination is an address of NAT gateway %s: its port mappings and the replies of its flows come in",
				prefix, from, to, st.Object)
		default:
			st.Object = pub.String()
			st.Detail = fmt.Sprintf("%s is no public address this gateway serves (no elastic IP, no NAT gateway address here): left to the host's stack", pub)
		}
		return st.Object
	case datapath.TraceNAT:
		k := datapath.NATKind(e.Kind)
		dir := "source"
		if k.Dst() {
			dir = "destination"
		}
		switch k.Of() {
		case datapath.NATElasticIP:
			pub, priv := e.To.Addr(), e.From.Addr()
			if k.Dst() {
				pub, priv = priv, pub
			}
			st.Object = n.eipName(pub)
			st.Rule = fmt.Sprintf("%s -> %s", e.From.Addr(), e.To.Addr())
			if k.Dst() {
				st.Rule = fmt.Sprintf("elastic IP %s -> %s (stateless 1:1)", pub, priv)
			}
			st.Detail = fmt.Sprintf("%s rewritten %s -> %s: elastic IP %s of %s", dir, from, to, pub, priv)
		case datapath.NATGatewayFlow, datapath.NATGatewayNewFlow:
			pub := e.To
			if k.Dst() {
				pub = e.From
			}
			st.Object = n.ngwName(pub.Addr(), 0)
			st.Rule = fmt.Sprintf("%s -> %s", from, to)
			switch {
			case k.Dst():
				st.Rule = "reply of a NAT flow: " + st.Rule
				st.Detail = fmt.Sprintf("destination rewritten %s -> %s: a reply of the flow that holds %s", from, to, apString(pub, proto))
			case k.Of() == datapath.NATGatewayNewFlow:
				st.Detail = fmt.Sprintf("source rewritten %s -> %s: a new flow took public port %d", from, to, pub.Port())
				if g := n.ngwByAddr[pub.Addr()]; g != nil {
					st.Detail += fmt.Sprintf(" of %d-%d", g.GetPortMin(), g.GetPortMax())
				}
				if proto == 1 {
					st.Detail = fmt.Sprintf("source rewritten %s -> %s: a new flow took echo id %d", from, to, pub.Port())
				}
			default:
				st.Detail = fmt.Sprintf("source rewritten %s -> %s: the flow's public address and port", from, to)
			}
		case datapath.NATPortMapping:
			pub := e.To
			if k.Dst() {
				pub = e.From
			}
			st.Object = n.ngwName(pub.Addr(), 0)
			st.Rule = fmt.Sprintf("port mapping %s %s -> %s", protoName(proto), from, to)
			st.Detail = fmt.Sprintf("%s rewritten %s -> %s by a port mapping of %s", dir, from, to, st.Object)
		case datapath.NATServiceReturn:
			if s := n.service(0, e.From, proto); s != nil {
				st.Object = s.GetName()
			}
			st.Detail = fmt.Sprintf("source %s is a north-south service's VIP: the reply leaves as it is (direct server return)", from)
		default:
			st.Detail = fmt.Sprintf("%s %s -> %s", k, from, to)
		}
		return st.Object
	case datapath.TraceGatewayOut:
		st.Verdict = "deliver"
		st.Object = fmt.Sprintf("ifindex %d", e.A)
		if ifc, err := net.InterfaceByIndex(int(e.A)); err == nil {
			st.Object = ifc.Name
		}
		nh := datapath.AddrOfU32(e.B)
		st.Rule = "next hop " + nh.String()
		st.Detail = fmt.Sprintf("%s -> %s leaves toward the fabric out of %s, next hop %s (the gateway's routing table)", e.From.Addr(), e.To.Addr(), st.Object, nh)
		if e.Kind == 1 {
			st.Detail += "; its MAC is not known yet: the kernel resolves it"
		}
	case datapath.TraceService:
		how := datapath.ServiceHow(e.Kind)
		vip := e.From
		if how == datapath.ServiceReply {
			vip = e.To
		}
		s := n.service(e.A, vip, proto)
		st.Object = s.GetName()
		if s == nil {
			st.Object = "VIP " + apString(vip, proto)
		}
		backend := func() string {
			for _, b := range s.GetBackends() {
				if (e.B != 0 && b.GetId() == e.B) || (e.B == 0 && b.GetAddress() == e.To.Addr().String() && b.GetPort() == uint32(e.To.Port())) {
					at := net.JoinHostPort(b.GetAddress(), strconv.Itoa(int(b.GetPort())))
					// A port of another node is not in this node's state:
					// its number says nothing, its address does.
					if name := portName(b.GetPortId()); b.GetPortId() != 0 && !strings.HasPrefix(name, "port ") {
						return fmt.Sprintf("backend %d (port %s)", b.GetId(), name)
					}
					return fmt.Sprintf("backend %d (%s)", b.GetId(), at)
				}
			}
			if e.B != 0 {
				return fmt.Sprintf("backend %d", e.B)
			}
			return "backend"
		}
		switch how {
		case datapath.ServiceMaglev, datapath.ServiceStored:
			st.Rule = fmt.Sprintf("backend %d %s", e.B, to)
			why := "a new flow: the service's Maglev table chose it"
			if how == datapath.ServiceStored {
				why = "an established flow: the backend it was given"
			}
			st.Detail = fmt.Sprintf("destination %s rewritten to %s %s, %s; policy sees the backend's address and port", from, backend(), to, why)
		case datapath.ServiceLocal:
			st.Rule = "backend " + to
			st.Detail = fmt.Sprintf("north-south: destination %s rewritten to %s %s, the local backend whose port's MAC the load balancer addressed", from, backend(), to)
		case datapath.ServiceReply:
			st.Detail = fmt.Sprintf("reply of a translated flow: source %s rewritten back to the VIP %s", from, to)
		case datapath.ServiceXDP:
			// renderTrace put the backend's id in B (0: not known here)
			chosen := "a backend"
			if e.B != 0 {
				st.Rule = fmt.Sprintf("backend %d", e.B)
				chosen = backend()
			}
			st.Detail = fmt.Sprintf("north-south: the gateway's load balancer chose %s (its connection table, else the Maglev table) on the node at %s; the packet goes there unchanged (direct server return)",
				chosen, e.To.Addr())
		}
	}
	return ""
}

// gatewayDropStage is the model trace's stage of a drop at a gateway or a
// service (controller/trace: fromOutside, outbound, loadBalance).
func gatewayDropStage(r datapath.DropReason) (string, bool) {
	switch r {
	case datapath.DropNATNoFlow:
		return "gateway", true
	case datapath.DropEIPUnbound, datapath.DropNATProtocol, datapath.DropNoNATGateway, datapath.DropNATExhausted:
		return "nat", true
	case datapath.DropFIB:
		return "uplink", true
	case datapath.DropLBNoBackend:
		return "load-balancer", true
	case datapath.DropNoGateway:
		return "route", true
	}
	return "", false
}
