package ovn

import (
	"net/netip"
	"slices"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// Source ports a NAT gateway allocates when its object leaves them unset,
// as the API defaults them.
const (
	defaultNATPortMin = 1024
	defaultNATPortMax = 65535
)

// eipNAT is the NAT row of an elastic IP associated with a port, nil when
// it is not associated with one or cannot be rendered: addresses that do
// not parse, or of another family than the external network's.
//
// The row is dnat_and_snat without logical_port and external_mac, so OVN
// translates on the active gateway chassis (centralized) rather than on
// the port's own chassis: NAT happens on gateway nodes in the eBPF
// realization too, and only gateway nodes are bridged to the external
// network. It is stateful (OVN's default), unlike the eBPF translation:
// with conntrack, OVN translates ICMP errors about the flows and lets a
// port reach its own elastic IP (hairpin), neither of which it does for a
// stateless row (with options:stateless=true both checks of
// TestOutsideDataPathOnRealOVN fail: the ICMP error never reaches the
// sender's socket and the hairpin connection times out). The price is that a failover to
// another gateway chassis loses the translations of open flows, which
// eBPF's stateless translation keeps.
func eipNAT(e *agentv1.ElasticIp, ext *ExternalNetwork) *nbdb.NAT {
	if e.GetPortId() == 0 || e.GetNatGatewayId() != 0 {
		return nil
	}
	pub, err1 := netip.ParseAddr(e.GetAddress())
	priv, err2 := netip.ParseAddr(e.GetPrivateIp())
	if err1 != nil || err2 != nil || pub.Is4() != ext.CIDR.Addr().Is4() || priv.Is4() != pub.Is4() {
		return nil
	}
	return &nbdb.NAT{
		Type: nbdb.NATTypeDNATAndSNAT, ExternalIP: pub.String(), LogicalIP: priv.String(),
	}
}

// natAddress is the address a NAT gateway translates its subnets to: its
// first address (the list is sorted) of the external network's family.
// false when it has none.
func natAddress(g *agentv1.NatGateway, ext *ExternalNetwork) (netip.Addr, bool) {
	for _, s := range g.GetAddresses() {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() == ext.CIDR.Addr().Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (d *Desired) renderElasticIP(gw *gatewayPort, e *agentv1.ElasticIp, ext *ExternalNetwork) {
	id := owner("eip", e.GetId())
	d.add(nbdb.NATTable, id, id, "elastic-ip", eipNAT(e, ext))
	gw.router.Refs["nat"] = append(gw.router.Refs["nat"], id)
}

// renderNatGateway renders a NAT gateway as one snat row per subnet CIDR,
// translating to its first address with source ports from its range, and
// its port mappings as load balancers on the router (one per protocol: an
// OVN load balancer has one), whose VIPs translate address and port.
func (d *Desired) renderNatGateway(gw *gatewayPort, g *agentv1.NatGateway, ext *ExternalNetwork) {
	own := owner("ngw", g.GetId())
	addr, _ := natAddress(g, ext)
	pmin, pmax := g.GetPortMin(), g.GetPortMax()
	if pmin == 0 {
		pmin = defaultNATPortMin
	}
	if pmax == 0 {
		pmax = defaultNATPortMax
	}
	if pmin > pmax || pmax > 65535 {
		pmin, pmax = defaultNATPortMin, defaultNATPortMax
	}
	portRange := u(pmin) + "-" + u(pmax)
	for _, c := range g.GetSnatCidrs() {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Addr().Is4() != addr.Is4() {
			continue
		}
		id := own + "/snat/" + p.Masked().String()
		if d.Row(nbdb.NATTable, id) != nil {
			continue
		}
		d.add(nbdb.NATTable, id, own, "snat", &nbdb.NAT{
			Type: nbdb.NATTypeSNAT, ExternalIP: addr.String(), LogicalIP: p.Masked().String(), ExternalPortRange: portRange,
		})
		gw.router.Refs["nat"] = append(gw.router.Refs["nat"], id)
	}
	vips := map[string]map[string]string{} // protocol -> vips
	for _, m := range g.GetPortMappings() {
		proto, ok := map[uint32]string{6: nbdb.LoadBalancerProtocolTCP, 17: nbdb.LoadBalancerProtocolUDP}[m.GetProtocol()]
		pub, err1 := netip.ParseAddr(m.GetAddress())
		priv, err2 := netip.ParseAddr(m.GetPrivateIp())
		if !ok || err1 != nil || err2 != nil || pub.Is4() != addr.Is4() || priv.Is4() != addr.Is4() ||
			!slices.Contains(g.GetAddresses(), m.GetAddress()) || !validPort(m.GetPublicPort()) || !validPort(m.GetPrivatePort()) {
			continue
		}
		vip := netip.AddrPortFrom(pub, uint16(m.GetPublicPort())).String()
		if vips[proto] == nil {
			vips[proto] = map[string]string{}
		}
		if _, dup := vips[proto][vip]; !dup { // the first mapping of an address and port wins
			vips[proto][vip] = netip.AddrPortFrom(priv, uint16(m.GetPrivatePort())).String()
		}
	}
	for _, proto := range []string{nbdb.LoadBalancerProtocolTCP, nbdb.LoadBalancerProtocolUDP} {
		if len(vips[proto]) == 0 {
			continue
		}
		id := own + "/port-mappings/" + proto
		d.add(nbdb.LoadBalancerTable, id, own, "port-mappings", &nbdb.LoadBalancer{
			Name: PortMappingsLBName(g.GetId(), proto), Protocol: &proto, Vips: vips[proto],
		})
		gw.router.Refs["load_balancer"] = append(gw.router.Refs["load_balancer"], id)
	}
}

func validPort(p uint32) bool { return p > 0 && p <= 65535 }
