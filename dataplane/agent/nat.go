package agent

// The outside world in the eBPF data path (issue [4]); see
// dataplane/datapath/doc.go for where NAT happens and why.
//
// Every node: traffic of a local port with an elastic IP that no VPC route
// claims goes to one of the Gateway objects' nodes (flow hash), traffic of
// a subnet behind a NAT gateway to the NAT gateway's owner; VPC CIDRs are
// marked so that unknown addresses inside a VPC never leave it.
//
// A gateway node (its own Gateway object is in the desired state) also
// attaches the uplink program to its interface toward the fabric
// (Gateway.uplink, else --uplink) and installs every elastic IP associated
// with a port, every NAT gateway's addresses and port mappings, and, for
// the NAT gateways it owns, their SNAT prefixes. Packets leave the gateway
// by its own routing table (bpf_fib_lookup), so the overlay device must
// forward: the agent sets net.ipv4.conf.<overlay>.forwarding=1 on gateways.

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// maxGateways is what the data path's gateway set holds.
const maxGateways = 16

// natApplied is what reconcileOutside installed, saved with the rest of
// applied so that a restarted agent removes what went away meanwhile.
type natApplied struct {
	Egress      []routeKey `json:"egress,omitempty"`
	EIPs        []string   `json:"eips,omitempty"` // public addresses
	NATGateways []uint32   `json:"nat_gateways,omitempty"`
	Uplink      int        `json:"uplink,omitempty"` // ifindex with the uplink program
}

// outsideObjects are the issue [4] objects of a desired state, sorted.
type outsideObjects struct {
	gateways map[string]*agentv1.Gateway // by node
	gwKeys   map[string]string           // node -> object key
	eips     []*agentv1.Object
	natgws   []*agentv1.Object
}

func collectOutside(desired map[string]*agentv1.Object) outsideObjects {
	o := outsideObjects{gateways: map[string]*agentv1.Gateway{}, gwKeys: map[string]string{}}
	for _, obj := range desired {
		switch b := obj.GetBody().(type) {
		case *agentv1.Object_Gateway:
			o.gateways[b.Gateway.GetNode()] = b.Gateway
			o.gwKeys[b.Gateway.GetNode()] = obj.GetKey()
		case *agentv1.Object_ElasticIp:
			o.eips = append(o.eips, obj)
		case *agentv1.Object_NatGateway:
			o.natgws = append(o.natgws, obj)
		}
	}
	byKey := func(a, b *agentv1.Object) int { return cmp.Compare(a.GetKey(), b.GetKey()) }
	slices.SortFunc(o.eips, byKey)
	slices.SortFunc(o.natgws, byKey)
	return o
}

// gatewaySet is the underlay addresses of the gateways elastic-IP flows
// are hashed over, sorted by node, at most maxGateways of them: the
// gateways that are not draining (their agent is away: the gateway may be
// dead, and the replies hashed to it would be lost), or all of them when
// every one is.
func gatewaySet(o outsideObjects) ([]netip.Addr, error) {
	nodes := make([]string, 0, len(o.gateways))
	for n, g := range o.gateways {
		if !g.GetDraining() {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		for n := range o.gateways {
			nodes = append(nodes, n)
		}
	}
	slices.Sort(nodes)
	var out []netip.Addr
	var errs []error
	for _, n := range nodes {
		a, err := netip.ParseAddr(o.gateways[n].GetUnderlayIp())
		if err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("gateway %s: underlay IP %q is not IPv4", n, o.gateways[n].GetUnderlayIp()))
			continue
		}
		if len(out) == maxGateways {
			errs = append(errs, fmt.Errorf("gateway %s: more than %d gateways, the data path uses the first %d", n, maxGateways, maxGateways))
			continue
		}
		out = append(out, a)
	}
	return out, errors.Join(errs...)
}

// elasticIPOf translates an elastic IP associated with a port; ok is false
// for one that is not (allocated only, or a NAT gateway's address) or
// IPv6, which the data path does not translate yet.
func elasticIPOf(e *agentv1.ElasticIp) (datapath.ElasticIP, bool, error) {
	if e.GetPortId() == 0 || e.GetNatGatewayId() != 0 {
		return datapath.ElasticIP{}, false, nil
	}
	addr, err := netip.ParseAddr(e.GetAddress())
	if err != nil {
		return datapath.ElasticIP{}, false, fmt.Errorf("address %q: %w", e.GetAddress(), err)
	}
	if !addr.Is4() {
		return datapath.ElasticIP{}, false, nil
	}
	priv, err := netip.ParseAddr(e.GetPrivateIp())
	if err != nil {
		return datapath.ElasticIP{}, false, fmt.Errorf("private address %q: %w", e.GetPrivateIp(), err)
	}
	mac, err := parseMAC(e.GetPortMac())
	if err != nil {
		return datapath.ElasticIP{}, false, fmt.Errorf("port MAC: %w", err)
	}
	out := datapath.ElasticIP{Address: addr, VPC: e.GetVni(), PrivateIP: priv, PortMAC: mac}
	if e.GetPortNodeIp() != "" {
		if out.Node, err = netip.ParseAddr(e.GetPortNodeIp()); err != nil {
			return datapath.ElasticIP{}, false, fmt.Errorf("port node IP %q: %w", e.GetPortNodeIp(), err)
		}
	}
	return out, true, nil
}

// natGatewayOf translates a NAT gateway as gateway node serves it: the
// SNAT prefixes only on its owner. IPv6 addresses and prefixes are left
// out (IPv4-only data path).
func natGatewayOf(n *agentv1.NatGateway, node string) (datapath.NATGateway, error) {
	out := datapath.NATGateway{ID: n.GetId(), VPC: n.GetVni()}
	if n.GetPortMin() > 65535 || n.GetPortMax() > 65535 {
		return out, fmt.Errorf("port range %d-%d beyond 65535", n.GetPortMin(), n.GetPortMax())
	}
	out.PortMin, out.PortMax = uint16(n.GetPortMin()), uint16(n.GetPortMax())
	for _, s := range n.GetAddresses() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return out, fmt.Errorf("address %q: %w", s, err)
		}
		if a.Is4() {
			out.Addresses = append(out.Addresses, a)
		}
	}
	if n.GetOwnerNode() == node {
		for _, s := range n.GetSnatCidrs() {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return out, fmt.Errorf("SNAT CIDR %q: %w", s, err)
			}
			if p.Addr().Is4() {
				out.SNAT = append(out.SNAT, p.Masked())
			}
		}
	}
	for _, m := range n.GetPortMappings() {
		addr, err := netip.ParseAddr(m.GetAddress())
		if err != nil {
			return out, fmt.Errorf("port mapping address %q: %w", m.GetAddress(), err)
		}
		if !addr.Is4() {
			continue
		}
		priv, err := netip.ParseAddr(m.GetPrivateIp())
		if err != nil {
			return out, fmt.Errorf("port mapping private address %q: %w", m.GetPrivateIp(), err)
		}
		mac, err := parseMAC(m.GetPortMac())
		if err != nil {
			return out, fmt.Errorf("port mapping %v:%d: port MAC: %w", addr, m.GetPublicPort(), err)
		}
		if m.GetProtocol() > 255 || m.GetPublicPort() > 65535 || m.GetPrivatePort() > 65535 {
			return out, fmt.Errorf("port mapping %v:%d: protocol or port out of range", addr, m.GetPublicPort())
		}
		pm := datapath.PortMapping{Protocol: uint8(m.GetProtocol()), Address: addr, PublicPort: uint16(m.GetPublicPort()),
			PrivateIP: priv, PrivatePort: uint16(m.GetPrivatePort()), PortMAC: mac}
		if m.GetPortNodeIp() != "" {
			if pm.Node, err = netip.ParseAddr(m.GetPortNodeIp()); err != nil {
				return out, fmt.Errorf("port mapping %v:%d: node IP %q: %w", addr, m.GetPublicPort(), m.GetPortNodeIp(), err)
			}
		}
		out.Mappings = append(out.Mappings, pm)
	}
	return out, nil
}

// reconcileOutside installs the issue [4] objects (see the file comment)
// and removes what prev installed that is no longer wanted. v is the
// index of the same desired state, vni maps a VPC ID to its VNI.
func (a *Agent) reconcileOutside(desired map[string]*agentv1.Object, v *agentv1.Index, vni func(uint32) uint32,
	prev natApplied, next *applied, fail func(string, error)) {
	o := collectOutside(desired)
	nat := &next.NAT
	wantEgress := map[routeKey]bool{}
	addEgress := func(key string, e datapath.Egress) {
		if err := a.dp.UpsertEgress(e); err != nil {
			fail(key, err)
			return
		}
		rk := routeKey{VPC: e.VPC, Prefix: e.Prefix}
		if !wantEgress[rk] {
			wantEgress[rk] = true
			nat.Egress = append(nat.Egress, rk)
		}
	}

	// Workload side: where traffic for the outside world goes.
	gws, err := gatewaySet(o)
	if err != nil {
		fail("gateways", err)
	}
	if err := a.dp.SetGateways(gws); err != nil {
		fail("gateways", err)
	}
	for _, vpcID := range sortedKeys(v.VPCs) {
		for _, c := range v.VPCs[vpcID].GetCidrs() {
			p, err := netip.ParsePrefix(c)
			if err != nil || !p.Addr().Is4() {
				continue // IPv6 or invalid: the VPC's own validation reports it
			}
			if err := a.dp.UpsertVPCPrefix(vni(vpcID), p.Masked()); err != nil {
				fail(fmt.Sprintf("vpc/%d", vpcID), err)
				continue
			}
			next.Routes[routeKey{VPC: vni(vpcID), Prefix: p.Masked()}] = true
		}
	}
	for _, obj := range o.eips {
		e := obj.GetElasticIp()
		p, local := v.Ports[e.GetPortId()]
		if !local || p.GetNode() != a.cfg.Node || e.GetNatGatewayId() != 0 {
			continue
		}
		priv, err := netip.ParseAddr(e.GetPrivateIp())
		if err != nil || !priv.Is4() {
			continue
		}
		addEgress(obj.GetKey(), datapath.Egress{VPC: e.GetVni(), Prefix: netip.PrefixFrom(priv, 32)})
	}
	for _, obj := range o.natgws {
		n := obj.GetNatGateway()
		owner, ok := o.gateways[n.GetOwnerNode()]
		if !ok {
			if n.GetOwnerNode() != "" || len(n.GetSnatCidrs()) > 0 {
				fail(obj.GetKey(), fmt.Errorf("owner %q is not a known gateway", n.GetOwnerNode()))
			}
			continue
		}
		ownerIP, err := netip.ParseAddr(owner.GetUnderlayIp())
		if err != nil || !ownerIP.Is4() {
			fail(obj.GetKey(), fmt.Errorf("owner %s: underlay IP %q is not IPv4", n.GetOwnerNode(), owner.GetUnderlayIp()))
			continue
		}
		for _, c := range n.GetSnatCidrs() {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				fail(obj.GetKey(), fmt.Errorf("SNAT CIDR %q: %w", c, err))
				continue
			}
			if p.Addr().Is4() {
				addEgress(obj.GetKey(), datapath.Egress{VPC: n.GetVni(), Prefix: p.Masked(), NATOwner: ownerIP, NATGateway: n.GetId()})
			}
		}
	}

	// Gateway side.
	if me, isGateway := o.gateways[a.cfg.Node]; isGateway {
		key := o.gwKeys[a.cfg.Node]
		if idx, err := a.attachUplink(me); err != nil {
			fail(key, err)
			if prev.Uplink != 0 {
				nat.Uplink = prev.Uplink // keep what forwards until fixed
			}
		} else {
			nat.Uplink = idx
		}
		for _, obj := range o.eips {
			e, ok, err := elasticIPOf(obj.GetElasticIp())
			if err == nil && ok {
				err = a.dp.UpsertElasticIP(e)
			}
			if err != nil {
				fail(obj.GetKey(), err)
				continue
			}
			if ok {
				nat.EIPs = append(nat.EIPs, e.Address.String())
			}
		}
		for _, obj := range o.natgws {
			g, err := natGatewayOf(obj.GetNatGateway(), a.cfg.Node)
			if err == nil {
				if len(g.Addresses) == 0 {
					continue // IPv6-only or no address yet: nothing to serve
				}
				err = a.dp.UpsertNATGateway(g)
			}
			if err != nil {
				fail(obj.GetKey(), err)
				continue
			}
			nat.NATGateways = append(nat.NATGateways, g.ID)
		}
	}

	// Removals.
	for _, rk := range prev.Egress {
		if !wantEgress[rk] {
			if err := a.dp.DeleteEgress(rk.VPC, rk.Prefix); err != nil {
				fail("egress/"+rk.Prefix.String(), err)
			}
		}
	}
	for _, s := range prev.EIPs {
		if slices.Contains(nat.EIPs, s) {
			continue
		}
		if addr, err := netip.ParseAddr(s); err == nil {
			if err := a.dp.DeleteElasticIP(addr); err != nil {
				fail("eip-address/"+s, err)
			}
		}
	}
	for _, id := range prev.NATGateways {
		if !slices.Contains(nat.NATGateways, id) {
			if err := a.dp.DeleteNATGateway(id); err != nil {
				fail(fmt.Sprintf("ngw/%d", id), err)
			}
		}
	}
	if prev.Uplink != 0 && prev.Uplink != nat.Uplink {
		// No longer a gateway, or the uplink changed: a missing link is harmless.
		a.dp.Detach(datapath.HookUplink, prev.Uplink)
	}
}

// attachUplink attaches the uplink program to this gateway's interface
// toward the fabric and lets the overlay device forward (bpf_fib_lookup
// refuses devices that do not).
func (a *Agent) attachUplink(me *agentv1.Gateway) (int, error) {
	name := me.GetUplink()
	if name == "" {
		name = a.cfg.Uplink
	}
	if name == "" {
		return 0, errors.New("gateway without an uplink: set the Gateway's uplink or the agent's --uplink")
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("uplink %s: %w", name, err)
	}
	if err := a.dp.Attach(datapath.HookUplink, l.Attrs().Index); err != nil {
		return 0, fmt.Errorf("uplink %s: %w", name, err)
	}
	if a.cfg.VXLANName != "" {
		if changes, err := plumbing.EnsureForwarding(a.cfg.VXLANName); err != nil {
			return 0, fmt.Errorf("gateway: %w", err)
		} else if len(changes) > 0 {
			a.log.Info("gateway sysctls set", "changes", changes)
		}
	}
	return l.Attrs().Index, nil
}
