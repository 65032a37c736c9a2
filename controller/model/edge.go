package model

// The outside world (issue [4]): gateways, elastic IPs, NAT gateways,
// public pools and BGP peers.
//
// Who gets what: a gateway node gets every Gateway, ElasticIp, NatGateway
// and PublicPool object and the BgpPeers of its own node (it does the NAT
// and announces the addresses), and every Vpc object when one of its peers
// has announce_vpc_prefixes. Every other registered node gets every
// Gateway object (where to send traffic for the outside world), the
// ElasticIps of ports bound on it and the NatGateways of the VPCs it
// serves.
//
// A NAT gateway's SNAT is stateful, so one gateway owns it: the rendezvous
// (highest random weight) hash of the NAT gateway's ID over the gateway
// nodes that are registered and not marked down. Removing or losing a
// gateway moves only the NAT gateways it owned; adding one moves about
// 1/n of them to it.
//
// "Down" is a store key (GatewayDownKey) the distributor writes when a
// gateway's agent has been gone for a while and deletes when it is back:
// being in the store, it is ordered with every other change (so versions
// stay store revisions), survives controller restarts, and a full rebuild
// sees it like an incremental one.

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"slices"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
)

// downPrefix is the store prefix of the gateway liveness markers. It is
// under "res/" so the distributor's and the model's watch see it in order,
// but it is not an API kind: the API server ignores it.
const downPrefix = resource.NodeDownPrefix

// GatewayDownKey is the store key marking gateway node (ID) unavailable.
// Its value is ignored.
func GatewayDownKey(node string) string { return downPrefix + node }

// awayPrefix is the store prefix of the markers of gateways whose agent
// has just gone: written at once when its stream ends, long before the
// down marker, and deleted when it is back.
const awayPrefix = "res/GatewayAway/nodes/"

// GatewayAwayKey is the store key marking gateway node (ID) away: its
// Gateway object says draining, so workload nodes stop hashing
// elastic-IP flows to it within a delta instead of after the grace period
// (the replies of a dead gateway's flows would be lost meanwhile), while
// its NAT gateways stay where they are until it is marked down (an agent
// restart must not move stateful NAT).
func GatewayAwayKey(node string) string { return awayPrefix + node }

const (
	// gatewayPrefix names the Gateway object of a node ("gateways/n1"),
	// a second object compiled from the Node resource besides its PeerNode.
	gatewayPrefix = "gateways/"
	// gatewaysRef is the dependency on the set of available gateways.
	gatewaysRef = "gateways/"
)

func gatewayRef(id string) string { return gatewayPrefix + id }

// contentKind: objects that embed more of their references than IDs.
func contentKind(key string) bool {
	return strings.HasPrefix(key, "eip/") || strings.HasPrefix(key, "ngw/") || strings.HasPrefix(key, "lb/")
}

// IsGateway reports whether node (ID) is registered with the GATEWAY role.
func (m *Model) IsGateway(node string) bool { return m.isGateway(node) }

// Gateways returns the gateway node IDs, sorted.
func (m *Model) Gateways() []string {
	out := make([]string, 0, len(m.gateways))
	for g := range m.gateways {
		out = append(out, g)
	}
	slices.Sort(out)
	return out
}

func (m *Model) isGateway(id string) bool {
	_, ok := m.gateways[id]
	return ok
}

func hasGatewayRole(n *mv1.Node) bool { return slices.Contains(n.GetRoles(), mv1.NodeRole_GATEWAY) }

// recompileContentDeps recompiles the objects that embed content of ref.
func (m *Model) recompileContentDeps(ref string, c *changeSet) {
	if len(m.crdeps[ref]) == 0 {
		return
	}
	keys := make([]string, 0, len(m.crdeps[ref]))
	for key := range m.crdeps[ref] {
		keys = append(keys, key)
	}
	for _, key := range keys {
		if r, ok := m.objRes[key]; ok {
			m.recompile(r, c)
		}
	}
}

// edgeRefs appends the refs of the outside-world resources (for Load).
func (m *Model) edgeRefs(refs []string) []string {
	for n := range m.pools {
		refs = append(refs, n)
	}
	for n := range m.peers {
		refs = append(refs, n)
	}
	for n := range m.eips {
		refs = append(refs, n)
	}
	for n := range m.ngws {
		refs = append(refs, n)
	}
	for n := range m.lbs {
		refs = append(refs, m.listenerRefs(n)...)
	}
	return refs
}

// indexEdge maintains the indexes of nodes and the outside-world kinds.
func (m *Model) indexEdge(k *resource.Kind, name string, d int, setOp func(map[string]set, string, string), c *changeSet) {
	switch k {
	case resource.KindNode:
		id := nodeID(name)
		// Every registered node holds the Gateway objects; a gateway holds
		// much more: recompute the node whenever its record changes.
		c.full[id] = struct{}{}
		n := m.nodes[id]
		if n == nil || !hasGatewayRole(n) {
			return
		}
		if d > 0 {
			m.gateways[id] = struct{}{}
		} else {
			delete(m.gateways, id)
		}
	case resource.KindNatGateway:
		if n := m.ngws[name]; n != nil {
			setOp(m.vpcNgws, n.GetVpc(), name)
		}
	case resource.KindBgpPeer:
		if p := m.peers[name]; p != nil {
			n := nodeID(p.GetNode())
			setOp(m.nodePeers, n, name)
			if p.GetAnnounceVpcPrefixes() {
				setOp(m.vpcAnnouncers, n, name)
				c.full[n] = struct{}{}
			}
		}
	case resource.KindElasticIp:
		e := m.eips[name]
		if e == nil || e.GetPort() == "" {
			return
		}
		setOp(m.portEips, e.GetPort(), name)
		if p := m.ports[e.GetPort()]; p != nil && p.GetNode() != "" {
			setOp(m.nodeEips, nodeID(p.GetNode()), name)
		}
	}
}

// edgeNodeKeys adds the outside-world objects node n needs.
func (m *Model) edgeNodeKeys(n string, put func(string)) {
	if m.nodes[n] == nil {
		return
	}
	for g := range m.gateways {
		put(gatewayRef(g))
	}
	m.lbNodeKeys(n, put)
	if m.isGateway(n) {
		for name := range m.pools {
			put(name)
		}
		for name := range m.eips {
			put(name)
		}
		for name := range m.ngws {
			put(name)
		}
		for name := range m.nodePeers[n] {
			put(name)
		}
		if m.announcesVpcs(n) {
			for name := range m.vpcs {
				put(name)
			}
		}
		return
	}
	for name := range m.nodeEips[n] {
		put(name)
	}
	for vpc := range m.nodeVpcs[n] {
		for name := range m.vpcNgws[vpc] {
			put(name)
		}
	}
}

// announcesVpcs: gateway n has a BGP peer asking for VPC prefixes, so it
// holds every VPC object.
func (m *Model) announcesVpcs(n string) bool {
	return m.isGateway(n) && len(m.vpcAnnouncers[n]) > 0
}

func (m *Model) holdsEdge(n, kind, ref string) bool {
	if m.nodes[n] == nil {
		return false
	}
	switch kind {
	case "gateway":
		return true
	case "pool":
		return m.isGateway(n)
	case "bgp":
		return m.isGateway(n) && nodeID(m.peers[ref].GetNode()) == n
	case "eip":
		if m.isGateway(n) {
			return true
		}
		_, ok := m.nodeEips[n][ref]
		return ok
	case "ngw":
		return m.isGateway(n) || m.nodeVpcs[n][m.ngws[ref].GetVpc()] > 0
	case "lb":
		return m.holdsLb(n, ref)
	}
	return false
}

func (m *Model) candidatesEdge(kind, ref string, out set) {
	gateways := func() {
		for g := range m.gateways {
			out[g] = struct{}{}
		}
	}
	switch kind {
	case "gateway":
		for n := range m.nodes {
			out[n] = struct{}{}
		}
	case "pool", "bgp":
		gateways()
	case "eip":
		gateways()
		if p := m.ports[m.eips[ref].GetPort()]; p.GetNode() != "" {
			out[nodeID(p.GetNode())] = struct{}{}
		}
	case "ngw":
		gateways()
		for n := range m.vpcNodes[m.ngws[ref].GetVpc()] {
			out[n] = struct{}{}
		}
	case "lb":
		m.candidatesLb(ref, out)
	}
}

// setGatewayDown marks a gateway node unavailable (its agent is gone) or
// available again. Unavailable gateways own no NAT gateway; the NAT
// gateways they owned move to the next gateway by rendezvous hash.
func (m *Model) setGatewayDown(node string, down bool, c *changeSet) {
	if _, was := m.down[node]; was == down {
		return
	}
	if down {
		m.down[node] = struct{}{}
	} else {
		delete(m.down, node)
	}
	// Backends on a down node are unhealthy: nobody checks them.
	m.recompileContentDeps(downRef(node), c)
	if m.isGateway(node) {
		m.recompileContentDeps(gatewaysRef, c)
		// A down gateway's Gateway object goes, so workload nodes stop
		// hashing elastic-IP flows to it; it comes back with the gateway.
		m.recompile(gatewayRef(node), c)
	}
}

// setGatewayAway marks a gateway node's agent away (just gone) or back.
func (m *Model) setGatewayAway(node string, away bool, c *changeSet) {
	if _, was := m.away[node]; was == away {
		return
	}
	if away {
		m.away[node] = struct{}{}
	} else {
		delete(m.away, node)
	}
	if m.isGateway(node) {
		m.recompile(gatewayRef(node), c)
	}
}

// owner picks the gateway owning the NAT gateway with the given ID.
func (m *Model) owner(id uint32) string {
	best, bestScore := "", uint64(0)
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], id)
	for g := range m.gateways {
		if _, down := m.down[g]; down {
			continue
		}
		h := fnv.New64a()
		h.Write(b[:])
		h.Write([]byte(g))
		score := h.Sum64()
		if best == "" || score > bestScore || score == bestScore && g < best {
			best, bestScore = g, score
		}
	}
	return best
}

func (m *Model) compileGateway(id string) (*agentv1.Object, []string) {
	n := m.nodes[id]
	if n == nil || !hasGatewayRole(n) {
		return nil, nil
	}
	if _, down := m.down[id]; down {
		return nil, nil
	}
	_, away := m.away[id]
	return &agentv1.Object{Key: "gateway/" + id, Body: &agentv1.Object_Gateway{Gateway: &agentv1.Gateway{
		Node: id, UnderlayIp: canonAddr(n.GetUnderlayIp()), Draining: away,
	}}}, nil
}

func compilePool(p *mv1.PublicAddressPool) *agentv1.Object {
	cidrs := make([]string, 0, len(p.GetCidrs()))
	for _, c := range p.GetCidrs() {
		cidrs = append(cidrs, canonPrefix(c))
	}
	slices.Sort(cidrs)
	communities := slices.Clone(p.GetCommunities())
	slices.Sort(communities)
	return &agentv1.Object{Key: key("pool", p.GetId()), Body: &agentv1.Object_PublicPool{PublicPool: &agentv1.PublicPool{
		Id: p.GetId(), Name: p.GetName(), Cidrs: slices.Compact(cidrs), Communities: slices.Compact(communities),
		Med: p.GetMed(), Announce: p.Announce == nil || p.GetAnnounce(),
	}}}
}

func compilePeer(p *mv1.BgpPeer) *agentv1.Object {
	return &agentv1.Object{Key: key("bgp", p.GetId()), Body: &agentv1.Object_BgpPeer{BgpPeer: &agentv1.BgpPeer{
		Id: p.GetId(), Name: p.GetName(), Node: nodeID(p.GetNode()), LocalAsn: p.GetLocalAsn(),
		RouterId: canonAddr(p.GetRouterId()), PeerAsn: p.GetPeerAsn(), PeerAddress: canonAddr(p.GetPeerAddress()),
		HoldTime: p.GetHoldTime(), GracefulRestart: p.GracefulRestart == nil || p.GetGracefulRestart(),
		RestartTime: p.GetRestartTime(), AnnounceVpcPrefixes: p.GetAnnounceVpcPrefixes(), Password: p.GetPassword(),
	}}}
}

// portTarget resolves where a port lives, for elastic IPs and port
// mappings: its ID, MAC, node and that node's underlay address. deps gains
// what was read.
func (m *Model) portTarget(name string, deps *[]string) (p *mv1.Port, mac, node, nodeIP string) {
	*deps = append(*deps, name)
	p = m.ports[name]
	if p == nil {
		return nil, "", "", ""
	}
	if p.GetNode() != "" {
		*deps = append(*deps, p.GetNode())
		node = nodeID(p.GetNode())
		nodeIP = canonAddr(m.nodes[node].GetUnderlayIp())
	}
	return p, canonMAC(p.GetMacAddress()), node, nodeIP
}

func (m *Model) compileEIP(e *mv1.ElasticIp) (*agentv1.Object, []string) {
	deps := []string{e.GetPool()}
	out := &agentv1.ElasticIp{Id: e.GetId(), Name: e.GetName(), Address: canonAddr(e.GetAddress()), PoolId: m.pools[e.GetPool()].GetId()}
	if e.GetPort() != "" {
		if p, mac, node, nodeIP := m.portTarget(e.GetPort(), &deps); p != nil {
			vpc := vpcOfSubnet(p.GetSubnet())
			deps = append(deps, vpc)
			out.VpcId, out.Vni = m.vpcID(vpc), m.vpcs[vpc].GetVni()
			out.PortId, out.PrivateIp, out.PortMac, out.PortNode, out.PortNodeIp = p.GetId(), canonAddr(e.GetPrivateIp()), mac, node, nodeIP
		}
	}
	if g := e.GetNatGateway(); g != "" {
		deps = append(deps, g)
		if n := m.ngws[g]; n != nil {
			deps = append(deps, n.GetVpc())
			out.NatGatewayId = n.GetId()
			out.VpcId, out.Vni = m.vpcID(n.GetVpc()), m.vpcs[n.GetVpc()].GetVni()
		}
	}
	slices.Sort(deps)
	return &agentv1.Object{Key: key("eip", e.GetId()), Body: &agentv1.Object_ElasticIp{ElasticIp: out}}, slices.Compact(deps)
}

func (m *Model) compileNGW(n *mv1.NatGateway) (*agentv1.Object, []string) {
	deps := []string{n.GetVpc(), gatewaysRef}
	out := &agentv1.NatGateway{
		Id: n.GetId(), Name: n.GetName(), VpcId: m.vpcID(n.GetVpc()), Vni: m.vpcs[n.GetVpc()].GetVni(),
		PortMin: n.GetPortMin(), PortMax: n.GetPortMax(), OwnerNode: m.owner(n.GetId()),
	}
	if out.PortMin == 0 {
		out.PortMin = 1024
	}
	if out.PortMax == 0 {
		out.PortMax = 65535
	}
	addrOf := map[string]string{}
	var addrs []string
	for _, name := range n.GetElasticIps() {
		deps = append(deps, name)
		if a := canonAddr(m.eips[name].GetAddress()); a != "" {
			addrOf[name] = a
			addrs = append(addrs, a)
		}
	}
	out.Addresses = canonAddrs(addrs)
	for _, name := range n.GetSubnets() {
		deps = append(deps, name)
		s := m.subnets[name]
		if s.GetId() == 0 {
			continue
		}
		out.SubnetIds = append(out.SubnetIds, s.GetId())
		for _, c := range []string{s.GetCidrBlock(), s.GetIpv6CidrBlock()} {
			if c != "" {
				out.SnatCidrs = append(out.SnatCidrs, canonPrefix(c))
			}
		}
	}
	slices.Sort(out.SubnetIds)
	out.SubnetIds = slices.Compact(out.SubnetIds)
	slices.Sort(out.SnatCidrs)
	out.SnatCidrs = slices.Compact(out.SnatCidrs)
	for _, in := range n.GetPortMappings() {
		proto, ok := protocolNumber(in.GetProtocol())
		addr := addrOf[in.GetElasticIp()]
		p, mac, node, nodeIP := m.portTarget(in.GetPort(), &deps)
		if !ok || addr == "" || p == nil || p.GetId() == 0 {
			// Unresolvable mappings are left out: nothing is forwarded
			// rather than something wrong.
			continue
		}
		out.PortMappings = append(out.PortMappings, &agentv1.PortMapping{
			Protocol: proto, Address: addr, PublicPort: in.GetPublicPort(), PortId: p.GetId(),
			PrivateIp: canonAddr(in.GetPrivateIp()), PrivatePort: in.GetPrivatePort(), PortMac: mac, PortNode: node, PortNodeIp: nodeIP,
		})
	}
	slices.SortFunc(out.PortMappings, func(a, b *agentv1.PortMapping) int {
		return cmp.Or(cmp.Compare(a.Address, b.Address), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.PublicPort, b.PublicPort))
	})
	slices.Sort(deps)
	return &agentv1.Object{Key: key("ngw", n.GetId()), Body: &agentv1.Object_NatGateway{NatGateway: out}}, slices.Compact(deps)
}
