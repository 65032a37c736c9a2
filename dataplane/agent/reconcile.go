package agent

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/fw"
)

// applied is what the agent has installed in the data path, so the next
// reconcile can remove what is no longer wanted. It is saved with the
// attachments so that a restarted agent can remove what disappeared while
// it was down.
type applied struct {
	Ports    map[uint32]bool   `json:"ports"`
	Subnets  map[uint32]bool   `json:"subnets"`
	ACLs     map[uint32]bool   `json:"acls"`
	Policies map[uint32]bool   `json:"policies"`
	VPCs     map[uint32]bool   `json:"vpcs"` // by data-path VPC key (the VNI)
	Routes   map[routeKey]bool `json:"-"`
	RouteL   []routeKey        `json:"routes"`
	Attached map[uint32]int    `json:"attached"` // port ID → ifindex with the program attached
	NAT      natApplied        `json:"nat"`      // elastic IPs, NAT gateways, egress (nat.go)
}

type routeKey struct {
	VPC    uint32       `json:"vpc"`
	Prefix netip.Prefix `json:"prefix"`
}

func newApplied() applied {
	return applied{Ports: map[uint32]bool{}, Subnets: map[uint32]bool{}, ACLs: map[uint32]bool{}, Policies: map[uint32]bool{},
		VPCs: map[uint32]bool{}, Routes: map[routeKey]bool{}, Attached: map[uint32]int{}}
}

// sortedKeys returns a map's keys in order, so reconciling is deterministic.
func sortedKeys[V any](m map[uint32]V) []uint32 {
	ks := make([]uint32, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}

// reconcile installs desired into the data path and removes what prev
// installed that is no longer desired. Order matters for hitless changes:
// policies and subnets before the ports that use them, routes last;
// removals after additions.
func (a *Agent) reconcile(desired map[string]*agentv1.Object, attach map[string]*attachment, prev applied) (applied, map[string]string) {
	v := agentv1.IndexObjects(desired)
	next := newApplied()
	errs := map[string]string{}
	fail := func(key string, err error) {
		errs[key] = err.Error()
		a.log.Warn("reconcile", "object", key, "err", err)
	}
	vni := func(vpc uint32) uint32 {
		if x, ok := v.VPCs[vpc]; ok {
			return x.Vni
		}
		return 0
	}

	// Network ACLs.
	for _, id := range sortedKeys(v.NetworkACLs) {
		key := fmt.Sprintf("acl/%d", id)
		acl, err := fw.ACLOf(v.NetworkACLs[id])
		if err == nil {
			var c *fw.CompiledACL
			if c, err = fw.CompileACL(acl); err == nil {
				err = a.dp.ApplyACL(c)
			}
		}
		if err != nil {
			fail(key, err)
			continue
		}
		next.ACLs[id] = true
	}

	// Subnets.
	for _, id := range sortedKeys(v.Subnets) {
		sn := v.Subnets[id]
		gw, err := netip.ParseAddr(sn.GatewayIp)
		if err == nil {
			err = a.dp.UpsertSubnet(datapath.Subnet{ID: id, Gateway: gw, RouterMAC: RouterMAC, ACL: sn.NetworkAclId})
		}
		if err != nil {
			fail(fmt.Sprintf("subnet/%d", id), err)
			continue
		}
		next.Subnets[id] = true
	}

	// Which local ports are plumbed: attachment with a host interface.
	ifindex := map[uint32]int{}
	for _, at := range attach {
		p, ok := v.Ports[at.PortID]
		if !ok || p.Node != a.cfg.Node {
			at.Ready, at.Error = false, "port is not bound to this node in the desired state"
			continue
		}
		l, err := netlink.LinkByName(at.HostIf)
		if err != nil {
			at.Ready, at.Error = false, fmt.Sprintf("host interface %s: %v", at.HostIf, err)
			continue
		}
		ifindex[at.PortID] = l.Attrs().Index
	}

	// Security-group policies, per VPC: ports with the same set of groups
	// share a policy; remote groups resolve to the addresses of their
	// members anywhere in the VPC.
	policyOf := map[uint32]uint32{} // port → policy
	taken := map[uint32]string{}
	type vpcPolicies struct {
		policies map[uint32]fw.SecurityGroupPolicy
		members  fw.GroupMembers
	}
	perVPC := map[uint32]*vpcPolicies{}
	for _, vpcID := range sortedKeys(v.VPCs) {
		perVPC[vni(vpcID)] = &vpcPolicies{policies: map[uint32]fw.SecurityGroupPolicy{}, members: fw.GroupMembers{}}
	}
	for _, pid := range sortedKeys(v.Ports) {
		p := v.Ports[pid]
		vp := perVPC[vni(p.VpcId)]
		if vp == nil {
			continue
		}
		for _, g := range p.SecurityGroupIds {
			vp.members[g] = append(vp.members[g], ipv4s(p.Ips)...)
		}
		if _, local := ifindex[pid]; !local || len(p.SecurityGroupIds) == 0 {
			continue
		}
		id := policyID(p.SecurityGroupIds, taken)
		policyOf[pid] = id
		if _, done := vp.policies[id]; done {
			continue
		}
		pol := fw.SecurityGroupPolicy{ID: id}
		for _, g := range p.SecurityGroupIds {
			sg, ok := v.SecurityGroups[g]
			if !ok {
				continue
			}
			rules, err := fw.SGRulesOf(sg)
			if err != nil {
				fail(fmt.Sprintf("sg/%d", g), err)
				continue
			}
			pol.Rules = append(pol.Rules, rules...)
		}
		vp.policies[id] = pol
	}
	for _, key := range sortedKeys(perVPC) {
		vp := perVPC[key]
		var pols []fw.SecurityGroupPolicy
		for _, id := range sortedKeys(vp.policies) {
			pols = append(pols, vp.policies[id])
		}
		c, err := fw.CompileSecurityGroups(key, pols, vp.members)
		if err == nil {
			err = a.dp.ApplySecurityGroups(c)
		}
		if err != nil {
			fail(fmt.Sprintf("vpc/%d", key), fmt.Errorf("security groups: %w", err))
			continue
		}
		next.VPCs[key] = true
		for id := range vp.policies {
			next.Policies[id] = true
		}
	}

	// Local ports, with their program attached.
	for _, pid := range sortedKeys(ifindex) {
		p := v.Ports[pid]
		key := fmt.Sprintf("port/%d", pid)
		mac, err := parseMAC(p.Mac)
		if err == nil {
			err = a.dp.UpsertPort(datapath.Port{ID: pid, Ifindex: ifindex[pid], MAC: mac, IPs: ipv4s(p.Ips),
				VPC: vni(p.VpcId), Subnet: p.SubnetId, SGPolicy: policyOf[pid]})
		}
		if err == nil && prev.Attached[pid] != ifindex[pid] {
			err = a.dp.Attach(datapath.HookPort, ifindex[pid])
		}
		if err != nil {
			fail(key, err)
			continue
		}
		next.Ports[pid] = true
		next.Attached[pid] = ifindex[pid]
	}
	if a.flowlogs != nil { // flow logs of the local ports (flowlog.go)
		a.flowlogs.apply(desired, v, next.Ports, fail)
	}
	for _, at := range attach {
		if next.Ports[at.PortID] {
			at.Ready, at.Error = true, ""
		} else if at.Error == "" {
			at.Error = errs[fmt.Sprintf("port/%d", at.PortID)]
		}
	}

	// Routes: a /32 per address of every bound port of the VPCs this node
	// serves, to the local port or to the node hosting it.
	for _, pid := range sortedKeys(v.Ports) {
		p := v.Ports[pid]
		if p.Node == "" || v.VPCs[p.VpcId] == nil {
			continue
		}
		r := datapath.Route{VPC: vni(p.VpcId), Subnet: p.SubnetId}
		if p.Node == a.cfg.Node {
			if !next.Ports[pid] {
				continue // bound here but not plumbed (yet): nothing to deliver to
			}
			r.LocalPort = pid
		} else {
			peer, ok := v.Peers[p.Node]
			if !ok {
				continue
			}
			ip, err := netip.ParseAddr(peer.UnderlayIp)
			if err != nil || !ip.Is4() {
				fail("node/"+p.Node, fmt.Errorf("underlay IP %q is not IPv4", peer.UnderlayIp))
				continue
			}
			r.RemoteNode = ip
		}
		for _, ip := range ipv4s(p.Ips) {
			r.Prefix = netip.PrefixFrom(ip, 32)
			if err := a.dp.UpsertRoute(r); err != nil {
				fail(fmt.Sprintf("port/%d", pid), err)
				continue
			}
			next.Routes[routeKey{VPC: r.VPC, Prefix: r.Prefix}] = true
		}
	}

	// The outside world: egress to gateways, and on a gateway the NAT
	// tables and the uplink program (nat.go). Before the route removals:
	// it adds the VPC CIDRs to next.Routes.
	a.reconcileOutside(desired, v, vni, prev.NAT, &next, fail)

	// Load-balancer listeners in the tc pipeline (lb.go).
	a.reconcileServices(desired, fail)

	// Removals: what prev had and next does not.
	for rk := range prev.Routes {
		if !next.Routes[rk] {
			if err := a.dp.DeleteRoute(rk.VPC, rk.Prefix); err != nil {
				fail("route/"+rk.Prefix.String(), err)
			}
		}
	}
	for pid := range prev.Ports {
		if !next.Ports[pid] {
			if err := a.dp.DeletePort(pid); err != nil {
				fail(fmt.Sprintf("port/%d", pid), err)
			}
		}
	}
	for pid, idx := range prev.Attached {
		if next.Attached[pid] != idx {
			// The interface is gone or replaced; detaching a missing link is harmless.
			a.dp.Detach(datapath.HookPort, idx)
		}
	}
	for id := range prev.Policies {
		if !next.Policies[id] {
			if err := a.dp.DeleteSecurityGroupPolicy(id); err != nil {
				fail(fmt.Sprintf("policy/%d", id), err)
			}
		}
	}
	for id := range prev.VPCs {
		if !next.VPCs[id] {
			if err := a.dp.DeleteSecurityGroupsOfVPC(id); err != nil {
				fail(fmt.Sprintf("vpc/%d", id), err)
			}
		}
	}
	for id := range prev.Subnets {
		if !next.Subnets[id] {
			if err := a.dp.DeleteSubnet(id); err != nil {
				fail(fmt.Sprintf("subnet/%d", id), err)
			}
		}
	}
	for id := range prev.ACLs {
		if !next.ACLs[id] {
			if err := a.dp.DeleteACL(id); err != nil {
				fail(fmt.Sprintf("acl/%d", id), err)
			}
		}
	}
	return next, errs
}
