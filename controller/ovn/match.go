package ovn

import (
	"strconv"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// IP protocol numbers the match language has names for.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoSCTP   = 132
	protoICMPv6 = 58
)

// l4Names are the OVN field prefixes of protocols with ports.
var l4Names = map[uint32]string{protoTCP: "tcp", protoUDP: "udp", protoSCTP: "sctp"}

// ruleMatch is the part of an ACL match that a rule's fields decide,
// without the port scope: family, remote side, protocol, ports, ICMP type.
// remote is the field of the remote address as seen from the port: the
// source for ingress rules, the destination for egress rules. Remote groups
// become address sets of the group's member IPs, one per family, so a
// membership change rewrites one Address_Set row, never the ACLs.
func ruleMatch(r *agentv1.Rule) string {
	fam := "ip4"
	if r.GetIpv6() {
		fam = "ip6"
	}
	terms := []string{fam}
	if a := remoteMatch(r, fam); a != "" {
		terms = append(terms, a)
	}
	terms = append(terms, protoMatch(r, fam)...)
	return strings.Join(terms, " && ")
}

// remoteMatch is the term of a rule's remote side ("" for any).
func remoteMatch(r *agentv1.Rule, fam string) string {
	side := ".dst"
	if r.GetIngress() {
		side = ".src"
	}
	switch {
	case r.GetRemoteGroupId() != 0:
		return fam + side + " == $" + AddressSetName(r.GetRemoteGroupId(), r.GetIpv6())
	case r.GetCidr() != "":
		return fam + side + " == " + r.GetCidr()
	}
	return ""
}

// portMatch is the terms of a rule's destination port range, without the
// protocol (nil for protocols without ports, or any port).
func portMatch(r *agentv1.Rule) []string {
	l4, ok := l4Names[r.GetProtocol()]
	if !ok {
		return nil
	}
	lo, hi := r.GetPortMin(), r.GetPortMax()
	switch {
	case lo == 0 && hi == 0:
		return nil
	case lo == hi:
		return []string{l4 + ".dst == " + u(lo)}
	default:
		return []string{l4 + ".dst >= " + u(lo), l4 + ".dst <= " + u(hi)}
	}
}

func protoMatch(r *agentv1.Rule, fam string) []string {
	p := r.GetProtocol()
	if p == 0 {
		return nil
	}
	if l4, ok := l4Names[p]; ok {
		lo, hi := r.GetPortMin(), r.GetPortMax()
		switch {
		case lo == 0 && hi == 0:
			return []string{l4}
		case lo == hi:
			return []string{l4, l4 + ".dst == " + u(lo)}
		default:
			return []string{l4, l4 + ".dst >= " + u(lo), l4 + ".dst <= " + u(hi)}
		}
	}
	icmp := ""
	switch {
	case p == protoICMP && fam == "ip4":
		icmp = "icmp4"
	case p == protoICMPv6 && fam == "ip6":
		icmp = "icmp6"
	}
	if icmp == "" {
		// ip.proto is the IPv4 protocol and the IPv6 next header alike.
		return []string{"ip.proto == " + u(p)}
	}
	out := []string{icmp}
	if r.GetIcmpType() >= 0 {
		out = append(out, icmp+".type == "+strconv.Itoa(int(r.GetIcmpType())))
		if r.GetIcmpCode() >= 0 {
			out = append(out, icmp+".code == "+strconv.Itoa(int(r.GetIcmpCode())))
		}
	}
	return out
}

func u(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
