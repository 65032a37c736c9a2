package ovn

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// Defaults of ExternalNetwork.
const (
	DefaultExternalSwitch  = "meridian-ext"
	DefaultPhysicalNetwork = "physnet"
)

// Gateway_Chassis priorities of a VPC's gateway port: the preferred
// gateway node above every other; the others stand by at one priority,
// leaving the order among them to OVN.
const (
	GatewayPriorityPreferred = 100
	GatewayPriorityStandby   = 50
)

// ExternalNetwork is the provider network through which an OVN deployment
// reaches the fabric: one logical switch with a localnet port, which
// ovn-controller on each gateway node bridges to a physical network through
// its ovn-bridge-mappings (network_name -> bridge). It is deployment
// configuration, like the bridge mappings, not part of the logical model:
// the agent objects say which nodes are gateways and which addresses are
// public, not how the gateway nodes' uplinks are addressed.
type ExternalNetwork struct {
	// Switch names the external Logical_Switch (default
	// DefaultExternalSwitch).
	Switch string
	// PhysicalNetwork is its localnet port's network_name (default
	// DefaultPhysicalNetwork).
	PhysicalNetwork string
	// CIDR is the external network's prefix. Elastic IPs and NAT-gateway
	// addresses of another family are not rendered.
	CIDR netip.Prefix
	// RouterRange, inside CIDR, holds the VPC routers' own addresses on
	// the external network: VPC v's gateway port has the v-th address of
	// the range, so the address is stable and needs no allocation. A VPC
	// whose address falls outside the range gets no gateway port.
	RouterRange netip.Prefix
	// NextHop is the fabric's router on the external network, the next hop
	// of every gateway router's default route. Unset: no default route
	// (the fabric must then be reached by other routes).
	NextHop netip.Addr
}

// validate normalises n and checks it, so that rendering never meets an
// inconsistent network.
func (n *ExternalNetwork) validate() error {
	if n.Switch == "" {
		n.Switch = DefaultExternalSwitch
	}
	if n.PhysicalNetwork == "" {
		n.PhysicalNetwork = DefaultPhysicalNetwork
	}
	if !n.CIDR.IsValid() {
		return errors.New("ovn: external network: CIDR is required")
	}
	n.CIDR = n.CIDR.Masked()
	if !n.RouterRange.IsValid() {
		return errors.New("ovn: external network: RouterRange is required")
	}
	n.RouterRange = n.RouterRange.Masked()
	if n.RouterRange.Bits() < n.CIDR.Bits() || !n.CIDR.Contains(n.RouterRange.Addr()) {
		return fmt.Errorf("ovn: external network: router range %s is not inside %s", n.RouterRange, n.CIDR)
	}
	if n.NextHop.IsValid() {
		if !n.CIDR.Contains(n.NextHop) {
			return fmt.Errorf("ovn: external network: next hop %s is not in %s", n.NextHop, n.CIDR)
		}
		if n.RouterRange.Contains(n.NextHop) {
			return fmt.Errorf("ovn: external network: next hop %s is inside the router range %s", n.NextHop, n.RouterRange)
		}
	}
	return nil
}

// routerAddress is VPC vpc's address on the external network, false when
// the router range has none for it.
func (n *ExternalNetwork) routerAddress(vpc uint32) (netip.Addr, bool) {
	a := addOffset(n.RouterRange.Addr(), uint64(vpc))
	if !a.IsValid() || !n.RouterRange.Contains(a) {
		return netip.Addr{}, false
	}
	// The last address of an IPv4 network is its broadcast address.
	if a.Is4() {
		if next := addOffset(a, 1); !next.IsValid() || !n.CIDR.Contains(next) {
			return netip.Addr{}, false
		}
	}
	return a, true
}

// addOffset returns a+off, or the zero Addr on overflow.
func addOffset(a netip.Addr, off uint64) netip.Addr {
	if a.Is4() {
		b := a.As4()
		v := uint64(binary.BigEndian.Uint32(b[:])) + off
		if v > 0xffffffff {
			return netip.Addr{}
		}
		binary.BigEndian.PutUint32(b[:], uint32(v))
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	nlo := lo + off
	if nlo < lo {
		if hi == ^uint64(0) {
			return netip.Addr{}
		}
		hi++
	}
	binary.BigEndian.PutUint64(b[:8], hi)
	binary.BigEndian.PutUint64(b[8:], nlo)
	return netip.AddrFrom16(b)
}

// outside is the part of the model about the outside world, which
// agentv1.Index does not sort out.
type outside struct {
	gateways []string // gateway node IDs, sorted
	eips     map[uint32]*agentv1.ElasticIp
	natgws   map[uint32]*agentv1.NatGateway
	lbs      map[uint32]*agentv1.LbService
}

func indexOutside(objs map[string]*agentv1.Object) *outside {
	o := &outside{eips: map[uint32]*agentv1.ElasticIp{}, natgws: map[uint32]*agentv1.NatGateway{},
		lbs: map[uint32]*agentv1.LbService{}}
	for _, obj := range objs {
		switch b := obj.GetBody().(type) {
		case *agentv1.Object_Gateway:
			if n := b.Gateway.GetNode(); n != "" {
				o.gateways = append(o.gateways, n)
			}
		case *agentv1.Object_ElasticIp:
			o.eips[b.ElasticIp.GetId()] = b.ElasticIp
		case *agentv1.Object_NatGateway:
			o.natgws[b.NatGateway.GetId()] = b.NatGateway
		case *agentv1.Object_LbService:
			o.lbs[b.LbService.GetId()] = b.LbService
		}
	}
	slices.Sort(o.gateways)
	o.gateways = slices.Compact(o.gateways)
	return o
}

// gatewayPort is what the NAT rows of one VPC hang on.
type gatewayPort struct {
	router *Row // the VPC's Logical_Router
}

// renderOutside renders the gateway ports, elastic IPs, NAT gateways and
// north-south load balancers (see lb.go).
// A VPC gets a gateway port when it has something to translate (an elastic
// IP associated with one of its ports, a NAT gateway or a north-south load
// balancer listener) and there are
// gateway nodes to bind it to; without one, its NAT rows would have no
// gateway to run on, so none are rendered (failing closed).
//
// Row mapping (only with an ExternalNetwork, see NewRendererFor):
//
//	(deployment)     Logical_Switch ExternalNetwork.Switch ("meridian-ext") with localnet port
//	                 "<switch>-localnet" (network_name ExternalNetwork.PhysicalNetwork)
//	VPC V            Logical_Router_Port "mer-gw-V" on its router, a distributed gateway port: MAC
//	                 02:4e:..., the V-th address of ExternalNetwork.RouterRange; switch port
//	                 "mer-ext-V" (type router, nat-addresses=router) on the external switch; route
//	                 0.0.0.0/0 (or ::/0) via ExternalNetwork.NextHop
//	gateway node N   Gateway_Chassis "mer-gw-V-N" (chassis_name N, the node ID the agent names its
//	                 chassis after) on every gateway port; priority GatewayPriorityPreferred for the
//	                 owner of the VPC's first NAT gateway (else gateways[V mod n]), Standby otherwise
//	elastic IP E     NAT dnat_and_snat external_ip = address, logical_ip = private_ip, no
//	                 logical_port/external_mac: centralized, stateful (see eipNAT).
//	                 One associated with a NAT gateway has no row: it is one of its addresses
//	NAT gateway G    NAT snat per snat_cidr of the network's family: external_ip = its first
//	                 address of that family, external_port_range
//	                 "port_min-port_max"; port mappings: Load_Balancer "mer-natgw-G-tcp"/"-udp" on
//	                 the router, vips "address:public_port" -> "private_ip:private_port"
//	LbService        north-south (not internal): Load_Balancer "mer-lb-L" on the router (lb.go)
//	pool, BGP peer   nothing: the BGP speaker in gateway nodes' agents uses them
//
// Differences from the eBPF realization:
//   - An elastic IP is translated on the VPC's one active gateway chassis,
//     the others standing by (ovn-controller moves the port by priority and
//     BFD), where eBPF gateways translate it all at once behind ECMP; and
//     statefully, so a failover loses the translations of open flows.
//   - A VPC's NAT gateways share its gateway port and so its active
//     chassis: only the first NAT gateway's owner_node counts.
//   - A NAT gateway SNATs to its first address only (one snat row per
//     source); its other addresses serve port mappings.
//   - Port mappings and SNAT use the gateway's conntrack: exhaustion of the
//     port range is not counted in NatStats (no Meridian datapath sees it).
//   - Once a VPC has a gateway port, its ports covered by neither an
//     elastic IP nor a NAT gateway are routed out untranslated (eBPF has no
//     path for them); the fabric must not route private addresses back.
//   - Hairpin: a port reaches an elastic IP of its own VPC, its own
//     included, and the connection arrives from the caller's elastic IP or,
//     without one, its NAT gateway's address; but a port with an elastic
//     IP does not reach its own VPC's port mappings (pinned in
//     TestOutsideDataPathOnRealOVN).
//   - Elastic IPs must be reachable on the external network: on-link (the
//     active chassis answers ARP for them and announces them with
//     gratuitous ARPs) or routed by the fabric to the VPC router's address
//     on it. Addresses of the other family than the network's are not
//     rendered.
func (d *Desired) renderOutside(x *agentv1.Index, o *outside, ext *ExternalNetwork) {
	if ext == nil || len(o.gateways) == 0 {
		return
	}
	eips := map[uint32][]*agentv1.ElasticIp{} // vpc -> its port-associated elastic IPs
	for _, id := range sortedIDs(o.eips) {
		e := o.eips[id]
		if eipNAT(e, ext) != nil && x.VPCs[e.GetVpcId()] != nil {
			eips[e.GetVpcId()] = append(eips[e.GetVpcId()], e)
		}
	}
	natgws := map[uint32][]*agentv1.NatGateway{}
	for _, id := range sortedIDs(o.natgws) {
		g := o.natgws[id]
		if _, ok := natAddress(g, ext); ok && x.VPCs[g.GetVpcId()] != nil {
			natgws[g.GetVpcId()] = append(natgws[g.GetVpcId()], g)
		}
	}
	lbs := map[uint32][]*agentv1.LbService{} // vpc -> its north-south services
	for _, id := range sortedIDs(o.lbs) {
		svc := o.lbs[id]
		if a, err := netip.ParseAddr(svc.GetVip()); !svc.GetInternal() && lbRenderable(svc) &&
			err == nil && a.Unmap().Is4() == ext.CIDR.Addr().Is4() && x.VPCs[svc.GetVpcId()] != nil {
			lbs[svc.GetVpcId()] = append(lbs[svc.GetVpcId()], svc)
		}
	}
	var extSwitch *Row
	mon := &monitorSources{lbs: o.lbs}
	for _, vpc := range sortedIDs(x.VPCs) {
		if len(eips[vpc]) == 0 && len(natgws[vpc]) == 0 && len(lbs[vpc]) == 0 {
			continue
		}
		addr, ok := ext.routerAddress(vpc)
		if !ok {
			continue
		}
		if extSwitch == nil {
			extSwitch = d.renderExternalSwitch(ext)
		}
		gw := d.renderGatewayPort(vpc, addr, ext, extSwitch, preferredGateway(vpc, natgws[vpc], o.gateways), o.gateways)
		for _, e := range eips[vpc] {
			d.renderElasticIP(gw, e, ext)
		}
		for _, g := range natgws[vpc] {
			d.renderNatGateway(gw, g, ext)
		}
		for _, svc := range lbs[vpc] {
			if id, ok := d.renderLB(x, svc, mon); ok {
				gw.router.Refs["load_balancer"] = append(gw.router.Refs["load_balancer"], id)
			}
		}
	}
}

// renderExternalSwitch is the deployment's external switch and its
// localnet port, shared by every VPC's gateway port.
func (d *Desired) renderExternalSwitch(ext *ExternalNetwork) *Row {
	ls := d.add(nbdb.LogicalSwitchTable, "global/external", OwnerGlobal, "external-switch", &nbdb.LogicalSwitch{Name: ext.Switch})
	d.add(nbdb.LogicalSwitchPortTable, "global/external/localnet", OwnerGlobal, "localnet", &nbdb.LogicalSwitchPort{
		Name: ext.Switch + "-localnet", Type: "localnet", Addresses: []string{"unknown"},
		Options: map[string]string{"network_name": ext.PhysicalNetwork},
	})
	ls.Refs["ports"] = append(ls.Refs["ports"], "global/external/localnet")
	return ls
}

// preferredGateway is the gateway node that should hold a VPC's gateway
// port: the owner of its first NAT gateway, whose SNAT state lives there
// in the eBPF realization too; else one chosen by VPC ID, so VPCs with
// only elastic IPs spread over the gateways.
func preferredGateway(vpc uint32, natgws []*agentv1.NatGateway, gateways []string) string {
	for _, g := range natgws {
		if n := g.GetOwnerNode(); slices.Contains(gateways, n) {
			return n
		}
	}
	return gateways[int(vpc)%len(gateways)]
}

// renderGatewayPort gives a VPC's router its distributed gateway port on
// the external switch, bound to every gateway node (preferred first), and
// the default route toward the fabric.
func (d *Desired) renderGatewayPort(vpc uint32, addr netip.Addr, ext *ExternalNetwork, extSwitch *Row, preferred string, gateways []string) *gatewayPort {
	own := owner("vpc", vpc)
	lr := d.Row(nbdb.LogicalRouterTable, own)
	lrpID := own + "/gateway-port"
	lrp := d.add(nbdb.LogicalRouterPortTable, lrpID, own, "gateway-port", &nbdb.LogicalRouterPort{
		Name: GatewayPortName(vpc), MAC: gatewayMAC(vpc), Networks: []string{netip.PrefixFrom(addr, ext.CIDR.Bits()).String()},
	})
	lr.Refs["ports"] = append(lr.Refs["ports"], lrpID)
	for _, node := range gateways {
		prio := GatewayPriorityStandby
		if node == preferred {
			prio = GatewayPriorityPreferred
		}
		id := own + "/gateway-chassis/" + node
		d.add(nbdb.GatewayChassisTable, id, own, "gateway-chassis", &nbdb.GatewayChassis{
			Name: GatewayChassisName(vpc, node), ChassisName: node, Priority: prio,
		})
		lrp.Refs["gateway_chassis"] = append(lrp.Refs["gateway_chassis"], id)
	}
	lspID := own + "/external-switch-port"
	d.add(nbdb.LogicalSwitchPortTable, lspID, own, "external-switch-port", &nbdb.LogicalSwitchPort{
		Name: ExternalSwitchPortName(vpc), Type: "router", Addresses: []string{"router"},
		// nat-addresses=router: the active gateway chassis answers ARP for,
		// and announces with gratuitous ARPs, the router's NAT and load
		// balancer addresses on the external network.
		Options: map[string]string{"router-port": GatewayPortName(vpc), "nat-addresses": "router"},
	})
	extSwitch.Refs["ports"] = append(extSwitch.Refs["ports"], lspID)
	if ext.NextHop.IsValid() {
		dst := "0.0.0.0/0"
		if ext.NextHop.Is6() {
			dst = "::/0"
		}
		id := own + "/gateway-route/" + dst
		d.add(nbdb.LogicalRouterStaticRouteTable, id, own, "gateway-route", &nbdb.LogicalRouterStaticRoute{
			IPPrefix: dst, Nexthop: ext.NextHop.String(),
		})
		lr.Refs["static_routes"] = append(lr.Refs["static_routes"], id)
	}
	return &gatewayPort{router: lr}
}
