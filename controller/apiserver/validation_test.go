package apiserver_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
)

const a1 = apitest.ProjectA1

// call is one API request made by a test case.
type call func(ctx context.Context, c *apitest.Client) error

func i32(v int32) *int32 { return &v }

func createVPC(v *v1.Vpc) call {
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: a1, VpcId: "x", Vpc: v})
		return err
	}
}

func vpcCIDRs(cidrs ...string) call { return createVPC(&v1.Vpc{CidrBlocks: cidrs}) }

// createSubnet creates subnet "x" in a1's VPC v (10.0.0.0/16, which
// already holds 10.0.1.0/24).
func createSubnet(s *v1.Subnet) call {
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: apitest.VPC(a1), SubnetId: "x", Subnet: s})
		return err
	}
}

func subnetCIDR(cidr string) call { return createSubnet(&v1.Subnet{CidrBlock: cidr}) }

// createPort creates port "x"; an empty subnet means a1's subnet s
// (10.0.1.0/24, gateway .1, where .10 and MAC 02:00:00:00:01:10 are taken).
func createPort(p *v1.Port) call {
	if p.Subnet == "" {
		p.Subnet = apitest.Subnet(a1)
	}
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: "x", Port: p})
		return err
	}
}

func fixedIP(ip string) call { return createPort(&v1.Port{FixedIps: []string{ip}}) }

func createSG(sg *v1.SecurityGroup) call {
	if sg.Vpc == "" {
		sg.Vpc = apitest.VPC(a1)
	}
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Sec.CreateSecurityGroup(ctx, &v1.CreateSecurityGroupRequest{Parent: a1, SecurityGroupId: "x", SecurityGroup: sg})
		return err
	}
}

func sgRules(rules ...*v1.SecurityGroupRule) call { return createSG(&v1.SecurityGroup{Rules: rules}) }

func createACL(acl *v1.NetworkAcl) call {
	if acl.Vpc == "" {
		acl.Vpc = apitest.VPC(a1)
	}
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Sec.CreateNetworkAcl(ctx, &v1.CreateNetworkAclRequest{Parent: a1, NetworkAclId: "x", NetworkAcl: acl})
		return err
	}
}

func aclRules(rules ...*v1.NetworkAclRule) call { return createACL(&v1.NetworkAcl{Rules: rules}) }

func createRT(rt *v1.RouteTable) call {
	if rt.Vpc == "" {
		rt.Vpc = apitest.VPC(a1)
	}
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Net.CreateRouteTable(ctx, &v1.CreateRouteTableRequest{Parent: a1, RouteTableId: "x", RouteTable: rt})
		return err
	}
}

func routes(rs ...*v1.Route) call { return createRT(&v1.RouteTable{Routes: rs}) }

// tcp is an ingress TCP rule for port range lo-hi.
func tcp(lo, hi uint32) *v1.SecurityGroupRule {
	return &v1.SecurityGroupRule{Direction: v1.Direction_INGRESS, Protocol: "tcp", PortRangeMin: lo, PortRangeMax: hi}
}

func icmp(typ, code *int32) *v1.SecurityGroupRule {
	return &v1.SecurityGroupRule{Direction: v1.Direction_INGRESS, Protocol: "icmp", IcmpType: typ, IcmpCode: code}
}

func remote(cidr, group string) *v1.SecurityGroupRule {
	return &v1.SecurityGroupRule{Direction: v1.Direction_INGRESS, Protocol: "tcp", PortRangeMin: 80, PortRangeMax: 80, RemoteCidr: cidr, RemoteSecurityGroup: group}
}

func aclRule(n uint32, dir v1.Direction, action v1.Action) *v1.NetworkAclRule {
	return &v1.NetworkAclRule{Number: n, Direction: dir, Action: action, Protocol: "all"}
}

func deleteCall(del func(ctx context.Context, c *apitest.Client) (any, error)) call {
	return func(ctx context.Context, c *apitest.Client) error { _, err := del(ctx, c); return err }
}

type rejectCase struct {
	name  string
	call  call
	code  codes.Code
	field string // the BadRequest field violation, for InvalidArgument
}

func invalidCase(name string, c call, field string) rejectCase {
	return rejectCase{name: name, call: c, code: codes.InvalidArgument, field: field}
}

func vpcCases() []rejectCase {
	const f = "vpc.cidr_blocks[0]"
	return []rejectCase{
		invalidCase("vpc cidr malformed", vpcCIDRs("10.0.0/16"), f),
		invalidCase("vpc cidr not a cidr at all", vpcCIDRs("banana"), f),
		invalidCase("vpc cidr host bits set", vpcCIDRs("10.0.0.1/16"), f),
		invalidCase("vpc cidr of the wrong family", vpcCIDRs("fd00::/48"), f),
		invalidCase("vpc cidr shorter than /8", vpcCIDRs("10.0.0.0/7"), f),
		invalidCase("vpc cidr longer than /28", vpcCIDRs("10.0.0.0/29"), f),
		invalidCase("vpc without cidr", vpcCIDRs(), "vpc.cidr_blocks"),
		invalidCase("vpc with more than 5 blocks", vpcCIDRs("10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16", "10.5.0.0/16", "10.6.0.0/16"), "vpc.cidr_blocks"),
		invalidCase("vpc blocks overlap each other", vpcCIDRs("10.0.0.0/16", "10.0.128.0/17"), "vpc.cidr_blocks[1]"),
		invalidCase("vpc identical blocks", vpcCIDRs("10.0.0.0/16", "10.0.0.0/16"), "vpc.cidr_blocks[1]"),
		invalidCase("vpc ipv6 block of the wrong family", createVPC(&v1.Vpc{CidrBlocks: []string{"10.9.0.0/16"}, Ipv6CidrBlock: "10.0.0.0/16"}), "vpc.ipv6_cidr_block"),
		invalidCase("vpc ipv6 block too large", createVPC(&v1.Vpc{CidrBlocks: []string{"10.9.0.0/16"}, Ipv6CidrBlock: "fd00::/32"}), "vpc.ipv6_cidr_block"),
		invalidCase("vpc id not an RFC 1123 label", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: a1, VpcId: "Bad_ID", Vpc: &v1.Vpc{CidrBlocks: []string{"10.9.0.0/16"}}})
			return err
		}, "vpc_id"),
		invalidCase("vpc parent malformed", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: "orgs/a1", VpcId: "x", Vpc: &v1.Vpc{CidrBlocks: []string{"10.9.0.0/16"}}})
			return err
		}, "parent"),
		invalidCase("vpc missing", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: a1, VpcId: "x"})
			return err
		}, "vpc"),
		{name: "vpc parent project does not exist", code: codes.NotFound, call: func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: "projects/nope", VpcId: "x", Vpc: &v1.Vpc{CidrBlocks: []string{"10.9.0.0/16"}}})
			return err
		}},
		{name: "vpc already exists", code: codes.AlreadyExists, call: func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: a1, VpcId: "v", Vpc: &v1.Vpc{CidrBlocks: []string{"10.9.0.0/16"}}})
			return err
		}},
		invalidCase("vpc update removes a block a subnet lives in", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC(a1), CidrBlocks: []string{"10.9.0.0/16"}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"cidr_blocks"}}})
			return err
		}, "vpc.cidr_blocks"),
	}
}

func subnetCases() []rejectCase {
	const f = "subnet.cidr_block"
	long := strings.Repeat("a", 254)
	return []rejectCase{
		invalidCase("subnet cidr malformed", subnetCIDR("10.0.2/24"), f),
		invalidCase("subnet cidr host bits set", subnetCIDR("10.0.2.1/24"), f),
		invalidCase("subnet cidr of the wrong family", subnetCIDR("fd00::/64"), f),
		invalidCase("subnet cidr longer than /29", subnetCIDR("10.0.2.0/30"), f),
		invalidCase("subnet cidr shorter than /16", subnetCIDR("10.0.0.0/15"), f),
		invalidCase("subnet outside the vpc", subnetCIDR("10.1.0.0/24"), f),
		invalidCase("subnet larger than the vpc block", createSubnet(&v1.Subnet{CidrBlock: "10.0.0.0/16"}), f),
		invalidCase("subnet overlaps a sibling", subnetCIDR("10.0.1.128/25"), f),
		invalidCase("subnet contains a sibling", subnetCIDR("10.0.0.0/23"), f),
		invalidCase("subnet gateway outside the block", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", GatewayIp: "10.0.3.1"}), "subnet.gateway_ip"),
		invalidCase("subnet gateway is the network address", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", GatewayIp: "10.0.2.0"}), "subnet.gateway_ip"),
		invalidCase("subnet gateway is the broadcast address", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", GatewayIp: "10.0.2.255"}), "subnet.gateway_ip"),
		invalidCase("subnet gateway not an address", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", GatewayIp: "gw"}), "subnet.gateway_ip"),
		invalidCase("subnet mtu below 576", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Mtu: 575}), "subnet.mtu"),
		invalidCase("subnet mtu above 8950", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Mtu: 8951}), "subnet.mtu"),
		invalidCase("subnet dhcp dns server not an address", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Dhcp: &v1.DhcpOptions{DnsServers: []string{"8.8.8.8", "dns"}}}), "subnet.dhcp.dns_servers[1]"),
		invalidCase("subnet dhcp ntp server not an address", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Dhcp: &v1.DhcpOptions{NtpServers: []string{"fe80::1%eth0"}}}), "subnet.dhcp.ntp_servers[0]"),
		invalidCase("subnet dhcp lease below a minute", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Dhcp: &v1.DhcpOptions{LeaseSeconds: 59}}), "subnet.dhcp.lease_seconds"),
		invalidCase("subnet dhcp domain name too long", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Dhcp: &v1.DhcpOptions{DomainName: long}}), "subnet.dhcp.domain_name"),
		invalidCase("subnet ipv6 block without a vpc ipv6 block", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Ipv6CidrBlock: "fd00::/64"}), "subnet.ipv6_cidr_block"),
		invalidCase("subnet ipv6 block not a /64", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", Ipv6CidrBlock: "fd00::/56"}), "subnet.ipv6_cidr_block"),
		invalidCase("subnet network acl of another project", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", NetworkAcl: apitest.ACL(apitest.ProjectA2)}), "subnet.network_acl"),
		invalidCase("subnet network acl does not exist", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", NetworkAcl: a1 + "/networkAcls/nope"}), "subnet.network_acl"),
		invalidCase("subnet route table of another project", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", RouteTable: apitest.RT(apitest.ProjectB1)}), "subnet.route_table"),
		invalidCase("subnet route table name malformed", createSubnet(&v1.Subnet{CidrBlock: "10.0.2.0/24", RouteTable: "rt"}), "subnet.route_table"),
		{name: "subnet vpc does not exist", code: codes.NotFound, call: func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: a1 + "/vpcs/nope", SubnetId: "x", Subnet: &v1.Subnet{CidrBlock: "10.0.2.0/24"}})
			return err
		}},
		invalidCase("subnet update of immutable cidr", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.UpdateSubnet(ctx, &v1.UpdateSubnetRequest{Subnet: &v1.Subnet{Name: apitest.Subnet(a1), CidrBlock: "10.0.2.0/24"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"cidr_block"}}})
			return err
		}, "update_mask"),
		invalidCase("subnet update of immutable gateway in camelCase", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.UpdateSubnet(ctx, &v1.UpdateSubnetRequest{Subnet: &v1.Subnet{Name: apitest.Subnet(a1), GatewayIp: "10.0.1.2"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"gatewayIp"}}})
			return err
		}, "update_mask"),
		invalidCase("subnet update mtu out of bounds", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.UpdateSubnet(ctx, &v1.UpdateSubnetRequest{Subnet: &v1.Subnet{Name: apitest.Subnet(a1), Mtu: 9000},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"mtu"}}})
			return err
		}, "subnet.mtu"),
	}
}

func portCases() []rejectCase {
	const f = "port.fixed_ips[0]"
	return []rejectCase{
		invalidCase("port fixed ip outside the subnet", fixedIP("10.0.2.5"), f),
		invalidCase("port fixed ip is the network address", fixedIP("10.0.1.0"), f),
		invalidCase("port fixed ip is the gateway", fixedIP(apitest.SubnetGW), f),
		invalidCase("port fixed ip is the broadcast address", fixedIP("10.0.1.255"), f),
		invalidCase("port fixed ip taken by another port", fixedIP(apitest.PortIP), f),
		invalidCase("port fixed ip not an address", fixedIP("10.0.1.x"), f),
		invalidCase("port fixed ipv6 without an ipv6 block", fixedIP("fd00::5"), f),
		invalidCase("port mac invalid", createPort(&v1.Port{MacAddress: "zz:00:00:00:00:01"}), "port.mac_address"),
		invalidCase("port mac too long", createPort(&v1.Port{MacAddress: "02:00:00:00:00:00:00:01"}), "port.mac_address"),
		invalidCase("port mac multicast", createPort(&v1.Port{MacAddress: "01:00:5e:00:00:01"}), "port.mac_address"),
		invalidCase("port mac taken by another port", createPort(&v1.Port{MacAddress: apitest.PortMAC}), "port.mac_address"),
		invalidCase("port secondary ip duplicates a fixed ip", createPort(&v1.Port{FixedIps: []string{"10.0.1.20"}, SecondaryIps: []string{"10.0.1.20"}}), "port.secondary_ips[0]"),
		invalidCase("port secondary ip listed twice", createPort(&v1.Port{SecondaryIps: []string{"10.0.1.21", "10.0.1.21"}}), "port.secondary_ips[1]"),
		invalidCase("port secondary ip outside the subnet", createPort(&v1.Port{SecondaryIps: []string{"10.0.9.9"}}), "port.secondary_ips[0]"),
		invalidCase("port secondary ip taken", createPort(&v1.Port{SecondaryIps: []string{apitest.PortIP}}), "port.secondary_ips[0]"),
		invalidCase("port security group of another vpc", createPort(&v1.Port{SecurityGroups: []string{apitest.SGOther}}), "port.security_groups[0]"),
		invalidCase("port security group of another project", createPort(&v1.Port{SecurityGroups: []string{apitest.SG(apitest.ProjectA2)}}), "port.security_groups[0]"),
		invalidCase("port security group does not exist", createPort(&v1.Port{SecurityGroups: []string{a1 + "/securityGroups/nope"}}), "port.security_groups[0]"),
		invalidCase("port security group listed twice", createPort(&v1.Port{SecurityGroups: []string{apitest.SG(a1), apitest.SG(a1)}}), "port.security_groups[1]"),
		invalidCase("port node not registered", createPort(&v1.Port{Node: "nodes/ghost"}), "port.node"),
		invalidCase("port node name malformed", createPort(&v1.Port{Node: "ghost"}), "port.node"),
		invalidCase("port subnet missing", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: "x", Port: &v1.Port{}})
			return err
		}, "port.subnet"),
		invalidCase("port subnet of another project", createPort(&v1.Port{Subnet: apitest.Subnet(apitest.ProjectA2)}), "port.subnet"),
		invalidCase("port subnet does not exist", createPort(&v1.Port{Subnet: apitest.VPC(a1) + "/subnets/nope"}), "port.subnet"),
		invalidCase("port update of immutable subnet", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1), Subnet: apitest.Subnet2},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"subnet"}}})
			return err
		}, "update_mask"),
		invalidCase("port update of immutable mac in camelCase", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1), MacAddress: "02:00:00:00:99:99"},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"macAddress"}}})
			return err
		}, "update_mask"),
		invalidCase("port update of output-only id", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1), Id: 7},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"id"}}})
			return err
		}, "update_mask"),
	}
}

func securityGroupCases() []rejectCase {
	const r0 = "security_group.rules[0]"
	return []rejectCase{
		invalidCase("sg rule without direction", sgRules(&v1.SecurityGroupRule{Protocol: "tcp"}), r0+".direction"),
		invalidCase("sg rule unknown direction number", sgRules(&v1.SecurityGroupRule{Direction: 7, Protocol: "tcp"}), r0+".direction"),
		invalidCase("sg rule unknown protocol name", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_EGRESS, Protocol: "bogus"}), r0+".protocol"),
		invalidCase("sg rule protocol number above 255", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_EGRESS, Protocol: "256"}), r0+".protocol"),
		invalidCase("sg rule negative protocol number", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_EGRESS, Protocol: "-1"}), r0+".protocol"),
		invalidCase("sg rule port 0 with a max", sgRules(tcp(0, 80)), r0+".port_range_min"),
		invalidCase("sg rule port above 65535", sgRules(tcp(80, 65536)), r0+".port_range_min"),
		invalidCase("sg rule min above max", sgRules(tcp(443, 80)), r0+".port_range_max"),
		invalidCase("sg rule ports on icmp", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_INGRESS, Protocol: "icmp", PortRangeMin: 1, PortRangeMax: 2}), r0+".port_range_min"),
		invalidCase("sg rule ports on all protocols", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_INGRESS, Protocol: "all", PortRangeMin: 1, PortRangeMax: 2}), r0+".port_range_min"),
		invalidCase("sg rule icmp type above 255", sgRules(icmp(i32(256), nil)), r0+".icmp_type"),
		invalidCase("sg rule icmp type negative", sgRules(icmp(i32(-1), nil)), r0+".icmp_type"),
		invalidCase("sg rule icmp code above 255", sgRules(icmp(i32(3), i32(256))), r0+".icmp_code"),
		invalidCase("sg rule icmp code without type", sgRules(icmp(nil, i32(0))), r0+".icmp_code"),
		invalidCase("sg rule icmp type on tcp", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_INGRESS, Protocol: "tcp", IcmpType: i32(8)}), r0+".icmp_type"),
		invalidCase("sg rule remote cidr and group", sgRules(remote("10.0.0.0/8", apitest.SGDB)), r0+".remote_cidr"),
		invalidCase("sg rule remote cidr malformed", sgRules(remote("10.0.0.0/33", "")), r0+".remote_cidr"),
		invalidCase("sg rule remote cidr host bits", sgRules(remote("10.0.0.1/8", "")), r0+".remote_cidr"),
		invalidCase("sg rule remote group does not exist", sgRules(remote("", a1+"/securityGroups/nope")), r0+".remote_security_group"),
		invalidCase("sg rule remote group of another vpc", sgRules(remote("", apitest.SGOther)), r0+".remote_security_group"),
		invalidCase("sg rule remote group of another project", sgRules(remote("", apitest.SG(apitest.ProjectA2))), r0+".remote_security_group"),
		invalidCase("sg rule duplicated", sgRules(tcp(80, 80), tcp(80, 80)), "security_group.rules[1]"),
		invalidCase("sg second rule reported by index", sgRules(tcp(80, 80), tcp(90, 89)), "security_group.rules[1].port_range_max"),
		invalidCase("sg vpc of another project", createSG(&v1.SecurityGroup{Vpc: apitest.VPC(apitest.ProjectA2)}), "security_group.vpc"),
		invalidCase("sg vpc does not exist", createSG(&v1.SecurityGroup{Vpc: a1 + "/vpcs/nope"}), "security_group.vpc"),
		invalidCase("sg update of immutable vpc", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Sec.UpdateSecurityGroup(ctx, &v1.UpdateSecurityGroupRequest{SecurityGroup: &v1.SecurityGroup{Name: apitest.SG(a1), Vpc: apitest.VPC2},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"vpc"}}})
			return err
		}, "update_mask"),
	}
}

func networkACLCases() []rejectCase {
	const r0 = "network_acl.rules[0]"
	in, out := v1.Direction_INGRESS, v1.Direction_EGRESS
	return []rejectCase{
		invalidCase("acl rule number 0", aclRules(aclRule(0, in, v1.Action_ALLOW)), r0+".number"),
		invalidCase("acl rule number 32767", aclRules(aclRule(32767, in, v1.Action_ALLOW)), r0+".number"),
		invalidCase("acl rule number twice in one direction", aclRules(aclRule(10, in, v1.Action_ALLOW), aclRule(10, in, v1.Action_DENY)), "network_acl.rules[1].number"),
		invalidCase("acl rule without action", aclRules(aclRule(10, in, v1.Action_ACTION_UNSPECIFIED)), r0+".action"),
		invalidCase("acl rule without direction", aclRules(aclRule(10, v1.Direction_DIRECTION_UNSPECIFIED, v1.Action_DENY)), r0+".direction"),
		invalidCase("acl rule cidr malformed", aclRules(&v1.NetworkAclRule{Number: 1, Direction: out, Action: v1.Action_DENY, Cidr: "0.0.0.0"}), r0+".cidr"),
		invalidCase("acl rule ports on icmp", aclRules(&v1.NetworkAclRule{Number: 1, Direction: out, Action: v1.Action_DENY, Protocol: "1", PortRangeMin: 5, PortRangeMax: 5}), r0+".port_range_min"),
		invalidCase("acl rule icmp code without type", aclRules(&v1.NetworkAclRule{Number: 1, Direction: out, Action: v1.Action_DENY, Protocol: "icmp", IcmpCode: i32(1)}), r0+".icmp_code"),
		invalidCase("acl vpc of another project", createACL(&v1.NetworkAcl{Vpc: apitest.VPC(apitest.ProjectB1)}), "network_acl.vpc"),
		invalidCase("acl vpc does not exist", createACL(&v1.NetworkAcl{Vpc: a1 + "/vpcs/nope"}), "network_acl.vpc"),
	}
}

func routeTableCases() []rejectCase {
	const r0 = "route_table.routes[0]"
	return []rejectCase{
		invalidCase("route with two targets", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopIp: "10.0.1.10", Blackhole: true}), r0),
		invalidCase("route with port and ip targets", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopIp: "10.0.1.10", NextHopPort: apitest.Port(a1)}), r0),
		invalidCase("route without target", routes(&v1.Route{Destination: "0.0.0.0/0"}), r0),
		invalidCase("route next-hop port of another vpc", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopPort: apitest.Port2}), r0+".next_hop_port"),
		invalidCase("route next-hop port of another project", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopPort: apitest.Port(apitest.ProjectA2)}), r0+".next_hop_port"),
		invalidCase("route next-hop port does not exist", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopPort: a1 + "/ports/nope"}), r0+".next_hop_port"),
		invalidCase("route next-hop ip outside the vpc", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopIp: "192.168.1.1"}), r0+".next_hop_ip"),
		invalidCase("route next-hop ip malformed", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopIp: "10.0.1"}), r0+".next_hop_ip"),
		invalidCase("route destination malformed", routes(&v1.Route{Destination: "default", Blackhole: true}), r0+".destination"),
		invalidCase("route destination twice", routes(&v1.Route{Destination: "1.0.0.0/8", Blackhole: true}, &v1.Route{Destination: "1.0.0.0/8", NextHopIp: "10.0.1.10"}), "route_table.routes[1].destination"),
		invalidCase("route table vpc of another project", createRT(&v1.RouteTable{Vpc: apitest.VPC(apitest.ProjectA2)}), "route_table.vpc"),
	}
}

func projectAndNodeCases() []rejectCase {
	return []rejectCase{
		invalidCase("project without organization", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "x", Project: &v1.Project{}})
			return err
		}, "project.organization"),
		invalidCase("project with a parent", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Project.CreateProject(ctx, &v1.CreateProjectRequest{Parent: "orgs/a", ProjectId: "x", Project: &v1.Project{Organization: apitest.OrgA}})
			return err
		}, "parent"),
		invalidCase("project negative quota", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "x", Project: &v1.Project{Organization: apitest.OrgA, Quota: &v1.Quota{Ports: -1}}})
			return err
		}, "project.quota.ports"),
		{name: "project already exists", code: codes.AlreadyExists, call: func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "a1", Project: &v1.Project{Organization: apitest.OrgA}})
			return err
		}},
		{name: "update of a project that does not exist", code: codes.NotFound, call: func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: "projects/nope", Description: "d"}})
			return err
		}},
		invalidCase("node without underlay ip", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Node.CreateNode(ctx, &v1.CreateNodeRequest{NodeId: "x", Node: &v1.Node{}})
			return err
		}, "node.underlay_ip"),
		invalidCase("node with unknown role", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Node.CreateNode(ctx, &v1.CreateNodeRequest{NodeId: "x", Node: &v1.Node{UnderlayIp: "192.0.2.9", Roles: []v1.NodeRole{42}}})
			return err
		}, "node.roles[0]"),
	}
}

func deleteCases() []rejectCase {
	fp := codes.FailedPrecondition
	return []rejectCase{
		{name: "delete subnet with ports", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.DeleteSubnet(ctx, &v1.DeleteSubnetRequest{Name: apitest.Subnet(a1)})
		})},
		{name: "delete security group used by a port", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: apitest.SG(a1)})
		})},
		{name: "delete security group used as a remote group", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: apitest.SGDB})
		})},
		{name: "delete vpc with subnets", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.DeleteVpc(ctx, &v1.DeleteVpcRequest{Name: apitest.VPC2})
		})},
		{name: "delete project with vpcs", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Project.DeleteProject(ctx, &v1.DeleteProjectRequest{Name: apitest.ProjectB1})
		})},
		{name: "delete network acl associated with a subnet", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Sec.DeleteNetworkAcl(ctx, &v1.DeleteNetworkAclRequest{Name: apitest.ACL(a1)})
		})},
		{name: "delete route table associated with a subnet", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.DeleteRouteTable(ctx, &v1.DeleteRouteTableRequest{Name: apitest.RT(a1)})
		})},
		{name: "delete node with bound ports", code: fp, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Node.DeleteNode(ctx, &v1.DeleteNodeRequest{Name: apitest.Node1})
		})},
		{name: "delete port with a stale etag", code: codes.Aborted, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port2, Etag: "1"})
		})},
		{name: "update vpc with a stale etag", code: codes.Aborted, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC2, Etag: "1", Description: "x"}})
		})},
		{name: "delete port that does not exist", code: codes.NotFound, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: a1 + "/ports/nope"})
		})},
		{name: "get vpc that does not exist", code: codes.NotFound, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.GetVpc(ctx, &v1.GetVpcRequest{Name: a1 + "/vpcs/nope"})
		})},
		{name: "get with a malformed name", code: codes.InvalidArgument, field: "name", call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.GetVpc(ctx, &v1.GetVpcRequest{Name: "vpcs/v"})
		})},
		{name: "delete port with validate_only still checks the etag", code: codes.Aborted, call: deleteCall(func(ctx context.Context, c *apitest.Client) (any, error) {
			return c.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port2, Etag: "2", ValidateOnly: true})
		})},
	}
}

// TestRejectedRequestsChangeNothing runs every validation rule: each
// request must fail with the right code, name the offending field, and
// leave the store revision and the audit log as they were.
func TestRejectedRequestsChangeNothing(t *testing.T) {
	e := apitest.Seeded(t)
	var cases []rejectCase
	for _, group := range [][]rejectCase{vpcCases(), subnetCases(), portCases(), securityGroupCases(), networkACLCases(),
		routeTableCases(), projectAndNodeCases(), deleteCases()} {
		cases = append(cases, group...)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.State()
			err := tc.call(apitest.Ctx(t), e.Admin)
			apitest.WantCode(t, err, tc.code, tc.field)
			if after := e.State(); after != before {
				t.Fatalf("rejected request changed the store: %+v -> %+v", before, after)
			}
		})
	}
}

// TestAcceptedEdgeCases are requests close to a rule's boundary that must
// succeed.
func TestAcceptedEdgeCases(t *testing.T) {
	e := apitest.Seeded(t)
	selfRef := a1 + "/securityGroups/x"
	cases := []struct {
		name string
		call call
	}{
		{"vpc cidr overlapping another vpc of the same project", vpcCIDRs("10.0.0.0/16")},
		{"vpc cidr bounds /8 and /28", vpcCIDRs("11.0.0.0/8", "10.200.0.0/28")},
		{"subnet at /29", subnetCIDR("10.0.2.0/29")},
		{"subnet with explicit gateway and dhcp", createSubnet(&v1.Subnet{CidrBlock: "10.0.3.0/24", GatewayIp: "10.0.3.254", Mtu: 8950,
			Dhcp: &v1.DhcpOptions{Enabled: true, DnsServers: []string{"10.0.3.2", "2001:db8::53"}, LeaseSeconds: 60}})},
		{"sg protocol by number with ports", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_INGRESS, Protocol: "6", PortRangeMin: 1, PortRangeMax: 65535})},
		{"sg icmp type and code 255", sgRules(icmp(i32(255), i32(255)))},
		{"sg rule referencing its own group", sgRules(remote("", selfRef))},
		{"sg protocol names in any case", sgRules(&v1.SecurityGroupRule{Direction: v1.Direction_EGRESS, Protocol: "UDP", PortRangeMin: 53, PortRangeMax: 53})},
		{"acl same number in both directions, bounds 1 and 32766", aclRules(aclRule(1, v1.Direction_INGRESS, v1.Action_ALLOW),
			aclRule(1, v1.Direction_EGRESS, v1.Action_DENY), aclRule(32766, v1.Direction_EGRESS, v1.Action_ALLOW))},
		{"route to next-hop port and ip in the vpc", routes(&v1.Route{Destination: "0.0.0.0/0", NextHopPort: apitest.Port(a1)},
			&v1.Route{Destination: "10.8.0.0/16", NextHopIp: "10.0.200.1"})},
		{"port with secondary ips and explicit mac", createPort(&v1.Port{MacAddress: "02:AA:00:00:00:01", SecondaryIps: []string{"10.0.1.50", "10.0.1.51"}})},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := e.State()
			if err := tc.call(apitest.Ctx(t), e.Admin); err != nil {
				t.Fatalf("refused: %v", err)
			}
			after := e.State()
			if after.Revision != before.Revision+1 || after.Audit != before.Audit+1 {
				t.Fatalf("accepted create: state %+v -> %+v, want one revision and one audit record", before, after)
			}
			cleanupX(t, e)
		})
	}
}

// cleanupX deletes whatever resource named "x" a case created in a1.
func cleanupX(t *testing.T, e *apitest.Env) {
	ctx, c := apitest.Ctx(t), e.Admin
	for _, del := range []func() error{
		func() error {
			_, err := c.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: a1 + "/ports/x"})
			return err
		},
		func() error {
			_, err := c.Net.DeleteRouteTable(ctx, &v1.DeleteRouteTableRequest{Name: a1 + "/routeTables/x"})
			return err
		},
		func() error {
			_, err := c.Sec.DeleteNetworkAcl(ctx, &v1.DeleteNetworkAclRequest{Name: a1 + "/networkAcls/x"})
			return err
		},
		func() error {
			_, err := c.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: a1 + "/securityGroups/x"})
			return err
		},
		func() error {
			_, err := c.Net.DeleteSubnet(ctx, &v1.DeleteSubnetRequest{Name: apitest.VPC(a1) + "/subnets/x"})
			return err
		},
		func() error { _, err := c.Net.DeleteVpc(ctx, &v1.DeleteVpcRequest{Name: a1 + "/vpcs/x"}); return err },
	} {
		if err := del(); err != nil && apitest.Code(err) != codes.NotFound {
			t.Fatalf("cleanup: %v", err)
		}
	}
}
