package apiserver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// hooks is what differs between kinds; the engine does the rest.
type hooks struct {
	// mutable lists the top-level fields an update may change.
	mutable []string
	// prepare validates a new (old == nil) or changed resource inside the
	// transaction, fills its output-only fields and makes its allocations.
	// Field problems go to c.vs; other errors are returned.
	prepare func(c *txc, old, obj proto.Message) error
	// refs lists the names the resource references (besides its parent).
	refs func(obj proto.Message) []string
	// release frees what prepare allocated, on delete.
	release func(c *txc, old proto.Message) error
	// decorate fills fields computed on read (statuses, usage).
	decorate func(s *Server, tx store.ReadTx, obj proto.Message) error
	// explicitOnly lists mutable fields an update changes only when its
	// mask names them (write-only secrets).
	explicitOnly []string
	// echo undoes what an update would change only because the request
	// echoes a read (a REST PATCH of a whole GET body names every field).
	echo func(in, old, obj proto.Message)
}

func (h *hooks) references(obj proto.Message, parent string) []string {
	var r []string
	if parent != "" {
		r = append(r, parent)
	}
	if h.refs != nil {
		for _, n := range h.refs(obj) {
			if n != "" && !slices.Contains(r, n) && n != resource.Name(obj) {
				r = append(r, n)
			}
		}
	}
	return r
}

func (s *Server) buildHooks() map[*resource.Kind]*hooks {
	hs := s.coreHooks()
	s.edgeHooks(hs)
	s.lbHooks(hs)
	s.flowLogHooks(hs) // flowlog.go
	return hs
}

func (s *Server) coreHooks() map[*resource.Kind]*hooks {
	return map[*resource.Kind]*hooks{
		resource.KindProject: {
			mutable:  []string{"labels", "description", "quota"},
			prepare:  prepareProject,
			decorate: decorateProject,
		},
		resource.KindNode: {
			mutable:  []string{"labels", "description", "hostname", "underlay_ip", "roles", "realization"},
			prepare:  prepareNode,
			decorate: decorateNode,
		},
		resource.KindVpc: {
			mutable: []string{"labels", "description", "cidr_blocks"},
			prepare: prepareVpc,
			release: func(c *txc, old proto.Message) error { return ipam.ReleaseVNI(c.tx, old.(*v1.Vpc).Vni) },
		},
		resource.KindSubnet: {
			mutable: []string{"labels", "description", "dhcp", "mtu", "network_acl", "route_table"},
			prepare: prepareSubnet,
			refs: func(m proto.Message) []string {
				sn := m.(*v1.Subnet)
				return []string{sn.NetworkAcl, sn.RouteTable}
			},
			release:  func(c *txc, old proto.Message) error { return ipam.DeleteSubnet(c.tx, old.(*v1.Subnet).Name) },
			decorate: decorateSubnet,
		},
		resource.KindPort: {
			mutable:  []string{"labels", "description", "secondary_ips", "security_groups", "node", "disable_source_dest_check", "device_id"},
			prepare:  preparePort,
			refs:     portRefs,
			release:  releasePort,
			decorate: decoratePort,
		},
		resource.KindSecurityGroup: {
			mutable: []string{"labels", "description", "rules"},
			prepare: prepareSecurityGroup,
			refs: func(m proto.Message) []string {
				sg := m.(*v1.SecurityGroup)
				r := []string{sg.Vpc}
				for _, rule := range sg.Rules {
					r = append(r, rule.RemoteSecurityGroup)
				}
				return r
			},
		},
		resource.KindNetworkAcl: {
			mutable:  []string{"labels", "description", "rules"},
			prepare:  prepareNetworkAcl,
			refs:     func(m proto.Message) []string { return []string{m.(*v1.NetworkAcl).Vpc} },
			decorate: decorateNetworkAcl,
		},
		resource.KindRouteTable: {
			mutable: []string{"labels", "description", "routes"},
			prepare: prepareRouteTable,
			refs: func(m proto.Message) []string {
				rt := m.(*v1.RouteTable)
				r := []string{rt.Vpc}
				for _, rr := range rt.Routes {
					r = append(r, rr.NextHopPort)
				}
				return r
			},
		},
	}
}

func prepareProject(c *txc, old, obj proto.Message) error {
	p := obj.(*v1.Project)
	if old == nil {
		if p.Organization == "" {
			c.vs.add("project.organization", "is required")
		} else if err := resource.ValidID(p.Organization); err != nil {
			c.vs.add("project.organization", "%v", err)
		}
	}
	if q := p.Quota; q != nil {
		for name, v := range map[string]int32{"vpcs": q.Vpcs, "subnets": q.Subnets, "ports": q.Ports, "security_groups": q.SecurityGroups,
			"security_group_rules": q.SecurityGroupRules, "network_acls": q.NetworkAcls, "network_acl_rules": q.NetworkAclRules,
			"route_tables": q.RouteTables, "routes": q.Routes, "elastic_ips": q.ElasticIps, "nat_gateways": q.NatGateways,
			"load_balancers": q.LoadBalancers, "load_balancer_listeners": q.LoadBalancerListeners, "load_balancer_backends": q.LoadBalancerBackends} {
			if v < 0 {
				c.vs.add("project.quota."+name, "must not be negative")
			}
		}
		// A listener's Maglev table has 65537 entries: beyond a few
		// thousand backends it cannot honour weights (or hold them all).
		if q.LoadBalancerBackends > lbMaxBackendsQuota {
			c.vs.add("project.quota.load_balancer_backends", "at most %d backends per listener (Maglev table of 65537 entries), got %d", lbMaxBackendsQuota, q.LoadBalancerBackends)
		}
	}
	return nil
}

func decorateProject(s *Server, tx store.ReadTx, m proto.Message) error {
	p := m.(*v1.Project)
	u := &v1.Quota{}
	for k, dst := range map[*resource.Kind]*int32{resource.KindVpc: &u.Vpcs, resource.KindSubnet: &u.Subnets, resource.KindPort: &u.Ports,
		resource.KindSecurityGroup: &u.SecurityGroups, resource.KindNetworkAcl: &u.NetworkAcls, resource.KindRouteTable: &u.RouteTables,
		resource.KindElasticIp: &u.ElasticIps, resource.KindNatGateway: &u.NatGateways, resource.KindLoadBalancer: &u.LoadBalancers} {
		n, err := readCount(tx, countKey(p.Name, k))
		if err != nil {
			return err
		}
		*dst = int32(n)
	}
	p.Usage = u
	return nil
}

func prepareNode(c *txc, old, obj proto.Message) error {
	n := obj.(*v1.Node)
	if old != nil && !slices.Contains(n.Roles, v1.NodeRole_GATEWAY) && slices.Contains(old.(*v1.Node).Roles, v1.NodeRole_GATEWAY) {
		peers, err := referrers(c.tx, n.Name, resource.KindBgpPeer)
		if err != nil {
			return err
		}
		if len(peers) > 0 {
			c.vs.add("node.roles", "cannot drop the GATEWAY role while BGP peers use the node: %s", strings.Join(peers, ", "))
		}
	}
	if n.UnderlayIp == "" {
		c.vs.add("node.underlay_ip", "is required: the address other nodes tunnel to")
	} else {
		checkIP(&c.vs, "node.underlay_ip", n.UnderlayIp, netip.Prefix{})
	}
	for i, r := range n.Roles {
		if _, ok := v1.NodeRole_name[int32(r)]; !ok || r == v1.NodeRole_NODE_ROLE_UNSPECIFIED {
			c.vs.add(fmt.Sprintf("node.roles[%d]", i), "unknown role %d", r)
		}
	}
	if _, ok := v1.Realization_name[int32(n.Realization)]; !ok {
		c.vs.add("node.realization", "unknown realization %d", n.Realization)
	}
	if n.Realization == v1.Realization_REALIZATION_UNSPECIFIED {
		n.Realization = v1.Realization_EBPF
	}
	if len(n.Roles) == 0 {
		n.Roles = []v1.NodeRole{v1.NodeRole_COMPUTE}
	}
	return nil
}

func decorateNode(s *Server, _ store.ReadTx, m proto.Message) error {
	n := m.(*v1.Node)
	if s.status != nil {
		n.Status = s.status.NodeStatus(strings.TrimPrefix(n.Name, "nodes/"))
	}
	return nil
}

func prepareVpc(c *txc, old, obj proto.Message) error {
	v := obj.(*v1.Vpc)
	if len(v.CidrBlocks) == 0 {
		c.vs.add("vpc.cidr_blocks", "at least one IPv4 CIDR block is required")
	}
	if len(v.CidrBlocks) > 5 {
		c.vs.add("vpc.cidr_blocks", "at most 5 CIDR blocks, got %d", len(v.CidrBlocks))
	}
	var ps []netip.Prefix
	for i, s := range v.CidrBlocks {
		f := fmt.Sprintf("vpc.cidr_blocks[%d]", i)
		p, ok := checkCIDR(&c.vs, f, s, true, 8, 28)
		if !ok {
			continue
		}
		for j, q := range ps {
			if overlaps(p, q) {
				c.vs.add(f, "%s overlaps cidr_blocks[%d] %s", p, j, q)
			}
		}
		ps = append(ps, p)
	}
	if v.Ipv6CidrBlock != "" {
		checkCIDR(&c.vs, "vpc.ipv6_cidr_block", v.Ipv6CidrBlock, false, 44, 64)
	}
	if old != nil {
		o := old.(*v1.Vpc)
		v.Id, v.Vni = o.Id, o.Vni
		// A block may go only if no subnet lives in it.
		for _, b := range o.CidrBlocks {
			if slices.Contains(v.CidrBlocks, b) {
				continue
			}
			bp := netip.MustParsePrefix(b)
			if err := eachSubnet(c.tx, v.Name, func(sn *v1.Subnet) {
				if p, err := netip.ParsePrefix(sn.CidrBlock); err == nil && bp.Overlaps(p) {
					c.vs.add("vpc.cidr_blocks", "cannot remove %s: subnet %s uses it", b, sn.Name)
				}
			}); err != nil {
				return err
			}
		}
		return nil
	}
	if !c.vs.empty() {
		return nil
	}
	var err error
	if v.Id, err = ipam.NextID(c.tx, "vpc"); err != nil {
		return fmt.Errorf("vpc ID: %w", err)
	}
	if v.Vni, err = ipam.AllocateVNI(c.tx, v.Name); err != nil {
		return fmt.Errorf("vpc VNI: %w", err)
	}
	return nil
}

func eachSubnet(tx store.ReadTx, vpc string, fn func(*v1.Subnet)) error {
	kvs, err := tx.List(resource.KindSubnet.Prefix()+vpc+"/subnets/", "", 0)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		sn := &v1.Subnet{}
		if err := proto.Unmarshal(kv.Value, sn); err != nil {
			return fmt.Errorf("decode %s: %w", kv.Key, err)
		}
		fn(sn)
	}
	return nil
}

// sameVPC loads a referenced resource and checks it is in the same project
// and VPC as the referrer, recording a violation otherwise.
func sameVPC[T interface {
	proto.Message
	GetVpc() string
}](c *txc, k *resource.Kind, field, ref, project, vpc string) (T, bool, error) {
	var zero T
	if _, _, err := k.ParseName(ref); err != nil {
		c.vs.add(field, "%v", err)
		return zero, false, nil
	}
	if resource.ProjectOf(ref) != project {
		c.vs.add(field, "%s is in another project: references must stay inside %s", ref, project)
		return zero, false, nil
	}
	m, _, ok, err := load(c.tx, k, ref)
	if err != nil {
		return zero, false, err
	}
	if !ok {
		c.vs.add(field, "%s %s does not exist", k.Name, ref)
		return zero, false, nil
	}
	t := m.(T)
	if t.GetVpc() != vpc {
		c.vs.add(field, "%s belongs to VPC %s, not %s", ref, t.GetVpc(), vpc)
		return zero, false, nil
	}
	return t, true, nil
}

func vpcOfSubnet(subnet string) string {
	parent, _, _ := resource.KindSubnet.ParseName(subnet)
	return parent
}

func prepareSubnet(c *txc, old, obj proto.Message) error {
	sn := obj.(*v1.Subnet)
	vpcName := vpcOfSubnet(sn.Name)
	m, _, ok, err := load(c.tx, resource.KindVpc, vpcName)
	if err != nil || !ok {
		return err
	}
	vpc := m.(*v1.Vpc)
	project := resource.ProjectOf(sn.Name)
	if old != nil {
		o := old.(*v1.Subnet)
		sn.Id, sn.CidrBlock, sn.Ipv6CidrBlock, sn.GatewayIp = o.Id, o.CidrBlock, o.Ipv6CidrBlock, o.GatewayIp
	} else {
		p, ok := checkCIDR(&c.vs, "subnet.cidr_block", sn.CidrBlock, true, 16, 29)
		if ok {
			inVPC := false
			for _, b := range vpc.CidrBlocks {
				if bp := netip.MustParsePrefix(b); bp.Contains(p.Addr()) && bp.Bits() <= p.Bits() {
					inVPC = true
				}
			}
			if !inVPC {
				c.vs.add("subnet.cidr_block", "%s is not inside the VPC's blocks %s", p, strings.Join(vpc.CidrBlocks, ", "))
			}
			if err := eachSubnet(c.tx, vpcName, func(other *v1.Subnet) {
				if q, err := netip.ParsePrefix(other.CidrBlock); err == nil && q.Overlaps(p) {
					c.vs.add("subnet.cidr_block", "%s overlaps subnet %s (%s)", p, other.Name, q)
				}
				if sn.Ipv6CidrBlock != "" && other.Ipv6CidrBlock != "" {
					if a, b := netip.MustParsePrefix(other.Ipv6CidrBlock), netip.ParsePrefix; a.IsValid() {
						if q, err := b(sn.Ipv6CidrBlock); err == nil && a.Overlaps(q) {
							c.vs.add("subnet.ipv6_cidr_block", "%s overlaps subnet %s (%s)", q, other.Name, a)
						}
					}
				}
			}); err != nil {
				return err
			}
			if sn.GatewayIp == "" {
				sn.GatewayIp = p.Addr().Next().String()
			} else if gw, ok := checkIP(&c.vs, "subnet.gateway_ip", sn.GatewayIp, p); ok {
				if gw == p.Addr() || gw == lastAddr(p) {
					c.vs.add("subnet.gateway_ip", "%s is the network or broadcast address of %s", gw, p)
				}
				sn.GatewayIp = gw.String()
			}
		}
		if sn.Ipv6CidrBlock != "" {
			if p6, ok := checkCIDR(&c.vs, "subnet.ipv6_cidr_block", sn.Ipv6CidrBlock, false, 64, 64); ok {
				if vpc.Ipv6CidrBlock == "" {
					c.vs.add("subnet.ipv6_cidr_block", "the VPC has no IPv6 block")
				} else if vp := netip.MustParsePrefix(vpc.Ipv6CidrBlock); !vp.Contains(p6.Addr()) {
					c.vs.add("subnet.ipv6_cidr_block", "%s is not inside the VPC's IPv6 block %s", p6, vp)
				}
			}
		}
	}
	if sn.Mtu == 0 {
		sn.Mtu = 1450
	} else if sn.Mtu < 576 || sn.Mtu > 8950 {
		c.vs.add("subnet.mtu", "must be 576-8950 (underlay MTU minus 50 bytes of VXLAN), got %d", sn.Mtu)
	}
	if d := sn.Dhcp; d != nil {
		for i, s := range d.DnsServers {
			checkIP(&c.vs, fmt.Sprintf("subnet.dhcp.dns_servers[%d]", i), s, netip.Prefix{})
		}
		for i, s := range d.NtpServers {
			checkIP(&c.vs, fmt.Sprintf("subnet.dhcp.ntp_servers[%d]", i), s, netip.Prefix{})
		}
		if d.LeaseSeconds == 0 {
			d.LeaseSeconds = 3600
		} else if d.LeaseSeconds < 60 {
			c.vs.add("subnet.dhcp.lease_seconds", "must be at least 60")
		}
		if len(d.DomainName) > 253 {
			c.vs.add("subnet.dhcp.domain_name", "longer than 253 characters")
		}
	}
	if sn.NetworkAcl != "" {
		if _, _, err := sameVPC[*v1.NetworkAcl](c, resource.KindNetworkAcl, "subnet.network_acl", sn.NetworkAcl, project, vpcName); err != nil {
			return err
		}
	}
	if sn.RouteTable != "" {
		if _, _, err := sameVPC[*v1.RouteTable](c, resource.KindRouteTable, "subnet.route_table", sn.RouteTable, project, vpcName); err != nil {
			return err
		}
	}
	if old == nil && c.vs.empty() {
		if sn.Id, err = ipam.NextID(c.tx, "subnet"); err != nil {
			return fmt.Errorf("subnet ID: %w", err)
		}
	}
	return nil
}

func decorateSubnet(s *Server, tx store.ReadTx, m proto.Message) error {
	sn := m.(*v1.Subnet)
	// Usage reads one occupancy bitmap per 256 addresses: cheap enough for
	// listings too.
	isn, err := ipamSubnet(sn, false)
	if err != nil {
		return err
	}
	used, usable, err := ipam.Usage(tx, isn)
	if err != nil {
		return err
	}
	sn.AvailableIps = int32(usable - used)
	return nil
}

func ipamSubnet(sn *v1.Subnet, v6 bool) (ipam.Subnet, error) {
	cidr := sn.CidrBlock
	gw := netip.Addr{}
	if v6 {
		cidr = sn.Ipv6CidrBlock
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return ipam.Subnet{}, fmt.Errorf("subnet %s CIDR %q: %w", sn.Name, cidr, err)
	}
	if v6 {
		gw = p.Addr().Next()
	} else if gw, err = netip.ParseAddr(sn.GatewayIp); err != nil {
		return ipam.Subnet{}, fmt.Errorf("subnet %s gateway: %w", sn.Name, err)
	}
	return ipam.Subnet{ID: sn.Name, CIDR: p, Gateway: gw}, nil
}

// ipamErr turns an allocation failure into the status a caller can act on.
func ipamErr(c *txc, field string, err error) error {
	switch {
	case errors.Is(err, ipam.ErrExhausted):
		return failedPrecondition("%s: %v", field, err)
	case errors.Is(err, ipam.ErrInUse), errors.Is(err, ipam.ErrReserved), errors.Is(err, ipam.ErrOutside), errors.Is(err, ipam.ErrInvalidMAC):
		c.vs.add(field, "%v", err)
		return nil
	}
	return err
}

func portRefs(m proto.Message) []string {
	p := m.(*v1.Port)
	r := append([]string{p.Subnet, p.Node}, p.SecurityGroups...)
	return r
}

func preparePort(c *txc, old, obj proto.Message) error {
	p := obj.(*v1.Port)
	project := resource.ProjectOf(p.Name)
	var o *v1.Port
	if old != nil {
		o = old.(*v1.Port)
		p.Id, p.Subnet, p.MacAddress, p.FixedIps = o.Id, o.Subnet, o.MacAddress, o.FixedIps
	}
	if p.Subnet == "" {
		c.vs.add("port.subnet", "is required")
		return nil
	}
	if _, _, err := resource.KindSubnet.ParseName(p.Subnet); err != nil {
		c.vs.add("port.subnet", "%v", err)
		return nil
	}
	if resource.ProjectOf(p.Subnet) != project {
		c.vs.add("port.subnet", "%s is in another project", p.Subnet)
		return nil
	}
	m, _, ok, err := load(c.tx, resource.KindSubnet, p.Subnet)
	if err != nil {
		return err
	}
	if !ok {
		c.vs.add("port.subnet", "subnet %s does not exist", p.Subnet)
		return nil
	}
	sn := m.(*v1.Subnet)
	vpc := vpcOfSubnet(sn.Name)
	p.SourceDestCheck = !p.DisableSourceDestCheck
	if len(p.SecurityGroups) > 16 {
		c.vs.add("port.security_groups", "at most 16 security groups per port, got %d", len(p.SecurityGroups))
	}
	for i, g := range p.SecurityGroups {
		f := fmt.Sprintf("port.security_groups[%d]", i)
		if slices.Index(p.SecurityGroups, g) != i {
			c.vs.add(f, "%s is listed twice", g)
			continue
		}
		if _, _, err := sameVPC[*v1.SecurityGroup](c, resource.KindSecurityGroup, f, g, project, vpc); err != nil {
			return err
		}
	}
	if p.Node != "" {
		if _, _, err := resource.KindNode.ParseName(p.Node); err != nil {
			c.vs.add("port.node", "%v", err)
		} else if _, ok, err := c.tx.Get(resource.KindNode.Key(p.Node)); err != nil {
			return err
		} else if !ok {
			c.vs.add("port.node", "node %s is not registered", p.Node)
		}
	}
	if !c.vs.empty() {
		return nil
	}
	v4, err := ipamSubnet(sn, false)
	if err != nil {
		return err
	}
	subnetFor := func(a netip.Addr) (ipam.Subnet, error) {
		if a.Is4() {
			return v4, nil
		}
		if sn.Ipv6CidrBlock == "" {
			return ipam.Subnet{}, fmt.Errorf("%w: subnet %s has no IPv6 block", ipam.ErrOutside, sn.Name)
		}
		return ipamSubnet(sn, true)
	}
	reserve := func(field, s string) error {
		a, ok := checkIP(&c.vs, field, s, netip.Prefix{})
		if !ok {
			return nil
		}
		isn, err := subnetFor(a)
		if err == nil {
			err = ipam.ReserveIP(c.tx, isn, a, p.Name)
		}
		if err != nil {
			return ipamErr(c, field, err)
		}
		return nil
	}
	if o == nil {
		if p.MacAddress == "" {
			mac, err := ipam.AllocateMAC(c.tx, p.Name)
			if err != nil {
				return ipamErr(c, "port.mac_address", err)
			}
			p.MacAddress = mac.String()
		} else if mac, err := net.ParseMAC(p.MacAddress); err != nil || len(mac) != 6 {
			c.vs.add("port.mac_address", "%q is not a MAC address (like 02:00:00:00:00:01)", p.MacAddress)
		} else if err := ipam.ReserveMAC(c.tx, mac, p.Name); err != nil {
			if err := ipamErr(c, "port.mac_address", err); err != nil {
				return err
			}
		} else {
			p.MacAddress = mac.String()
		}
		if len(p.FixedIps) == 0 {
			a, err := ipam.AllocateIP(c.tx, v4, p.Name)
			if err != nil {
				return ipamErr(c, "port.fixed_ips", err)
			}
			p.FixedIps = []string{a.String()}
		} else {
			for i, s := range p.FixedIps {
				if err := reserve(fmt.Sprintf("port.fixed_ips[%d]", i), s); err != nil {
					return err
				}
			}
		}
		if p.Id, err = ipam.NextID(c.tx, "port"); err != nil {
			return fmt.Errorf("port ID: %w", err)
		}
	}
	var oldSec []string
	if o != nil {
		oldSec = o.SecondaryIps
	}
	for i, s := range p.SecondaryIps {
		if slices.Contains(oldSec, s) {
			continue
		}
		if slices.Contains(p.FixedIps, s) || slices.Index(p.SecondaryIps, s) != i {
			c.vs.add(fmt.Sprintf("port.secondary_ips[%d]", i), "%s is listed twice", s)
			continue
		}
		if err := reserve(fmt.Sprintf("port.secondary_ips[%d]", i), s); err != nil {
			return err
		}
	}
	for _, s := range oldSec {
		if !slices.Contains(p.SecondaryIps, s) {
			if err := checkPrivateIPUnused(c, p.Name, s); err != nil {
				return err
			}
			if err := releaseIP(c, sn, s); err != nil {
				return err
			}
		}
	}
	return nil
}

func releaseIP(c *txc, sn *v1.Subnet, s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("stored address %q: %w", s, err)
	}
	isn, err := ipamSubnet(sn, !a.Is4())
	if err != nil {
		return err
	}
	return ipam.ReleaseIP(c.tx, isn, a)
}

func releasePort(c *txc, old proto.Message) error {
	p := old.(*v1.Port)
	m, _, ok, err := load(c.tx, resource.KindSubnet, p.Subnet)
	if err != nil || !ok {
		return fmt.Errorf("port %s: subnet %s: %w", p.Name, p.Subnet, err)
	}
	sn := m.(*v1.Subnet)
	for _, s := range append(slices.Clone(p.FixedIps), p.SecondaryIps...) {
		if err := releaseIP(c, sn, s); err != nil {
			return err
		}
	}
	mac, err := net.ParseMAC(p.MacAddress)
	if err != nil {
		return fmt.Errorf("port %s stored MAC: %w", p.Name, err)
	}
	return ipam.ReleaseMAC(c.tx, mac)
}

func decoratePort(s *Server, _ store.ReadTx, m proto.Message) error {
	p := m.(*v1.Port)
	switch {
	case p.Node == "":
		p.Status = &v1.PortStatus{State: v1.PortState_PORT_STATE_DOWN, Message: "not bound to a node"}
	case s.status == nil:
		p.Status = &v1.PortStatus{State: v1.PortState_PORT_STATE_BUILD, Message: "no agent distributor"}
	default:
		p.Status = s.status.PortStatus(p)
	}
	return nil
}

// checkRuleCount enforces the per-resource rule quota.
func checkRuleCount(c *txc, field string, n int, limit int32) {
	if int32(n) > limit {
		c.vs.add(field, "%d rules exceed the project's quota of %d", n, limit)
	}
}

// keepIDs gives rules that are unchanged from old the ID they had and new
// rules fresh IDs, so editing one rule does not renumber the others (rule
// IDs are what drop events and flow logs name).
func keepIDs[R interface {
	proto.Message
	GetId() uint32
}](c *txc, old, rules []R, setID func(R, uint32)) error {
	used := map[uint32]bool{}
	for _, r := range rules {
		for _, o := range old {
			if used[o.GetId()] {
				continue
			}
			cp := proto.Clone(r).(R)
			setID(cp, o.GetId())
			if proto.Equal(cp, o) {
				setID(r, o.GetId())
				used[o.GetId()] = true
				break
			}
		}
		if r.GetId() == 0 {
			id, err := ipam.NextID(c.tx, "rule")
			if err != nil {
				return fmt.Errorf("rule ID: %w", err)
			}
			setID(r, id)
		}
	}
	return nil
}

func prepareSecurityGroup(c *txc, old, obj proto.Message) error {
	sg := obj.(*v1.SecurityGroup)
	project := resource.ProjectOf(sg.Name)
	var oldRules []*v1.SecurityGroupRule
	if old != nil {
		o := old.(*v1.SecurityGroup)
		sg.Id, sg.Vpc, oldRules = o.Id, o.Vpc, o.Rules
	} else {
		if sg.Vpc == "" {
			c.vs.add("security_group.vpc", "is required")
		} else if _, _, err := resource.KindVpc.ParseName(sg.Vpc); err != nil {
			c.vs.add("security_group.vpc", "%v", err)
		} else if resource.ProjectOf(sg.Vpc) != project {
			c.vs.add("security_group.vpc", "%s is in another project", sg.Vpc)
		} else if _, ok, err := c.tx.Get(resource.KindVpc.Key(sg.Vpc)); err != nil {
			return err
		} else if !ok {
			c.vs.add("security_group.vpc", "VPC %s does not exist", sg.Vpc)
		}
	}
	q, err := c.s.quota(c.tx, project)
	if err != nil {
		return err
	}
	checkRuleCount(c, "security_group.rules", len(sg.Rules), q.SecurityGroupRules)
	for i, r := range sg.Rules {
		r.Id = 0
		f := fmt.Sprintf("security_group.rules[%d]", i)
		if r.Direction != v1.Direction_INGRESS && r.Direction != v1.Direction_EGRESS {
			c.vs.add(f+".direction", "must be INGRESS or EGRESS")
		}
		ruleMatch{r.Protocol, r.PortRangeMin, r.PortRangeMax, r.IcmpType, r.IcmpCode}.check(&c.vs, f)
		switch {
		case r.RemoteCidr != "" && r.RemoteSecurityGroup != "":
			c.vs.add(f+".remote_cidr", "set remote_cidr or remote_security_group, not both")
		case r.RemoteCidr != "":
			checkRemoteCIDR(&c.vs, f+".remote_cidr", r.RemoteCidr)
		case r.RemoteSecurityGroup != "" && r.RemoteSecurityGroup != sg.Name && sg.Vpc != "":
			if _, _, err := sameVPC[*v1.SecurityGroup](c, resource.KindSecurityGroup, f+".remote_security_group", r.RemoteSecurityGroup, project, sg.Vpc); err != nil {
				return err
			}
		}
		for j := range i {
			if proto.Equal(sg.Rules[j], r) {
				c.vs.add(f, "duplicates rules[%d]", j)
				break
			}
		}
	}
	if !c.vs.empty() {
		return nil
	}
	if old == nil {
		if sg.Id, err = ipam.NextID(c.tx, "sg"); err != nil {
			return fmt.Errorf("security group ID: %w", err)
		}
	}
	return keepIDs(c, oldRules, sg.Rules, func(r *v1.SecurityGroupRule, id uint32) { r.Id = id })
}

func prepareNetworkAcl(c *txc, old, obj proto.Message) error {
	acl := obj.(*v1.NetworkAcl)
	project := resource.ProjectOf(acl.Name)
	acl.Subnets = nil
	var oldRules []*v1.NetworkAclRule
	if old != nil {
		o := old.(*v1.NetworkAcl)
		acl.Id, acl.Vpc, oldRules = o.Id, o.Vpc, o.Rules
	} else if err := checkVpcRef(c, "network_acl.vpc", acl.Vpc, project); err != nil {
		return err
	}
	q, err := c.s.quota(c.tx, project)
	if err != nil {
		return err
	}
	checkRuleCount(c, "network_acl.rules", len(acl.Rules), q.NetworkAclRules)
	type numKey struct {
		dir v1.Direction
		n   uint32
	}
	numbers := map[numKey]int{}
	for i, r := range acl.Rules {
		r.Id = 0
		f := fmt.Sprintf("network_acl.rules[%d]", i)
		if r.Number < 1 || r.Number > 32766 {
			c.vs.add(f+".number", "must be 1-32766, got %d", r.Number)
		}
		if j, dup := numbers[numKey{r.Direction, r.Number}]; dup {
			c.vs.add(f+".number", "rule number %d is used twice in direction %s (rules[%d])", r.Number, r.Direction, j)
		}
		numbers[numKey{r.Direction, r.Number}] = i
		if r.Action != v1.Action_ALLOW && r.Action != v1.Action_DENY {
			c.vs.add(f+".action", "must be ALLOW or DENY")
		}
		if r.Direction != v1.Direction_INGRESS && r.Direction != v1.Direction_EGRESS {
			c.vs.add(f+".direction", "must be INGRESS or EGRESS")
		}
		ruleMatch{r.Protocol, r.PortRangeMin, r.PortRangeMax, r.IcmpType, r.IcmpCode}.check(&c.vs, f)
		if r.Cidr != "" {
			checkRemoteCIDR(&c.vs, f+".cidr", r.Cidr)
		}
	}
	if !c.vs.empty() {
		return nil
	}
	if old == nil {
		if acl.Id, err = ipam.NextID(c.tx, "acl"); err != nil {
			return fmt.Errorf("network ACL ID: %w", err)
		}
	}
	return keepIDs(c, oldRules, acl.Rules, func(r *v1.NetworkAclRule, id uint32) { r.Id = id })
}

func decorateNetworkAcl(_ *Server, tx store.ReadTx, m proto.Message) error {
	acl := m.(*v1.NetworkAcl)
	kvs, err := tx.List(refPrefix+acl.Name+"|", "", 0)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		acl.Subnets = append(acl.Subnets, strings.TrimPrefix(kv.Key, refPrefix+acl.Name+"|"))
	}
	return nil
}

func checkVpcRef(c *txc, field, vpc, project string) error {
	switch {
	case vpc == "":
		c.vs.add(field, "is required")
	case resource.ProjectOf(vpc) != project:
		c.vs.add(field, "%s is not a VPC of %s", vpc, project)
	default:
		if _, _, err := resource.KindVpc.ParseName(vpc); err != nil {
			c.vs.add(field, "%v", err)
			return nil
		}
		if _, ok, err := c.tx.Get(resource.KindVpc.Key(vpc)); err != nil {
			return err
		} else if !ok {
			c.vs.add(field, "VPC %s does not exist", vpc)
		}
	}
	return nil
}

func prepareRouteTable(c *txc, old, obj proto.Message) error {
	rt := obj.(*v1.RouteTable)
	project := resource.ProjectOf(rt.Name)
	if old != nil {
		o := old.(*v1.RouteTable)
		rt.Id, rt.Vpc = o.Id, o.Vpc
	} else if err := checkVpcRef(c, "route_table.vpc", rt.Vpc, project); err != nil {
		return err
	}
	if !c.vs.empty() {
		return nil
	}
	m, _, _, err := load(c.tx, resource.KindVpc, rt.Vpc)
	if err != nil {
		return err
	}
	vpc := m.(*v1.Vpc)
	q, err := c.s.quota(c.tx, project)
	if err != nil {
		return err
	}
	if int32(len(rt.Routes)) > q.Routes {
		c.vs.add("route_table.routes", "%d routes exceed the project's quota of %d", len(rt.Routes), q.Routes)
	}
	seen := map[netip.Prefix]int{}
	for i, r := range rt.Routes {
		f := fmt.Sprintf("route_table.routes[%d]", i)
		d, ok := checkRemoteCIDR(&c.vs, f+".destination", r.Destination)
		if ok {
			if j, dup := seen[d]; dup {
				c.vs.add(f+".destination", "%s is also routes[%d]", d, j)
			}
			seen[d] = i
		}
		n := 0
		for _, set := range []bool{r.NextHopPort != "", r.NextHopIp != "", r.Blackhole} {
			if set {
				n++
			}
		}
		if n != 1 {
			c.vs.add(f, "exactly one of next_hop_port, next_hop_ip and blackhole must be set")
			continue
		}
		switch {
		case r.NextHopPort != "":
			if _, _, err := resource.KindPort.ParseName(r.NextHopPort); err != nil {
				c.vs.add(f+".next_hop_port", "%v", err)
				continue
			}
			pm, _, ok, err := load(c.tx, resource.KindPort, r.NextHopPort)
			if err != nil {
				return err
			}
			if !ok || resource.ProjectOf(r.NextHopPort) != project {
				c.vs.add(f+".next_hop_port", "port %s does not exist in %s", r.NextHopPort, project)
			} else if vpcOfSubnet(pm.(*v1.Port).Subnet) != rt.Vpc {
				c.vs.add(f+".next_hop_port", "port %s is not in VPC %s", r.NextHopPort, rt.Vpc)
			}
		case r.NextHopIp != "":
			a, ok := checkIP(&c.vs, f+".next_hop_ip", r.NextHopIp, netip.Prefix{})
			inside := false
			for _, b := range vpc.CidrBlocks {
				inside = inside || netip.MustParsePrefix(b).Contains(a)
			}
			if ok && !inside {
				c.vs.add(f+".next_hop_ip", "%s is not inside the VPC's blocks", a)
			}
		}
	}
	if old == nil && c.vs.empty() {
		if rt.Id, err = ipam.NextID(c.tx, "rt"); err != nil {
			return fmt.Errorf("route table ID: %w", err)
		}
	}
	return nil
}
