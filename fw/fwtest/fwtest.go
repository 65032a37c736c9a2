// Package fwtest generates random rule sets and packets for the differential
// tests of fw (compiler against reference) and of the data path (BPF
// programs against the reference). Values come from small pools so that
// random rules and packets actually meet.
package fwtest

import (
	"math/rand/v2"
	"net/netip"

	"github.com/meridian-sdn/meridian/fw"
)

// Gen draws rules and packets from r. Addresses come from 10.0.0.0/22
// (plus a few outside it), which callers may use as a VPC's range.
type Gen struct {
	R *rand.Rand
	// NextID hands out rule ids; starts at 1.
	NextID uint32
	// Hosts, if set, are addresses of interest (say, a test topology's
	// ports): Addr returns one of them half of the time.
	Hosts []netip.Addr
}

// New returns a generator seeded with seed.
func New(seed uint64) *Gen {
	return &Gen{R: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), NextID: 1}
}

var protos = []uint8{fw.ProtoAny, fw.ProtoTCP, fw.ProtoTCP, fw.ProtoUDP, fw.ProtoICMP, 47}

var portPool = []uint16{22, 53, 80, 443, 1000, 1023, 1024, 8080, 65535}

// Addr returns a random IPv4 address from the pool.
func (g *Gen) Addr() netip.Addr {
	if len(g.Hosts) > 0 && g.R.IntN(2) == 0 {
		return g.Hosts[g.R.IntN(len(g.Hosts))]
	}
	if g.R.IntN(10) == 0 {
		return netip.AddrFrom4([4]byte{192, 168, byte(g.R.IntN(2)), byte(g.R.IntN(4))})
	}
	return netip.AddrFrom4([4]byte{10, 0, byte(g.R.IntN(4)), byte(g.R.IntN(16))})
}

// Prefix returns a random prefix around a pool address.
func (g *Gen) Prefix() netip.Prefix {
	bits := []int{0, 8, 16, 22, 24, 28, 30, 32}[g.R.IntN(8)]
	return netip.PrefixFrom(g.Addr(), bits).Masked()
}

func (g *Gen) ports() fw.PortRange {
	switch g.R.IntN(4) {
	case 0:
		return fw.PortRange{}
	case 1:
		p := portPool[g.R.IntN(len(portPool))]
		return fw.PortRange{From: p, To: p}
	default:
		a, b := portPool[g.R.IntN(len(portPool))], portPool[g.R.IntN(len(portPool))]
		if a > b {
			a, b = b, a
		}
		if a == 0 {
			a = 1
		}
		return fw.PortRange{From: a, To: b}
	}
}

func (g *Gen) l4() (uint8, fw.PortRange, *fw.ICMPMatch) {
	proto := protos[g.R.IntN(len(protos))]
	switch proto {
	case fw.ProtoTCP, fw.ProtoUDP:
		return proto, g.ports(), nil
	case fw.ProtoICMP:
		switch g.R.IntN(3) {
		case 0:
			return proto, fw.PortRange{}, nil
		case 1:
			return proto, fw.PortRange{}, &fw.ICMPMatch{Type: []uint8{0, 3, 8}[g.R.IntN(3)], AnyCode: true}
		default:
			return proto, fw.PortRange{}, &fw.ICMPMatch{Type: []uint8{0, 3, 8}[g.R.IntN(3)], Code: uint8(g.R.IntN(2))}
		}
	}
	return proto, fw.PortRange{}, nil
}

func (g *Gen) id() uint32 {
	id := g.NextID
	g.NextID++
	return id
}

// SGRule returns a random rule; remote groups are drawn from groups.
func (g *Gen) SGRule(groups []uint32) fw.SGRule {
	proto, ports, icmp := g.l4()
	r := fw.SGRule{ID: g.id(), Direction: fw.Direction(g.R.IntN(2)), Protocol: proto, Ports: ports, ICMP: icmp}
	if len(groups) > 0 && g.R.IntN(3) == 0 {
		r.RemoteGroup = groups[g.R.IntN(len(groups))]
	} else {
		r.RemoteCIDR = g.Prefix()
	}
	return r
}

// Policy returns a policy with n random rules.
func (g *Gen) Policy(id uint32, n int, groups []uint32) fw.SecurityGroupPolicy {
	p := fw.SecurityGroupPolicy{ID: id}
	for range n {
		p.Rules = append(p.Rules, g.SGRule(groups))
	}
	return p
}

// Groups returns members for the given groups.
func (g *Gen) Groups(ids []uint32) fw.GroupMembers {
	m := fw.GroupMembers{}
	for _, id := range ids {
		for range g.R.IntN(4) {
			m[id] = append(m[id], g.Addr())
		}
	}
	return m
}

// ACL returns an ACL with n random rules per direction (n <= fw.MaxACLRules).
func (g *Gen) ACL(id uint32, n int) fw.ACL {
	a := fw.ACL{ID: id}
	for _, d := range []fw.Direction{fw.Egress, fw.Ingress} {
		nums := g.R.Perm(4 * n)
		for i := range n {
			proto, ports, icmp := g.l4()
			a.Rules = append(a.Rules, fw.ACLRule{
				ID: g.id(), Number: uint32(nums[i] + 1), Direction: d,
				Action: fw.ACLAction(g.R.IntN(2)), Protocol: proto, Ports: ports, ICMP: icmp,
				CIDR: g.Prefix(),
			})
		}
	}
	return a
}

// Packet returns a random packet between src and dst.
func (g *Gen) Packet(src, dst netip.Addr) fw.Packet {
	p := fw.Packet{Src: src, Dst: dst}
	switch g.R.IntN(5) {
	case 0, 1:
		p.Protocol = fw.ProtoTCP
	case 2:
		p.Protocol = fw.ProtoUDP
	case 3:
		p.Protocol = fw.ProtoICMP
		p.ICMPType = []uint8{0, 3, 8, 11}[g.R.IntN(4)]
		p.ICMPCode = uint8(g.R.IntN(2))
	default:
		p.Protocol = 47
	}
	if p.Protocol == fw.ProtoTCP || p.Protocol == fw.ProtoUDP {
		p.SrcPort = uint16(1024 + g.R.IntN(60000))
		p.DstPort = portPool[g.R.IntN(len(portPool))]
		if g.R.IntN(4) == 0 {
			p.DstPort = uint16(g.R.IntN(65536))
		}
	}
	return p
}
