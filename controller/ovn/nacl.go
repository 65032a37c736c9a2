package ovn

import (
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
// Scope: from-lport rules apply to packets entering the switch from a
// Meridian port (egress of the subnet's ports), to-lport rules to packets
// leaving towards one (ingress); the router port is not in AllPortsGroup.
// (`outport != "router-port"` would read better but OVN 23.03 never
// matches it: the drops silently did nothing.)
//
// One known difference remains: OVN lets the replies of an established,
// allowed connection bypass all ACLs, where the eBPF path applies the
// stateless network ACL to every packet, replies included.
func (d *Desired) renderNetworkACL(ls *Row, s *agentv1.Subnet, a *agentv1.NetworkAcl) {
	own := owner("acl", a.GetId())
	base := own + "/subnet/" + itoa(s.GetId())
	for _, ingress := range []bool{false, true} {
		dir, scope, name := nbdb.ACLDirectionFromLport, "inport == @"+AllPortsGroup, "egress"
		if ingress {
			dir, scope, name = nbdb.ACLDirectionToLport, "outport == @"+AllPortsGroup, "ingress"
		}
		var allows []string // matches of the allow rules seen so far
		n := 0
		for _, r := range a.GetRules() {
			if r.GetIngress() != ingress {
				continue
			}
			m := ruleMatch(r)
			if r.GetAllow() {
				allows = append(allows, m)
				continue
			}
			if n >= maxNACLRules {
				break // the API caps rules far below this
			}
			id := base + "/rule/" + itoa(r.GetId())
			d.add(nbdb.ACLTable, id, own, "nacl-rule", &nbdb.ACL{
				Direction: dir, Action: nbdb.ACLActionDrop, Priority: PriorityNACLFirst - n,
				Match: scope + " && " + m + excluding(allows),
			})
			ls.Refs["acls"] = append(ls.Refs["acls"], id)
			n++
		}
		id := base + "/default-" + name
		d.add(nbdb.ACLTable, id, own, "nacl-default", &nbdb.ACL{
			Direction: dir, Action: nbdb.ACLActionDrop, Priority: PriorityNACLDefault,
			Match: scope + " && ip" + excluding(allows),
		})
		ls.Refs["acls"] = append(ls.Refs["acls"], id)
	}
}

// excluding is the match suffix that leaves out packets any of the allow
// matches accepts.
func excluding(allows []string) string {
	var b strings.Builder
	for _, m := range allows {
		b.WriteString(" && !(" + m + ")")
	}
	return b.String()
}
