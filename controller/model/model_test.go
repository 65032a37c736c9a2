package model

import (
	"slices"
	"testing"

	"reflect"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/store"
)

const (
	p1   = "projects/p1"
	vpcA = p1 + "/vpcs/a"
	vpcB = p1 + "/vpcs/b"
	subA = vpcA + "/subnets/s1"
	subB = vpcB + "/subnets/s1"
	sgA  = p1 + "/securityGroups/web"
	sgA2 = p1 + "/securityGroups/db"
	sgB  = p1 + "/securityGroups/other"
	acl1 = p1 + "/networkAcls/acl1"
	rt1  = p1 + "/routeTables/rt1"
)

func TestCompile(t *testing.T) {
	tests := []struct {
		name string
		in   []proto.Message // all resources; the last one's object is checked
		key  string
		want *agentv1.Object
	}{
		{
			name: "vpc cidrs canonical and sorted",
			in:   []proto.Message{&mv1.Vpc{Name: vpcA, Id: 7, Vni: 77, CidrBlocks: []string{"10.1.2.3/16", "10.0.0.0/16"}, Ipv6CidrBlock: "fd00:0::1/64"}},
			key:  "vpc/7",
			want: &agentv1.Object{Key: "vpc/7", Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{
				Id: 7, Name: vpcA, Vni: 77, Cidrs: []string{"10.0.0.0/16", "10.1.0.0/16", "fd00::/64"}}}},
		},
		{
			name: "subnet defaults and references",
			in: []proto.Message{
				vpc(vpcA, 1, "10.0.0.0/16"),
				&mv1.NetworkAcl{Name: acl1, Id: 4, Vpc: vpcA},
				&mv1.Subnet{Name: subA, Id: 3, CidrBlock: "10.0.1.0/24", NetworkAcl: acl1, RouteTable: rt1,
					Dhcp: &mv1.DhcpOptions{Enabled: true, DnsServers: []string{"10.0.0.3", "1.1.1.1"}, DomainName: "Example.COM."}},
			},
			key: "subnet/3",
			want: &agentv1.Object{Key: "subnet/3", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{
				Id: 3, Name: subA, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450,
				NetworkAclId: 4, RouteTableId: 0, DhcpEnabled: true,
				DnsServers: []string{"10.0.0.3", "1.1.1.1"}, DomainName: "example.com"}}},
		},
		{
			name: "port ips sorted, groups resolved, mac canonical",
			in: []proto.Message{
				vpc(vpcA, 1, "10.0.0.0/16"), subnet(subA, 3, "10.0.1.0/24", "", ""),
				sg(sgA, 9, vpcA), sg(sgA2, 5, vpcA),
				&mv1.Port{Name: p1 + "/ports/x", Id: 42, Subnet: subA, Node: "nodes/n1", MacAddress: "02:AB:00:00:00:0F",
					FixedIps: []string{"10.0.1.20", "10.0.1.3"}, SecondaryIps: []string{"10.0.1.9", "10.0.1.10"},
					SecurityGroups: []string{sgA, sgA2, p1 + "/securityGroups/missing"}, DisableSourceDestCheck: true},
			},
			key: "port/42",
			want: &agentv1.Object{Key: "port/42", Body: &agentv1.Object_Port{Port: &agentv1.Port{
				Id: 42, Name: p1 + "/ports/x", VpcId: 1, SubnetId: 3, Mac: "02:ab:00:00:00:0f",
				Ips: []string{"10.0.1.3", "10.0.1.20", "10.0.1.9", "10.0.1.10"}, Node: "n1",
				SecurityGroupIds: []uint32{5, 9}, SourceDestCheck: false}}},
		},
		{
			name: "security group rules normalised",
			in: []proto.Message{
				vpc(vpcA, 1, "10.0.0.0/16"), sg(sgA2, 5, vpcA),
				sg(sgA, 9, vpcA,
					&mv1.SecurityGroupRule{Id: 3, Direction: mv1.Direction_INGRESS, Protocol: "tcp", PortRangeMin: 1, PortRangeMax: 65535, RemoteSecurityGroup: sgA2},
					&mv1.SecurityGroupRule{Id: 1, Direction: mv1.Direction_INGRESS, Protocol: "icmp", RemoteCidr: "10.0.0.7/8"},
					&mv1.SecurityGroupRule{Id: 2, Direction: mv1.Direction_EGRESS, Protocol: "all", RemoteCidr: "0.0.0.0/0"},
					&mv1.SecurityGroupRule{Id: 4, Direction: mv1.Direction_INGRESS, Protocol: "udp", PortRangeMin: 53, IcmpType: i32(3)},
					&mv1.SecurityGroupRule{Id: 5, Direction: mv1.Direction_INGRESS, Protocol: "58", IcmpType: i32(128), IcmpCode: i32(0)},
					&mv1.SecurityGroupRule{Id: 6, Direction: mv1.Direction_INGRESS, Protocol: "tcp", RemoteSecurityGroup: p1 + "/securityGroups/gone"},
					&mv1.SecurityGroupRule{Id: 7, Direction: mv1.Direction_INGRESS, Protocol: "SCTP", PortRangeMin: 3868, PortRangeMax: 3868},
					&mv1.SecurityGroupRule{Id: 8, Direction: mv1.Direction_INGRESS, Protocol: "bogus"},
				),
			},
			key: "sg/9",
			want: &agentv1.Object{Key: "sg/9", Body: &agentv1.Object_SecurityGroup{SecurityGroup: &agentv1.SecurityGroup{
				Id: 9, Name: sgA, VpcId: 1, Rules: []*agentv1.Rule{
					{Id: 1, Allow: true, Ingress: true, Protocol: 1, IcmpType: -1, IcmpCode: -1, Cidr: "10.0.0.0/8"},
					{Id: 2, Allow: true, Protocol: 0, IcmpType: -1, IcmpCode: -1},
					{Id: 3, Allow: true, Ingress: true, Protocol: 6, IcmpType: -1, IcmpCode: -1, RemoteGroupId: 5},
					{Id: 4, Allow: true, Ingress: true, Protocol: 17, PortMin: 53, PortMax: 53, IcmpType: -1, IcmpCode: -1},
					{Id: 5, Allow: true, Ingress: true, Protocol: 58, IcmpType: 128, IcmpCode: 0, Ipv6: true},
					{Id: 7, Allow: true, Ingress: true, Protocol: 132, PortMin: 3868, PortMax: 3868, IcmpType: -1, IcmpCode: -1},
				}}}},
		},
		{
			name: "acl rules by direction then number",
			in: []proto.Message{
				vpc(vpcA, 1, "10.0.0.0/16"),
				&mv1.NetworkAcl{Name: acl1, Id: 4, Vpc: vpcA, Rules: []*mv1.NetworkAclRule{
					{Id: 1, Number: 200, Action: mv1.Action_DENY, Direction: mv1.Direction_EGRESS, Protocol: "tcp", PortRangeMin: 22, PortRangeMax: 22, Cidr: "192.168.0.0/16"},
					{Id: 2, Number: 100, Action: mv1.Action_ALLOW, Direction: mv1.Direction_EGRESS, Protocol: "all"},
					{Id: 3, Number: 300, Action: mv1.Action_ALLOW, Direction: mv1.Direction_INGRESS, Protocol: "icmp", IcmpType: i32(8)},
				}},
			},
			key: "acl/4",
			want: &agentv1.Object{Key: "acl/4", Body: &agentv1.Object_NetworkAcl{NetworkAcl: &agentv1.NetworkAcl{
				Id: 4, Name: acl1, VpcId: 1, Rules: []*agentv1.Rule{
					{Id: 3, Number: 300, Allow: true, Ingress: true, Protocol: 1, IcmpType: 8, IcmpCode: -1},
					{Id: 2, Number: 100, Allow: true, IcmpType: -1, IcmpCode: -1},
					{Id: 1, Number: 200, Protocol: 6, PortMin: 22, PortMax: 22, IcmpType: -1, IcmpCode: -1, Cidr: "192.168.0.0/16"},
				}}}},
		},
		{
			name: "route table sorted, missing next hop port blackholes",
			in: []proto.Message{
				vpc(vpcA, 1, "10.0.0.0/16"), subnet(subA, 3, "10.0.1.0/24", "", ""),
				port(p1+"/ports/fw", 8, subA, "", "10.0.1.5"),
				&mv1.RouteTable{Name: rt1, Id: 2, Vpc: vpcA, Routes: []*mv1.Route{
					{Destination: "192.168.1.1/24", NextHopPort: p1 + "/ports/gone"},
					{Destination: "0.0.0.0/0", NextHopPort: p1 + "/ports/fw"},
					{Destination: "172.16.0.0/12", NextHopIp: "10.0.1.5"},
				}},
			},
			key: "rt/2",
			want: &agentv1.Object{Key: "rt/2", Body: &agentv1.Object_RouteTable{RouteTable: &agentv1.RouteTable{
				Id: 2, Name: rt1, VpcId: 1, Routes: []*agentv1.Route{
					{Destination: "0.0.0.0/0", NextHopPortId: 8},
					{Destination: "172.16.0.0/12", NextHopIp: "10.0.1.5"},
					{Destination: "192.168.1.0/24", Blackhole: true},
				}}}},
		},
		{
			name: "peer node",
			in:   []proto.Message{&mv1.Node{Name: "nodes/n2", UnderlayIp: "192.0.2.2", Realization: mv1.Realization_OVN}},
			key:  "node/n2",
			want: &agentv1.Object{Key: "node/n2", Body: &agentv1.Object_PeerNode{PeerNode: &agentv1.PeerNode{
				Node: "n2", UnderlayIp: "192.0.2.2", Realization: "ovn"}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Both paths: full load and one event at a time, in order.
			tx := newMemTx()
			inc := New(quiet())
			for _, msg := range tc.in {
				inc.Apply(tx.put(t, msg))
			}
			full := loadModel(t, tx)
			for _, m := range []*Model{full, inc} {
				if got := m.Object(tc.key); !proto.Equal(got, tc.want) {
					t.Errorf("object %s:\n got: %v\nwant: %v", tc.key, prototext.Format(got), prototext.Format(tc.want))
				}
			}
		})
	}
}

// fixture: two VPCs. Nodes n1 and n2 host ports of VPC A, n3 hosts a port of
// VPC B, n4 hosts nothing.
func fixture(t *testing.T) *memTx {
	tx := newMemTx()
	for _, msg := range []proto.Message{
		node("n1", "192.0.2.1"), node("n2", "192.0.2.2"), node("n3", "192.0.2.3"), node("n4", "192.0.2.4"),
		vpc(vpcA, 1, "10.0.0.0/16"), vpc(vpcB, 2, "10.0.0.0/16"),
		&mv1.NetworkAcl{Name: acl1, Id: 1, Vpc: vpcA},
		&mv1.RouteTable{Name: rt1, Id: 1, Vpc: vpcA},
		subnet(subA, 1, "10.0.1.0/24", acl1, rt1), subnet(subB, 2, "10.0.1.0/24", "", ""),
		sg(sgA2, 2, vpcA),
		sg(sgA, 1, vpcA, &mv1.SecurityGroupRule{Id: 1, Direction: mv1.Direction_INGRESS, RemoteSecurityGroup: sgA2}),
		sg(sgB, 3, vpcB),
		port(p1+"/ports/a1", 1, subA, "nodes/n1", "10.0.1.10", sgA),
		port(p1+"/ports/a2", 2, subA, "nodes/n2", "10.0.1.11", sgA2),
		port(p1+"/ports/a3", 3, subA, "", "10.0.1.12"),
		port(p1+"/ports/b1", 4, subB, "nodes/n3", "10.0.1.10", sgB),
	} {
		tx.put(t, msg)
	}
	return tx
}

func TestNodeState(t *testing.T) {
	m := loadModel(t, fixture(t))
	tests := []struct {
		node string
		want []string
	}{
		// n1: VPC A whole, its group web and web's remote group db, peer n2.
		{"n1", []string{"acl/1", "node/n2", "port/1", "port/2", "port/3", "rt/1", "sg/1", "sg/2", "subnet/1", "vpc/1"}},
		// n2: only db (web is not used by its ports, nor referenced by db).
		{"n2", []string{"acl/1", "node/n1", "port/1", "port/2", "port/3", "rt/1", "sg/2", "subnet/1", "vpc/1"}},
		{"n3", []string{"port/4", "sg/3", "subnet/2", "vpc/2"}},
		{"n4", []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.node, func(t *testing.T) {
			got := keysOf(m.NodeState(tc.node))
			if !slices.Equal(got, tc.want) {
				t.Errorf("NodeState(%s) = %v, want %v", tc.node, got, tc.want)
			}
		})
	}
	if got, want := m.Nodes(), []string{"n1", "n2", "n3"}; !slices.Equal(got, want) {
		t.Errorf("Nodes() = %v, want %v", got, want)
	}
}

func TestApplyChanges(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, tx *memTx) []store.Event
		want   map[string][]string // node -> changed keys
	}{
		{
			name: "rule change in db reaches the nodes holding db",
			change: func(t *testing.T, tx *memTx) []store.Event {
				return one(tx.put(t, sg(sgA2, 2, vpcA, &mv1.SecurityGroupRule{Id: 7, Direction: mv1.Direction_INGRESS, Protocol: "tcp"})))
			},
			want: map[string][]string{"n1": {"sg/2"}, "n2": {"sg/2"}},
		},
		{
			name: "description-only change reaches nobody",
			change: func(t *testing.T, tx *memTx) []store.Event {
				v := vpc(vpcA, 1, "10.0.0.0/16")
				v.Description = "new"
				return one(tx.put(t, v))
			},
			want: map[string][]string{},
		},
		{
			name: "binding a port to n4 brings VPC A to n4 and n4 as a peer to n1 and n2",
			change: func(t *testing.T, tx *memTx) []store.Event {
				return one(tx.put(t, port(p1+"/ports/a3", 3, subA, "nodes/n4", "10.0.1.12")))
			},
			want: map[string][]string{
				"n1": {"node/n4", "port/3"},
				"n2": {"node/n4", "port/3"},
				"n4": {"acl/1", "node/n1", "node/n2", "port/1", "port/2", "port/3", "rt/1", "subnet/1", "vpc/1"},
			},
		},
		{
			name: "deleting the ACL reaches VPC A's nodes through the subnet",
			change: func(t *testing.T, tx *memTx) []store.Event {
				ev, _ := tx.del(storeKey(t, &mv1.NetworkAcl{Name: acl1}))
				return one(ev)
			},
			want: map[string][]string{"n1": {"acl/1", "subnet/1"}, "n2": {"acl/1", "subnet/1"}},
		},
		{
			name: "node address change reaches its peers",
			change: func(t *testing.T, tx *memTx) []store.Event {
				return one(tx.put(t, node("n2", "192.0.2.22")))
			},
			want: map[string][]string{"n1": {"node/n2"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tx := fixture(t)
			m := loadModel(t, tx)
			got := Changes{}
			for _, ev := range tc.change(t, tx) {
				got.Merge(m.Apply(ev))
			}
			gotList := map[string][]string{}
			for n, keys := range got {
				for k := range keys {
					gotList[n] = append(gotList[n], k)
				}
				slices.Sort(gotList[n])
			}
			if !reflect.DeepEqual(gotList, tc.want) {
				t.Errorf("changes = %v, want %v", gotList, tc.want)
			}
			assertSameAsFull(t, m, tx)
		})
	}
}

func one(ev store.Event) []store.Event { return []store.Event{ev} }
