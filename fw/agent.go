package fw

import (
	"fmt"
	"net/netip"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// The conversions from the agent protocol's rules (the logical model the
// controller compiles) into this package's rule model. The eBPF agent
// installs what they return and the model trace (controller/trace)
// evaluates it, so both must read a rule the same way: IPv6 rules are
// left out (the eBPF data path is IPv4-only), "" is any address, ports
// 0..0 are all ports, ICMP type or code -1 is any. A rule that does not
// parse makes the whole group or ACL an error: the agent installs none of
// it.

func direction(ingress bool) Direction {
	if ingress {
		return Ingress
	}
	return Egress
}

func icmpMatch(proto uint32, typ, code int32) *ICMPMatch {
	if proto != uint32(ProtoICMP) || typ < 0 {
		return nil
	}
	return &ICMPMatch{Type: uint8(typ), AnyCode: code < 0, Code: uint8(max(code, 0))}
}

func portRange(r *agentv1.Rule) PortRange {
	return PortRange{From: uint16(r.GetPortMin()), To: uint16(r.GetPortMax())}
}

// ruleCIDR parses a rule's remote prefix; ok is false for IPv6.
func ruleCIDR(r *agentv1.Rule) (p netip.Prefix, ok bool, err error) {
	cidr := r.GetCidr()
	if cidr == "" {
		cidr = "0.0.0.0/0"
	}
	if p, err = netip.ParsePrefix(cidr); err != nil {
		return p, false, err
	}
	return p, p.Addr().Is4(), nil
}

// SGRulesOf converts a security group's rules.
func SGRulesOf(sg *agentv1.SecurityGroup) ([]SGRule, error) {
	var out []SGRule
	for _, r := range sg.GetRules() {
		if r.GetIpv6() {
			continue
		}
		fr := SGRule{
			ID: r.GetId(), Direction: direction(r.GetIngress()), Protocol: uint8(r.GetProtocol()),
			Ports: portRange(r), ICMP: icmpMatch(r.GetProtocol(), r.GetIcmpType(), r.GetIcmpCode()), RemoteGroup: r.GetRemoteGroupId(),
		}
		if r.GetRemoteGroupId() == 0 {
			p, v4, err := ruleCIDR(r)
			if err != nil {
				return nil, fmt.Errorf("security group %d rule %d: %w", sg.GetId(), r.GetId(), err)
			}
			if !v4 {
				continue
			}
			fr.RemoteCIDR = p
		}
		out = append(out, fr)
	}
	return out, nil
}

// ACLOf converts a network ACL.
func ACLOf(a *agentv1.NetworkAcl) (*ACL, error) {
	out := &ACL{ID: a.GetId()}
	for _, r := range a.GetRules() {
		if r.GetIpv6() {
			continue
		}
		p, v4, err := ruleCIDR(r)
		if err != nil {
			return nil, fmt.Errorf("network ACL %d rule %d: %w", a.GetId(), r.GetId(), err)
		}
		if !v4 {
			continue
		}
		action := Deny
		if r.GetAllow() {
			action = Allow
		}
		out.Rules = append(out.Rules, ACLRule{
			ID: r.GetId(), Number: r.GetNumber(), Direction: direction(r.GetIngress()), Action: action,
			Protocol: uint8(r.GetProtocol()), Ports: portRange(r), ICMP: icmpMatch(r.GetProtocol(), r.GetIcmpType(), r.GetIcmpCode()), CIDR: p,
		})
	}
	return out, nil
}
