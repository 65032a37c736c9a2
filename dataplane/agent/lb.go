package agent

// Load balancing (issue [5]) on this node; see the LbService comment in
// api/agent/v1/agent.proto for where each part runs.
//
// North-south, on a gateway: the XDP load balancer of dataplane/lb on the
// uplink (the interface the tc uplink program of nat.go serves too: XDP
// runs first and passes every packet that is not for a VIP on to tc). It
// is loaded with the first north-south service and kept while the node is
// a gateway, so its connection table survives service changes. Its maps
// and link are pinned beside the data path's: an agent restart leaves it
// forwarding, connection table included, and the next agent takes it over
// (a node that stops being a gateway unpins and detaches it). Every
// north-south LbService is set in it, and BGP announces the VIPs it serves
// (bgp.go) like elastic IPs, from every gateway, so the fabric spreads
// flows over the gateways with ECMP (the Maglev tables are identical).
//
// Every node: the tc pipeline serves the LbServices sent to it
// (datapath.Service, translated by serviceOf): east-west VIPs at the
// client's port, the DNAT of north-south flows on their backend's node,
// and the replies' way out on gateways.
//
// Health checks: this node probes the backends whose ports it hosts
// (package dataplane/health), from the subnet gateway's address on the
// port's host end, and reports their health in NodeReport. The controller
// folds the reports into LbBackend.healthy for every node, so the node
// never uses its own results directly: all nodes build the same tables.

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/health"
	"github.com/meridian-sdn/meridian/dataplane/lb"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// reconcileServices installs every LbService of desired in the tc
// pipeline and removes the installed ones desired no longer has. A
// service the data path refuses is its object's error and keeps what was
// installed for it, if anything.
// lbServiceKeys returns the keys of the load-balancer services in desired,
// sorted, so that work over them (and its errors) comes in a stable order.
func lbServiceKeys(desired map[string]*agentv1.Object) []string {
	var keys []string
	for k, o := range desired {
		if o.GetLbService() != nil {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

func (a *Agent) reconcileServices(desired map[string]*agentv1.Object, fail func(string, error)) {
	keep := map[uint32]bool{}
	for _, key := range lbServiceKeys(desired) {
		s := desired[key].GetLbService()
		keep[s.GetId()] = true
		svc, ok, err := serviceOf(s, a.cfg.Node)
		if err == nil && ok {
			err = a.dp.UpsertService(svc)
		}
		if err != nil {
			fail(key, err)
		}
	}
	have, err := a.dp.ServiceIDs()
	if err != nil {
		fail("services", err)
		return
	}
	for _, id := range have {
		if !keep[id] {
			if err := a.dp.DeleteService(id); err != nil {
				fail(fmt.Sprintf("lb/%d", id), err)
			}
		}
	}
}

// lbGateway is a gateway's north-south load balancer and what was set in
// it. The reconcile loop changes it; /metrics reads its counters.
type lbGateway struct {
	mu      sync.Mutex
	lb      *lb.LB                        // nil: not loaded
	uplink  int                           // ifindex it is attached to (0: none)
	applied map[uint32]*agentv1.LbService // by service ID, as last set
	neighs  map[neighKey]bool             // managed neighbour entries this agent added
	traceN  uint32                        // live-trace filter slots in use (livetrace.go)
}

// setTraceActive tells the loaded load balancer (and one loaded later)
// how many live-trace filter slots to look at.
func (g *lbGateway) setTraceActive(n uint32) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.traceN = n
	if g.lb == nil {
		return nil
	}
	return g.lb.SetTraceActive(n)
}

// backendOfSlot names the backend in a slot of the load balancer's table.
func (g *lbGateway) backendOfSlot(slot uint32) (uint32, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.lb == nil {
		return 0, false
	}
	_, b, ok := g.lb.BackendOfSlot(slot)
	return b, ok
}

// neighKey is a next hop toward backend nodes: an address on a link.
type neighKey struct {
	link int
	addr netip.Addr
}

// northSouth returns the north-south services of desired, by ID.
func northSouth(desired map[string]*agentv1.Object) []*agentv1.Object {
	var out []*agentv1.Object
	for _, o := range desired {
		if s := o.GetLbService(); s != nil && !s.GetInternal() {
			out = append(out, o)
		}
	}
	slices.SortFunc(out, func(a, b *agentv1.Object) int { return cmp.Compare(a.GetLbService().GetId(), b.GetLbService().GetId()) })
	return out
}

// reconcileNorthSouth makes this node's XDP load balancer serve exactly
// the north-south services of desired if the node is a gateway, and
// unloads it if not. A service it could not set has an error in errs,
// so BGP does not announce its VIP.
func (a *Agent) reconcileNorthSouth(desired map[string]*agentv1.Object, errs map[string]string) {
	g := &a.nslb
	g.mu.Lock()
	defer g.mu.Unlock()
	me := desired["gateway/"+a.cfg.Node].GetGateway()
	svcs := northSouth(desired)
	// An earlier agent's load balancer may still forward from its pins.
	pinned := false
	if dir := a.lbPinDir(); dir != "" {
		_, err := os.Stat(filepath.Join(dir, "links"))
		pinned = err == nil
	}
	if me == nil || a.dp == nil {
		if g.lb == nil && pinned {
			if err := g.load(a); err != nil {
				a.log.Warn("north-south load balancer: remove what an earlier agent left", "err", err)
			}
		}
		g.unload(a)
		return
	}
	if len(svcs) == 0 && g.lb == nil && !pinned {
		return
	}
	failAll := func(err error) {
		for _, o := range svcs {
			errs[o.GetKey()] = err.Error()
		}
		a.log.Warn("north-south load balancer", "err", err)
	}
	if err := g.setup(a, me); err != nil {
		failAll(err)
		return
	}
	g.resolveNextHops(a, svcs)
	want := map[uint32]bool{}
	for _, o := range svcs {
		s := o.GetLbService()
		want[s.GetId()] = true
		if proto.Equal(g.applied[s.GetId()], s) {
			continue
		}
		if err := g.lb.SetService(s); err != nil {
			errs[o.GetKey()] = err.Error()
			a.log.Warn("reconcile", "object", o.GetKey(), "err", err)
			delete(g.applied, s.GetId()) // set again next time
			continue
		}
		g.applied[s.GetId()] = s
	}
	// ServiceIDs includes what the pinned maps held at Load: services
	// removed while no agent ran go now.
	for _, id := range g.lb.ServiceIDs() {
		if !want[id] {
			if err := g.lb.DeleteService(id); err != nil {
				errs[fmt.Sprintf("lb/%d", id)] = err.Error()
				continue
			}
			delete(g.applied, id)
		}
	}
}

// setup loads the load balancer if needed, configures it and attaches it
// to the gateway's uplink; g.mu is held.
func (g *lbGateway) setup(a *Agent, me *agentv1.Gateway) error {
	name := me.GetUplink()
	if name == "" {
		name = a.cfg.Uplink
	}
	if name == "" {
		return errors.New("gateway without an uplink: set the Gateway's uplink or the agent's --uplink")
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", name, err)
	}
	if g.lb == nil {
		if err := g.load(a); err != nil {
			return err
		}
	}
	// The outer packet's next hop comes from the routing table, looked up
	// as if forwarded from the uplink, which must therefore forward.
	if changes, err := plumbing.EnsureForwarding(name); err != nil {
		return fmt.Errorf("uplink %s: %w", name, err)
	} else if len(changes) > 0 {
		a.log.Info("gateway sysctls set", "changes", changes)
	}
	mtu := underlayMTU(a.cfg.UnderlayIP, l.Attrs().MTU)
	if err := g.lb.Configure(lb.Config{UnderlayIP: a.cfg.UnderlayIP, MTU: mtu, RouterMAC: RouterMAC, FIB: true}); err != nil {
		return err
	}
	idx := l.Attrs().Index
	if g.uplink != idx {
		err := g.lb.Attach(idx, lb.ModeDriver)
		if err != nil {
			// A driver without native XDP still gets the program, slower.
			if gerr := g.lb.Attach(idx, lb.ModeGeneric); gerr != nil {
				return errors.Join(err, gerr)
			}
			a.log.Warn("uplink has no native XDP: the load balancer runs in generic mode", "uplink", name, "err", err)
		}
		if g.uplink != 0 {
			g.lb.Detach(g.uplink) // the old uplink; gone is fine
		}
		g.uplink = idx
		a.log.Info("north-south load balancer attached", "uplink", name)
	}
	return nil
}

// resolveNextHops keeps the next hops toward the services' backend nodes
// resolved. The load balancer takes the outer MACs from the kernel's
// neighbour table (bpf_fib_lookup) and drops a packet whose next hop has
// no entry: nothing in XDP makes the kernel resolve one, and a gateway
// may never have sent anything to a backend's node. A "managed" entry
// (NTF_EXT_MANAGED) is one the kernel resolves at once and keeps
// resolved. Entries added for nodes no longer needed are removed. g.mu is
// held; failures are logged, not fatal: the first packets then fail over
// to nothing, as before.
func (g *lbGateway) resolveNextHops(a *Agent, svcs []*agentv1.Object) {
	want := map[neighKey]bool{}
	seen := map[string]bool{}
	for _, o := range svcs {
		for _, b := range o.GetLbService().GetBackends() {
			if b.GetNodeIp() == "" || seen[b.GetNodeIp()] {
				continue
			}
			seen[b.GetNodeIp()] = true
			ip, err := netip.ParseAddr(b.GetNodeIp())
			if err != nil || !ip.Is4() || ip == a.cfg.UnderlayIP {
				continue
			}
			routes, err := netlink.RouteGet(ip.AsSlice())
			if err != nil || len(routes) == 0 {
				a.log.Warn("load balancer: no route to a backend's node", "node_ip", ip, "err", err)
				continue
			}
			nh := ip
			if gw, ok := netip.AddrFromSlice(routes[0].Gw); ok && routes[0].Gw != nil {
				nh = gw.Unmap()
			}
			want[neighKey{link: routes[0].LinkIndex, addr: nh}] = true
		}
	}
	if g.neighs == nil {
		g.neighs = map[neighKey]bool{}
	}
	for k := range want {
		if g.neighs[k] {
			continue
		}
		if managedNeigh(k) { // an earlier agent's: ours to remove too
			g.neighs[k] = true
			continue
		}
		n := &netlink.Neigh{LinkIndex: k.link, Family: netlink.FAMILY_V4, IP: k.addr.AsSlice(), State: netlink.NUD_NONE,
			FlagsExt: netlink.NTF_EXT_MANAGED}
		if err := netlink.NeighSet(n); err != nil {
			a.log.Warn("load balancer: keep the next hop to backend nodes resolved", "next_hop", k.addr, "err", err)
			continue
		}
		g.neighs[k] = true
	}
	for k := range g.neighs {
		if !want[k] {
			netlink.NeighDel(&netlink.Neigh{LinkIndex: k.link, Family: netlink.FAMILY_V4, IP: k.addr.AsSlice()})
			delete(g.neighs, k)
		}
	}
}

// managedNeigh says whether k already has a managed entry (added by an
// earlier agent: the kernel keeps them across restarts).
func managedNeigh(k neighKey) bool {
	ns, err := netlink.NeighList(k.link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, n := range ns {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == k.addr && n.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
			return true
		}
	}
	return false
}

// underlayMTU is the MTU of the interface holding the node's underlay
// address, where the encapsulated packets leave (the uplink's, fallback,
// if none has it); 0 (the load balancer's default) if implausible.
func underlayMTU(underlay netip.Addr, fallback int) uint32 {
	mtu := fallback
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, ad := range addrs {
			if a, ok := netip.AddrFromSlice(ad.IP); ok && a.Unmap() == underlay {
				if l, err := netlink.LinkByIndex(ad.LinkIndex); err == nil {
					mtu = l.Attrs().MTU
				}
				break
			}
		}
	}
	if mtu < 576 || mtu > 65535 {
		return 0
	}
	return uint32(mtu)
}

// lbPinDir is where the load balancer's maps and link are pinned, beside
// the data path's, so that an agent restart keeps it forwarding with its
// connection table; "" (no bpffs configured) pins nothing.
func (a *Agent) lbPinDir() string {
	if a.cfg.BPFFS == "" {
		return ""
	}
	return filepath.Join(a.cfg.BPFFS, "lb")
}

// load loads the load balancer, taking over the pinned one of an earlier
// agent if any (its services, backends and connections); g.mu is held.
func (g *lbGateway) load(a *Agent) error {
	opts := lb.Options{PinDir: a.lbPinDir()}
	if a.dp != nil { // VIP packets are traced on the data path's ring
		opts.LiveTrace = a.dp.LiveTraceMaps()
	}
	x, err := lb.Load(opts)
	if err != nil {
		return fmt.Errorf("load the XDP load balancer: %w", err)
	}
	if g.traceN != 0 {
		if err := x.SetTraceActive(g.traceN); err != nil {
			x.Close()
			return err
		}
	}
	g.lb, g.applied = x, map[uint32]*agentv1.LbService{}
	a.log.Info("north-south load balancer loaded", "recovered_services", len(x.ServiceIDs()))
	return nil
}

// unload detaches and frees the load balancer; g.mu is held.
func (g *lbGateway) unload(a *Agent) {
	if g.lb == nil {
		return
	}
	// Without its pins, closing it detaches the program and frees the maps.
	if err := g.lb.Unpin(); err != nil {
		a.log.Warn("north-south load balancer: unpin", "err", err)
	}
	if err := g.lb.Close(); err != nil {
		a.log.Warn("north-south load balancer: close", "err", err)
	}
	g.lb, g.uplink, g.applied = nil, 0, nil
	for k := range g.neighs {
		netlink.NeighDel(&netlink.Neigh{LinkIndex: k.link, Family: netlink.FAMILY_V4, IP: k.addr.AsSlice()})
	}
	g.neighs = nil
	a.log.Info("north-south load balancer unloaded: not a gateway")
}

// close releases the load balancer when the agent stops. Pinned, it goes
// on forwarding with its tables until the next agent takes it over.
func (g *lbGateway) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.lb != nil {
		g.lb.Close()
		g.lb, g.uplink, g.applied = nil, 0, nil
	}
}

// lbCollector exports the north-south load balancer's counters per
// service at scrape time.
type lbCollector struct {
	g                            *lbGateway
	packets, newFlows, noBackend *prometheus.Desc
}

func newLBCollector(g *lbGateway) *lbCollector {
	l := []string{"service"}
	return &lbCollector{g: g,
		packets:   prometheus.NewDesc("meridian_agent_lb_packets_total", "Packets the gateway's XDP load balancer sent to a backend, by LbService ID.", l, nil),
		newFlows:  prometheus.NewDesc("meridian_agent_lb_new_flows_total", "Flows the XDP load balancer placed with the Maglev table, by LbService ID.", l, nil),
		noBackend: prometheus.NewDesc("meridian_agent_lb_no_backend_drops_total", "VIP packets dropped for want of a usable backend, by LbService ID.", l, nil),
	}
}

func (c *lbCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.newFlows
	ch <- c.noBackend
}

func (c *lbCollector) Collect(ch chan<- prometheus.Metric) {
	c.g.mu.Lock()
	l := c.g.lb
	c.g.mu.Unlock()
	if l == nil {
		return
	}
	st, err := l.Stats() // safe beside the reconcile: LB methods lock
	if err != nil {
		return
	}
	for id, s := range st.Services {
		v := strconv.FormatUint(uint64(id), 10)
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s.Packets), v)
		ch <- prometheus.MustNewConstMetric(c.newFlows, prometheus.CounterValue, float64(s.NewFlows), v)
		ch <- prometheus.MustNewConstMetric(c.noBackend, prometheus.CounterValue, float64(s.NoBackend), v)
	}
}

// checkOf converts a service's health check, with the protocol's
// defaults; ok is false for a service without one.
func checkOf(hc *agentv1.HealthCheck) (health.Check, bool, error) {
	if hc == nil {
		return health.Check{}, false, nil
	}
	if hc.GetPort() > 65535 {
		return health.Check{}, false, fmt.Errorf("health check port %d beyond 65535", hc.GetPort())
	}
	c := health.Check{
		Protocol: hc.GetProtocol(), Port: uint16(hc.GetPort()), Path: hc.GetPath(),
		Interval:         time.Duration(hc.GetIntervalMs()) * time.Millisecond,
		Timeout:          time.Duration(hc.GetTimeoutMs()) * time.Millisecond,
		HealthyThreshold: int(hc.GetHealthyThreshold()), UnhealthyThreshold: int(hc.GetUnhealthyThreshold()),
	}
	if c.Protocol == "" {
		c.Protocol = "tcp"
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return health.Check{}, false, err
	}
	return c, true, nil
}

// healthTargets lists the backends node checks: those of services with a
// health check whose port is bound to node and plumbed here (hostIf: port
// ID -> host end of its veth). Per-object errors go to errs by key.
func healthTargets(node string, desired map[string]*agentv1.Object, v *agentv1.Index, hostIf map[uint32]string,
	errs map[string]string) []health.Target {
	var out []health.Target
	for _, key := range lbServiceKeys(desired) {
		s := desired[key].GetLbService()
		check, ok, err := checkOf(s.GetHealthCheck())
		if err != nil {
			errs[key] = err.Error()
			continue
		}
		if !ok {
			continue
		}
		for _, b := range s.GetBackends() {
			if b.GetNode() != node {
				continue
			}
			ifName, plumbed := hostIf[b.GetPortId()]
			p := v.Ports[b.GetPortId()]
			if !plumbed || p == nil {
				continue // not here (yet): nothing to probe through
			}
			sn := v.Subnets[p.GetSubnetId()]
			gw, err := netip.ParseAddr(sn.GetGatewayIp())
			if err != nil || !gw.Is4() {
				errs[key] = fmt.Sprintf("backend %d: subnet %d has no IPv4 gateway to probe from", b.GetId(), p.GetSubnetId())
				continue
			}
			addr, err := netip.ParseAddr(b.GetAddress())
			if err != nil || !addr.Is4() {
				errs[key] = fmt.Sprintf("backend %d: address %q is not IPv4", b.GetId(), b.GetAddress())
				continue
			}
			mac, err := parseMAC(p.GetMac())
			if err != nil {
				errs[key] = fmt.Sprintf("backend %d: port MAC: %v", b.GetId(), err)
				continue
			}
			if b.GetPort() == 0 || b.GetPort() > 65535 {
				errs[key] = fmt.Sprintf("backend %d: port %d out of range", b.GetId(), b.GetPort())
				continue
			}
			out = append(out, health.Target{
				Key:    health.Key{Service: s.GetId(), Backend: b.GetId()},
				HostIf: ifName, RouterMAC: RouterMAC, PortMAC: mac, Gateway: gw, Address: addr,
				Port: uint16(b.GetPort()), Check: check,
			})
		}
	}
	return out
}

// reconcileHealth makes the checker probe exactly the backends this node
// checks. ready are the local ports the data path serves (plumbed and
// attached): a port that is not has no host end to probe through.
func (a *Agent) reconcileHealth(desired map[string]*agentv1.Object, attach map[string]*attachment, ready map[uint32]bool, errs map[string]string) {
	if a.health == nil {
		return // not running (tests of the reconcile alone) or OVN, whose Service_Monitor checks
	}
	hostIf := map[uint32]string{}
	for _, at := range attach {
		if ready[at.PortID] {
			hostIf[at.PortID] = at.HostIf
		}
	}
	targets := healthTargets(a.cfg.Node, desired, agentv1.IndexObjects(desired), hostIf, errs)
	if err := a.health.Set(targets); err != nil {
		// healthTargets validated everything Set checks: a bug if reached.
		a.log.Error("health checks", "err", err)
	}
}

// backendHealth is the health this node's checks found, for NodeReport.
func (a *Agent) backendHealth() []*agentv1.BackendHealth {
	if a.health == nil {
		return nil
	}
	var out []*agentv1.BackendHealth
	for _, s := range a.health.Statuses() {
		out = append(out, &agentv1.BackendHealth{ServiceId: s.Service, BackendId: s.Backend, Healthy: s.Healthy,
			SinceUnix: s.Since.Unix(), LastError: s.LastError})
	}
	return out
}
