// Package trace answers "why was my packet dropped?" without sending one:
// it walks a packet through Meridian's logical model stage by stage, in
// the order of the eBPF pipeline (bpf/c/meridian.c: anti-spoofing,
// conntrack, ACL egress, security-group egress, VPC route, gateway and
// NAT, tunnel, ACL ingress, security-group ingress, delivery), and names
// for each stage the object (by its API name) and the rule that decided.
//
// Rules are evaluated by fw's reference evaluator (fw.ACL.Evaluate,
// fw.SecurityGroupPolicy.Evaluate), the oracle the BPF programs are
// differentially tested against, so a trace and the data path decide with
// the same semantics. Where the two realizations (eBPF agents, OVN nodes)
// differ today, the trace follows the realization of the node that does
// the work and says so in a note.
//
// The package owns the walk and a service serving it from the controller's
// store (Service). It must not change the store, talk to agents or send
// packets: it is a pure function of the model.
package trace

import (
	"net/netip"
	"slices"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
)

// Model is the logical model prepared for tracing: the objects of
// agentv1.Index plus the lookups a trace needs (addresses to ports, group
// members, rules in fw's form). Build it with NewModel; it is immutable
// afterwards and safe for concurrent traces.
type Model struct {
	x *agentv1.Index

	portsByName map[string]*agentv1.Port
	// byAddr: {VPC, address} -> port holding it (bound or not).
	byAddr map[vpcAddr]*agentv1.Port
	// members: per VPC, remote group -> addresses of its ports.
	// Rules are converted to fw's form when a trace meets them, not here:
	// a trace meets a few groups, and the index is rebuilt on every change.
	members map[uint32]fw.GroupMembers

	eipByAddr  map[netip.Addr]*agentv1.ElasticIp
	eipByPriv  map[vpcAddr]*agentv1.ElasticIp // port-associated ones, by {VPC, private IP}
	ngwByAddr  map[netip.Addr]*agentv1.NatGateway
	ngws       []*agentv1.NatGateway
	gateways   []*agentv1.Gateway // sorted by node
	vpcPrefix  map[uint32][]netip.Prefix
	gatewaySet map[string]bool
	services   map[listener]*agentv1.LbService // load-balancer listeners (lb.go)
}

type vpcAddr struct {
	vpc  uint32
	addr netip.Addr
}

// Objects is the whole logical model (every compiled object by key), as
// controller/model's Model.Objects returns it.
type Objects = map[string]*agentv1.Object

// NewModel indexes objs for tracing.
func NewModel(objs Objects) *Model {
	x := agentv1.IndexObjects(objs)
	m := &Model{
		x:           x,
		portsByName: make(map[string]*agentv1.Port, len(x.Ports)),
		byAddr:      make(map[vpcAddr]*agentv1.Port, len(x.Ports)),
		members:     map[uint32]fw.GroupMembers{},
		eipByAddr:   map[netip.Addr]*agentv1.ElasticIp{},
		eipByPriv:   map[vpcAddr]*agentv1.ElasticIp{},
		ngwByAddr:   map[netip.Addr]*agentv1.NatGateway{},
		vpcPrefix:   map[uint32][]netip.Prefix{},
		gatewaySet:  map[string]bool{},
	}
	for _, p := range x.Ports {
		m.portsByName[p.GetName()] = p
		mem := m.members[p.GetVpcId()]
		if mem == nil {
			mem = fw.GroupMembers{}
			m.members[p.GetVpcId()] = mem
		}
		for _, a := range ipv4s(p.GetIps()) {
			m.byAddr[vpcAddr{p.GetVpcId(), a}] = p
			for _, g := range p.GetSecurityGroupIds() {
				mem[g] = append(mem[g], a)
			}
		}
	}
	for id, v := range x.VPCs {
		for _, c := range v.GetCidrs() {
			if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
				m.vpcPrefix[id] = append(m.vpcPrefix[id], p.Masked())
			}
		}
	}
	for _, o := range objs {
		switch b := o.GetBody().(type) {
		case *agentv1.Object_ElasticIp:
			e := b.ElasticIp
			if a, err := netip.ParseAddr(e.GetAddress()); err == nil {
				m.eipByAddr[a] = e
			}
			if e.GetPortId() != 0 && e.GetNatGatewayId() == 0 {
				if a, err := netip.ParseAddr(e.GetPrivateIp()); err == nil {
					m.eipByPriv[vpcAddr{e.GetVpcId(), a}] = e
				}
			}
		case *agentv1.Object_NatGateway:
			n := b.NatGateway
			m.ngws = append(m.ngws, n)
			for _, s := range n.GetAddresses() {
				if a, err := netip.ParseAddr(s); err == nil {
					m.ngwByAddr[a] = n
				}
			}
		case *agentv1.Object_Gateway:
			m.gateways = append(m.gateways, b.Gateway)
			m.gatewaySet[b.Gateway.GetNode()] = true
		case *agentv1.Object_LbService:
			m.addService(b.LbService)
		}
	}
	slices.SortFunc(m.gateways, func(a, b *agentv1.Gateway) int { return strings.Compare(a.GetNode(), b.GetNode()) })
	slices.SortFunc(m.ngws, func(a, b *agentv1.NatGateway) int { return int(a.GetId()) - int(b.GetId()) })
	return m
}

func ipv4s(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// Port returns the port named name ("projects/p/ports/x"), nil if unknown.
func (m *Model) Port(name string) *agentv1.Port { return m.portsByName[name] }
