package apiserver

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Protocol numbers the API accepts by name. "all" is 0, as in the agent
// protocol, where 0 means "any protocol".
var protocolNames = map[string]uint32{"all": 0, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}

// ParseProtocol turns an API protocol string into a protocol number (0: all).
func ParseProtocol(s string) (uint32, error) {
	if s == "" {
		return 0, nil
	}
	if n, ok := protocolNames[strings.ToLower(s)]; ok {
		return n, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("%q is not a protocol: use all, tcp, udp, icmp, icmpv6, sctp or a number 0-255", s)
	}
	return uint32(n), nil
}

func hasPorts(proto uint32) bool { return proto == 6 || proto == 17 || proto == 132 }
func isICMP(proto uint32) bool   { return proto == 1 || proto == 58 }

// checkCIDR parses a canonical prefix (host bits zero) of the wanted family
// with a length inside [minLen, maxLen].
func checkCIDR(vs *violations, field, s string, v4 bool, minLen, maxLen int) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		vs.add(field, "%q is not a CIDR block (like 10.0.0.0/16)", s)
		return p, false
	}
	if p.Addr().Is4() != v4 || p.Addr().Is4In6() {
		fam := "IPv6"
		if v4 {
			fam = "IPv4"
		}
		vs.add(field, "%s must be an %s block", s, fam)
		return p, false
	}
	if p.Masked() != p {
		vs.add(field, "%s has host bits set: did you mean %s?", s, p.Masked())
		return p, false
	}
	if p.Bits() < minLen || p.Bits() > maxLen {
		vs.add(field, "%s: prefix length must be between /%d and /%d", s, minLen, maxLen)
		return p, false
	}
	return p, true
}

// checkRemoteCIDR parses a rule's remote prefix: either family, any length, canonical.
func checkRemoteCIDR(vs *violations, field, s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		vs.add(field, "%q is not a CIDR block (like 10.0.0.0/8 or 0.0.0.0/0)", s)
		return p, false
	}
	if p.Masked() != p {
		vs.add(field, "%s has host bits set: did you mean %s?", s, p.Masked())
		return p, false
	}
	return p, true
}

// ruleMatch is the part of security-group and network-ACL rules that
// matches packets; both kinds validate it the same way.
type ruleMatch struct {
	protocol         string
	portMin, portMax uint32
	icmpType         *int32
	icmpCode         *int32
}

func (m ruleMatch) check(vs *violations, field string) uint32 {
	proto, err := ParseProtocol(m.protocol)
	if err != nil {
		vs.add(field+".protocol", "%v", err)
		return 0
	}
	switch {
	case m.portMin == 0 && m.portMax == 0:
	case !hasPorts(proto):
		vs.add(field+".port_range_min", "ports apply to tcp, udp and sctp only, not protocol %q", m.protocol)
	case m.portMin < 1 || m.portMin > 65535 || m.portMax < 1 || m.portMax > 65535:
		vs.add(field+".port_range_min", "ports must be 1-65535 (both 0 means all ports), got %d-%d", m.portMin, m.portMax)
	case m.portMin > m.portMax:
		vs.add(field+".port_range_max", "port_range_max %d is below port_range_min %d", m.portMax, m.portMin)
	}
	if m.icmpType != nil || m.icmpCode != nil {
		switch {
		case !isICMP(proto):
			vs.add(field+".icmp_type", "ICMP type and code apply to icmp and icmpv6 only")
		case m.icmpType == nil:
			vs.add(field+".icmp_code", "icmp_code needs icmp_type")
		case *m.icmpType < 0 || *m.icmpType > 255:
			vs.add(field+".icmp_type", "ICMP type must be 0-255, got %d", *m.icmpType)
		case m.icmpCode != nil && (*m.icmpCode < 0 || *m.icmpCode > 255):
			vs.add(field+".icmp_code", "ICMP code must be 0-255, got %d", *m.icmpCode)
		}
	}
	return proto
}

// checkIP parses an address that must be inside prefix.
func checkIP(vs *violations, field, s string, in netip.Prefix) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		vs.add(field, "%q is not an IP address", s)
		return a, false
	}
	if in.IsValid() && !in.Contains(a) {
		vs.add(field, "%s is outside %s", s, in)
		return a, false
	}
	return a, true
}

func overlaps(a, b netip.Prefix) bool { return a.Overlaps(b) }

// lastAddr returns the last address of an IPv4 prefix (its broadcast).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
