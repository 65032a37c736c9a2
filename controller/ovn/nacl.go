package ovn

import (
	"slices"
	"strconv"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// renderNetworkACL renders a subnet's network ACL onto its switch.
//
// Meaning (as in the eBPF data path): for each direction, the rules are
// tried in number order and the first match decides; no match denies. A
// packet the ACL allows must still pass the security groups. Traffic
// leaving a port is checked against its subnet's egress rules, traffic
// delivered to a port against its subnet's ingress rules, also between two
// ports of the same subnet.
//
// OVN 23.03 has no ACL tiers and no "pass" action: an allow-stateless ACL
// would end ACL evaluation and skip the security groups. So the network ACL
// is rendered as drops only, each deny rule excluding what earlier allow
// rules accept, and a closing drop of everything no allow rule accepts.
// That is exactly "first match wins, default deny", and what passes falls
// through to the security-group band below. Priorities still follow the
// rule numbers (lower numbers higher) so the NB reads in evaluation order.
//
// The exclusions may negate only fields OpenFlow can mask: OVN cannot
// negate eth.type (behind ip4/ip6), ip.proto (behind tcp, udp, icmp4...),
// icmp4.type or icmp4.code, and an ACL holding such a negation matches
// nothing (the network ACL failed open that way). So the decision is split
// into protocol classes (see naclClasses): within a class every allow rule
// that overlaps it names the class's family, protocol, ICMP type and code
// or leaves them open, so excluding it takes "!(address && ports)" only,
// and the class itself is named positively ("tcp", "icmp4.type == 8", or
// an explicit set of the values no allow rule names). A deny rule, or the
// closing deny, becomes one drop per class it overlaps, or a single drop
// when every such class excludes the same allow rules; a class an earlier
// allow rule accepts whole (no address or port) needs no drop.
//
// Rows: with A allow and D deny rules in a direction, each family has at
// most 1+3A classes (an allow rule adds at most a protocol, an ICMP type
// and an ICMP code, each one class and its complement), and the direction
// at most (D+1) drops per class; a deny rule naming a protocol (and ICMP
// type and code) overlaps one class of its family. Without allow rules
// naming a protocol it stays one drop per deny rule and one closing drop
// per family.
//
// Scope: from-lport rules apply to packets entering the switch from a
// Meridian port (egress of the subnet's ports), to-lport rules to packets
// leaving towards one (ingress); the router port is not in AllPortsGroup.
// (`outport != "router-port"` would read better but OVN 23.03 never
// matches it: the drops silently did nothing.)
//
// One known difference remains: OVN lets the replies of an established,
// allowed connection bypass all ACLs, where the eBPF path applies the
// stateless network ACL to every packet, replies included.
//
// Rows are named by rule number ("acl:N:K", "acl:N:default") for flow
// logs, and logged as log says (see flowlog.go).
func (d *Desired) renderNetworkACL(ls *Row, s *agentv1.Subnet, a *agentv1.NetworkAcl, log aclLog) {
	own := owner("acl", a.GetId())
	base := own + "/subnet/" + itoa(s.GetId())
	for _, ingress := range []bool{false, true} {
		dir, scope, name := nbdb.ACLDirectionFromLport, "inport == @"+AllPortsGroup, "egress"
		if ingress {
			dir, scope, name = nbdb.ACLDirectionToLport, "outport == @"+AllPortsGroup, "ingress"
		}
		var rules []naclRule
		for _, r := range a.GetRules() {
			if r.GetIngress() == ingress {
				rules = append(rules, newNACLRule(r))
			}
		}
		classes := naclClasses(rules)
		add := func(id, kind string, prio int, match, logName string) {
			row := &nbdb.ACL{Direction: dir, Action: nbdb.ACLActionDrop, Priority: prio, Match: match}
			log.set(row, logName)
			d.add(nbdb.ACLTable, id, own, kind, row)
			ls.Refs["acls"] = append(ls.Refs["acls"], id)
		}
		n := 0
		for i, r := range rules {
			if r.allow {
				continue
			}
			if n >= maxNACLRules {
				break // the API caps rules far below this
			}
			id := base + "/rule/" + itoa(r.rule.GetId())
			prio := PriorityNACLFirst - n
			ruleName := NACLRuleLogName(a.GetId(), r.rule.GetNumber())
			n++
			var cs []naclClass
			for _, c := range classes[r.fam] {
				if c.overlaps(r) {
					cs = append(cs, c)
				}
			}
			if ex, ok := sameExclusion(rules[:i], cs); ok {
				if ex != nil {
					add(id, "nacl-rule", prio, scope+" && "+r.match+*ex, ruleName)
				}
				continue
			}
			for _, c := range cs {
				if ex, ok := c.exclusion(rules[:i]); ok {
					add(id+"/"+c.key(), "nacl-rule", prio, scope+" && "+join(r.match, c.terms(r))+ex, ruleName)
				}
			}
		}
		id := base + "/default-" + name
		if !slices.ContainsFunc(rules, func(r naclRule) bool { return r.allow }) {
			add(id, "nacl-default", PriorityNACLDefault, scope+" && ip", NACLDefaultLogName(a.GetId()))
			continue
		}
		for _, fam := range []string{"ip4", "ip6"} {
			wild := naclRule{fam: fam, proto: anyValue, typ: anyValue, code: anyValue}
			if ex, ok := sameExclusion(rules, classes[fam]); ok {
				if ex != nil {
					add(id+"/"+fam, "nacl-default", PriorityNACLDefault, scope+" && "+fam+*ex, NACLDefaultLogName(a.GetId()))
				}
				continue
			}
			for _, c := range classes[fam] {
				if ex, ok := c.exclusion(rules); ok {
					add(id+"/"+fam+"/"+c.key(), "nacl-default", PriorityNACLDefault, scope+" && "+join(fam, c.terms(wild))+ex, NACLDefaultLogName(a.GetId()))
				}
			}
		}
	}
}

// Values of a naclRule's or naclClass's protocol, ICMP type and ICMP code
// besides a number: any value (the rule names none, or the class is not
// split by it), and in a class every value no allow rule names.
const (
	anyValue  = -1
	restValue = -2
)

// naclRule is one network-ACL rule with the parts of its match that OVN
// cannot negate taken apart: family, protocol, ICMP type and code.
type naclRule struct {
	rule             *agentv1.Rule
	allow            bool
	match            string   // the whole match (ruleMatch)
	fam              string   // ip4 or ip6
	proto, typ, code int      // anyValue when not named
	neg              []string // the negatable terms: remote address, ports
}

func newNACLRule(r *agentv1.Rule) naclRule {
	fam := "ip4"
	if r.GetIpv6() {
		fam = "ip6"
	}
	n := naclRule{rule: r, allow: r.GetAllow(), match: ruleMatch(r), fam: fam, proto: anyValue, typ: anyValue, code: anyValue}
	if a := remoteMatch(r, fam); a != "" {
		n.neg = append(n.neg, a)
	}
	n.neg = append(n.neg, portMatch(r)...)
	if p := r.GetProtocol(); p != 0 {
		n.proto = int(p)
		if icmpName(p, fam) != "" && r.GetIcmpType() >= 0 {
			n.typ = int(r.GetIcmpType())
			if r.GetIcmpCode() >= 0 {
				n.code = int(r.GetIcmpCode())
			}
		}
	}
	return n
}

// icmpName is the match-language name of protocol p in family fam when it
// is that family's ICMP ("" otherwise).
func icmpName(p uint32, fam string) string {
	switch {
	case p == protoICMP && fam == "ip4":
		return "icmp4"
	case p == protoICMPv6 && fam == "ip6":
		return "icmp6"
	}
	return ""
}

// naclClass is one part of a family's packets that the allow rules of a
// direction treat alike in protocol, ICMP type and code: each allow rule
// either leaves out all of the class or takes in the whole class save for
// addresses and ports. names holds, per split dimension, the values the
// allow rules name (the complement of what restValue stands for).
type naclClass struct {
	fam              string
	proto, typ, code int
	protos           []int // protocols the allow rules name, when split by protocol
	types, codes     []int // likewise ICMP types (of proto) and codes (of proto and typ)
}

// naclClasses splits each family's packets by the protocols, ICMP types and
// ICMP codes the allow rules name, each value one class and the values no
// allow rule names one more.
func naclClasses(rules []naclRule) map[string][]naclClass {
	out := map[string][]naclClass{}
	for _, fam := range []string{"ip4", "ip6"} {
		var allows []naclRule
		for _, r := range rules {
			if r.allow && r.fam == fam {
				allows = append(allows, r)
			}
		}
		named := func(keep func(naclRule) bool, val func(naclRule) int) []int {
			var v []int
			for _, r := range allows {
				if keep(r) && val(r) >= 0 && !slices.Contains(v, val(r)) {
					v = append(v, val(r))
				}
			}
			slices.Sort(v)
			return v
		}
		protos := named(func(naclRule) bool { return true }, func(r naclRule) int { return r.proto })
		if len(protos) == 0 {
			out[fam] = []naclClass{{fam: fam, proto: anyValue, typ: anyValue, code: anyValue}}
			continue
		}
		var cs []naclClass
		for _, p := range append(slices.Clone(protos), restValue) {
			c := naclClass{fam: fam, proto: p, typ: anyValue, code: anyValue, protos: protos}
			types := named(func(r naclRule) bool { return r.proto == p }, func(r naclRule) int { return r.typ })
			if p < 0 || len(types) == 0 {
				cs = append(cs, c)
				continue
			}
			c.types = types
			for _, t := range append(slices.Clone(types), restValue) {
				c.typ = t
				codes := named(func(r naclRule) bool { return r.proto == p && r.typ == t }, func(r naclRule) int { return r.code })
				if t < 0 || len(codes) == 0 {
					c.code, c.codes = anyValue, nil
					cs = append(cs, c)
					continue
				}
				c.codes = codes
				for _, k := range append(slices.Clone(codes), restValue) {
					c.code = k
					cs = append(cs, c)
				}
			}
		}
		out[fam] = cs
	}
	return out
}

// dimOverlaps reports whether a rule's value v in one dimension overlaps a
// class's value c there; names are the values restValue leaves out.
func dimOverlaps(v, c int, names []int) bool {
	switch {
	case v == anyValue || c == anyValue:
		return true
	case c == restValue:
		return !slices.Contains(names, v)
	}
	return v == c
}

// overlaps reports whether rule r matches some packet of the class.
func (c naclClass) overlaps(r naclRule) bool {
	return r.fam == c.fam && dimOverlaps(r.proto, c.proto, c.protos) &&
		(c.typ == anyValue || r.proto == anyValue || r.proto == c.proto && dimOverlaps(r.typ, c.typ, c.types)) &&
		(c.code == anyValue || r.proto == anyValue || r.typ == anyValue || r.typ == c.typ && dimOverlaps(r.code, c.code, c.codes))
}

// terms is what restricts rule r to the class: the class's value in each
// dimension r leaves open.
func (c naclClass) terms(r naclRule) []string {
	var t []string
	if c.proto != anyValue && r.proto == anyValue {
		switch {
		case c.proto == restValue:
			t = append(t, "ip.proto == "+complement(c.protos))
		case l4Names[uint32(c.proto)] != "":
			t = append(t, l4Names[uint32(c.proto)])
		case icmpName(uint32(c.proto), c.fam) != "":
			t = append(t, icmpName(uint32(c.proto), c.fam))
		default:
			t = append(t, "ip.proto == "+strconv.Itoa(c.proto))
		}
	}
	icmp := icmpName(uint32(max(c.proto, 0)), c.fam)
	if c.typ != anyValue && r.typ == anyValue {
		if c.typ == restValue {
			t = append(t, icmp+".type == "+complement(c.types))
		} else {
			t = append(t, icmp+".type == "+strconv.Itoa(c.typ))
		}
	}
	if c.code != anyValue && r.code == anyValue {
		if c.code == restValue {
			t = append(t, icmp+".code == "+complement(c.codes))
		} else {
			t = append(t, icmp+".code == "+strconv.Itoa(c.code))
		}
	}
	return t
}

// key names the class in row IDs.
func (c naclClass) key() string {
	v := func(p string, x int) string {
		if x == restValue {
			return p + "rest"
		}
		return p + strconv.Itoa(x)
	}
	k := v("p", c.proto)
	if c.typ != anyValue {
		k += "." + v("t", c.typ)
	}
	if c.code != anyValue {
		k += "." + v("c", c.code)
	}
	return k
}

// exclusion is the match suffix that leaves out of the class what the
// allow rules among earlier accept, and false when they accept the whole
// class (nothing is left to drop).
func (c naclClass) exclusion(earlier []naclRule) (string, bool) {
	var b strings.Builder
	for _, r := range earlier {
		if !r.allow || !c.overlaps(r) {
			continue
		}
		if len(r.neg) == 0 {
			return "", false
		}
		b.WriteString(" && !(" + strings.Join(r.neg, " && ") + ")")
	}
	return b.String(), true
}

// sameExclusion reports whether the classes all exclude the same allow
// rules among earlier (then one drop serves them all). The exclusion is nil
// when those rules accept every class whole, or there are no classes.
func sameExclusion(earlier []naclRule, cs []naclClass) (*string, bool) {
	var first *string
	for i, c := range cs {
		ex, ok := c.exclusion(earlier)
		var p *string
		if ok {
			p = &ex
		}
		if i == 0 {
			first = p
			continue
		}
		if (p == nil) != (first == nil) || p != nil && *p != *first {
			return nil, false
		}
	}
	return first, true
}

// complement is the set of the values 0-255 not in names, in the match
// language.
func complement(names []int) string {
	var v []string
	for x := range 256 {
		if !slices.Contains(names, x) {
			v = append(v, strconv.Itoa(x))
		}
	}
	return "{" + strings.Join(v, ", ") + "}"
}

// join is m followed by the terms, joined by "&&".
func join(m string, terms []string) string {
	return strings.Join(append([]string{m}, terms...), " && ")
}
