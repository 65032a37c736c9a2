package agent

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
)

// This file turns the logical model the controller sends into the inputs of
// package fw. It is pure: no kernel, no I/O, so it is tested on its own.

func direction(ingress bool) fw.Direction {
	if ingress {
		return fw.Ingress
	}
	return fw.Egress
}

func icmpMatch(proto uint32, typ, code int32) *fw.ICMPMatch {
	if proto != uint32(fw.ProtoICMP) || typ < 0 {
		return nil
	}
	return &fw.ICMPMatch{Type: uint8(typ), AnyCode: code < 0, Code: uint8(max(code, 0))}
}

func ports(r *agentv1.Rule) fw.PortRange {
	return fw.PortRange{From: uint16(r.PortMin), To: uint16(r.PortMax)}
}

// sgRules converts a security group's rules. IPv6 rules are skipped: the
// eBPF data path is IPv4-only for now.
func sgRules(sg *agentv1.SecurityGroup) ([]fw.SGRule, error) {
	var out []fw.SGRule
	for _, r := range sg.Rules {
		if r.Ipv6 {
			continue
		}
		fr := fw.SGRule{
			ID: r.Id, Direction: direction(r.Ingress), Protocol: uint8(r.Protocol),
			Ports: ports(r), ICMP: icmpMatch(r.Protocol, r.IcmpType, r.IcmpCode), RemoteGroup: r.RemoteGroupId,
		}
		if r.RemoteGroupId == 0 {
			cidr := r.Cidr
			if cidr == "" {
				cidr = "0.0.0.0/0"
			}
			p, err := netip.ParsePrefix(cidr)
			if err != nil {
				return nil, fmt.Errorf("security group %d rule %d: %w", sg.Id, r.Id, err)
			}
			if !p.Addr().Is4() {
				continue
			}
			fr.RemoteCIDR = p
		}
		out = append(out, fr)
	}
	return out, nil
}

// aclOf converts a network ACL.
func aclOf(a *agentv1.NetworkAcl) (*fw.ACL, error) {
	out := &fw.ACL{ID: a.Id}
	for _, r := range a.Rules {
		if r.Ipv6 {
			continue
		}
		cidr := r.Cidr
		if cidr == "" {
			cidr = "0.0.0.0/0"
		}
		p, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("network ACL %d rule %d: %w", a.Id, r.Id, err)
		}
		if !p.Addr().Is4() {
			continue
		}
		action := fw.Deny
		if r.Allow {
			action = fw.Allow
		}
		out.Rules = append(out.Rules, fw.ACLRule{
			ID: r.Id, Number: r.Number, Direction: direction(r.Ingress), Action: action,
			Protocol: uint8(r.Protocol), Ports: ports(r), ICMP: icmpMatch(r.Protocol, r.IcmpType, r.IcmpCode), CIDR: p,
		})
	}
	return out, nil
}

// policyID names the security-group policy of a set of groups. Ports with
// the same groups share it. It is a hash of the sorted set, so it is the
// same after an agent restart without any saved state; taken records
// collisions, resolved by probing in a deterministic order.
func policyID(groups []uint32, taken map[uint32]string) uint32 {
	g := slices.Clone(groups)
	slices.Sort(g)
	key := fmt.Sprint(g)
	h := fnv.New32a()
	h.Write([]byte(key))
	id := h.Sum32()
	for {
		if id == 0 {
			id = 1
		}
		if owner, ok := taken[id]; !ok || owner == key {
			taken[id] = key
			return id
		}
		id++
	}
}

// ipv4s parses a port's addresses, keeping the IPv4 ones.
func ipv4s(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}
