// Package model owns Meridian's logical model: it compiles the API resources
// held in the store (already validated, IDs already allocated) into the
// normalised agentv1 objects that both renderers consume, and decides which
// of those objects each node needs.
//
// The model is a pure, in-memory function of the store's "res/" keys. It is
// fed either a full listing (Load) or one store event at a time (Apply); the
// two must always give identical results, which the property test checks.
// Apply is incremental: reverse indexes limit the work to the objects that
// read the changed resource and the nodes that hold them.
//
// The model must not validate intent, allocate IDs, write to the store or
// talk to agents: validation and allocation belong to the API server, and
// versioning and streaming belong to the distributor. A Model is not safe
// for concurrent use; its owner serialises access. Returned objects are
// shared between nodes and calls and must be treated as immutable.
package model

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

type set = map[string]struct{}

func add(m map[string]set, k, v string) {
	s := m[k]
	if s == nil {
		s = set{}
		m[k] = s
	}
	s[v] = struct{}{}
}

func remove(m map[string]set, k, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// incr adjusts a reference count and reports whether the entry appeared
// (0 -> 1) or disappeared (1 -> 0): only those transitions change which
// objects a node needs.
func incr(m map[string]map[string]int, k, v string, d int) (transition bool) {
	c := m[k]
	if c == nil {
		c = map[string]int{}
		m[k] = c
	}
	before := c[v]
	after := before + d
	if after <= 0 {
		delete(c, v)
		if len(c) == 0 {
			delete(m, k)
		}
	} else {
		c[v] = after
	}
	return (before > 0) != (after > 0)
}

// Changes maps node IDs to the keys of the objects that were added to,
// removed from or changed in that node's desired state.
type Changes map[string]map[string]struct{}

func (c Changes) add(node, key string) {
	s := c[node]
	if s == nil {
		s = map[string]struct{}{}
		c[node] = s
	}
	s[key] = struct{}{}
}

// Merge adds o's changes to c.
func (c Changes) Merge(o Changes) {
	for n, keys := range o {
		for k := range keys {
			c.add(n, k)
		}
	}
}

// Nodes returns the changed node IDs, sorted.
func (c Changes) Nodes() []string {
	out := make([]string, 0, len(c))
	for n := range c {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Model is the logical model. Create it with New.
type Model struct {
	log *slog.Logger

	// Input: the current resources, by name (nodes by node ID).
	vpcs    map[string]*mv1.Vpc
	subnets map[string]*mv1.Subnet
	ports   map[string]*mv1.Port
	sgs     map[string]*mv1.SecurityGroup
	acls    map[string]*mv1.NetworkAcl
	rts     map[string]*mv1.RouteTable
	nodes   map[string]*mv1.Node
	pools   map[string]*mv1.PublicAddressPool
	peers   map[string]*mv1.BgpPeer
	eips    map[string]*mv1.ElasticIp
	ngws    map[string]*mv1.NatGateway

	// Compiled objects and their dependencies. A "ref" is a resource name
	// ("projects/p/ports/x", "nodes/n"); names of different kinds never
	// collide because they contain the collection segment.
	objs   map[string]*agentv1.Object // object key -> object
	objRes map[string]string          // object key -> ref that produced it
	resKey map[string]string          // ref -> object key
	deps   map[string][]string        // object key -> refs whose IDs it embeds
	rdeps  map[string]set             // ref -> object keys embedding its ID
	// crdeps: ref -> object keys embedding more of it than its ID (an
	// elastic IP embeds its port's MAC and node): recompiled on any change.
	crdeps map[string]set

	// Indexes over the input that decide which node needs what.
	vpcSubnets map[string]set            // vpc -> subnets
	vpcPorts   map[string]set            // vpc -> ports
	aclSubnets map[string]set            // acl -> subnets using it
	rtSubnets  map[string]set            // route table -> subnets using it
	sgRemoteOf map[string]set            // sg -> sgs whose rules name it as remote group
	nodeVpcs   map[string]map[string]int // node ID -> vpc -> bound ports
	vpcNodes   map[string]map[string]int // vpc -> node ID -> bound ports
	nodeSGs    map[string]map[string]int // node ID -> sg -> bound ports using it
	sgNodes    map[string]map[string]int // sg -> node ID -> bound ports using it

	// The outside world (issue [4]).
	gateways  set            // node IDs with the GATEWAY role
	vpcNgws   map[string]set // vpc -> NAT gateways in it
	portEips  map[string]set // port -> elastic IPs associated with it
	nodeEips  map[string]set // node ID -> elastic IPs of ports bound there
	nodePeers map[string]set // node ID -> BGP peers of that node
	// vpcAnnouncers: node ID -> its BGP peers with announce_vpc_prefixes;
	// such a gateway holds every VPC object (for the CIDRs).
	vpcAnnouncers map[string]set
	// down holds node IDs marked unavailable (GatewayDownKey): gateways
	// keep their objects but own no NAT gateway; backends hosted there are
	// unhealthy.
	down set
	// away holds gateway node IDs whose agent just went (GatewayAwayKey):
	// their Gateway objects say draining.
	away set

	// Load balancing (issue [5]), see lb.go.
	lbs        map[string]*mv1.LoadBalancer
	lbPlaces   map[string]lbPlace                      // LbService key -> where it goes
	nodeLbs    map[string]set                          // node ID -> LbService keys with a backend there
	nsLbs      set                                     // north-south LbService keys (gateways hold them)
	vpcLbs     map[string]set                          // vpc -> internal LbService keys
	health     map[uint32]map[uint32]resource.LbHealth // listener ID -> backend ID -> record
	maglevSize uint32

	// Flow logs (issue [6]), see flowlog.go.
	flowLogs    map[string]*mv1.FlowLog
	vpcFlowLogs map[string]set // vpc -> flow logs in it

	// Materialised per-node desired state (as keys) and its reverse.
	nodeKeys map[string]set // node ID -> object keys
	holders  map[string]set // object key -> node IDs
}

// New returns an empty model. A nil logger means slog.Default().
func New(log *slog.Logger) *Model {
	if log == nil {
		log = slog.Default()
	}
	m := &Model{log: log, maglevSize: resource.LbDefaultMaglevSize}
	m.reset()
	return m
}

func (m *Model) reset() {
	m.vpcs = map[string]*mv1.Vpc{}
	m.subnets = map[string]*mv1.Subnet{}
	m.ports = map[string]*mv1.Port{}
	m.sgs = map[string]*mv1.SecurityGroup{}
	m.acls = map[string]*mv1.NetworkAcl{}
	m.rts = map[string]*mv1.RouteTable{}
	m.nodes = map[string]*mv1.Node{}
	m.pools = map[string]*mv1.PublicAddressPool{}
	m.peers = map[string]*mv1.BgpPeer{}
	m.eips = map[string]*mv1.ElasticIp{}
	m.ngws = map[string]*mv1.NatGateway{}
	m.crdeps = map[string]set{}
	m.gateways = set{}
	m.down = set{}
	m.away = set{}
	m.lbs = map[string]*mv1.LoadBalancer{}
	m.lbPlaces = map[string]lbPlace{}
	m.nodeLbs = map[string]set{}
	m.nsLbs = set{}
	m.vpcLbs = map[string]set{}
	m.health = map[uint32]map[uint32]resource.LbHealth{}
	m.vpcNgws = map[string]set{}
	m.portEips = map[string]set{}
	m.nodeEips = map[string]set{}
	m.nodePeers = map[string]set{}
	m.vpcAnnouncers = map[string]set{}
	m.objs = map[string]*agentv1.Object{}
	m.objRes = map[string]string{}
	m.resKey = map[string]string{}
	m.deps = map[string][]string{}
	m.rdeps = map[string]set{}
	m.vpcSubnets = map[string]set{}
	m.vpcPorts = map[string]set{}
	m.aclSubnets = map[string]set{}
	m.rtSubnets = map[string]set{}
	m.sgRemoteOf = map[string]set{}
	m.nodeVpcs = map[string]map[string]int{}
	m.vpcNodes = map[string]map[string]int{}
	m.nodeSGs = map[string]map[string]int{}
	m.sgNodes = map[string]map[string]int{}
	m.nodeKeys = map[string]set{}
	m.holders = map[string]set{}
	m.flowLogs = map[string]*mv1.FlowLog{}
	m.vpcFlowLogs = map[string]set{}
}

// modelKinds are the resource kinds the model reads. Others (projects, ...)
// are ignored.
func modelKinds() []*resource.Kind {
	return []*resource.Kind{
		resource.KindNode, resource.KindVpc, resource.KindNetworkAcl, resource.KindRouteTable,
		resource.KindSubnet, resource.KindSecurityGroup, resource.KindPort,
		resource.KindPublicAddressPool, resource.KindBgpPeer, resource.KindElasticIp, resource.KindNatGateway,
		resource.KindLoadBalancer,
		resource.KindFlowLog,
	}
}

// Load replaces the model's content with a full build from tx.
func (m *Model) Load(tx store.ReadTx) error {
	m.reset()
	var discard changeSet
	discard.init()
	for _, k := range modelKinds() {
		kvs, err := tx.List(k.Prefix(), "", 0)
		if err != nil {
			return fmt.Errorf("model: list %s at revision %d: %w", k.Prefix(), tx.Revision(), err)
		}
		for _, kv := range kvs {
			name := strings.TrimPrefix(kv.Key, k.Prefix())
			msg := m.decode(k, kv)
			if msg == nil {
				continue
			}
			m.set(k, name, msg)
			m.index(k, name, &discard)
		}
	}
	kvs, err := tx.List(downPrefix, "", 0)
	if err != nil {
		return fmt.Errorf("model: list %s at revision %d: %w", downPrefix, tx.Revision(), err)
	}
	for _, kv := range kvs {
		m.down[strings.TrimPrefix(kv.Key, downPrefix)] = struct{}{}
	}
	if kvs, err = tx.List(awayPrefix, "", 0); err != nil {
		return fmt.Errorf("model: list %s at revision %d: %w", awayPrefix, tx.Revision(), err)
	}
	for _, kv := range kvs {
		m.away[strings.TrimPrefix(kv.Key, awayPrefix)] = struct{}{}
	}
	if kvs, err = tx.List(resource.LbHealthPrefix, "", 0); err != nil {
		return fmt.Errorf("model: list %s at revision %d: %w", resource.LbHealthPrefix, tx.Revision(), err)
	}
	for _, kv := range kvs {
		if l, b, h, ok := m.decodeHealth(kv); ok {
			if m.health[l] == nil {
				m.health[l] = map[uint32]resource.LbHealth{}
			}
			m.health[l][b] = h
		}
	}
	// Compile only once every resource is known, so references resolve
	// regardless of listing order.
	refs := make([]string, 0, len(m.ports)+len(m.sgs)+len(m.subnets))
	for n := range m.vpcs {
		refs = append(refs, n)
	}
	for n := range m.subnets {
		refs = append(refs, n)
	}
	for n := range m.ports {
		refs = append(refs, n)
	}
	for n := range m.sgs {
		refs = append(refs, n)
	}
	for n := range m.acls {
		refs = append(refs, n)
	}
	for n := range m.rts {
		refs = append(refs, n)
	}
	for id := range m.nodes {
		refs = append(refs, resource.KindNode.NameOf("", id), gatewayRef(id))
	}
	refs = m.edgeRefs(refs)
	for n := range m.flowLogs {
		refs = append(refs, n)
	}
	for _, r := range refs {
		m.recompile(r, &discard)
	}
	for n := range m.nodeVpcs {
		m.setNodeKeys(n, m.computeNodeKeys(n), nil)
	}
	for _, ns := range []map[string]map[string]int{m.nodeSGs} {
		for n := range ns {
			if _, done := m.nodeKeys[n]; !done {
				m.setNodeKeys(n, m.computeNodeKeys(n), nil)
			}
		}
	}
	for n := range m.nodes {
		if _, done := m.nodeKeys[n]; !done {
			m.setNodeKeys(n, m.computeNodeKeys(n), nil)
		}
	}
	return nil
}

// decode unmarshals a stored resource. A value that does not decode is
// logged and treated as absent: one corrupt record must not stop the
// controller from serving every other node.
func (m *Model) decode(k *resource.Kind, kv store.KV) proto.Message {
	msg := k.New()
	if err := proto.Unmarshal(kv.Value, msg); err != nil {
		m.log.Error("model: undecodable resource ignored", "key", kv.Key, "revision", kv.ModRevision, "err", err)
		return nil
	}
	return msg
}

// parseKey splits a store key into the model kind and resource name.
func parseKey(key string) (*resource.Kind, string, bool) {
	rest, ok := strings.CutPrefix(key, "res/")
	if !ok {
		return nil, "", false
	}
	kindName, name, ok := strings.Cut(rest, "/")
	if !ok {
		return nil, "", false
	}
	for _, k := range modelKinds() {
		if k.Name == kindName {
			return k, name, true
		}
	}
	return nil, "", false
}

// Apply applies one store event and returns what changed for which node.
// Events for keys outside the model are ignored.
func (m *Model) Apply(ev store.Event) Changes {
	if id, ok := strings.CutPrefix(ev.KV.Key, downPrefix); ok {
		var c changeSet
		c.init()
		m.setGatewayDown(id, ev.Type == store.EventPut, &c)
		return m.finish(&c)
	}
	if id, ok := strings.CutPrefix(ev.KV.Key, awayPrefix); ok {
		var c changeSet
		c.init()
		m.setGatewayAway(id, ev.Type == store.EventPut, &c)
		return m.finish(&c)
	}
	if strings.HasPrefix(ev.KV.Key, resource.LbHealthPrefix) {
		var c changeSet
		c.init()
		l, b, h, ok := m.decodeHealth(ev.KV)
		switch {
		case !ok:
		case ev.Type == store.EventPut:
			m.setHealth(l, b, &h, &c)
		default:
			m.setHealth(l, b, nil, &c)
		}
		return m.finish(&c)
	}
	k, name, ok := parseKey(ev.KV.Key)
	if !ok {
		return nil
	}
	var msg proto.Message
	if ev.Type == store.EventPut {
		msg = m.decode(k, ev.KV)
	}
	var c changeSet
	c.init()
	m.update(k, name, msg, &c)
	return m.finish(&c)
}

// changeSet collects what one event may have changed, before deciding the
// per-node consequences.
type changeSet struct {
	content set // object keys whose content changed (or that appeared/vanished)
	recheck set // object keys whose set of holders may have changed
	full    set // nodes whose roots (VPCs, groups) changed: recompute entirely
}

func (c *changeSet) init() {
	c.content, c.recheck, c.full = set{}, set{}, set{}
}

func (c *changeSet) check(key string) {
	if key != "" {
		c.recheck[key] = struct{}{}
	}
}

func idOf(msg proto.Message) uint32 {
	switch r := msg.(type) {
	case *mv1.Vpc:
		return r.GetId()
	case *mv1.Subnet:
		return r.GetId()
	case *mv1.Port:
		return r.GetId()
	case *mv1.SecurityGroup:
		return r.GetId()
	case *mv1.NetworkAcl:
		return r.GetId()
	case *mv1.RouteTable:
		return r.GetId()
	case *mv1.PublicAddressPool:
		return r.GetId()
	case *mv1.BgpPeer:
		return r.GetId()
	case *mv1.ElasticIp:
		return r.GetId()
	case *mv1.NatGateway:
		return r.GetId()
	case *mv1.LoadBalancer:
		return r.GetId()
	case *mv1.FlowLog:
		return r.GetId()
	}
	return 0
}

func nodeID(node string) string { return strings.TrimPrefix(node, "nodes/") }

// get returns the current resource of kind k named name, nil if absent
// (nodes are held by ID internally but referenced by name).
func (m *Model) get(k *resource.Kind, name string) proto.Message {
	var msg proto.Message
	var ok bool
	switch k {
	case resource.KindVpc:
		msg, ok = m.vpcs[name]
	case resource.KindSubnet:
		msg, ok = m.subnets[name]
	case resource.KindPort:
		msg, ok = m.ports[name]
	case resource.KindSecurityGroup:
		msg, ok = m.sgs[name]
	case resource.KindNetworkAcl:
		msg, ok = m.acls[name]
	case resource.KindRouteTable:
		msg, ok = m.rts[name]
	case resource.KindNode:
		msg, ok = m.nodes[nodeID(name)]
	case resource.KindPublicAddressPool:
		msg, ok = m.pools[name]
	case resource.KindBgpPeer:
		msg, ok = m.peers[name]
	case resource.KindElasticIp:
		msg, ok = m.eips[name]
	case resource.KindNatGateway:
		msg, ok = m.ngws[name]
	case resource.KindLoadBalancer:
		msg, ok = m.lbs[name]
	case resource.KindFlowLog:
		msg, ok = m.flowLogs[name]
	}
	if !ok {
		return nil
	}
	return msg
}

func (m *Model) set(k *resource.Kind, name string, msg proto.Message) {
	switch k {
	case resource.KindVpc:
		setOrDelete(m.vpcs, name, msg)
	case resource.KindSubnet:
		setOrDelete(m.subnets, name, msg)
	case resource.KindPort:
		setOrDelete(m.ports, name, msg)
	case resource.KindSecurityGroup:
		setOrDelete(m.sgs, name, msg)
	case resource.KindNetworkAcl:
		setOrDelete(m.acls, name, msg)
	case resource.KindRouteTable:
		setOrDelete(m.rts, name, msg)
	case resource.KindNode:
		setOrDelete(m.nodes, nodeID(name), msg)
	case resource.KindPublicAddressPool:
		setOrDelete(m.pools, name, msg)
	case resource.KindBgpPeer:
		setOrDelete(m.peers, name, msg)
	case resource.KindElasticIp:
		setOrDelete(m.eips, name, msg)
	case resource.KindNatGateway:
		setOrDelete(m.ngws, name, msg)
	case resource.KindLoadBalancer:
		setOrDelete(m.lbs, name, msg)
	case resource.KindFlowLog:
		setOrDelete(m.flowLogs, name, msg)
	}
}

func setOrDelete[T proto.Message](m map[string]T, name string, msg proto.Message) {
	if msg == nil {
		delete(m, name)
		return
	}
	m[name] = msg.(T)
}

// update replaces resource name of kind k with msg (nil: deleted).
func (m *Model) update(k *resource.Kind, name string, msg proto.Message, c *changeSet) {
	old := m.get(k, name)
	if old == nil && msg == nil {
		return
	}
	oldKey := m.resKey[name]
	wasGateway := k == resource.KindNode && m.isGateway(nodeID(name))
	var listeners []string
	if k == resource.KindLoadBalancer {
		listeners = m.listenerRefs(name)
	}
	m.unindex(k, name, c)
	m.set(k, name, msg)
	m.index(k, name, c)
	m.recompile(name, c)
	if k == resource.KindLoadBalancer {
		m.recompileListeners(listeners, name, c)
	}
	c.check(oldKey)
	c.check(m.resKey[name])
	if k == resource.KindNode {
		id := nodeID(name)
		g := gatewayRef(id)
		oldG := m.resKey[g]
		m.recompile(g, c)
		c.check(oldG)
		c.check(m.resKey[g])
		if wasGateway != m.isGateway(id) {
			// NAT gateway owners are chosen among the gateways.
			m.recompileContentDeps(gatewaysRef, c)
		}
	}
	m.recompileContentDeps(name, c)
	// Other objects embed only this resource's numeric ID, so they need
	// recompiling only when the ID appears, disappears or changes.
	if old == nil || msg == nil || idOf(old) != idOf(msg) {
		keys := make([]string, 0, len(m.rdeps[name]))
		for key := range m.rdeps[name] {
			keys = append(keys, key)
		}
		for _, key := range keys {
			if r, ok := m.objRes[key]; ok {
				m.recompile(r, c)
			}
		}
	}
}

// vpcOfSubnet derives a subnet's VPC from its name, which embeds it.
func vpcOfSubnet(subnet string) string {
	if i := strings.LastIndex(subnet, "/subnets/"); i > 0 {
		return subnet[:i]
	}
	return ""
}

func remoteGroups(sg *mv1.SecurityGroup) []string {
	var out []string
	for _, r := range sg.GetRules() {
		if g := r.GetRemoteSecurityGroup(); g != "" {
			out = append(out, g)
		}
	}
	return out
}

// index adds the current resource's contributions to the indexes; unindex
// removes them. Both record the keys and nodes whose membership may change.
func (m *Model) index(k *resource.Kind, name string, c *changeSet)   { m.indexDelta(k, name, +1, c) }
func (m *Model) unindex(k *resource.Kind, name string, c *changeSet) { m.indexDelta(k, name, -1, c) }

func (m *Model) indexDelta(k *resource.Kind, name string, d int, c *changeSet) {
	setOp := add
	if d < 0 {
		setOp = remove
	}
	switch k {
	case resource.KindSubnet:
		s := m.subnets[name]
		if s == nil {
			return
		}
		setOp(m.vpcSubnets, vpcOfSubnet(name), name)
		if a := s.GetNetworkAcl(); a != "" {
			setOp(m.aclSubnets, a, name)
			c.check(m.resKey[a])
		}
		if r := s.GetRouteTable(); r != "" {
			setOp(m.rtSubnets, r, name)
			c.check(m.resKey[r])
		}
	case resource.KindPort:
		p := m.ports[name]
		if p == nil {
			return
		}
		vpc := vpcOfSubnet(p.GetSubnet())
		setOp(m.vpcPorts, vpc, name)
		if p.GetNode() == "" {
			return
		}
		n := nodeID(p.GetNode())
		for e := range m.portEips[name] {
			setOp(m.nodeEips, n, e)
			c.check(m.resKey[e])
		}
		if incr(m.nodeVpcs, n, vpc, d) {
			incr(m.vpcNodes, vpc, n, d)
			c.full[n] = struct{}{}
			// Nodes sharing the VPC gain or lose n as a peer.
			c.check(m.resKey[p.GetNode()])
		} else {
			incr(m.vpcNodes, vpc, n, d)
		}
		for _, g := range p.GetSecurityGroups() {
			if incr(m.nodeSGs, n, g, d) {
				c.full[n] = struct{}{}
			}
			incr(m.sgNodes, g, n, d)
		}
	case resource.KindSecurityGroup:
		sg := m.sgs[name]
		if sg == nil {
			return
		}
		for _, g := range remoteGroups(sg) {
			setOp(m.sgRemoteOf, g, name)
			c.check(m.resKey[g])
		}
	case resource.KindFlowLog:
		m.indexFlowLog(name, setOp, c)
	default:
		m.indexEdge(k, name, d, setOp, c)
	}
}

// recompile compiles the object of ref afresh and records what changed.
func (m *Model) recompile(ref string, c *changeSet) {
	oldKey := m.resKey[ref]
	var obj *agentv1.Object
	var deps []string
	var place *lbPlace
	// collectionOf, not a substring test: a project or load balancer may
	// well be called "listeners".
	if collectionOf(ref) == "listeners" {
		obj, deps, place = m.compileListener(ref)
	} else {
		obj, deps = m.compile(ref)
	}
	newKey := ""
	if obj != nil {
		newKey = obj.GetKey()
	}
	if oldKey != "" && oldKey != newKey {
		m.dropObject(oldKey)
		m.setLbPlace(oldKey, nil, c)
		c.content[oldKey] = struct{}{}
		c.check(oldKey)
	}
	if obj == nil {
		return
	}
	if place != nil {
		m.setLbPlace(newKey, place, c)
	}
	if prev := m.objs[newKey]; prev == nil || !proto.Equal(prev, obj) {
		m.objs[newKey] = obj
		c.content[newKey] = struct{}{}
		c.check(newKey)
	}
	m.objRes[newKey] = ref
	m.resKey[ref] = newKey
	content := contentKind(newKey)
	for _, d := range m.deps[newKey] {
		remove(m.rdeps, d, newKey)
		if content {
			remove(m.crdeps, d, newKey)
		}
	}
	m.deps[newKey] = deps
	for _, d := range deps {
		add(m.rdeps, d, newKey)
		if content {
			add(m.crdeps, d, newKey)
		}
	}
}

func (m *Model) dropObject(key string) {
	for _, d := range m.deps[key] {
		remove(m.rdeps, d, key)
		remove(m.crdeps, d, key)
	}
	delete(m.deps, key)
	if r, ok := m.objRes[key]; ok && m.resKey[r] == key {
		delete(m.resKey, r)
	}
	delete(m.objRes, key)
	delete(m.objs, key)
}

// key returns the object key of a resource, "" if it has no object.
func (m *Model) key(ref string) string { return m.resKey[ref] }

// computeNodeKeys is the definition of a node's desired state; holds must
// agree with it key by key.
func (m *Model) computeNodeKeys(n string) set {
	// Presize: ports dominate, and growing large maps is most of the cost
	// of a full build.
	size := len(m.nodeSGs[n])*2 + len(m.gateways) + len(m.nodeEips[n])
	if m.isGateway(n) {
		size += len(m.eips) + len(m.ngws) + len(m.pools)
	}
	for vpc := range m.nodeVpcs[n] {
		size += len(m.vpcPorts[vpc]) + 3*len(m.vpcSubnets[vpc]) + len(m.vpcNodes[vpc]) + 1
	}
	out := make(set, size)
	put := func(ref string) {
		if k := m.key(ref); k != "" {
			out[k] = struct{}{}
		}
	}
	for vpc := range m.nodeVpcs[n] {
		put(vpc)
		for s := range m.vpcSubnets[vpc] {
			put(s)
			sub := m.subnets[s]
			if a := sub.GetNetworkAcl(); a != "" {
				put(a)
			}
			if r := sub.GetRouteTable(); r != "" {
				put(r)
			}
		}
		for p := range m.vpcPorts[vpc] {
			put(p)
		}
		for peer := range m.vpcNodes[vpc] {
			if peer != n {
				put(resource.KindNode.NameOf("", peer))
			}
		}
	}
	for g := range m.nodeSGs[n] {
		put(g)
		for _, r := range remoteGroups(m.sgs[g]) {
			put(r)
		}
	}
	m.edgeNodeKeys(n, put)
	m.flowLogNodeKeys(n, put)
	return out
}

// holds reports whether node n needs object key under the current indexes.
func (m *Model) holds(n, key string) bool {
	if m.objs[key] == nil {
		return false
	}
	ref := m.objRes[key]
	inVpc := func(vpc string) bool { return m.nodeVpcs[n][vpc] > 0 }
	kind, _, _ := strings.Cut(key, "/")
	switch kind {
	case "vpc":
		return inVpc(ref) || m.announcesVpcs(n)
	case "subnet":
		return inVpc(vpcOfSubnet(ref))
	case "port":
		return inVpc(vpcOfSubnet(m.ports[ref].GetSubnet()))
	case "acl", "rt":
		users := m.aclSubnets[ref]
		if kind == "rt" {
			users = m.rtSubnets[ref]
		}
		for s := range users {
			if inVpc(vpcOfSubnet(s)) {
				return true
			}
		}
	case "sg":
		if m.nodeSGs[n][ref] > 0 {
			return true
		}
		for user := range m.sgRemoteOf[ref] {
			if m.nodeSGs[n][user] > 0 {
				return true
			}
		}
	case "node":
		peer := nodeID(ref)
		if peer == n {
			return false
		}
		for vpc := range m.nodeVpcs[peer] {
			if inVpc(vpc) {
				return true
			}
		}
	case "flowlog":
		return m.holdsFlowLog(n, ref)
	default:
		return m.holdsEdge(n, kind, ref)
	}
	return false
}

// candidates returns the nodes that might need key under the current
// indexes (a superset of those for which holds is true).
func (m *Model) candidates(key string, out set) {
	ref, ok := m.objRes[key]
	if !ok {
		return
	}
	vpcNodes := func(vpc string) {
		for n := range m.vpcNodes[vpc] {
			out[n] = struct{}{}
		}
	}
	kind, _, _ := strings.Cut(key, "/")
	switch kind {
	case "vpc":
		vpcNodes(ref)
		for g := range m.vpcAnnouncers {
			out[g] = struct{}{}
		}
	case "subnet":
		vpcNodes(vpcOfSubnet(ref))
	case "port":
		vpcNodes(vpcOfSubnet(m.ports[ref].GetSubnet()))
	case "acl":
		for s := range m.aclSubnets[ref] {
			vpcNodes(vpcOfSubnet(s))
		}
	case "rt":
		for s := range m.rtSubnets[ref] {
			vpcNodes(vpcOfSubnet(s))
		}
	case "sg":
		for n := range m.sgNodes[ref] {
			out[n] = struct{}{}
		}
		for user := range m.sgRemoteOf[ref] {
			for n := range m.sgNodes[user] {
				out[n] = struct{}{}
			}
		}
	case "node":
		for vpc := range m.nodeVpcs[nodeID(ref)] {
			vpcNodes(vpc)
		}
	case "flowlog":
		m.candidatesFlowLog(ref, out)
	default:
		m.candidatesEdge(kind, ref, out)
	}
}

// setNodeKeys installs a node's new key set, recording differences in ch.
func (m *Model) setNodeKeys(n string, keys set, ch Changes) {
	old := m.nodeKeys[n]
	for k := range old {
		if _, ok := keys[k]; !ok {
			remove(m.holders, k, n)
			if ch != nil {
				ch.add(n, k)
			}
		}
	}
	for k := range keys {
		if _, ok := old[k]; !ok {
			add(m.holders, k, n)
			if ch != nil {
				ch.add(n, k)
			}
		}
	}
	if len(keys) == 0 {
		delete(m.nodeKeys, n)
	} else {
		m.nodeKeys[n] = keys
	}
}

// finish turns a change set into per-node changes, updating membership.
func (m *Model) finish(c *changeSet) Changes {
	ch := Changes{}
	for n := range c.full {
		m.setNodeKeys(n, m.computeNodeKeys(n), ch)
	}
	cands := set{}
	for key := range c.recheck {
		clear(cands)
		for n := range m.holders[key] {
			cands[n] = struct{}{}
		}
		m.candidates(key, cands)
		for n := range cands {
			if _, done := c.full[n]; done {
				continue
			}
			_, had := m.nodeKeys[n][key]
			if has := m.holds(n, key); has != had {
				if has {
					add(m.nodeKeys, n, key)
					add(m.holders, key, n)
				} else {
					remove(m.nodeKeys, n, key)
					remove(m.holders, key, n)
				}
				ch.add(n, key)
			}
		}
	}
	for key := range c.content {
		for n := range m.holders[key] {
			ch.add(n, key)
		}
	}
	return ch
}

// Nodes returns the IDs of the nodes with a non-empty desired state, sorted.
func (m *Model) Nodes() []string {
	out := make([]string, 0, len(m.nodeKeys))
	for n := range m.nodeKeys {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// NodeState returns node's desired state: a new map of shared objects.
func (m *Model) NodeState(node string) map[string]*agentv1.Object {
	keys := m.nodeKeys[node]
	out := make(map[string]*agentv1.Object, len(keys))
	for k := range keys {
		out[k] = m.objs[k]
	}
	return out
}

// NodeObject returns the object key of node's desired state, nil if the
// node does not need it.
func (m *Model) NodeObject(node, key string) *agentv1.Object {
	if _, ok := m.nodeKeys[node][key]; !ok {
		return nil
	}
	return m.objs[key]
}

// Object returns a compiled object by key, nil if there is none.
func (m *Model) Object(key string) *agentv1.Object { return m.objs[key] }

// KeyOf returns the object key compiled from a resource name
// ("projects/p/ports/web1" -> "port/42"), "" if there is none.
func (m *Model) KeyOf(name string) string { return m.resKey[name] }

// Len returns the number of compiled objects.
func (m *Model) Len() int { return len(m.objs) }

// Objects returns every compiled object by key: the whole logical model,
// not one node's share of it (controller/trace walks packets through it).
// The map is new; the objects are shared and must not be modified.
func (m *Model) Objects() map[string]*agentv1.Object {
	out := make(map[string]*agentv1.Object, len(m.objs))
	for k, o := range m.objs {
		out[k] = o
	}
	return out
}
