package apiserver

// Load balancers (issue [5]).
//
// Decisions worth knowing:
//   - The VIP is allocated in the API transaction: from a public address
//     pool for an internet-facing load balancer (like an elastic IP,
//     RESOURCE_EXHAUSTED when the pool is full), from the IPAM of one of the
//     VPC's subnets for an internal one (so it can never clash with a
//     port's address, and a port can never take it later). Scheme, pool,
//     subnet and VIP are immutable; delete releases the VIP.
//   - Listener IDs come from one sequence ("lblistener"), so they are
//     unique across load balancers: they are the agent protocol's
//     LbService IDs. An update keeps a listener's ID while its name stays,
//     and a backend's ID while its port, address and target port stay, so
//     health records and the data path's connection tables survive edits
//     of weights, draining, health checks or other backends.
//   - A backend names a port, one of the port's addresses, or both; an
//     address alone is resolved to the port holding it in the load
//     balancer's VPC. Both are stored, so reads show what is used.
//   - A port used as a backend cannot be deleted (FAILED_PRECONDITION
//     naming the load balancer, from the reference index), nor can the
//     backend's address be removed from the port: remove the backend
//     first. Removing backends silently would shrink a server pool behind
//     its owner's back; refusing is what elastic IPs and NAT port mappings
//     do too.
//   - Backend health is not intent: the distributor writes it (only on
//     changes) under resource.LbHealthKey. Get and List read those records
//     and the node-down markers in the same read transaction and decide with
//     resource.DecideLbHealth, the function the model uses for
//     LbBackend.healthy, so the API shows exactly what the data path does.
//     Records of removed backends are deleted with them.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// Bounds of the health-check parameters.
const (
	lbMinIntervalMs = 100
	lbMaxIntervalMs = 300000
	lbMinTimeoutMs  = 50
	lbMaxThreshold  = 10
	lbMaxWeight     = 256
	// lbMaxBackendsQuota caps the backends-per-listener quota: 4096
	// backends still get ~16 Maglev entries each.
	lbMaxBackendsQuota = 4096
)

func (s *Server) lbHooks(hs map[*resource.Kind]*hooks) {
	hs[resource.KindLoadBalancer] = &hooks{
		mutable: []string{"labels", "description", "listeners"},
		prepare: prepareLoadBalancer,
		refs: func(m proto.Message) []string {
			lb := m.(*v1.LoadBalancer)
			r := []string{lb.Vpc, lb.Pool, lb.Subnet}
			for _, l := range lb.Listeners {
				for _, b := range l.Backends {
					r = append(r, b.Port)
				}
			}
			return r
		},
		release:  releaseLoadBalancer,
		decorate: decorateLoadBalancer,
		// Listener and backend IDs are output only, so an update carries
		// none: give the unchanged ones theirs back before comparing, so
		// echoing a read changes nothing (no write, no audit record).
		echo: func(_, old, obj proto.Message) { keepLbIDs(old.(*v1.LoadBalancer), obj.(*v1.LoadBalancer)) },
	}
}

func keepLbIDs(old, lb *v1.LoadBalancer) {
	for _, l := range lb.Listeners {
		for _, ol := range old.Listeners {
			if ol.Name != l.Name {
				continue
			}
			l.Id = ol.Id
			for _, b := range l.Backends {
				for _, ob := range ol.Backends {
					if ob.Port == b.Port && ob.Address == b.Address && ob.TargetPort == b.TargetPort {
						b.Id = ob.Id
					}
				}
			}
		}
	}
}

// backendKey identifies "the same backend" across updates.
type backendKey struct {
	port, address string
	target        uint32
}

func prepareLoadBalancer(c *txc, old, obj proto.Message) error {
	lb := obj.(*v1.LoadBalancer)
	project := resource.ProjectOf(lb.Name)
	o := &v1.LoadBalancer{}
	if old != nil {
		o = old.(*v1.LoadBalancer)
		lb.Id, lb.Vpc, lb.Scheme, lb.Pool, lb.Subnet, lb.Vip = o.Id, o.Vpc, o.Scheme, o.Pool, o.Subnet, o.Vip
	}
	lb.Status = nil
	var pool *v1.PublicAddressPool
	var subnet *v1.Subnet
	var vip netip.Addr
	if old == nil {
		if err := checkVpcRef(c, "load_balancer.vpc", lb.Vpc, project); err != nil {
			return err
		}
		lb.Scheme = strings.ToLower(lb.Scheme)
		if lb.Scheme == "" {
			lb.Scheme = resource.LbSchemeInternetFacing
		}
		switch lb.Scheme {
		case resource.LbSchemeInternetFacing:
			if lb.Subnet != "" {
				c.vs.add("load_balancer.subnet", "an internet-facing load balancer takes its VIP from a pool: leave subnet empty")
			}
			if lb.Pool == "" {
				c.vs.add("load_balancer.pool", "is required for an internet-facing load balancer: the public address pool of its VIP")
			} else if m, ok, err := loadRef(c, resource.KindPublicAddressPool, "load_balancer.pool", lb.Pool, ""); err != nil {
				return err
			} else if ok {
				pool = m.(*v1.PublicAddressPool)
			}
		case resource.LbSchemeInternal:
			if lb.Pool != "" {
				c.vs.add("load_balancer.pool", "an internal load balancer takes its VIP from a subnet: leave pool empty")
			}
			if lb.Subnet == "" {
				c.vs.add("load_balancer.subnet", "is required for an internal load balancer: the subnet of its VIP")
			} else if m, ok, err := loadRef(c, resource.KindSubnet, "load_balancer.subnet", lb.Subnet, project); err != nil {
				return err
			} else if ok {
				if vpcOfSubnet(lb.Subnet) != lb.Vpc {
					c.vs.add("load_balancer.subnet", "%s is not in VPC %s", lb.Subnet, lb.Vpc)
				} else {
					subnet = m.(*v1.Subnet)
				}
			}
		default:
			c.vs.add("load_balancer.scheme", "must be %q or %q, got %q", resource.LbSchemeInternetFacing, resource.LbSchemeInternal, lb.Scheme)
		}
		if lb.Vip != "" {
			if a, ok := checkIP(&c.vs, "load_balancer.vip", lb.Vip, netip.Prefix{}); ok {
				if !a.Is4() {
					c.vs.add("load_balancer.vip", "%s: VIPs are IPv4 (the load-balancing data path is IPv4 only)", a)
				}
				vip = a
			}
		}
	}
	q, err := c.s.quota(c.tx, project)
	if err != nil {
		return err
	}
	if int32(len(lb.Listeners)) > q.LoadBalancerListeners {
		c.vs.add("load_balancer.listeners", "%d listeners exceed the project's quota of %d per load balancer", len(lb.Listeners), q.LoadBalancerListeners)
	}
	oldListeners := map[string]*v1.LoadBalancerListener{}
	for _, l := range o.Listeners {
		oldListeners[l.Name] = l
	}
	type listenKey struct {
		proto string
		port  uint32
	}
	names := map[string]int{}
	ports := map[listenKey]int{}
	portCache := map[string]*v1.Port{}
	for i, l := range lb.Listeners {
		f := fmt.Sprintf("load_balancer.listeners[%d]", i)
		if err := resource.ValidID(l.Name); err != nil {
			c.vs.add(f+".name", "%v", err)
		} else if j, dup := names[l.Name]; dup {
			c.vs.add(f+".name", "%q is also listeners[%d]'s name", l.Name, j)
		} else {
			names[l.Name] = i
		}
		l.Protocol = strings.ToLower(l.Protocol)
		if l.Protocol != "tcp" && l.Protocol != "udp" {
			c.vs.add(f+".protocol", "must be tcp or udp, got %q", l.Protocol)
		}
		if l.Port < 1 || l.Port > 65535 {
			c.vs.add(f+".port", "must be 1-65535, got %d", l.Port)
		} else if j, dup := ports[listenKey{l.Protocol, l.Port}]; dup {
			c.vs.add(f+".port", "%s port %d is also listeners[%d]'s", l.Protocol, l.Port, j)
		} else {
			ports[listenKey{l.Protocol, l.Port}] = i
		}
		checkHealthCheck(c, f+".health_check", l.HealthCheck)
		if int32(len(l.Backends)) > q.LoadBalancerBackends {
			c.vs.add(f+".backends", "%d backends exceed the project's quota of %d per listener", len(l.Backends), q.LoadBalancerBackends)
		}
		seen := map[backendKey]int{}
		for j, b := range l.Backends {
			bf := fmt.Sprintf("%s.backends[%d]", f, j)
			if err := resolveBackend(c, bf, b, lb.Vpc, project, portCache); err != nil {
				return err
			}
			if b.TargetPort == 0 {
				b.TargetPort = l.Port
			} else if b.TargetPort > 65535 {
				c.vs.add(bf+".target_port", "must be 1-65535, got %d", b.TargetPort)
			}
			switch {
			case b.Weight == nil:
				b.Weight = proto.Uint32(resource.LbDefaultWeight)
			case *b.Weight < 1 || *b.Weight > lbMaxWeight:
				c.vs.add(bf+".weight", "must be 1-%d (Maglev table share), got %d", lbMaxWeight, *b.Weight)
			}
			k := backendKey{b.Port, b.Address, b.TargetPort}
			if b.Port != "" {
				if dup, ok := seen[k]; ok {
					c.vs.add(bf, "%s (%s) target port %d is also backends[%d]", b.Port, b.Address, b.TargetPort, dup)
				}
				seen[k] = j
			}
		}
	}
	if !c.vs.empty() {
		return nil
	}
	if old == nil {
		switch {
		case pool != nil:
			a, err := allocatePublic(c, pool, lb.Name, vip, false, "load_balancer.vip", "load_balancer.pool")
			if err != nil || !c.vs.empty() {
				return err
			}
			lb.Vip = a.String()
		case subnet != nil:
			a, err := allocateSubnetVIP(c, subnet, lb.Name, vip)
			if err != nil || !c.vs.empty() {
				return err
			}
			lb.Vip = a.String()
		}
		if lb.Id, err = ipam.NextID(c.tx, "lb"); err != nil {
			return fmt.Errorf("load balancer ID: %w", err)
		}
	}
	// IDs: kept for the same listener (name) and backend (port, address,
	// target port); fresh ones otherwise.
	kept := map[uint32]map[uint32]bool{}
	for _, l := range lb.Listeners {
		ol := oldListeners[l.Name]
		if ol != nil {
			l.Id = ol.Id
		} else if l.Id, err = ipam.NextID(c.tx, "lblistener"); err != nil {
			return fmt.Errorf("listener ID: %w", err)
		}
		oldBackends := map[backendKey]uint32{}
		for _, b := range ol.GetBackends() {
			oldBackends[backendKey{b.Port, b.Address, b.TargetPort}] = b.Id
		}
		kept[l.Id] = map[uint32]bool{}
		for _, b := range l.Backends {
			if id, ok := oldBackends[backendKey{b.Port, b.Address, b.TargetPort}]; ok {
				b.Id = id
			} else if b.Id, err = ipam.NextID(c.tx, "lbbackend"); err != nil {
				return fmt.Errorf("backend ID: %w", err)
			}
			kept[l.Id][b.Id] = true
		}
	}
	// Health records of backends that are gone go with them, and all of a
	// listener's when it stops checking: a result kept from then would
	// count at once if checks came back.
	checks := map[uint32]bool{}
	for _, l := range lb.Listeners {
		checks[l.Id] = l.HealthCheck != nil
	}
	for _, l := range o.Listeners {
		for _, b := range l.Backends {
			if !kept[l.Id][b.Id] || !checks[l.Id] {
				if err := c.tx.Delete(resource.LbHealthKey(l.Id, b.Id)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// resolveBackend checks a backend's port and address: the port must be in
// the load balancer's project and VPC, the address one of its IPv4
// addresses (default its first); an address alone is looked up in the
// VPC's subnets.
func resolveBackend(c *txc, f string, b *v1.LoadBalancerBackend, vpc, project string, cache map[string]*v1.Port) error {
	var addr netip.Addr
	if b.Address != "" {
		a, ok := checkIP(&c.vs, f+".address", b.Address, netip.Prefix{})
		if !ok {
			return nil
		}
		if !a.Is4() {
			c.vs.add(f+".address", "%s: backends are IPv4 (the load-balancing data path is IPv4 only)", a)
			return nil
		}
		addr = a
	}
	if b.Port == "" && !addr.IsValid() {
		c.vs.add(f, "set port or address: the backend's port, or one of its addresses")
		return nil
	}
	if b.Port == "" {
		owner, err := addressOwner(c, vpc, addr)
		if err != nil {
			return err
		}
		if _, _, perr := resource.KindPort.ParseName(owner); owner == "" || perr != nil {
			what := "no port"
			if owner != "" {
				what = owner
			}
			c.vs.add(f+".address", "%s is not the address of a port in VPC %s (it is held by %s)", addr, vpc, what)
			return nil
		}
		b.Port = owner
	}
	p := cache[b.Port]
	if p == nil {
		m, ok, err := loadRef(c, resource.KindPort, f+".port", b.Port, project)
		if err != nil || !ok {
			return err
		}
		p = m.(*v1.Port)
		cache[b.Port] = p
	}
	if vpcOfSubnet(p.Subnet) != vpc {
		c.vs.add(f+".port", "port %s is in VPC %s, not the load balancer's %s", p.Name, vpcOfSubnet(p.Subnet), vpc)
		return nil
	}
	all := append(slices.Clone(p.FixedIps), p.SecondaryIps...)
	for _, s := range all {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			continue
		}
		if !addr.IsValid() || a == addr {
			b.Address = a.String()
			return nil
		}
	}
	if addr.IsValid() {
		c.vs.add(f+".address", "%s is not an address of port %s (%s)", addr, p.Name, strings.Join(all, ", "))
	} else {
		c.vs.add(f+".port", "port %s has no IPv4 address", p.Name)
	}
	return nil
}

// addressOwner returns who holds addr in the subnets of vpc ("" = nobody).
func addressOwner(c *txc, vpc string, addr netip.Addr) (string, error) {
	var subnets []*v1.Subnet
	if err := eachSubnet(c.tx, vpc, func(sn *v1.Subnet) { subnets = append(subnets, sn) }); err != nil {
		return "", err
	}
	for _, sn := range subnets {
		p, err := netip.ParsePrefix(sn.CidrBlock)
		if err != nil || !p.Contains(addr) {
			continue
		}
		isn, err := ipamSubnet(sn, false)
		if err != nil {
			return "", err
		}
		owner, ok, err := ipam.Owner(c.tx, isn, addr)
		if err != nil || !ok {
			return "", err
		}
		return owner, nil
	}
	return "", nil
}

func checkHealthCheck(c *txc, f string, hc *v1.LoadBalancerHealthCheck) {
	if hc == nil {
		return
	}
	hc.Protocol = strings.ToLower(hc.Protocol)
	switch hc.Protocol {
	case resource.LbHealthCheckTCP:
		if hc.Path != "" {
			c.vs.add(f+".path", "applies to http checks only")
		}
	case resource.LbHealthCheckHTTP:
		if hc.Path == "" {
			hc.Path = resource.LbDefaultHealthCheckHTTPPath
		} else if !strings.HasPrefix(hc.Path, "/") || len(hc.Path) > 1024 || strings.ContainsAny(hc.Path, " \r\n\t") {
			c.vs.add(f+".path", "must be an absolute path without spaces, at most 1024 characters, got %q", hc.Path)
		}
	default:
		c.vs.add(f+".protocol", "must be tcp or http, got %q", hc.Protocol)
	}
	if hc.Port > 65535 {
		c.vs.add(f+".port", "must be 0 (the backend's target port) or 1-65535, got %d", hc.Port)
	}
	if hc.IntervalMs == 0 {
		hc.IntervalMs = resource.LbDefaultIntervalMs
	} else if hc.IntervalMs < lbMinIntervalMs || hc.IntervalMs > lbMaxIntervalMs {
		c.vs.add(f+".interval_ms", "must be %d-%d, got %d", lbMinIntervalMs, lbMaxIntervalMs, hc.IntervalMs)
	}
	if hc.TimeoutMs == 0 {
		hc.TimeoutMs = min(resource.LbDefaultTimeoutMs, hc.IntervalMs)
	} else if hc.TimeoutMs < lbMinTimeoutMs || hc.TimeoutMs > hc.IntervalMs {
		c.vs.add(f+".timeout_ms", "must be %d ms up to interval_ms (%d), got %d", lbMinTimeoutMs, hc.IntervalMs, hc.TimeoutMs)
	}
	for name, v := range map[string]*uint32{"healthy_threshold": &hc.HealthyThreshold, "unhealthy_threshold": &hc.UnhealthyThreshold} {
		if *v == 0 {
			*v = resource.LbDefaultThreshold
		} else if *v > lbMaxThreshold {
			c.vs.add(f+"."+name, "must be 1-%d, got %d", lbMaxThreshold, *v)
		}
	}
}

// allocateSubnetVIP takes vip (if valid) or the next free address of an
// internal load balancer's subnet.
func allocateSubnetVIP(c *txc, sn *v1.Subnet, owner string, vip netip.Addr) (netip.Addr, error) {
	isn, err := ipamSubnet(sn, false)
	if err != nil {
		return vip, err
	}
	if vip.IsValid() {
		if !isn.CIDR.Contains(vip) {
			c.vs.add("load_balancer.vip", "%s is outside subnet %s (%s)", vip, sn.Name, sn.CidrBlock)
			return vip, nil
		}
		err := ipam.ReserveIP(c.tx, isn, vip, owner)
		if errors.Is(err, ipam.ErrInUse) {
			holder, _, _ := ipam.Owner(c.tx, isn, vip)
			c.vs.add("load_balancer.vip", "%s is already held by %s", vip, holder)
			return vip, nil
		}
		if err != nil {
			return vip, ipamErr(c, "load_balancer.vip", err)
		}
		return vip, nil
	}
	a, err := ipam.AllocateIP(c.tx, isn, owner)
	if errors.Is(err, ipam.ErrExhausted) {
		return a, status.Errorf(codes.ResourceExhausted, "subnet %s has no free address left for the VIP", sn.Name)
	}
	return a, err
}

func releaseLoadBalancer(c *txc, old proto.Message) error {
	lb := old.(*v1.LoadBalancer)
	for _, l := range lb.Listeners {
		for _, b := range l.Backends {
			if err := c.tx.Delete(resource.LbHealthKey(l.Id, b.Id)); err != nil {
				return err
			}
		}
	}
	a, err := netip.ParseAddr(lb.Vip)
	if err != nil {
		return fmt.Errorf("load balancer %s stored VIP %q: %w", lb.Name, lb.Vip, err)
	}
	if lb.Scheme == resource.LbSchemeInternal {
		m, _, ok, err := load(c.tx, resource.KindSubnet, lb.Subnet)
		if err != nil || !ok {
			return fmt.Errorf("load balancer %s: subnet %s: %w", lb.Name, lb.Subnet, err)
		}
		return releaseIP(c, m.(*v1.Subnet), lb.Vip)
	}
	m, _, ok, err := load(c.tx, resource.KindPublicAddressPool, lb.Pool)
	if err != nil || !ok {
		return fmt.Errorf("load balancer %s: pool %s: %w", lb.Name, lb.Pool, err)
	}
	for _, p := range poolPrefixes(m.(*v1.PublicAddressPool)) {
		if p.Contains(a) {
			return ipam.ReleaseIP(c.tx, poolSubnet(lb.Pool, p), a)
		}
	}
	return nil
}

// decorateLoadBalancer fills the status from the health records and
// node-down markers of the same read transaction.
func decorateLoadBalancer(_ *Server, tx store.ReadTx, m proto.Message) error {
	lb := m.(*v1.LoadBalancer)
	st := &v1.LoadBalancerStatus{}
	nodeOf := map[string]string{} // port -> node ID ("" = unbound or unregistered)
	for _, l := range lb.Listeners {
		ls := &v1.LoadBalancerListenerStatus{Id: l.Id, Name: l.Name}
		facts := make([]resource.LbBackendFacts, len(l.Backends))
		records := make([]*resource.LbHealth, len(l.Backends))
		for i, b := range l.Backends {
			node, ok := nodeOf[b.Port]
			if !ok {
				pm, _, found, err := load(tx, resource.KindPort, b.Port)
				if err != nil {
					return err
				}
				if found && pm.(*v1.Port).Node != "" {
					if _, reg, err := tx.Get(resource.KindNode.Key(pm.(*v1.Port).Node)); err != nil {
						return err
					} else if reg {
						node = strings.TrimPrefix(pm.(*v1.Port).Node, "nodes/")
					}
				}
				nodeOf[b.Port] = node
			}
			f := resource.LbBackendFacts{Node: node, Draining: b.Draining}
			if node != "" {
				_, down, err := tx.Get(resource.NodeDownKey(node))
				if err != nil {
					return err
				}
				f.NodeDown = down
				kv, ok, err := tx.Get(resource.LbHealthKey(l.Id, b.Id))
				if err != nil {
					return err
				}
				if ok {
					if h, err := resource.DecodeLbHealth(kv.Value); err == nil {
						f.Record = &h
						records[i] = &h
					}
				}
			}
			facts[i] = f
		}
		for i, v := range resource.DecideLbHealth(l.HealthCheck != nil, facts) {
			b := l.Backends[i]
			bs := &v1.LoadBalancerBackendStatus{Id: b.Id, Port: b.Port, Address: b.Address, State: v.State, Reason: v.Reason,
				Serving: v.Healthy && !b.Draining && facts[i].Node != ""}
			if facts[i].Node != "" {
				bs.Node = "nodes/" + facts[i].Node
			}
			if r := records[i]; r != nil && r.Node == facts[i].Node && r.SinceUnix > 0 {
				bs.Since = timestamppb.New(time.Unix(r.SinceUnix, 0))
			}
			if bs.Serving {
				ls.Serving++
			}
			ls.Backends = append(ls.Backends, bs)
		}
		st.Listeners = append(st.Listeners, ls)
	}
	lb.Status = st
	return nil
}
