package model

import (
	"cmp"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// Defaults the API documents for fields left empty.
const (
	defaultMTU = 1450 // underlay 1500 minus VXLAN overhead
)

// compile builds the object of ref from the current input. It returns nil
// when the resource is absent or has no ID yet, and the refs whose IDs the
// object embeds (so that their creation, deletion or renumbering recompiles
// it).
func (m *Model) compile(ref string) (*agentv1.Object, []string) {
	if id, ok := strings.CutPrefix(ref, gatewayPrefix); ok {
		return m.compileGateway(id)
	}
	if id, ok := strings.CutPrefix(ref, "nodes/"); ok {
		n := m.nodes[id]
		if n == nil {
			return nil, nil
		}
		return compileNode(id, n), nil
	}
	switch collectionOf(ref) {
	case "vpcs":
		if v := m.vpcs[ref]; v != nil && v.GetId() != 0 {
			return compileVpc(v), nil
		}
	case "subnets":
		if s := m.subnets[ref]; s != nil && s.GetId() != 0 {
			return m.compileSubnet(s)
		}
	case "ports":
		if p := m.ports[ref]; p != nil && p.GetId() != 0 {
			return m.compilePort(p)
		}
	case "securityGroups":
		if g := m.sgs[ref]; g != nil && g.GetId() != 0 {
			return m.compileSG(g)
		}
	case "networkAcls":
		if a := m.acls[ref]; a != nil && a.GetId() != 0 {
			return m.compileACL(a)
		}
	case "routeTables":
		if r := m.rts[ref]; r != nil && r.GetId() != 0 {
			return m.compileRT(r)
		}
	case "publicAddressPools":
		if p := m.pools[ref]; p != nil && p.GetId() != 0 {
			return compilePool(p), nil
		}
	case "bgpPeers":
		if p := m.peers[ref]; p != nil && p.GetId() != 0 {
			return compilePeer(p), nil
		}
	case "elasticIps":
		if e := m.eips[ref]; e != nil && e.GetId() != 0 {
			return m.compileEIP(e)
		}
	case "flowLogs":
		if f := m.flowLogs[ref]; f != nil && f.GetId() != 0 {
			return m.compileFlowLog(f)
		}
	case "natGateways":
		if n := m.ngws[ref]; n != nil && n.GetId() != 0 {
			return m.compileNGW(n)
		}
	}
	return nil, nil
}

// collectionOf returns the collection segment of a resource name
// ("projects/p/vpcs/v/subnets/s" -> "subnets").
func collectionOf(name string) string {
	i := strings.LastIndexByte(name, '/')
	if i <= 0 {
		return ""
	}
	j := strings.LastIndexByte(name[:i], '/')
	return name[j+1 : i]
}

func key(kind string, id uint32) string { return kind + "/" + strconv.FormatUint(uint64(id), 10) }

func compileVpc(v *mv1.Vpc) *agentv1.Object {
	cidrs := make([]string, 0, len(v.GetCidrBlocks())+1)
	for _, c := range v.GetCidrBlocks() {
		cidrs = append(cidrs, canonPrefix(c))
	}
	if c := v.GetIpv6CidrBlock(); c != "" {
		cidrs = append(cidrs, canonPrefix(c))
	}
	slices.Sort(cidrs)
	cidrs = slices.Compact(cidrs)
	return &agentv1.Object{Key: key("vpc", v.GetId()), Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{
		Id: v.GetId(), Name: v.GetName(), Vni: v.GetVni(), Cidrs: cidrs,
	}}}
}

// id resolves a referenced resource to its numeric ID, 0 when it is absent
// (or has none yet). The ref is returned as a dependency either way, so the
// referring object is recompiled when the referent appears.
func (m *Model) vpcID(name string) uint32    { return m.vpcs[name].GetId() }
func (m *Model) subnetID(name string) uint32 { return m.subnets[name].GetId() }
func (m *Model) portID(name string) uint32   { return m.ports[name].GetId() }
func (m *Model) sgID(name string) uint32     { return m.sgs[name].GetId() }
func (m *Model) aclID(name string) uint32    { return m.acls[name].GetId() }
func (m *Model) rtID(name string) uint32     { return m.rts[name].GetId() }

func (m *Model) compileSubnet(s *mv1.Subnet) (*agentv1.Object, []string) {
	vpc := vpcOfSubnet(s.GetName())
	deps := []string{vpc}
	out := &agentv1.Subnet{
		Id:        s.GetId(),
		Name:      s.GetName(),
		VpcId:     m.vpcID(vpc),
		Cidr:      canonPrefix(s.GetCidrBlock()),
		Ipv6Cidr:  canonPrefix(s.GetIpv6CidrBlock()),
		GatewayIp: canonAddr(s.GetGatewayIp()),
		Mtu:       s.GetMtu(),
	}
	if out.GatewayIp == "" {
		out.GatewayIp = firstAddr(out.Cidr)
	}
	if out.Mtu == 0 {
		out.Mtu = defaultMTU
	}
	if d := s.GetDhcp(); d != nil {
		out.DhcpEnabled = d.GetEnabled()
		out.DomainName = strings.TrimSuffix(strings.ToLower(d.GetDomainName()), ".")
		// DNS servers keep their order: resolvers try them in order, so
		// the order is meaning, not noise.
		for _, a := range d.GetDnsServers() {
			out.DnsServers = append(out.DnsServers, canonAddr(a))
		}
	}
	if a := s.GetNetworkAcl(); a != "" {
		deps = append(deps, a)
		out.NetworkAclId = m.aclID(a)
	}
	if r := s.GetRouteTable(); r != "" {
		deps = append(deps, r)
		out.RouteTableId = m.rtID(r)
	}
	return &agentv1.Object{Key: key("subnet", s.GetId()), Body: &agentv1.Object_Subnet{Subnet: out}}, deps
}

func (m *Model) compilePort(p *mv1.Port) (*agentv1.Object, []string) {
	vpc := vpcOfSubnet(p.GetSubnet())
	deps := []string{vpc, p.GetSubnet()}
	fixed := canonAddrs(p.GetFixedIps())
	secondary := canonAddrs(p.GetSecondaryIps())
	var sgIDs []uint32
	for _, g := range p.GetSecurityGroups() {
		deps = append(deps, g)
		// A group that does not exist (yet) contributes nothing: ports
		// only gain allowances from groups, so leaving it out fails closed.
		if id := m.sgID(g); id != 0 {
			sgIDs = append(sgIDs, id)
		}
	}
	slices.Sort(sgIDs)
	sgIDs = slices.Compact(sgIDs)
	out := &agentv1.Port{
		Id:               p.GetId(),
		Name:             p.GetName(),
		VpcId:            m.vpcID(vpc),
		SubnetId:         m.subnetID(p.GetSubnet()),
		Mac:              canonMAC(p.GetMacAddress()),
		Ips:              append(fixed, secondary...),
		Node:             nodeID(p.GetNode()),
		SecurityGroupIds: sgIDs,
		SourceDestCheck:  !p.GetDisableSourceDestCheck(),
	}
	return &agentv1.Object{Key: key("port", p.GetId()), Body: &agentv1.Object_Port{Port: out}}, slices.Compact(deps)
}

// protocolNumber maps the API's protocol names and numbers to numbers
// (0: any), as the API server's validation does.
func protocolNumber(s string) (uint32, bool) {
	switch s = strings.ToLower(strings.TrimSpace(s)); s {
	case "", "all":
		return 0, true
	case "icmp":
		return 1, true
	case "tcp":
		return 6, true
	case "udp":
		return 17, true
	case "icmpv6":
		return 58, true
	case "sctp":
		return 132, true
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

// hasPorts: protocols whose rules may name L4 ports (as the API validates).
func hasPorts(proto uint32) bool { return proto == 6 || proto == 17 || proto == 132 }

// ruleMatch fills the normalised match shared by group and ACL rules. It
// returns false for a protocol it does not know, which validated input never
// has: the caller then drops the rule, because reading it as protocol 0
// ("any") would turn a narrow rule into a wide one.
func ruleMatch(r *agentv1.Rule, protocol string, pmin, pmax uint32, icmpType, icmpCode *int32, cidr string) bool {
	var ok bool
	if r.Protocol, ok = protocolNumber(protocol); !ok {
		return false
	}
	if hasPorts(r.Protocol) {
		r.PortMin, r.PortMax = pmin, pmax
		if r.PortMax == 0 {
			r.PortMax = r.PortMin
		}
		// 1..65535 and 0..0 both mean every port; keep one spelling.
		if r.PortMin <= 1 && r.PortMax == 65535 {
			r.PortMin, r.PortMax = 0, 0
		}
	}
	// -1 means "any" for type and code. Non-ICMP rules carry -1 too, so a
	// consumer can test "type != -1" without first looking at the protocol.
	r.IcmpType, r.IcmpCode = -1, -1
	if r.Protocol == 1 || r.Protocol == 58 {
		if icmpType != nil {
			r.IcmpType = *icmpType
			if icmpCode != nil {
				r.IcmpCode = *icmpCode
			}
		}
	}
	r.Cidr = canonPrefix(cidr)
	r.Ipv6 = r.Protocol == 58 || strings.Contains(r.Cidr, ":")
	// "Any address" is spelt "" (the family is in ipv6).
	if r.Cidr == "0.0.0.0/0" || r.Cidr == "::/0" {
		r.Cidr = ""
	}
	return true
}

func (m *Model) compileSG(g *mv1.SecurityGroup) (*agentv1.Object, []string) {
	deps := []string{g.GetVpc()}
	rules := make([]*agentv1.Rule, 0, len(g.GetRules()))
	for _, in := range g.GetRules() {
		r := &agentv1.Rule{Id: in.GetId(), Allow: true, Ingress: in.GetDirection() == mv1.Direction_INGRESS}
		if !ruleMatch(r, in.GetProtocol(), in.GetPortRangeMin(), in.GetPortRangeMax(), in.IcmpType, in.IcmpCode, in.GetRemoteCidr()) {
			m.log.Error("model: security group rule with unknown protocol dropped", "group", g.GetName(), "rule", in.GetId(), "protocol", in.GetProtocol())
			continue
		}
		if rg := in.GetRemoteSecurityGroup(); rg != "" {
			deps = append(deps, rg)
			r.RemoteGroupId = m.sgID(rg)
			if r.RemoteGroupId == 0 {
				// An unresolved remote group would read as "any source":
				// drop the rule instead, failing closed.
				continue
			}
		}
		rules = append(rules, r)
	}
	slices.SortFunc(rules, func(a, b *agentv1.Rule) int {
		return cmp.Or(cmp.Compare(a.Id, b.Id), compareRule(a, b))
	})
	slices.Sort(deps)
	out := &agentv1.SecurityGroup{Id: g.GetId(), Name: g.GetName(), VpcId: m.vpcID(g.GetVpc()), Rules: rules}
	return &agentv1.Object{Key: key("sg", g.GetId()), Body: &agentv1.Object_SecurityGroup{SecurityGroup: out}}, slices.Compact(deps)
}

// compareRule orders rules that tie on their primary key, so output never
// depends on input order.
func compareRule(a, b *agentv1.Rule) int {
	return cmp.Or(
		cmp.Compare(a.Number, b.Number),
		boolCmp(a.Ingress, b.Ingress),
		boolCmp(a.Allow, b.Allow),
		cmp.Compare(a.Protocol, b.Protocol),
		cmp.Compare(a.PortMin, b.PortMin),
		cmp.Compare(a.PortMax, b.PortMax),
		cmp.Compare(a.IcmpType, b.IcmpType),
		cmp.Compare(a.IcmpCode, b.IcmpCode),
		cmp.Compare(a.Cidr, b.Cidr),
		cmp.Compare(a.RemoteGroupId, b.RemoteGroupId),
		boolCmp(a.Ipv6, b.Ipv6),
	)
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func (m *Model) compileACL(a *mv1.NetworkAcl) (*agentv1.Object, []string) {
	rules := make([]*agentv1.Rule, 0, len(a.GetRules()))
	for _, in := range a.GetRules() {
		r := &agentv1.Rule{
			Id: in.GetId(), Number: in.GetNumber(),
			Allow: in.GetAction() == mv1.Action_ALLOW, Ingress: in.GetDirection() == mv1.Direction_INGRESS,
		}
		if !ruleMatch(r, in.GetProtocol(), in.GetPortRangeMin(), in.GetPortRangeMax(), in.IcmpType, in.IcmpCode, in.GetCidr()) {
			m.log.Error("model: network ACL rule with unknown protocol dropped", "acl", a.GetName(), "rule", in.GetId(), "protocol", in.GetProtocol())
			continue
		}
		rules = append(rules, r)
	}
	// Ingress first, then by number: the evaluation order of each direction.
	slices.SortFunc(rules, func(a, b *agentv1.Rule) int {
		return cmp.Or(-boolCmp(a.Ingress, b.Ingress), cmp.Compare(a.Number, b.Number), cmp.Compare(a.Id, b.Id), compareRule(a, b))
	})
	out := &agentv1.NetworkAcl{Id: a.GetId(), Name: a.GetName(), VpcId: m.vpcID(a.GetVpc()), Rules: rules}
	return &agentv1.Object{Key: key("acl", a.GetId()), Body: &agentv1.Object_NetworkAcl{NetworkAcl: out}}, []string{a.GetVpc()}
}

func (m *Model) compileRT(t *mv1.RouteTable) (*agentv1.Object, []string) {
	deps := []string{t.GetVpc()}
	routes := make([]*agentv1.Route, 0, len(t.GetRoutes()))
	for _, in := range t.GetRoutes() {
		r := &agentv1.Route{
			Destination: canonPrefix(in.GetDestination()),
			NextHopIp:   canonAddr(in.GetNextHopIp()),
			Blackhole:   in.GetBlackhole(),
		}
		if p := in.GetNextHopPort(); p != "" {
			deps = append(deps, p)
			r.NextHopPortId = m.portID(p)
			if r.NextHopPortId == 0 {
				// Target gone: drop the traffic rather than let it take a
				// less specific route (the "blackhole" state of cloud APIs).
				r.Blackhole = true
			}
		}
		routes = append(routes, r)
	}
	slices.SortFunc(routes, func(a, b *agentv1.Route) int {
		return cmp.Or(cmp.Compare(a.Destination, b.Destination), cmp.Compare(a.NextHopPortId, b.NextHopPortId),
			cmp.Compare(a.NextHopIp, b.NextHopIp), boolCmp(a.Blackhole, b.Blackhole))
	})
	slices.Sort(deps)
	out := &agentv1.RouteTable{Id: t.GetId(), Name: t.GetName(), VpcId: m.vpcID(t.GetVpc()), Routes: routes}
	return &agentv1.Object{Key: key("rt", t.GetId()), Body: &agentv1.Object_RouteTable{RouteTable: out}}, slices.Compact(deps)
}

func compileNode(id string, n *mv1.Node) *agentv1.Object {
	realization := "ebpf" // the API's default realization
	if n.GetRealization() == mv1.Realization_OVN {
		realization = "ovn"
	}
	return &agentv1.Object{Key: "node/" + id, Body: &agentv1.Object_PeerNode{PeerNode: &agentv1.PeerNode{
		Node: id, UnderlayIp: canonAddr(n.GetUnderlayIp()), Realization: realization,
	}}}
}

// canonPrefix returns the canonical (masked, shortest) form of a CIDR; input
// that does not parse is returned unchanged (the API validated it, so this
// only guards against a foreign writer, and must stay deterministic).
func canonPrefix(s string) string {
	if s == "" {
		return ""
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		if a, aerr := netip.ParseAddr(strings.TrimSpace(s)); aerr == nil {
			return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()).String()
		}
		return s
	}
	a := p.Addr().Unmap()
	bits := p.Bits()
	if p.Addr().Is4In6() {
		bits -= 96
	}
	return netip.PrefixFrom(a, bits).Masked().String()
}

func canonAddr(s string) string {
	if s == "" {
		return ""
	}
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		if p, perr := netip.ParsePrefix(strings.TrimSpace(s)); perr == nil {
			return p.Addr().Unmap().String()
		}
		return s
	}
	return a.Unmap().String()
}

// canonAddrs canonicalises, sorts (numerically) and de-duplicates addresses.
func canonAddrs(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		out = append(out, canonAddr(s))
	}
	slices.SortFunc(out, func(a, b string) int {
		pa, ea := netip.ParseAddr(a)
		pb, eb := netip.ParseAddr(b)
		if ea == nil && eb == nil {
			return pa.Compare(pb)
		}
		return strings.Compare(a, b)
	})
	return slices.Compact(out)
}

func firstAddr(cidr string) string {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return ""
	}
	return p.Masked().Addr().Next().String()
}

func canonMAC(s string) string {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil {
		return strings.ToLower(s)
	}
	return hw.String()
}
