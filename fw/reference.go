package fw

import (
	"net/netip"
	"slices"
)

// The reference model: rule walks with no precomputation. It is the oracle
// for the compiler and for the BPF programs, so keep it literal.

// remote is the address a rule's remote matches: the destination of egress
// traffic, the source of ingress traffic.
func (p Packet) remote(d Direction) netip.Addr {
	if d == Egress {
		return p.Dst
	}
	return p.Src
}

func matchL4(proto uint8, ports PortRange, icmp *ICMPMatch, p Packet) bool {
	if proto == ProtoAny {
		return true
	}
	if proto != p.Protocol {
		return false
	}
	switch proto {
	case ProtoTCP, ProtoUDP:
		return ports.contains(p.DstPort)
	case ProtoICMP:
		if icmp == nil {
			return true
		}
		return icmp.Type == p.ICMPType && (icmp.AnyCode || icmp.Code == p.ICMPCode)
	}
	return true
}

// Matches reports whether the rule matches packet p travelling in the rule's
// direction.
func (r *SGRule) Matches(p Packet, groups GroupMembers) bool {
	if !matchL4(r.Protocol, r.Ports, r.ICMP, p) {
		return false
	}
	remote := p.remote(r.Direction)
	if r.RemoteGroup != 0 {
		return slices.Contains(groups[r.RemoteGroup], remote)
	}
	return r.RemoteCIDR.Contains(remote)
}

// Evaluate decides whether the policy allows p in direction d. It returns
// the id of the first rule (in slice order) that allows it; security groups
// have no deny rules, so "no rule" means deny.
func (sp *SecurityGroupPolicy) Evaluate(d Direction, p Packet, groups GroupMembers) (allowed bool, ruleID uint32) {
	for i := range sp.Rules {
		r := &sp.Rules[i]
		if r.Direction == d && r.Matches(p, groups) {
			return true, r.ID
		}
	}
	return false, 0
}

// Matches reports whether the rule matches packet p travelling in the rule's
// direction.
func (r *ACLRule) Matches(p Packet) bool {
	return matchL4(r.Protocol, r.Ports, r.ICMP, p) && r.CIDR.Contains(p.remote(r.Direction))
}

// Evaluate walks the rules of direction d in number order; the first match
// decides. No match: deny with rule id 0. A nil ACL allows everything (a
// subnet without an ACL).
func (a *ACL) Evaluate(d Direction, p Packet) (allowed bool, ruleID uint32) {
	if a == nil {
		return true, 0
	}
	rules := a.sorted(d)
	for _, r := range rules {
		if r.Matches(p) {
			return r.Action == Allow, r.ID
		}
	}
	return false, 0
}

// sorted returns the rules of direction d in evaluation order.
func (a *ACL) sorted(d Direction) []ACLRule {
	var out []ACLRule
	for _, r := range a.Rules {
		if r.Direction == d {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(x, y ACLRule) int {
		switch {
		case x.Number < y.Number:
			return -1
		case x.Number > y.Number:
			return 1
		}
		return 0
	})
	return out
}
