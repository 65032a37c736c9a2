package ovn

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// except is the set of the values 0-255 but the given ones, as the renderer
// names a class of values no allow rule names.
func except(v ...int) string {
	var s []string
	for x := range 256 {
		if !slices.Contains(v, x) {
			s = append(s, strconv.Itoa(x))
		}
	}
	return "{" + strings.Join(s, ", ") + "}"
}

// TestNetworkACLSplitsByProtocol pins every network-ACL row of an ACL whose
// allow rules name protocols, an ICMP type and an ICMP code: no drop
// negates a protocol, ICMP type or code (OVN cannot, and such a drop never
// matches); each is split into classes named positively and negates only
// addresses and ports.
func TestNetworkACLSplitsByProtocol(t *testing.T) {
	rule := func(id, num uint32, allow, ingress bool, proto uint32, typ, code int32, cidr string) *agentv1.Rule {
		r := &agentv1.Rule{Id: id, Number: num, Allow: allow, Ingress: ingress, Protocol: proto, IcmpType: typ, IcmpCode: code, Cidr: cidr}
		if proto == 6 {
			r.PortMin, r.PortMax = 22, 22
		}
		return r
	}
	d := Render(objects(&agentv1.Vpc{Id: 1}, &agentv1.Subnet{Id: 11, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", NetworkAclId: 32},
		&agentv1.NetworkAcl{Id: 32, VpcId: 1, Rules: []*agentv1.Rule{
			rule(1, 10, true, false, 6, -1, -1, "10.0.0.0/8"),
			rule(2, 20, true, false, 1, 8, -1, ""),
			rule(3, 30, false, false, 0, -1, -1, "10.0.2.0/24"),
			rule(4, 40, true, false, 0, -1, -1, "10.0.0.0/16"),
			rule(5, 50, false, false, 17, -1, -1, ""),
			rule(6, 10, true, true, 1, 3, 4, "10.0.0.0/8"),
			rule(7, 20, false, true, 1, -1, -1, ""),
			rule(8, 30, true, true, 47, -1, -1, ""),
		}}))
	const (
		from, to = "from-lport", "to-lport"
		out, in  = "inport == @mer_ports && ", "outport == @mer_ports && "
		first    = PriorityNACLFirst
		last     = PriorityNACLDefault
	)
	want := map[string]nbdb.ACL{
		"rule/3/p1.trest": {Direction: from, Priority: first, Match: out + "ip4 && ip4.dst == 10.0.2.0/24 && icmp4 && icmp4.type == " + except(8)},
		"rule/3/p6":       {Direction: from, Priority: first, Match: out + "ip4 && ip4.dst == 10.0.2.0/24 && tcp && !(ip4.dst == 10.0.0.0/8 && tcp.dst == 22)"},
		"rule/3/prest":    {Direction: from, Priority: first, Match: out + "ip4 && ip4.dst == 10.0.2.0/24 && ip.proto == " + except(1, 6)},
		"rule/5":          {Direction: from, Priority: first - 1, Match: out + "ip4 && udp && !(ip4.dst == 10.0.0.0/16)"},
		"default-egress/ip4/p1.trest": {Direction: from, Priority: last,
			Match: out + "ip4 && icmp4 && icmp4.type == " + except(8) + " && !(ip4.dst == 10.0.0.0/16)"},
		"default-egress/ip4/p6": {Direction: from, Priority: last,
			Match: out + "ip4 && tcp && !(ip4.dst == 10.0.0.0/8 && tcp.dst == 22) && !(ip4.dst == 10.0.0.0/16)"},
		"default-egress/ip4/prest": {Direction: from, Priority: last, Match: out + "ip4 && ip.proto == " + except(1, 6) + " && !(ip4.dst == 10.0.0.0/16)"},
		"default-egress/ip6":       {Direction: from, Priority: last, Match: out + "ip6"},

		"rule/7/p1.t3.c4":    {Direction: to, Priority: first, Match: in + "ip4 && icmp4 && icmp4.type == 3 && icmp4.code == 4 && !(ip4.src == 10.0.0.0/8)"},
		"rule/7/p1.t3.crest": {Direction: to, Priority: first, Match: in + "ip4 && icmp4 && icmp4.type == 3 && icmp4.code == " + except(4)},
		"rule/7/p1.trest":    {Direction: to, Priority: first, Match: in + "ip4 && icmp4 && icmp4.type == " + except(3)},
		"default-ingress/ip4/p1.t3.c4": {Direction: to, Priority: last,
			Match: in + "ip4 && icmp4 && icmp4.type == 3 && icmp4.code == 4 && !(ip4.src == 10.0.0.0/8)"},
		"default-ingress/ip4/p1.t3.crest": {Direction: to, Priority: last, Match: in + "ip4 && icmp4 && icmp4.type == 3 && icmp4.code == " + except(4)},
		"default-ingress/ip4/p1.trest":    {Direction: to, Priority: last, Match: in + "ip4 && icmp4 && icmp4.type == " + except(3)},
		"default-ingress/ip4/prest":       {Direction: to, Priority: last, Match: in + "ip4 && ip.proto == " + except(1, 47)},
		"default-ingress/ip6":             {Direction: to, Priority: last, Match: in + "ip6"},
	}
	got := map[string]*Row{}
	for _, r := range d.Rows(nbdb.ACLTable) {
		if id, ok := strings.CutPrefix(r.ID, "acl/32/subnet/11/"); ok {
			got[id] = r
		}
	}
	for id, w := range want {
		r := got[id]
		if r == nil {
			t.Errorf("no row %s", id)
			continue
		}
		kind := "nacl-rule"
		if strings.HasPrefix(id, "default") {
			kind = "nacl-default"
		}
		w.Action, w.ExternalIDs = nbdb.ACLActionDrop, ext("acl/32/subnet/11/"+id, "acl/32", kind)
		if cols := specByName[nbdb.ACLTable].changed(&w, r.Model); len(cols) > 0 {
			t.Errorf("%s: columns %v differ:\n got %+v\nwant %+v", id, cols, r.Model, &w)
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			t.Errorf("unexpected row %s: %+v", id, got[id].Model)
		}
	}
	// The switch lists them in direction and evaluation order.
	var refs []string
	for _, id := range d.Row(nbdb.LogicalSwitchTable, "subnet/11").Refs["acls"] {
		refs = append(refs, strings.TrimPrefix(id, "acl/32/subnet/11/"))
	}
	wantRefs := []string{"rule/3/p1.trest", "rule/3/p6", "rule/3/prest", "rule/5",
		"default-egress/ip4/p1.trest", "default-egress/ip4/p6", "default-egress/ip4/prest", "default-egress/ip6",
		"rule/7/p1.t3.c4", "rule/7/p1.t3.crest", "rule/7/p1.trest",
		"default-ingress/ip4/p1.t3.c4", "default-ingress/ip4/p1.t3.crest", "default-ingress/ip4/p1.trest", "default-ingress/ip4/prest", "default-ingress/ip6"}
	if !slices.Equal(refs, wantRefs) {
		t.Errorf("switch acls = %v\nwant %v", refs, wantRefs)
	}
}
