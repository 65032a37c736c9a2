package trace

import (
	"fmt"
	"net/netip"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
)

// route is the VPC route lookup of a packet from port src on node: the
// destination port, or (nil) the way out through a gateway, or a drop.
//
// The eBPF data path routes to ports only (a /32 per address of every
// bound port, the VPC CIDRs as drop routes, everything else to a gateway
// when the source has an elastic IP or a NAT gateway); route tables are
// realized by OVN nodes only (Logical_Router_Static_Route), so a route
// table's route decides only when the source node is an OVN node.
func (w *walk) route(node string, src *agentv1.Port, sub *agentv1.Subnet, vpc *agentv1.Vpc, pkt Packet) (*agentv1.Port, endpoint) {
	m := w.m
	rt := m.x.RouteTables[sub.GetRouteTableId()]
	rtRoute, rtBits := lpmRoute(rt, pkt.Dst)
	target := m.byAddr[vpcAddr{src.GetVpcId(), pkt.Dst}]
	if rtRoute != nil {
		connected := -1
		if target != nil {
			if p, err := netip.ParsePrefix(m.x.Subnets[target.GetSubnetId()].GetCidr()); err == nil {
				connected = p.Bits()
			}
		}
		switch {
		case w.realization(node) == "ovn" && rtBits > connected:
			return w.viaRouteTable(node, src, rt, rtRoute, pkt)
		case w.realization(node) == "ebpf":
			w.note("route table %s has route %s -> %s for %s, which the eBPF data path of node %s does not realize yet (it routes to ports only): ignored",
				rt.GetName(), rtRoute.GetDestination(), nextHop(rtRoute), pkt.Dst, node)
		}
	}
	s := Stage{Stage: "route", Node: node, Object: vpc.GetName()}
	if target != nil {
		tsub := m.x.Subnets[target.GetSubnetId()]
		s.Rule = "local " + tsub.GetCidr()
		switch {
		case target.GetNode() == "":
			s.Detail = fmt.Sprintf("%s is the address of port %s, which is not bound to a node: no route to it", pkt.Dst, target.GetName())
			w.drop(s, "NO_ROUTE")
			return nil, endpoint{}
		case target.GetNode() != node && m.x.Peers[target.GetNode()] == nil:
			s.Detail = fmt.Sprintf("port %s is bound to node %s, which is not registered: no route to it", target.GetName(), target.GetNode())
			w.drop(s, "NO_ROUTE")
			return nil, endpoint{}
		}
		s.Verdict = Pass
		s.Detail = fmt.Sprintf("%s is port %s (subnet %s) on node %s", pkt.Dst, target.GetName(), tsub.GetName(), target.GetNode())
		w.add(s)
		return target, endpoint{}
	}
	for _, p := range m.vpcPrefix[src.GetVpcId()] {
		if p.Contains(pkt.Dst) {
			s.Rule = "local " + p.String()
			s.Detail = fmt.Sprintf("%s is inside the VPC's CIDR %s, but no port of the VPC has that address", pkt.Dst, p)
			w.drop(s, "NO_ROUTE")
			return nil, endpoint{}
		}
	}
	return nil, w.outbound(node, src, vpc, pkt)
}

// lpmRoute is the longest route of table rt containing dst (IPv4).
func lpmRoute(rt *agentv1.RouteTable, dst netip.Addr) (*agentv1.Route, int) {
	var best *agentv1.Route
	bits := -1
	for _, r := range rt.GetRoutes() {
		p, err := netip.ParsePrefix(r.GetDestination())
		if err != nil || !p.Addr().Is4() || !p.Contains(dst) {
			continue
		}
		if p.Bits() > bits {
			best, bits = r, p.Bits()
		}
	}
	return best, bits
}

func nextHop(r *agentv1.Route) string {
	switch {
	case r.GetBlackhole():
		return "blackhole"
	case r.GetNextHopIp() != "":
		return r.GetNextHopIp()
	case r.GetNextHopPortId() != 0:
		return fmt.Sprintf("port %d", r.GetNextHopPortId())
	}
	return "?"
}

// viaRouteTable follows a route of the source subnet's route table (OVN
// nodes): a blackhole, or a next-hop port (given or by address).
func (w *walk) viaRouteTable(node string, src *agentv1.Port, rt *agentv1.RouteTable, r *agentv1.Route, pkt Packet) (*agentv1.Port, endpoint) {
	s := Stage{Stage: "route", Node: node, Object: rt.GetName(), Rule: r.GetDestination() + " -> " + nextHop(r)}
	if r.GetBlackhole() {
		s.Detail = "blackhole route (or its next-hop port is gone): dropped"
		w.drop(s, "NO_ROUTE")
		return nil, endpoint{}
	}
	var nh *agentv1.Port
	if id := r.GetNextHopPortId(); id != 0 {
		nh = w.m.x.Ports[id]
	} else if a, err := netip.ParseAddr(r.GetNextHopIp()); err == nil {
		nh = w.m.byAddr[vpcAddr{src.GetVpcId(), a}]
	}
	if nh == nil || nh.GetNode() == "" {
		s.Detail = "the next hop is no bound port of the VPC: dropped"
		w.drop(s, "NO_ROUTE")
		return nil, endpoint{}
	}
	s.Rule = r.GetDestination() + " -> " + nh.GetName()
	if nh.GetSourceDestCheck() && !containsAddr(nh.GetIps(), pkt.Dst) {
		s.Detail = fmt.Sprintf("next hop %s has its source/destination check on: it accepts only packets to its own addresses", nh.GetName())
		w.drop(s, "NO_ROUTE")
		return nil, endpoint{}
	}
	s.Verdict = Pass
	s.Detail = fmt.Sprintf("to next-hop port %s on node %s", nh.GetName(), nh.GetNode())
	w.add(s)
	return nh, endpoint{}
}

func containsAddr(ips []string, a netip.Addr) bool {
	for _, b := range ipv4s(ips) {
		if a == b {
			return true
		}
	}
	return false
}

// outbound is a packet for an address outside every VPC CIDR and port
// (gateway_of, then gw_outbound on the gateway): the port's elastic IP
// (any live gateway, stateless 1:1) wins over its subnet's NAT gateway
// (the owner gateway, stateful SNAT); neither: no route.
func (w *walk) outbound(node string, src *agentv1.Port, vpc *agentv1.Vpc, pkt Packet) endpoint {
	m := w.m
	s := Stage{Stage: "route", Node: node, Object: vpc.GetName()}
	if e := m.eipByPriv[vpcAddr{src.GetVpcId(), pkt.Src}]; e != nil && e.GetPortId() == src.GetId() {
		s.Rule = "outside -> elastic IP " + e.GetAddress()
		if len(m.gateways) == 0 {
			s.Detail = fmt.Sprintf("%s is outside the VPC; the port has elastic IP %s, but no gateway is live", pkt.Dst, e.GetAddress())
			w.drop(s, "NO_GATEWAY")
			return endpoint{}
		}
		s.Verdict = Pass
		s.Detail = fmt.Sprintf("%s is outside the VPC: to a gateway (elastic IP: any live gateway by flow hash: %s)", pkt.Dst, w.gatewayList())
		w.add(s)
		w.add(Stage{Stage: "tunnel", Node: node, Verdict: Pass, Detail: fmt.Sprintf("VXLAN VNI %d to the chosen gateway", vpc.GetVni())})
		if !w.reverseMapping("", src, pkt) {
			w.add(Stage{Stage: "nat", Object: e.GetName(), Rule: pkt.Src.String() + " -> " + e.GetAddress(), Verdict: Pass,
				Detail: "the gateway rewrites the source to the elastic IP (stateless 1:1)"})
		}
		w.add(Stage{Stage: "uplink", Verdict: Deliver,
			Detail: "leaves toward the fabric by the gateway's routing table: beyond Meridian from here"})
		pub, _ := netip.ParseAddr(e.GetAddress())
		return endpoint{public: pub, pkt: pkt}
	}
	ngw, ngwBits := (*agentv1.NatGateway)(nil), -1
	for _, n := range m.ngws {
		if n.GetVpcId() != src.GetVpcId() {
			continue
		}
		for _, c := range n.GetSnatCidrs() {
			if p, err := netip.ParsePrefix(c); err == nil && p.Contains(pkt.Src) && p.Bits() > ngwBits {
				ngw, ngwBits = n, p.Bits()
			}
		}
	}
	if ngw == nil {
		s.Rule = "outside"
		s.Detail = fmt.Sprintf("%s is outside every VPC CIDR and the port has neither an elastic IP nor a NAT gateway: no route", pkt.Dst)
		w.drop(s, "NO_ROUTE")
		return endpoint{}
	}
	s.Rule = "outside -> NAT gateway " + ngw.GetName()
	owner := ngw.GetOwnerNode()
	if owner == "" || !m.gatewaySet[owner] {
		s.Detail = fmt.Sprintf("%s is outside the VPC; NAT gateway %s has no live owner gateway", pkt.Dst, ngw.GetName())
		w.drop(s, "NO_GATEWAY")
		return endpoint{}
	}
	s.Verdict = Pass
	s.Detail = fmt.Sprintf("%s is outside the VPC: to NAT gateway %s, owned by gateway %s", pkt.Dst, ngw.GetName(), w.nodeDesc(owner))
	w.add(s)
	w.add(Stage{Stage: "tunnel", Node: node, Verdict: Pass, Detail: fmt.Sprintf("VXLAN VNI %d to gateway %s", vpc.GetVni(), owner)})
	if w.reverseMapping(owner, src, pkt) {
		w.add(Stage{Stage: "uplink", Node: owner, Verdict: Deliver,
			Detail: "leaves toward the fabric by the gateway's routing table: beyond Meridian from here"})
		pub, _ := netip.ParseAddr(ngw.GetAddresses()[0])
		return endpoint{public: pub, pkt: pkt}
	}
	nat := Stage{Stage: "nat", Node: owner, Object: ngw.GetName()}
	if pkt.Protocol != fw.ProtoTCP && pkt.Protocol != fw.ProtoUDP && !(pkt.Protocol == fw.ProtoICMP && pkt.ICMPType == 8) {
		nat.Detail = fmt.Sprintf("a NAT gateway translates TCP, UDP and ICMP echo only, not %s", protoName(pkt.Protocol))
		w.drop(nat, "NAT_PROTO")
		return endpoint{}
	}
	if len(ngw.GetAddresses()) == 0 {
		nat.Detail = "the NAT gateway has no address"
		w.drop(nat, "NO_NAT")
		return endpoint{}
	}
	nat.Verdict = Pass
	nat.Rule = fmt.Sprintf("%s -> %s, source port from %d-%d", pkt.Src, strings.Join(ngw.GetAddresses(), " | "), ngw.GetPortMin(), ngw.GetPortMax())
	nat.Detail = "stateful SNAT on the owner gateway (a new flow is refused if no source port is free)"
	w.add(nat)
	w.add(Stage{Stage: "uplink", Node: owner, Verdict: Deliver,
		Detail: "leaves toward the fabric by the gateway's routing table: beyond Meridian from here"})
	pub, _ := netip.ParseAddr(ngw.GetAddresses()[0])
	return endpoint{public: pub, pkt: pkt}
}

func (w *walk) gatewayList() string {
	var out []string
	for _, g := range w.m.gateways {
		out = append(out, g.GetNode())
	}
	return strings.Join(out, ", ")
}

// fromOutside walks a packet from the fabric to a public address
// (gw_inbound): a port mapping, an elastic IP associated with a port, or,
// for replies only (est), a NAT gateway's address.
func (w *walk) fromOutside(pkt Packet, est *established) endpoint {
	m := w.m
	w.add(Stage{Stage: "source", Object: pkt.Src.String(), Verdict: Pass,
		Detail: "an address outside Meridian: the packet reaches a gateway from the fabric (BGP announces public addresses)"})
	s := Stage{Stage: "gateway"}
	if len(m.gateways) == 0 {
		s.Detail = "no gateway is live: nothing announces or serves public addresses"
		w.drop(s, "NO_GATEWAY")
		return endpoint{}
	}
	var port *agentv1.Port
	newDst, newPort := netip.Addr{}, pkt.DstPort
	nat := Stage{Stage: "nat", Verdict: Pass}
	ngw := m.ngwByAddr[pkt.Dst]
	e := m.eipByAddr[pkt.Dst]
	var pm *agentv1.PortMapping
	if ngw != nil && (pkt.Protocol == fw.ProtoTCP || pkt.Protocol == fw.ProtoUDP) {
		for _, x := range ngw.GetPortMappings() {
			if x.GetAddress() == pkt.Dst.String() && x.GetProtocol() == uint32(pkt.Protocol) && x.GetPublicPort() == uint32(pkt.DstPort) {
				pm = x
			}
		}
	}
	switch {
	case pm != nil:
		port = m.x.Ports[pm.GetPortId()]
		newDst, _ = netip.ParseAddr(pm.GetPrivateIp())
		newPort = uint16(pm.GetPrivatePort())
		nat.Object, nat.Rule = ngw.GetName(), fmt.Sprintf("port mapping %s %s:%d -> %s:%d", protoName(pkt.Protocol), pkt.Dst, pkt.DstPort, newDst, newPort)
	case e != nil && e.GetPortId() != 0:
		port = m.x.Ports[e.GetPortId()]
		newDst, _ = netip.ParseAddr(e.GetPrivateIp())
		nat.Object, nat.Rule = e.GetName(), fmt.Sprintf("elastic IP %s -> %s (stateless 1:1)", pkt.Dst, newDst)
	case ngw != nil && est != nil:
		port = est.port
		newDst, newPort = est.private, est.privatePort
		nat.Object, nat.Rule = ngw.GetName(), fmt.Sprintf("reply of a NAT flow: %s -> %s:%d", pkt.Dst, newDst, newPort)
	case ngw != nil:
		s.Object = ngw.GetName()
		s.Detail = fmt.Sprintf("%s is an address of NAT gateway %s, which lets in replies of connections from inside and port mappings only; no port mapping for %s/%d",
			pkt.Dst, ngw.GetName(), protoName(pkt.Protocol), pkt.DstPort)
		w.drop(s, "NAT_NO_FLOW")
		return endpoint{}
	case e != nil:
		s.Object = e.GetName()
		s.Detail = fmt.Sprintf("elastic IP %s is not associated with a port: no gateway serves it", pkt.Dst)
		w.drop(s, "NO_ROUTE")
		return endpoint{}
	default:
		s.Detail = fmt.Sprintf("%s is no public address Meridian serves (no elastic IP, no NAT gateway address)", pkt.Dst)
		w.drop(s, "NO_ROUTE")
		return endpoint{}
	}
	s.Verdict = Pass
	s.Detail = "any live gateway (ECMP in the fabric): " + w.gatewayList()
	if ngw != nil && pm == nil && ngw.GetOwnerNode() != "" {
		s.Detail = "the NAT gateway's owner: " + ngw.GetOwnerNode()
	}
	w.add(s)
	if port == nil || port.GetNode() == "" {
		nat.Verdict = ""
		nat.Detail = "the port it maps to is not bound to a node"
		w.drop(nat, "EIP_UNBOUND")
		return endpoint{}
	}
	w.add(nat)
	pkt.Dst, pkt.DstPort = newDst, newPort
	return w.toPort("(gateway)", port, pkt, est != nil)
}

// reverseMapping adds the nat stage of a packet from a port mapping's
// private side (a reply to a mapped connection, or any packet from that
// address and port): gateways translate it back to the mapping's public
// address and port before anything else (gw_outbound). Reports whether
// there was one.
func (w *walk) reverseMapping(node string, src *agentv1.Port, pkt Packet) bool {
	for _, n := range w.m.ngws {
		if n.GetVpcId() != src.GetVpcId() {
			continue
		}
		for _, pm := range n.GetPortMappings() {
			if pm.GetPortId() == src.GetId() && pm.GetPrivateIp() == pkt.Src.String() && pm.GetProtocol() == uint32(pkt.Protocol) &&
				pm.GetPrivatePort() == uint32(pkt.SrcPort) {
				w.add(Stage{Stage: "nat", Node: node, Object: n.GetName(), Verdict: Pass,
					Rule:   fmt.Sprintf("port mapping %s %s:%d -> %s:%d", protoName(pkt.Protocol), pkt.Src, pkt.SrcPort, pm.GetAddress(), pm.GetPublicPort()),
					Detail: "the gateway rewrites the source back to the mapping's public address and port"})
				return true
			}
		}
	}
	return false
}
