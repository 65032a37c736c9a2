package model

// Load balancing (issue [5]): every listener of a LoadBalancer resource
// compiles to one LbService object ("lb/<listener id>"), from a synthetic
// ref "<load balancer name>/listeners/<id>", so that one resource yields
// one object per listener and the rest of the model (deps, holders,
// changes) works per object as for every other kind.
//
// Who gets what: a north-south listener (internet-facing) goes to every
// gateway node (XDP on the uplink) and every node hosting one of its
// backends (the tc DNAT there); an internal one to every node with a port
// in its VPC (the client side translates) and the backends' nodes.
//
// Health: LbBackend.healthy comes from the backend health records the
// distributor writes (resource.LbHealthKey) and the node-down markers,
// decided by resource.DecideLbHealth, the function the API's status uses
// too. Every node receives the same object, so every node builds the same
// Maglev table.

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

const listenersSeg = "/listeners/"

// listenerRef is the synthetic ref of listener id of load balancer lb.
func listenerRef(lb string, id uint32) string {
	return lb + listenersSeg + strconv.FormatUint(uint64(id), 10)
}

// healthRef is the dependency on the health records of a listener.
func healthRef(listener uint32) string { return "lbhealth/" + strconv.FormatUint(uint64(listener), 10) }

// downRef is the dependency on node (ID) being marked down.
func downRef(node string) string { return "nodedown/" + node }

// listenerRefs returns the refs of lb's listeners (nil when absent).
func (m *Model) listenerRefs(lb string) []string {
	var out []string
	for _, l := range m.lbs[lb].GetListeners() {
		if l.GetId() != 0 {
			out = append(out, listenerRef(lb, l.GetId()))
		}
	}
	return out
}

// lbPlace is what decides where a compiled LbService goes.
type lbPlace struct {
	northSouth bool
	vpc        string   // internal: nodes with ports here hold it
	nodes      []string // nodes hosting a bound backend, sorted
}

func (p lbPlace) equal(o lbPlace) bool {
	return p.northSouth == o.northSouth && p.vpc == o.vpc && slices.Equal(p.nodes, o.nodes)
}

// setLbPlace records where object key goes (nil: nowhere), maintaining
// the node index, and asks for a holder recheck when that changes.
func (m *Model) setLbPlace(key string, p *lbPlace, c *changeSet) {
	old, had := m.lbPlaces[key]
	if had && p != nil && old.equal(*p) {
		return
	}
	if had {
		for _, n := range old.nodes {
			remove(m.nodeLbs, n, key)
		}
		if old.northSouth {
			delete(m.nsLbs, key)
		}
		if old.vpc != "" {
			remove(m.vpcLbs, old.vpc, key)
		}
		delete(m.lbPlaces, key)
	}
	if p != nil {
		for _, n := range p.nodes {
			add(m.nodeLbs, n, key)
		}
		if p.northSouth {
			m.nsLbs[key] = struct{}{}
		}
		if p.vpc != "" {
			add(m.vpcLbs, p.vpc, key)
		}
		m.lbPlaces[key] = *p
	}
	if c != nil {
		c.check(key)
	}
}

// recompileListeners recompiles the listeners lb had (before) and has now.
func (m *Model) recompileListeners(before []string, lb string, c *changeSet) {
	refs := append(before, m.listenerRefs(lb)...)
	slices.Sort(refs)
	for _, r := range slices.Compact(refs) {
		m.recompile(r, c)
	}
}

func (m *Model) compileListener(ref string) (*agentv1.Object, []string, *lbPlace) {
	i := strings.LastIndex(ref, listenersSeg)
	if i < 0 {
		return nil, nil, nil
	}
	lbName := ref[:i]
	id64, err := strconv.ParseUint(ref[i+len(listenersSeg):], 10, 32)
	lb := m.lbs[lbName]
	if err != nil || lb.GetId() == 0 {
		return nil, nil, nil
	}
	id := uint32(id64)
	var l *mv1.LoadBalancerListener
	for _, x := range lb.GetListeners() {
		if x.GetId() == id {
			l = x
			break
		}
	}
	if l == nil {
		return nil, nil, nil
	}
	proto, _ := protocolNumber(l.GetProtocol())
	internal := lb.GetScheme() == resource.LbSchemeInternal
	deps := []string{lb.GetVpc(), healthRef(id)}
	out := &agentv1.LbService{
		Id: id, LoadBalancerId: lb.GetId(), Name: lbName + "/" + l.GetName(),
		VpcId: m.vpcID(lb.GetVpc()), Vni: m.vpcs[lb.GetVpc()].GetVni(), Vip: canonAddr(lb.GetVip()),
		Port: l.GetPort(), Protocol: proto, Internal: internal, SourceIpPersistence: l.GetSourceIpPersistence(),
		MaglevSize: m.maglevSize,
	}
	if !internal {
		deps = append(deps, lb.GetPool())
		out.PoolId = m.pools[lb.GetPool()].GetId()
	}
	if hc := l.GetHealthCheck(); hc != nil {
		out.HealthCheck = compileHealthCheck(hc)
	}
	place := &lbPlace{northSouth: !internal}
	if internal {
		place.vpc = lb.GetVpc()
	}
	var facts []resource.LbBackendFacts
	for _, b := range l.GetBackends() {
		p, mac, node, nodeIP := m.portTarget(b.GetPort(), &deps)
		if p == nil || p.GetId() == 0 || b.GetId() == 0 {
			continue // unresolvable: left out rather than something wrong
		}
		if node != "" {
			deps = append(deps, downRef(node))
			if m.nodes[node] == nil {
				node, nodeIP = "", "" // not registered: nowhere to send to
			}
		}
		weight := b.GetWeight()
		if b.Weight == nil {
			weight = resource.LbDefaultWeight
		}
		target := b.GetTargetPort()
		if target == 0 {
			target = l.GetPort()
		}
		out.Backends = append(out.Backends, &agentv1.LbBackend{
			Id: b.GetId(), Address: canonAddr(b.GetAddress()), Port: target, Weight: weight,
			PortId: p.GetId(), PortMac: mac, Node: node, NodeIp: nodeIP, Draining: b.GetDraining(),
		})
	}
	slices.SortFunc(out.Backends, func(a, b *agentv1.LbBackend) int { return cmp.Compare(a.GetId(), b.GetId()) })
	out.Backends = slices.CompactFunc(out.Backends, func(a, b *agentv1.LbBackend) bool { return a.GetId() == b.GetId() })
	for _, b := range out.Backends {
		f := resource.LbBackendFacts{Node: b.GetNode(), Draining: b.GetDraining()}
		if b.GetNode() != "" {
			_, f.NodeDown = m.down[b.GetNode()]
			if h, ok := m.health[id][b.GetId()]; ok {
				f.Record = &h
			}
			place.nodes = append(place.nodes, b.GetNode())
		}
		facts = append(facts, f)
	}
	for i, v := range resource.DecideLbHealth(out.HealthCheck != nil, facts) {
		out.Backends[i].Healthy = v.Healthy
	}
	slices.Sort(place.nodes)
	place.nodes = slices.Compact(place.nodes)
	slices.Sort(deps)
	return &agentv1.Object{Key: key("lb", id), Body: &agentv1.Object_LbService{LbService: out}}, slices.Compact(deps), place
}

func compileHealthCheck(hc *mv1.LoadBalancerHealthCheck) *agentv1.HealthCheck {
	out := &agentv1.HealthCheck{
		Protocol: strings.ToLower(hc.GetProtocol()), Port: hc.GetPort(), Path: hc.GetPath(),
		IntervalMs: hc.GetIntervalMs(), TimeoutMs: hc.GetTimeoutMs(),
		HealthyThreshold: hc.GetHealthyThreshold(), UnhealthyThreshold: hc.GetUnhealthyThreshold(),
	}
	if out.Protocol == "" {
		out.Protocol = resource.LbHealthCheckTCP
	}
	if out.Protocol == resource.LbHealthCheckHTTP && out.Path == "" {
		out.Path = resource.LbDefaultHealthCheckHTTPPath
	}
	if out.Protocol != resource.LbHealthCheckHTTP {
		out.Path = ""
	}
	if out.IntervalMs == 0 {
		out.IntervalMs = resource.LbDefaultIntervalMs
	}
	if out.TimeoutMs == 0 {
		out.TimeoutMs = min(resource.LbDefaultTimeoutMs, out.IntervalMs)
	}
	if out.HealthyThreshold == 0 {
		out.HealthyThreshold = resource.LbDefaultThreshold
	}
	if out.UnhealthyThreshold == 0 {
		out.UnhealthyThreshold = resource.LbDefaultThreshold
	}
	return out
}

// setHealth applies one health record event (rec nil: deleted).
func (m *Model) setHealth(listener, backend uint32, rec *resource.LbHealth, c *changeSet) {
	old, had := m.health[listener][backend]
	switch {
	case rec == nil && !had:
		return
	case rec == nil:
		delete(m.health[listener], backend)
		if len(m.health[listener]) == 0 {
			delete(m.health, listener)
		}
	default:
		if had && old == *rec {
			return
		}
		if m.health[listener] == nil {
			m.health[listener] = map[uint32]resource.LbHealth{}
		}
		m.health[listener][backend] = *rec
	}
	m.recompileContentDeps(healthRef(listener), c)
}

// lbNodeKeys adds the LbServices node n needs.
func (m *Model) lbNodeKeys(n string, put func(string)) {
	putKey := func(key string) {
		if r, ok := m.objRes[key]; ok {
			put(r)
		}
	}
	if m.isGateway(n) {
		for key := range m.nsLbs {
			putKey(key)
		}
	}
	for vpc := range m.nodeVpcs[n] {
		for key := range m.vpcLbs[vpc] {
			putKey(key)
		}
	}
	for key := range m.nodeLbs[n] {
		putKey(key)
	}
}

func (m *Model) holdsLb(n, ref string) bool {
	p, ok := m.lbPlaces[m.resKey[ref]]
	if !ok {
		return false
	}
	if p.northSouth && m.isGateway(n) || p.vpc != "" && m.nodeVpcs[n][p.vpc] > 0 {
		return true
	}
	_, ok = slices.BinarySearch(p.nodes, n)
	return ok
}

func (m *Model) candidatesLb(ref string, out set) {
	p, ok := m.lbPlaces[m.resKey[ref]]
	if !ok {
		return
	}
	if p.northSouth {
		for g := range m.gateways {
			out[g] = struct{}{}
		}
	}
	if p.vpc != "" {
		for n := range m.vpcNodes[p.vpc] {
			out[n] = struct{}{}
		}
	}
	for _, n := range p.nodes {
		out[n] = struct{}{}
	}
}

// LbServiceKey returns the object key of listener id ("lb/<id>").
func LbServiceKey(listener uint32) string { return key("lb", listener) }

// LbServices returns every compiled LbService, sorted by ID: the load
// balancers of the whole model (the OVN renderer realizes them from here).
// The objects are shared and must not be modified.
func (m *Model) LbServices() []*agentv1.LbService {
	var out []*agentv1.LbService
	for _, o := range m.objs {
		if s := o.GetLbService(); s != nil {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *agentv1.LbService) int { return cmp.Compare(a.GetId(), b.GetId()) })
	return out
}

// SetMaglevSize sets the Maglev table size written into every LbService
// (default resource.LbDefaultMaglevSize). It must be prime; smaller sizes
// are for tests that compare tables cheaply. Call it before Load.
func (m *Model) SetMaglevSize(n uint32) { m.maglevSize = n }

// decodeHealth parses a health record; a bad one is logged and ignored.
func (m *Model) decodeHealth(kv store.KV) (listener, backend uint32, h resource.LbHealth, ok bool) {
	listener, backend, ok = resource.ParseLbHealthKey(kv.Key)
	if !ok {
		m.log.Error("model: malformed backend health key ignored", "key", kv.Key)
		return 0, 0, h, false
	}
	if len(kv.Value) == 0 {
		return listener, backend, h, true // a delete event carries no value we need
	}
	h, err := resource.DecodeLbHealth(kv.Value)
	if err != nil {
		m.log.Error("model: undecodable backend health record ignored", "key", kv.Key, "err", err)
		return 0, 0, h, false
	}
	return listener, backend, h, true
}

// HostsBackends reports whether node (ID) hosts a backend of some
// listener: its agent's absence makes those backends unhealthy, so the
// distributor watches its liveness like a gateway's.
func (m *Model) HostsBackends(node string) bool { return len(m.nodeLbs[node]) > 0 }

// LbHealth returns the health record the model holds for a backend.
func (m *Model) LbHealth(listener, backend uint32) (resource.LbHealth, bool) {
	h, ok := m.health[listener][backend]
	return h, ok
}
