package ovn

import (
	"slices"
	"strings"
	"testing"

	"github.com/ovn-kubernetes/libovsdb/model"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

func ext(id, owner, kind string) map[string]string {
	return map[string]string{KeyID: id, KeyOwner: owner, KeyKind: kind}
}

// TestRenderGivesExactRowsForEachIntent pins the mapping row by row: the
// managed columns, the external_ids naming the owner, and the references.
func TestRenderGivesExactRowsForEachIntent(t *testing.T) {
	d := Render(fixture())
	cases := []struct {
		name  string
		table string
		want  model.Model
		refs  map[string][]string
	}{
		{"vpc becomes a router holding its subnets' ports and its routes", nbdb.LogicalRouterTable,
			&nbdb.LogicalRouter{Name: "mer-vpc-1", ExternalIDs: ext("vpc/1", "vpc/1", "router")},
			map[string][]string{
				"ports":         {"subnet/11/router-port", "subnet/12/router-port"},
				"static_routes": {"rt/41/route/0.0.0.0/0>10.0.2.10", "rt/41/route/192.168.0.0/16>discard"},
			}},
		{"subnet becomes a switch with its router port, ports and network ACL", nbdb.LogicalSwitchTable,
			&nbdb.LogicalSwitch{Name: "mer-subnet-11", ExternalIDs: ext("subnet/11", "subnet/11", "switch")},
			map[string][]string{
				"ports": {"subnet/11/switch-router-port", "port/101", "port/102"},
				"acls": {"acl/31/subnet/11/rule/8", "acl/31/subnet/11/default-egress/ip4", "acl/31/subnet/11/default-egress/ip6",
					"acl/31/subnet/11/rule/5", "acl/31/subnet/11/default-ingress/ip6"},
			}},
		{"subnet gets a router port at its gateway, bound to its route table", nbdb.LogicalRouterPortTable,
			&nbdb.LogicalRouterPort{Name: "mer-lrp-11", MAC: "02:4d:00:00:00:0b", Networks: []string{"10.0.1.1/24"},
				Options: map[string]string{"route_table": "mer-rt-41"}, ExternalIDs: ext("subnet/11/router-port", "subnet/11", "router-port")},
			nil},
		{"subnet switch peers with the router", nbdb.LogicalSwitchPortTable,
			&nbdb.LogicalSwitchPort{Name: "mer-rtr-11", Type: "router", Addresses: []string{"router"},
				Options: map[string]string{"router-port": "mer-lrp-11"}, ExternalIDs: ext("subnet/11/switch-router-port", "subnet/11", "switch-router-port")},
			nil},
		{"subnet with DHCP gets DHCP options", nbdb.DHCPOptionsTable,
			&nbdb.DHCPOptions{Cidr: "10.0.1.0/24", Options: map[string]string{
				"lease_time": "3600", "router": "10.0.1.1", "server_id": "10.0.1.1", "server_mac": "02:4d:00:00:00:0b",
				"mtu": "1450", "dns_server": "{10.0.0.2}", "domain_name": `"corp.example"`,
			}, ExternalIDs: ext("subnet/11/dhcp4", "subnet/11", "dhcp")},
			nil},
		{"port becomes a switch port with addresses, port security, chassis and DHCP", nbdb.LogicalSwitchPortTable,
			&nbdb.LogicalSwitchPort{Name: "mer-port-101", Addresses: []string{"02:00:00:00:01:01 10.0.1.10"},
				PortSecurity: []string{"02:00:00:00:01:01 10.0.1.10"}, Options: map[string]string{"requested-chassis": "n1"},
				ExternalIDs: ext("port/101", "port/101", "port")},
			map[string][]string{"dhcpv4_options": {"subnet/11/dhcp4"}}},
		{"port without source/destination check is held to its MAC only", nbdb.LogicalSwitchPortTable,
			&nbdb.LogicalSwitchPort{Name: "mer-port-103", Addresses: []string{"02:00:00:00:02:01 10.0.2.10"},
				PortSecurity: []string{"02:00:00:00:02:01"}, ExternalIDs: ext("port/103", "port/103", "port")},
			nil},
		{"security group becomes a port group of its members with one ACL per rule", nbdb.PortGroupTable,
			&nbdb.PortGroup{Name: "mer_sg_21", ExternalIDs: ext("sg/21", "sg/21", "security-group")},
			map[string][]string{"ports": {"port/101", "port/102"}, "acls": {"sg/21/rule/1", "sg/21/rule/2", "sg/21/rule/3"}}},
		{"ingress rule allows related traffic to the group from a CIDR", nbdb.ACLTable,
			&nbdb.ACL{Direction: "to-lport", Action: "allow-related", Priority: PrioritySG,
				Match:       "outport == @mer_sg_21 && ip4 && ip4.src == 192.168.0.0/16 && tcp && tcp.dst == 22",
				ExternalIDs: ext("sg/21/rule/1", "sg/21", "sg-rule")},
			nil},
		{"egress rule allows related traffic from the group", nbdb.ACLTable,
			&nbdb.ACL{Direction: "from-lport", Action: "allow-related", Priority: PrioritySG,
				Match: "inport == @mer_sg_21 && ip4", ExternalIDs: ext("sg/21/rule/2", "sg/21", "sg-rule")},
			nil},
		{"remote group is matched through its address set", nbdb.ACLTable,
			&nbdb.ACL{Direction: "to-lport", Action: "allow-related", Priority: PrioritySG,
				Match:       "outport == @mer_sg_21 && ip4 && ip4.src == $mer_sgaddr_22_ip4 && icmp4 && icmp4.type == 8",
				ExternalIDs: ext("sg/21/rule/3", "sg/21", "sg-rule")},
			nil},
		{"port range becomes bounds", nbdb.ACLTable,
			&nbdb.ACL{Direction: "to-lport", Action: "allow-related", Priority: PrioritySG,
				Match:       "outport == @mer_sg_22 && ip4 && udp && udp.dst >= 53 && udp.dst <= 54",
				ExternalIDs: ext("sg/22/rule/4", "sg/22", "sg-rule")},
			nil},
		{"a group named as remote gets an address set of its members' IPs", nbdb.AddressSetTable,
			&nbdb.AddressSet{Name: "mer_sgaddr_22_ip4", Addresses: []string{"10.0.1.11"}, ExternalIDs: ext("sg/22/ip4", "sg/22", "sg-members")},
			nil},
		{"network ACL deny rule drops what no earlier allow accepts", nbdb.ACLTable,
			&nbdb.ACL{Direction: "from-lport", Action: "drop", Priority: PriorityNACLFirst,
				Match:       `inport == @mer_ports && ip4 && udp && !(ip4.dst == 10.0.0.0/8)`,
				ExternalIDs: ext("acl/31/subnet/11/rule/8", "acl/31", "nacl-rule")},
			nil},
		{"network ACL deny rule before any allow is the rule's match alone", nbdb.ACLTable,
			&nbdb.ACL{Direction: "to-lport", Action: "drop", Priority: PriorityNACLFirst,
				Match:       `outport == @mer_ports && ip4 && tcp && tcp.dst == 23`,
				ExternalIDs: ext("acl/31/subnet/11/rule/5", "acl/31", "nacl-rule")},
			nil},
		{"network ACL ends in a deny of everything no allow accepts, per family", nbdb.ACLTable,
			&nbdb.ACL{Direction: "from-lport", Action: "drop", Priority: PriorityNACLDefault,
				Match:       `inport == @mer_ports && ip4 && !(ip4.dst == 10.0.0.0/8)`,
				ExternalIDs: ext("acl/31/subnet/11/default-egress/ip4", "acl/31", "nacl-default")},
			nil},
		{"a family without allow rules is dropped whole", nbdb.ACLTable,
			&nbdb.ACL{Direction: "from-lport", Action: "drop", Priority: PriorityNACLDefault,
				Match:       `inport == @mer_ports && ip6`,
				ExternalIDs: ext("acl/31/subnet/11/default-egress/ip6", "acl/31", "nacl-default")},
			nil},
		{"a family an allow rule accepts whole needs no closing deny; the other family does", nbdb.ACLTable,
			&nbdb.ACL{Direction: "to-lport", Action: "drop", Priority: PriorityNACLDefault,
				Match:       `outport == @mer_ports && ip6`,
				ExternalIDs: ext("acl/31/subnet/11/default-ingress/ip6", "acl/31", "nacl-default")},
			nil},
		{"route to a port goes to the port's address in the subnet's route table", nbdb.LogicalRouterStaticRouteTable,
			&nbdb.LogicalRouterStaticRoute{IPPrefix: "0.0.0.0/0", Nexthop: "10.0.2.10", RouteTable: "mer-rt-41",
				ExternalIDs: ext("rt/41/route/0.0.0.0/0>10.0.2.10", "rt/41", "route")},
			nil},
		{"blackhole route discards", nbdb.LogicalRouterStaticRouteTable,
			&nbdb.LogicalRouterStaticRoute{IPPrefix: "192.168.0.0/16", Nexthop: "discard", RouteTable: "mer-rt-41",
				ExternalIDs: ext("rt/41/route/192.168.0.0/16>discard", "rt/41", "route")},
			nil},
		{"every port is in the default-deny group", nbdb.PortGroupTable,
			&nbdb.PortGroup{Name: AllPortsGroup, ExternalIDs: ext("global/ports", OwnerGlobal, "default-deny")},
			map[string][]string{"ports": {"port/101", "port/102", "port/103"}, "acls": {
				"global/ports/arp-from", "global/ports/arp-to", "global/ports/dhcp4", "global/ports/dhcp6",
				"global/ports/deny-from", "global/ports/deny-to"}}},
		{"the default deny drops what no group allows", nbdb.ACLTable,
			&nbdb.ACL{Direction: "to-lport", Action: "drop", Priority: PriorityDefaultDeny,
				Match: "outport == @mer_ports", ExternalIDs: ext("global/ports/deny-to", OwnerGlobal, "default-deny")},
			nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := specByName[tc.table]
			_, e := s.meta(tc.want)
			got := d.Row(tc.table, e[KeyID])
			if got == nil {
				t.Fatalf("no %s row %s; have %v", tc.table, e[KeyID], ids(d.Rows(tc.table)))
			}
			if cols := s.changed(tc.want, got.Model); len(cols) > 0 {
				t.Errorf("columns %v differ:\n got %+v\nwant %+v", cols, got.Model, tc.want)
			}
			for col, want := range tc.refs {
				if g := got.Refs[col]; !slices.Equal(g, want) {
					t.Errorf("%s = %v, want %v", col, g, want)
				}
			}
		})
	}
}

func ids(rows []*Row) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.ID)
	}
	return out
}

func TestRenderFailsClosedOnMissingReferences(t *testing.T) {
	cases := []struct {
		name   string
		objs   map[string]*agentv1.Object
		absent []string // "table id"
	}{
		{"a port whose subnet is unknown gets no switch port",
			objects(&agentv1.Port{Id: 9, SubnetId: 99, Mac: "02:00:00:00:00:09", Ips: []string{"10.9.0.9"}}),
			[]string{nbdb.LogicalSwitchPortTable + " port/9"}},
		{"a subnet whose VPC is unknown gets a switch but no router port",
			objects(&agentv1.Subnet{Id: 5, VpcId: 77, Cidr: "10.5.0.0/24", GatewayIp: "10.5.0.1"}),
			[]string{nbdb.LogicalRouterPortTable + " subnet/5/router-port", nbdb.LogicalSwitchPortTable + " subnet/5/switch-router-port"}},
		{"a route to a port that is gone discards", objects(
			&agentv1.Vpc{Id: 1},
			&agentv1.RouteTable{Id: 4, VpcId: 1, Routes: []*agentv1.Route{{Destination: "10.8.0.0/16", NextHopPortId: 404}}}),
			[]string{nbdb.LogicalRouterStaticRouteTable + " rt/4/route/10.8.0.0/16>10.8.0.1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Render(tc.objs)
			for _, a := range tc.absent {
				table, id, _ := strings.Cut(a, " ")
				if d.Row(table, id) != nil {
					t.Errorf("%s %s rendered", table, id)
				}
			}
		})
	}
	if d := Render(objects(&agentv1.Vpc{Id: 1}, &agentv1.RouteTable{Id: 4, VpcId: 1, Routes: []*agentv1.Route{
		{Destination: "10.8.0.0/16", NextHopPortId: 404}}})); d.Row(nbdb.LogicalRouterStaticRouteTable, "rt/4/route/10.8.0.0/16>discard") == nil {
		t.Errorf("route to a missing port: want a discard route, have %v", ids(d.Rows(nbdb.LogicalRouterStaticRouteTable)))
	}
}

func TestRuleMatch(t *testing.T) {
	cases := []struct {
		name string
		rule *agentv1.Rule
		want string
	}{
		{"any IPv4", &agentv1.Rule{IcmpType: -1, IcmpCode: -1}, "ip4"},
		{"IPv6 from a prefix", &agentv1.Rule{Ingress: true, Ipv6: true, Cidr: "2001:db8::/32", IcmpType: -1, IcmpCode: -1}, "ip6 && ip6.src == 2001:db8::/32"},
		{"egress to a prefix names the destination", &agentv1.Rule{Cidr: "10.0.0.0/8", IcmpType: -1, IcmpCode: -1}, "ip4 && ip4.dst == 10.0.0.0/8"},
		{"ICMP type and code", &agentv1.Rule{Protocol: 1, IcmpType: 3, IcmpCode: 4}, "ip4 && icmp4 && icmp4.type == 3 && icmp4.code == 4"},
		{"ICMPv6 any type", &agentv1.Rule{Ipv6: true, Protocol: 58, IcmpType: -1, IcmpCode: -1}, "ip6 && icmp6"},
		{"all TCP ports", &agentv1.Rule{Protocol: 6, IcmpType: -1, IcmpCode: -1}, "ip4 && tcp"},
		{"SCTP port", &agentv1.Rule{Protocol: 132, PortMin: 9, PortMax: 9, IcmpType: -1, IcmpCode: -1}, "ip4 && sctp && sctp.dst == 9"},
		{"other protocol by number", &agentv1.Rule{Protocol: 47, IcmpType: -1, IcmpCode: -1}, "ip4 && ip.proto == 47"},
		{"IPv6 remote group", &agentv1.Rule{Ingress: true, Ipv6: true, RemoteGroupId: 5, IcmpType: -1, IcmpCode: -1}, "ip6 && ip6.src == $mer_sgaddr_5_ip6"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := ruleMatch(tc.rule); got != tc.want {
				t.Errorf("ruleMatch = %q, want %q", got, tc.want)
			}
		})
	}
}
