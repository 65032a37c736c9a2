package ctl

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// doc parses one document for the diff tests.
func doc(t *testing.T, src string) *Document {
	t.Helper()
	docs, err := parseDocuments(kindTable(), "t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return docs[0]
}

func i32(v int32) *int32 { return &v }

func TestDiffFields(t *testing.T) {
	// What the controller returns: output-only fields and server defaults
	// that the documents below do not mention.
	vpc := &v1.Vpc{Name: "projects/p/vpcs/v", Etag: "7", Vni: 4097, Id: 3, CidrBlocks: []string{"10.0.0.0/16"},
		Labels: map[string]string{"env": "prod"}, Description: "prod"}
	sg := &v1.SecurityGroup{Name: "projects/p/securityGroups/s", Etag: "9", Vpc: "projects/p/vpcs/v", Id: 4, Rules: []*v1.SecurityGroupRule{
		{Id: 11, Direction: v1.Direction_INGRESS, Protocol: "tcp", PortRangeMin: 80, PortRangeMax: 80, RemoteCidr: "0.0.0.0/0"},
		{Id: 12, Direction: v1.Direction_INGRESS, Protocol: "icmp", IcmpType: i32(0)},
	}}
	subnet := &v1.Subnet{Name: "projects/p/vpcs/v/subnets/s", CidrBlock: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450, AvailableIps: 250,
		Dhcp: &v1.DhcpOptions{Enabled: true, LeaseSeconds: 3600, DnsServers: []string{"10.0.0.2"}}}
	acl := &v1.NetworkAcl{Name: "projects/p/networkAcls/a", Vpc: "projects/p/vpcs/v", Subnets: []string{"projects/p/vpcs/v/subnets/s"},
		Rules: []*v1.NetworkAclRule{{Id: 5, Number: 100, Action: v1.Action_ALLOW, Direction: v1.Direction_INGRESS, Protocol: "all"}}}
	port := &v1.Port{Name: "projects/p/ports/x", Subnet: "projects/p/vpcs/v/subnets/s", SourceDestCheck: true,
		Status: &v1.PortStatus{State: v1.PortState_PORT_STATE_ACTIVE}, FixedIps: []string{"10.0.1.5"}}

	for _, tc := range []struct {
		name string
		cur  proto.Message
		src  string
		want string // the mask, comma-joined
	}{
		{"vpc unchanged", vpc, "kind: Vpc\nname: projects/p/vpcs/v\ncidrBlocks: [10.0.0.0/16]\nlabels: {env: prod}\n", ""},
		{"output-only fields in the document are ignored", vpc, "kind: Vpc\nname: projects/p/vpcs/v\netag: '1'\nvni: 5\nid: 9\ncreateTime: '2020-01-01T00:00:00Z'\n", ""},
		{"absent fields are not compared", vpc, "kind: Vpc\nname: projects/p/vpcs/v\n", ""},
		{"cidr added", vpc, "kind: Vpc\nname: projects/p/vpcs/v\ncidrBlocks: [10.0.0.0/16, 10.1.0.0/16]\n", "cidr_blocks"},
		{"label changed", vpc, "kind: Vpc\nname: projects/p/vpcs/v\nlabels: {env: dev}\n", "labels"},
		{"label removed", vpc, "kind: Vpc\nname: projects/p/vpcs/v\nlabels: {}\n", "labels"},
		{"label added", vpc, "kind: Vpc\nname: projects/p/vpcs/v\nlabels: {env: prod, team: net}\n", "labels"},
		{"explicit empty description", vpc, "kind: Vpc\nname: projects/p/vpcs/v\ndescription: ''\n", "description"},
		{"snake_case names", vpc, "kind: Vpc\nname: projects/p/vpcs/v\ncidr_blocks: [10.0.0.0/16]\ndescription: x\n", "description"},
		{"mask in field order", vpc, "kind: Vpc\nname: projects/p/vpcs/v\ncidrBlocks: [10.2.0.0/16]\ndescription: x\nlabels: {}\n", "labels,description,cidr_blocks"},
		{"rules equal without ids", sg, `kind: SecurityGroup
name: projects/p/securityGroups/s
vpc: projects/p/vpcs/v
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 80, portRangeMax: 80, remoteCidr: 0.0.0.0/0}
- {direction: INGRESS, protocol: icmp, icmpType: 0}
`, ""},
		{"rule port changed", sg, `kind: SecurityGroup
name: projects/p/securityGroups/s
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 8080, portRangeMax: 8080, remoteCidr: 0.0.0.0/0}
- {direction: INGRESS, protocol: icmp, icmpType: 0}
`, "rules"},
		{"optional icmp type: unset differs from 0", sg, `kind: SecurityGroup
name: projects/p/securityGroups/s
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 80, portRangeMax: 80, remoteCidr: 0.0.0.0/0}
- {direction: INGRESS, protocol: icmp, icmpType: null}
`, "rules"},
		{"rule removed", sg, `kind: SecurityGroup
name: projects/p/securityGroups/s
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 80, portRangeMax: 80, remoteCidr: 0.0.0.0/0}
`, "rules"},
		{"rules reordered", sg, `kind: SecurityGroup
name: projects/p/securityGroups/s
rules:
- {direction: INGRESS, protocol: icmp, icmpType: 0}
- {direction: INGRESS, protocol: tcp, portRangeMin: 80, portRangeMax: 80, remoteCidr: 0.0.0.0/0}
`, "rules"},
		{"server defaults in nested messages are not differences", subnet, `kind: Subnet
name: projects/p/vpcs/v/subnets/s
cidrBlock: 10.0.1.0/24
dhcp: {enabled: true, dnsServers: [10.0.0.2]}
`, ""},
		{"nested field changed", subnet, `kind: Subnet
name: projects/p/vpcs/v/subnets/s
dhcp: {enabled: false}
`, "dhcp"},
		{"explicit zero scalar", subnet, "kind: Subnet\nname: projects/p/vpcs/v/subnets/s\nmtu: 0\n", "mtu"},
		{"output-only subnets and available ips", subnet, "kind: Subnet\nname: projects/p/vpcs/v/subnets/s\navailableIps: 3\n", ""},
		{"acl subnets are output only", acl, `kind: NetworkAcl
name: projects/p/networkAcls/a
subnets: []
rules:
- {number: 100, action: ALLOW, direction: INGRESS, protocol: all}
`, ""},
		{"acl rule action changed", acl, `kind: NetworkAcl
name: projects/p/networkAcls/a
rules:
- {number: 100, action: DENY, direction: INGRESS, protocol: all}
`, "rules"},
		{"port status ignored, node bound", port, `kind: Port
name: projects/p/ports/x
status: {state: PORT_STATE_DOWN}
fixedIps: [10.0.1.5]
node: nodes/n1
`, "node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := doc(t, tc.src)
			got := strings.Join(diffFields(d.Msg, tc.cur, d.Fields), ",")
			if got != tc.want {
				t.Errorf("mask = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestUpdateMessage(t *testing.T) {
	d := doc(t, "kind: Vpc\nname: projects/p/vpcs/v\ncidrBlocks: [10.0.0.0/16]\ndescription: new\nlabels: {a: b}\n")
	cur := &v1.Vpc{Name: "projects/p/vpcs/v", Etag: "42", Description: "old"}
	got := updateMessage(d.Msg, []string{"description"}, cur).(*v1.Vpc)
	want := &v1.Vpc{Name: "projects/p/vpcs/v", Etag: "42", Description: "new"}
	if !proto.Equal(got, want) {
		t.Errorf("update message = %v, want %v", got, want)
	}
}

// TestDiffWriteOnlyPassword: the server never returns a BGP peer's
// password, only whether one is set, so apply compares exactly that.
func TestDiffWriteOnlyPassword(t *testing.T) {
	withPw := doc(t, "kind: BgpPeer\nname: bgpPeers/p\npeerAsn: 65000\npassword: secret\n")
	noPw := doc(t, "kind: BgpPeer\nname: bgpPeers/p\npeerAsn: 65000\npassword: \"\"\n")
	set := &v1.BgpPeer{Name: "bgpPeers/p", PeerAsn: 65000, PasswordSet: true}
	unset := &v1.BgpPeer{Name: "bgpPeers/p", PeerAsn: 65000}
	for _, tc := range []struct {
		name string
		d    *Document
		cur  *v1.BgpPeer
		want string
	}{
		{"set and set", withPw, set, ""},
		{"set, none on the server", withPw, unset, "password"},
		{"cleared, one on the server", noPw, set, "password"},
		{"cleared and none", noPw, unset, ""},
	} {
		if got := strings.Join(diffFields(tc.d.Msg, tc.cur, tc.d.Fields), ","); got != tc.want {
			t.Errorf("%s: diff %q, want %q", tc.name, got, tc.want)
		}
	}
}
