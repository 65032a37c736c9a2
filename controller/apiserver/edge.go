package apiserver

// The kinds of the outside world (issue [4]): public address pools, elastic
// IPs, NAT gateways and BGP peers.
//
// Decisions worth knowing:
//   - Addresses of a pool live in ipam like a subnet's, one ipam pool per
//     CIDR, allocated in the API's transaction. The first and (IPv4) last
//     address of each CIDR are never handed out.
//   - An elastic IP and the NAT gateway using it name each other
//     (ElasticIp.nat_gateway, NatGateway.elastic_ips). Either side may be
//     written; the other is updated in the same transaction, with its own
//     audit record and etag, so they can never disagree. The elastic IP does
//     not reference the NAT gateway in the reference index (that would make
//     both undeletable); the NAT gateway references its elastic IPs, so an
//     elastic IP in use by a NAT gateway cannot be released.
//   - Releasing (deleting) an elastic IP associated with a port is allowed
//     and ends the association; deleting the port is refused while an
//     elastic IP is associated with it (the elastic IP references the port).
//   - A BGP peer's password is write-only: it is stored (the agent needs
//     it) but cleared from every answer, watch event and audit record. An
//     update changes it only when the mask names it, and not when the
//     request echoes a read (password "" with password_set true).

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// EdgeStatusProvider tells the live status of NAT gateways and BGP peers
// (from the agents' reports). A StatusProvider may implement it.
type EdgeStatusProvider interface {
	NatGatewayStatus(n *v1.NatGateway) *v1.NatGatewayStatus
	BgpPeerStatus(p *v1.BgpPeer) *v1.BgpPeerStatus
}

func (s *Server) edgeHooks(hs map[*resource.Kind]*hooks) {
	hs[resource.KindPublicAddressPool] = &hooks{
		mutable:  []string{"labels", "description", "cidrs", "communities", "med", "announce"},
		prepare:  preparePool,
		release:  releasePool,
		decorate: decoratePool,
	}
	hs[resource.KindElasticIp] = &hooks{
		mutable: []string{"labels", "description", "port", "private_ip", "nat_gateway"},
		prepare: prepareElasticIp,
		refs: func(m proto.Message) []string {
			e := m.(*v1.ElasticIp)
			return []string{e.Pool, e.Port}
		},
		release: releaseElasticIp,
	}
	hs[resource.KindNatGateway] = &hooks{
		mutable: []string{"labels", "description", "elastic_ips", "subnets", "port_mappings", "port_min", "port_max"},
		prepare: prepareNatGateway,
		refs: func(m proto.Message) []string {
			n := m.(*v1.NatGateway)
			r := append([]string{n.Vpc}, n.ElasticIps...)
			r = append(r, n.Subnets...)
			for _, pm := range n.PortMappings {
				r = append(r, pm.Port)
			}
			return r
		},
		release:  releaseNatGateway,
		decorate: decorateNatGateway,
	}
	hs[resource.KindBgpPeer] = &hooks{
		mutable: []string{"labels", "description", "node", "local_asn", "router_id", "peer_asn", "peer_address",
			"hold_time", "graceful_restart", "restart_time", "announce_vpc_prefixes", "password"},
		explicitOnly: []string{"password"},
		echo: func(in, old, obj proto.Message) {
			// A read returns password "" with password_set true: sending
			// that back keeps the password. Clearing it takes password_set
			// false (or unset) too.
			if r := in.(*v1.BgpPeer); r.Password == "" && r.PasswordSet {
				obj.(*v1.BgpPeer).Password = old.(*v1.BgpPeer).Password
			}
		},
		prepare:  prepareBgpPeer,
		refs:     func(m proto.Message) []string { return []string{m.(*v1.BgpPeer).Node} },
		decorate: decorateBgpPeer,
	}
}

// redact clears write-only fields from a resource about to leave the
// server (answers, watch events, audit records).
func redact(m proto.Message) {
	if p, ok := m.(*v1.BgpPeer); ok && p != nil {
		p.Password = ""
	}
}

// sideWrite stores a change to another resource that a mutation implies,
// with its timestamps, reference index and audit record, in the caller's
// transaction. The caller has validated it.
func (s *Server) sideWrite(c *txc, k *resource.Kind, old, obj proto.Message) error {
	setTimes(obj, c.now, false)
	if err := put(c.tx, k, obj); err != nil {
		return err
	}
	name := resource.Name(obj)
	parent, _, err := k.ParseName(name)
	if err != nil {
		return fmt.Errorf("side write: %w", err)
	}
	h := s.hooks[k]
	if err := s.updateRefs(c, name, h.references(old, parent), h.references(obj, parent)); err != nil {
		return err
	}
	return s.audit(c, "Update"+k.Name, name, resource.ProjectOf(name), old, obj)
}

// ---- Public address pools ----

func poolSubnet(pool string, p netip.Prefix) ipam.Subnet {
	return ipam.Subnet{ID: "pool/" + pool + "/" + p.String(), CIDR: p}
}

func poolPrefixes(pool *v1.PublicAddressPool) []netip.Prefix {
	var out []netip.Prefix
	for _, c := range pool.Cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func eachPool(tx store.ReadTx, fn func(*v1.PublicAddressPool)) error {
	kvs, err := tx.List(resource.KindPublicAddressPool.Prefix(), "", 0)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		p := &v1.PublicAddressPool{}
		if err := proto.Unmarshal(kv.Value, p); err != nil {
			return fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		fn(p)
	}
	return nil
}

// checkCommunity accepts "asn:value" (16 bits each) and large "a:b:c" (32 bits each).
func checkCommunity(s string) error {
	parts := strings.Split(s, ":")
	bits := 16
	switch len(parts) {
	case 2:
	case 3:
		bits = 32
	default:
		return fmt.Errorf("%q is not a community: want \"asn:value\" or large \"a:b:c\"", s)
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, bits); err != nil {
			return fmt.Errorf("%q is not a community: each part must be a %d-bit number", s, bits)
		}
	}
	return nil
}

func preparePool(c *txc, old, obj proto.Message) error {
	pool := obj.(*v1.PublicAddressPool)
	var o *v1.PublicAddressPool
	if old != nil {
		o = old.(*v1.PublicAddressPool)
		pool.Id = o.Id
	}
	if len(pool.Cidrs) == 0 {
		c.vs.add("public_address_pool.cidrs", "at least one CIDR is required")
	}
	var ps []netip.Prefix
	for i, s := range pool.Cidrs {
		f := fmt.Sprintf("public_address_pool.cidrs[%d]", i)
		pre, err := netip.ParsePrefix(s)
		var p netip.Prefix
		var ok bool
		if err == nil && pre.Addr().Is6() {
			p, ok = checkCIDR(&c.vs, f, s, false, 64, 126)
		} else {
			p, ok = checkCIDR(&c.vs, f, s, true, 8, 30)
		}
		if !ok {
			continue
		}
		for j, q := range ps {
			if p.Overlaps(q) {
				c.vs.add(f, "%s overlaps cidrs[%d] %s", p, j, q)
			}
		}
		ps = append(ps, p)
	}
	if err := eachPool(c.tx, func(other *v1.PublicAddressPool) {
		if other.Name == pool.Name {
			return
		}
		for i, p := range ps {
			for _, q := range poolPrefixes(other) {
				if p.Overlaps(q) {
					c.vs.add(fmt.Sprintf("public_address_pool.cidrs[%d]", i), "%s overlaps %s of pool %s", p, q, other.Name)
				}
			}
		}
	}); err != nil {
		return err
	}
	for i, s := range pool.Communities {
		if err := checkCommunity(s); err != nil {
			c.vs.add(fmt.Sprintf("public_address_pool.communities[%d]", i), "%v", err)
		}
	}
	if pool.Announce == nil {
		pool.Announce = proto.Bool(true)
	}
	if o != nil {
		// A CIDR may go only while none of its addresses is held.
		for _, q := range poolPrefixes(o) {
			if slices.Contains(ps, q) {
				continue
			}
			used, _, err := ipam.Usage(c.tx, poolSubnet(pool.Name, q))
			if err != nil {
				return err
			}
			if used > 0 {
				c.vs.add("public_address_pool.cidrs", "cannot remove %s: %d of its addresses are allocated to elastic IPs", q, used)
			} else if err := ipam.DeleteSubnet(c.tx, poolSubnet(pool.Name, q).ID); err != nil {
				return err
			}
		}
	}
	if old == nil && c.vs.empty() {
		var err error
		if pool.Id, err = ipam.NextID(c.tx, "pool"); err != nil {
			return fmt.Errorf("pool ID: %w", err)
		}
	}
	return nil
}

func releasePool(c *txc, old proto.Message) error {
	pool := old.(*v1.PublicAddressPool)
	for _, p := range poolPrefixes(pool) {
		if err := ipam.DeleteSubnet(c.tx, poolSubnet(pool.Name, p).ID); err != nil {
			if errors.Is(err, ipam.ErrInUse) {
				return failedPrecondition("public address pool %s: %v", pool.Name, err)
			}
			return err
		}
	}
	return nil
}

func decoratePool(_ *Server, tx store.ReadTx, m proto.Message) error {
	pool := m.(*v1.PublicAddressPool)
	st := &v1.PublicAddressPoolStatus{}
	for _, p := range poolPrefixes(pool) {
		used, usable, err := ipam.Usage(tx, poolSubnet(pool.Name, p))
		if err != nil {
			return err
		}
		st.Allocated += used
		if st.Total+usable < st.Total {
			st.Total = math.MaxUint64 // several IPv6 /64s: saturate
		} else {
			st.Total += usable
		}
	}
	pool.Status = st
	return nil
}

// ---- Elastic IPs ----

// portAddress picks the address of port p an elastic IP of address's
// family maps to: want if given (it must be one of the port's), else the
// port's first such address. ok is false after recording a violation.
func portAddress(c *txc, field string, p *v1.Port, address netip.Addr, want string) (string, bool) {
	all := append(slices.Clone(p.FixedIps), p.SecondaryIps...)
	if want != "" {
		a, ok := checkIP(&c.vs, field, want, netip.Prefix{})
		if !ok {
			return "", false
		}
		for _, s := range all {
			if b, err := netip.ParseAddr(s); err == nil && b == a {
				if address.IsValid() && a.Is4() != address.Is4() {
					c.vs.add(field, "%s and the elastic IP are of different address families", a)
					return "", false
				}
				return a.String(), true
			}
		}
		c.vs.add(field, "%s is not an address of port %s (%s)", a, p.Name, strings.Join(all, ", "))
		return "", false
	}
	for _, s := range all {
		if b, err := netip.ParseAddr(s); err == nil && (!address.IsValid() || b.Is4() == address.Is4()) {
			return b.String(), true
		}
	}
	c.vs.add(field, "port %s has no address of the elastic IP's family", p.Name)
	return "", false
}

// loadRef checks and loads a reference to a resource of kind k in project.
func loadRef(c *txc, k *resource.Kind, field, ref, project string) (proto.Message, bool, error) {
	if _, _, err := k.ParseName(ref); err != nil {
		c.vs.add(field, "%v", err)
		return nil, false, nil
	}
	if project != "" && resource.ProjectOf(ref) != project {
		c.vs.add(field, "%s is in another project: references must stay inside %s", ref, project)
		return nil, false, nil
	}
	m, _, ok, err := load(c.tx, k, ref)
	if err != nil {
		return nil, false, err
	}
	if !ok {
		c.vs.add(field, "%s %s does not exist", k.Name, ref)
		return nil, false, nil
	}
	return m, true, nil
}

// referrers lists the resources of kind k that reference name.
func referrers(tx store.ReadTx, name string, k *resource.Kind) ([]string, error) {
	kvs, err := tx.List(refPrefix+name+"|", "", 0)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, kv := range kvs {
		r := strings.TrimPrefix(kv.Key, refPrefix+name+"|")
		if _, _, err := k.ParseName(r); err == nil {
			out = append(out, r)
		}
	}
	return out, nil
}

func prepareElasticIp(c *txc, old, obj proto.Message) error {
	e := obj.(*v1.ElasticIp)
	project := resource.ProjectOf(e.Name)
	var o *v1.ElasticIp
	if old != nil {
		o = old.(*v1.ElasticIp)
		e.Id, e.Pool, e.Address, e.Ipv6 = o.Id, o.Pool, o.Address, o.Ipv6
	} else {
		o = &v1.ElasticIp{}
	}
	var addr netip.Addr
	var pool *v1.PublicAddressPool
	switch {
	case e.Pool == "":
		c.vs.add("elastic_ip.pool", "is required")
	default:
		m, ok, err := loadRef(c, resource.KindPublicAddressPool, "elastic_ip.pool", e.Pool, "")
		if err != nil {
			return err
		}
		if ok {
			pool = m.(*v1.PublicAddressPool)
		}
	}
	if e.Address != "" {
		if a, ok := checkIP(&c.vs, "elastic_ip.address", e.Address, netip.Prefix{}); ok {
			addr = a
			if old == nil && e.Ipv6 != a.Is6() && e.Ipv6 {
				c.vs.add("elastic_ip.ipv6", "ipv6 is set but the requested address %s is IPv4", a)
			}
			e.Ipv6 = a.Is6()
		}
	}
	// Association.
	if e.Port != "" && e.NatGateway != "" {
		c.vs.add("elastic_ip", "associate with a port or a NAT gateway, not both (port %s, nat_gateway %s)", e.Port, e.NatGateway)
	}
	if e.Port != o.Port && e.PrivateIp == o.PrivateIp {
		e.PrivateIp = "" // moved to another port: its default address, unless given
	}
	var port *v1.Port
	if e.Port != "" {
		m, ok, err := loadRef(c, resource.KindPort, "elastic_ip.port", e.Port, project)
		if err != nil {
			return err
		}
		if ok {
			port = m.(*v1.Port)
		}
	} else if e.PrivateIp != "" && e.PrivateIp != o.PrivateIp {
		c.vs.add("elastic_ip.private_ip", "needs port")
	} else {
		e.PrivateIp = "" // disassociated
	}
	var ngw, oldNgw *v1.NatGateway
	if e.NatGateway != "" && e.NatGateway != o.NatGateway {
		m, ok, err := loadRef(c, resource.KindNatGateway, "elastic_ip.nat_gateway", e.NatGateway, project)
		if err != nil {
			return err
		}
		if ok {
			ngw = m.(*v1.NatGateway)
		}
	}
	if o.NatGateway != "" && e.NatGateway != o.NatGateway {
		m, _, ok, err := load(c.tx, resource.KindNatGateway, o.NatGateway)
		if err != nil {
			return err
		}
		if ok {
			oldNgw = m.(*v1.NatGateway)
			for i, pm := range oldNgw.PortMappings {
				if pm.ElasticIp == e.Name {
					c.vs.add("elastic_ip.nat_gateway", "port_mappings[%d] of NAT gateway %s uses this elastic IP: remove the mapping first", i, oldNgw.Name)
					break
				}
			}
		}
	}
	if !c.vs.empty() {
		return nil
	}
	if port != nil {
		// The family decides the default private address; the address
		// itself may not be allocated yet.
		family := netip.IPv4Unspecified()
		if e.Ipv6 {
			family = netip.IPv6Unspecified()
		}
		pip, ok := portAddress(c, "elastic_ip.private_ip", port, family, e.PrivateIp)
		if !ok {
			return nil
		}
		e.PrivateIp = pip
		others, err := referrers(c.tx, port.Name, resource.KindElasticIp)
		if err != nil {
			return err
		}
		for _, other := range others {
			if other == e.Name {
				continue
			}
			m, _, ok, err := load(c.tx, resource.KindElasticIp, other)
			if err != nil {
				return err
			}
			if ok && m.(*v1.ElasticIp).PrivateIp == pip {
				c.vs.add("elastic_ip.port", "elastic IP %s is already associated with %s of port %s", other, pip, port.Name)
				return nil
			}
		}
	}
	if old == nil {
		var err error
		if addr, err = allocatePublic(c, pool, e.Name, addr, e.Ipv6, "elastic_ip.address", "elastic_ip.pool"); err != nil || !c.vs.empty() {
			return err
		}
		e.Address = addr.String()
		if e.Id, err = ipam.NextID(c.tx, "eip"); err != nil {
			return fmt.Errorf("elastic IP ID: %w", err)
		}
	}
	// Keep the NAT gateways' elastic_ips in step.
	if oldNgw != nil {
		next := proto.Clone(oldNgw).(*v1.NatGateway)
		next.ElasticIps = slices.DeleteFunc(next.ElasticIps, func(s string) bool { return s == e.Name })
		if err := c.s.sideWrite(c, resource.KindNatGateway, oldNgw, next); err != nil {
			return err
		}
	}
	if ngw != nil {
		next := proto.Clone(ngw).(*v1.NatGateway)
		next.ElasticIps = append(next.ElasticIps, e.Name)
		if err := c.s.sideWrite(c, resource.KindNatGateway, ngw, next); err != nil {
			return err
		}
	}
	return nil
}

// allocatePublic takes addr (if valid) or the next free address of the
// wanted family from pool for owner. Exhaustion is RESOURCE_EXHAUSTED;
// a requested address that is not available is a violation.
// addrField and poolField name the request's fields in violations.
func allocatePublic(c *txc, pool *v1.PublicAddressPool, owner string, addr netip.Addr, v6 bool, addrField, poolField string) (netip.Addr, error) {
	ps := poolPrefixes(pool)
	if addr.IsValid() {
		for _, p := range ps {
			if !p.Contains(addr) {
				continue
			}
			err := ipam.ReserveIP(c.tx, poolSubnet(pool.Name, p), addr, owner)
			switch {
			case err == nil:
				return addr, nil
			case errors.Is(err, ipam.ErrInUse):
				c.vs.add(addrField, "%s is already allocated", addr)
				return addr, nil
			case errors.Is(err, ipam.ErrReserved):
				c.vs.add(addrField, "%s is the first or last address of %s, which are never allocated", addr, p)
				return addr, nil
			}
			return addr, err
		}
		c.vs.add(addrField, "%s is not inside pool %s (%s)", addr, pool.Name, strings.Join(pool.Cidrs, ", "))
		return addr, nil
	}
	family := false
	for _, p := range ps {
		if p.Addr().Is6() != v6 {
			continue
		}
		family = true
		a, err := ipam.AllocateIP(c.tx, poolSubnet(pool.Name, p), owner)
		if errors.Is(err, ipam.ErrExhausted) {
			continue
		}
		return a, err
	}
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	if !family {
		c.vs.add(poolField, "pool %s has no %s CIDR", pool.Name, fam)
		return addr, nil
	}
	return addr, status.Errorf(codes.ResourceExhausted, "public address pool %s has no free %s address left: ask an administrator to add a CIDR", pool.Name, fam)
}

func releaseElasticIp(c *txc, old proto.Message) error {
	e := old.(*v1.ElasticIp)
	a, err := netip.ParseAddr(e.Address)
	if err != nil {
		return fmt.Errorf("elastic IP %s stored address %q: %w", e.Name, e.Address, err)
	}
	m, _, ok, err := load(c.tx, resource.KindPublicAddressPool, e.Pool)
	if err != nil || !ok {
		return fmt.Errorf("elastic IP %s: pool %s: %w", e.Name, e.Pool, err)
	}
	for _, p := range poolPrefixes(m.(*v1.PublicAddressPool)) {
		if p.Contains(a) {
			return ipam.ReleaseIP(c.tx, poolSubnet(e.Pool, p), a)
		}
	}
	return nil
}

// checkPrivateIPUnused refuses to take address a away from port while an
// elastic IP or a NAT gateway port mapping translates to it.
func checkPrivateIPUnused(c *txc, port, a string) error {
	for _, k := range []*resource.Kind{resource.KindElasticIp, resource.KindNatGateway, resource.KindLoadBalancer} {
		users, err := referrers(c.tx, port, k)
		if err != nil {
			return err
		}
		for _, u := range users {
			m, _, ok, err := load(c.tx, k, u)
			if err != nil || !ok {
				return err
			}
			used := false
			switch r := m.(type) {
			case *v1.ElasticIp:
				used = r.PrivateIp == a
			case *v1.NatGateway:
				for _, pm := range r.PortMappings {
					used = used || pm.Port == port && pm.PrivateIp == a
				}
			case *v1.LoadBalancer:
				for _, l := range r.Listeners {
					for _, b := range l.Backends {
						used = used || b.Port == port && b.Address == a
					}
				}
			}
			if used {
				c.vs.add("port.secondary_ips", "%s is the private address of %s: change that first", a, u)
			}
		}
	}
	return nil
}

// ---- NAT gateways ----

const (
	defaultNatPortMin = 1024
	defaultNatPortMax = 65535
)

func prepareNatGateway(c *txc, old, obj proto.Message) error {
	n := obj.(*v1.NatGateway)
	project := resource.ProjectOf(n.Name)
	o := &v1.NatGateway{}
	if old != nil {
		o = old.(*v1.NatGateway)
		n.Id, n.Vpc = o.Id, o.Vpc
	} else if err := checkVpcRef(c, "nat_gateway.vpc", n.Vpc, project); err != nil {
		return err
	}
	if n.PortMin == 0 {
		n.PortMin = defaultNatPortMin
	}
	if n.PortMax == 0 {
		n.PortMax = defaultNatPortMax
	}
	if n.PortMin > 65535 || n.PortMax > 65535 || n.PortMin > n.PortMax {
		c.vs.add("nat_gateway.port_min", "source ports must be a range inside 1-65535 with port_min <= port_max, got %d-%d", n.PortMin, n.PortMax)
	}
	eips := map[string]*v1.ElasticIp{}
	for i, name := range n.ElasticIps {
		f := fmt.Sprintf("nat_gateway.elastic_ips[%d]", i)
		if slices.Index(n.ElasticIps, name) != i {
			c.vs.add(f, "%s is listed twice", name)
			continue
		}
		m, ok, err := loadRef(c, resource.KindElasticIp, f, name, project)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		e := m.(*v1.ElasticIp)
		switch {
		case e.Port != "":
			c.vs.add(f, "%s is associated with port %s: disassociate it first", name, e.Port)
		case e.NatGateway != "" && e.NatGateway != n.Name:
			c.vs.add(f, "%s is associated with NAT gateway %s", name, e.NatGateway)
		default:
			eips[name] = e
		}
	}
	for i, name := range n.Subnets {
		f := fmt.Sprintf("nat_gateway.subnets[%d]", i)
		if slices.Index(n.Subnets, name) != i {
			c.vs.add(f, "%s is listed twice", name)
			continue
		}
		if _, ok, err := loadRef(c, resource.KindSubnet, f, name, project); err != nil || !ok {
			if err != nil {
				return err
			}
			continue
		}
		if vpcOfSubnet(name) != n.Vpc {
			c.vs.add(f, "%s is not in VPC %s", name, n.Vpc)
			continue
		}
		// A subnet's outbound traffic leaves through one NAT gateway.
		users, err := referrers(c.tx, name, resource.KindNatGateway)
		if err != nil {
			return err
		}
		for _, u := range users {
			if u != n.Name {
				c.vs.add(f, "%s already uses NAT gateway %s", name, u)
			}
		}
	}
	type mapKey struct {
		eip, proto string
		port       uint32
	}
	seen := map[mapKey]int{}
	ports := map[string]*v1.Port{}
	for i, pm := range n.PortMappings {
		f := fmt.Sprintf("nat_gateway.port_mappings[%d]", i)
		pm.Protocol = strings.ToLower(pm.Protocol)
		if pm.Protocol != "tcp" && pm.Protocol != "udp" {
			c.vs.add(f+".protocol", "must be tcp or udp, got %q", pm.Protocol)
		}
		e := eips[pm.ElasticIp]
		if e == nil {
			c.vs.add(f+".elastic_ip", "%q is not one of the NAT gateway's elastic_ips", pm.ElasticIp)
		}
		if pm.PublicPort < 1 || pm.PublicPort > 65535 {
			c.vs.add(f+".public_port", "must be 1-65535, got %d", pm.PublicPort)
		} else if pm.PublicPort >= n.PortMin && pm.PublicPort <= n.PortMax {
			c.vs.add(f+".public_port", "%d is inside the source-port range %d-%d the NAT gateway allocates from: lower port_min or pick a port below it", pm.PublicPort, n.PortMin, n.PortMax)
		}
		if pm.PrivatePort < 1 || pm.PrivatePort > 65535 {
			c.vs.add(f+".private_port", "must be 1-65535, got %d", pm.PrivatePort)
		}
		k := mapKey{pm.ElasticIp, pm.Protocol, pm.PublicPort}
		if j, dup := seen[k]; dup {
			c.vs.add(f, "%s %s:%d is also mapped by port_mappings[%d]", pm.Protocol, pm.ElasticIp, pm.PublicPort, j)
		}
		seen[k] = i
		p := ports[pm.Port]
		if p == nil {
			m, ok, err := loadRef(c, resource.KindPort, f+".port", pm.Port, project)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			p = m.(*v1.Port)
			ports[pm.Port] = p
		}
		if vpcOfSubnet(p.Subnet) != n.Vpc {
			c.vs.add(f+".port", "port %s is not in VPC %s", pm.Port, n.Vpc)
			continue
		}
		if e != nil {
			if pip, ok := portAddress(c, f+".private_ip", p, netip.MustParseAddr(e.Address), pm.PrivateIp); ok {
				pm.PrivateIp = pip
			}
		}
	}
	if !c.vs.empty() {
		return nil
	}
	if old == nil {
		var err error
		if n.Id, err = ipam.NextID(c.tx, "ngw"); err != nil {
			return fmt.Errorf("NAT gateway ID: %w", err)
		}
	}
	// Keep the elastic IPs' nat_gateway in step.
	for _, name := range o.ElasticIps {
		if !slices.Contains(n.ElasticIps, name) {
			if err := setEipNatGateway(c, name, ""); err != nil {
				return err
			}
		}
	}
	for _, name := range n.ElasticIps {
		if e := eips[name]; e.NatGateway != n.Name {
			if err := setEipNatGateway(c, name, n.Name); err != nil {
				return err
			}
		}
	}
	return nil
}

func setEipNatGateway(c *txc, name, ngw string) error {
	m, _, ok, err := load(c.tx, resource.KindElasticIp, name)
	if err != nil || !ok {
		return err
	}
	e := m.(*v1.ElasticIp)
	next := proto.Clone(e).(*v1.ElasticIp)
	next.NatGateway = ngw
	return c.s.sideWrite(c, resource.KindElasticIp, e, next)
}

func releaseNatGateway(c *txc, old proto.Message) error {
	for _, name := range old.(*v1.NatGateway).ElasticIps {
		if err := setEipNatGateway(c, name, ""); err != nil {
			return err
		}
	}
	return nil
}

func decorateNatGateway(s *Server, _ store.ReadTx, m proto.Message) error {
	n := m.(*v1.NatGateway)
	n.Status = &v1.NatGatewayStatus{}
	if sp, ok := s.status.(EdgeStatusProvider); ok {
		n.Status = sp.NatGatewayStatus(n)
	}
	return nil
}

// ---- BGP peers ----

func prepareBgpPeer(c *txc, old, obj proto.Message) error {
	p := obj.(*v1.BgpPeer)
	if old != nil {
		p.Id = old.(*v1.BgpPeer).Id
	}
	if p.Node == "" {
		c.vs.add("bgp_peer.node", "is required: the gateway node that holds the session")
	} else if m, ok, err := loadRef(c, resource.KindNode, "bgp_peer.node", p.Node, ""); err != nil {
		return err
	} else if ok && !slices.Contains(m.(*v1.Node).Roles, v1.NodeRole_GATEWAY) {
		c.vs.add("bgp_peer.node", "node %s does not have the GATEWAY role", p.Node)
	}
	if p.LocalAsn == 0 || p.LocalAsn == math.MaxUint32 {
		c.vs.add("bgp_peer.local_asn", "must be 1-4294967294")
	}
	if p.PeerAsn == 0 || p.PeerAsn == math.MaxUint32 {
		c.vs.add("bgp_peer.peer_asn", "must be 1-4294967294")
	}
	if p.RouterId != "" {
		if a, ok := checkIP(&c.vs, "bgp_peer.router_id", p.RouterId, netip.Prefix{}); ok && !a.Is4() {
			c.vs.add("bgp_peer.router_id", "a router ID is an IPv4 address, got %s", a)
		}
	}
	var peerAddr netip.Addr
	if p.PeerAddress == "" {
		c.vs.add("bgp_peer.peer_address", "is required")
	} else if a, ok := checkIP(&c.vs, "bgp_peer.peer_address", p.PeerAddress, netip.Prefix{}); ok {
		peerAddr = a
		p.PeerAddress = a.String()
	}
	if p.HoldTime != 0 && (p.HoldTime < 3 || p.HoldTime > 65535) {
		c.vs.add("bgp_peer.hold_time", "must be 0 (default 90) or 3-65535 seconds (RFC 4271), got %d", p.HoldTime)
	}
	if p.RestartTime > 4095 {
		c.vs.add("bgp_peer.restart_time", "must be at most 4095 seconds (RFC 4724), got %d", p.RestartTime)
	}
	if len(p.Password) > 80 {
		c.vs.add("bgp_peer.password", "TCP MD5 keys are at most 80 bytes")
	}
	if p.GracefulRestart == nil {
		p.GracefulRestart = proto.Bool(true)
	}
	p.PasswordSet = p.Password != ""
	if peerAddr.IsValid() && p.Node != "" {
		kvs, err := c.tx.List(resource.KindBgpPeer.Prefix(), "", 0)
		if err != nil {
			return err
		}
		for _, kv := range kvs {
			other := &v1.BgpPeer{}
			if err := proto.Unmarshal(kv.Value, other); err != nil {
				return fmt.Errorf("decode %s: %w", kv.Key, err)
			}
			if other.Name != p.Name && other.Node == p.Node && other.PeerAddress == p.PeerAddress {
				c.vs.add("bgp_peer.peer_address", "node %s already has a session with %s (%s)", p.Node, p.PeerAddress, other.Name)
			}
		}
	}
	if old == nil && c.vs.empty() {
		var err error
		if p.Id, err = ipam.NextID(c.tx, "bgp"); err != nil {
			return fmt.Errorf("BGP peer ID: %w", err)
		}
	}
	return nil
}

func decorateBgpPeer(s *Server, _ store.ReadTx, m proto.Message) error {
	p := m.(*v1.BgpPeer)
	redact(p)
	p.Status = &v1.BgpPeerStatus{}
	if sp, ok := s.status.(EdgeStatusProvider); ok {
		p.Status = sp.BgpPeerStatus(p)
	}
	return nil
}
