package apitest

import (
	"fmt"
	"strings"
	"testing"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// Names of the seeded resources inside a project p.
func VPC(p string) string    { return p + "/vpcs/v" }
func Subnet(p string) string { return VPC(p) + "/subnets/s" }
func SG(p string) string     { return p + "/securityGroups/sg" }
func ACL(p string) string    { return p + "/networkAcls/acl" }
func RT(p string) string     { return p + "/routeTables/rt" }
func Port(p string) string   { return p + "/ports/p" }

// Seeded nodes.
const (
	Node1 = "nodes/n1"
	Node2 = "nodes/n2"
)

// Extra resources seeded in ProjectA1 only.
const (
	VPC2     = ProjectA1 + "/vpcs/v2"            // 10.0.0.0/16 too: overlaps v, which is allowed
	Subnet2  = VPC2 + "/subnets/s2"              // 10.0.1.0/24
	SGOther  = ProjectA1 + "/securityGroups/oth" // in v2
	Port2    = ProjectA1 + "/ports/p2"           // in s2
	SGDB     = ProjectA1 + "/securityGroups/db"  // used only as a remote group of SGWeb
	SGWeb    = ProjectA1 + "/securityGroups/web" // rules: from SGDB, from itself
	PortIP   = "10.0.1.10"                       // fixed IP of every seeded port p
	PortMAC  = "02:00:00:00:01:10"               // MAC of ProjectA1's port p
	SubnetGW = "10.0.1.1"
)

// ProjectRef is a project and its organisation.
type ProjectRef struct{ Name, Org string }

// Projects lists the seeded projects: a1, a2, b1.
var Projects = []ProjectRef{{ProjectA1, OrgA}, {ProjectA2, OrgA}, {ProjectB1, OrgB}}

// Seed creates the fixed topology as the system administrator:
//
//	nodes n1, n2
//	projects a1, a2 (org-a), b1 (org-b), each with VPC v 10.0.0.0/16,
//	  network ACL acl, route table rt, subnet s 10.0.1.0/24 (using acl, rt),
//	  security group sg (ingress tcp/22) and port p 10.0.1.10 in s, in sg, on n1
//	a1 also: VPC v2 with subnet s2 and group oth, port p2 in s2,
//	  groups db and web (web allows from db and from itself).
func (e *Env) Seed() {
	e.T.Helper()
	ctx, c := Ctx(e.T), e.Admin
	for _, n := range []string{"n1", "n2"} {
		e.Ok(c.Node.CreateNode(ctx, &v1.CreateNodeRequest{NodeId: n, Node: &v1.Node{UnderlayIp: "192.0.2.1"}}))
	}
	for i, p := range Projects {
		id := p.Name[len("projects/"):]
		e.Ok(c.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: id, Project: &v1.Project{Organization: p.Org}}))
		e.seedNetwork(p.Name, "v", "s", "sg", "p", fmt.Sprintf("02:00:00:00:%02x:10", i+1), true)
	}
	e.seedNetwork(ProjectA1, "v2", "s2", "oth", "p2", "", false)
	e.Ok(c.Sec.CreateSecurityGroup(ctx, &v1.CreateSecurityGroupRequest{Parent: ProjectA1, SecurityGroupId: "db",
		SecurityGroup: &v1.SecurityGroup{Vpc: VPC(ProjectA1)}}))
	e.Ok(c.Sec.CreateSecurityGroup(ctx, &v1.CreateSecurityGroupRequest{Parent: ProjectA1, SecurityGroupId: "web",
		SecurityGroup: &v1.SecurityGroup{Vpc: VPC(ProjectA1), Rules: []*v1.SecurityGroupRule{
			{Direction: v1.Direction_INGRESS, Protocol: "tcp", PortRangeMin: 5432, PortRangeMax: 5432, RemoteSecurityGroup: SGDB},
			{Direction: v1.Direction_INGRESS, Protocol: "all", RemoteSecurityGroup: SGWeb},
		}}}))
}

// seedNetwork creates VPC vpc, subnet sn, group sg and port port in project
// p; full adds the ACL and route table (associated with the subnet), a
// fixed IP, the MAC and a binding to Node1.
func (e *Env) seedNetwork(p, vpc, sn, sg, port, mac string, full bool) {
	e.T.Helper()
	ctx, c := Ctx(e.T), e.Admin
	vpcName := p + "/vpcs/" + vpc
	e.Ok(c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: p, VpcId: vpc, Vpc: &v1.Vpc{CidrBlocks: []string{"10.0.0.0/16"}}}))
	subnet := &v1.Subnet{CidrBlock: "10.0.1.0/24"}
	pt := &v1.Port{Subnet: vpcName + "/subnets/" + sn, SecurityGroups: []string{p + "/securityGroups/" + sg}}
	if full {
		e.Ok(c.Sec.CreateNetworkAcl(ctx, &v1.CreateNetworkAclRequest{Parent: p, NetworkAclId: "acl", NetworkAcl: &v1.NetworkAcl{Vpc: vpcName,
			Rules: []*v1.NetworkAclRule{{Number: 100, Action: v1.Action_ALLOW, Direction: v1.Direction_INGRESS, Protocol: "all"}}}}))
		e.Ok(c.Net.CreateRouteTable(ctx, &v1.CreateRouteTableRequest{Parent: p, RouteTableId: "rt", RouteTable: &v1.RouteTable{Vpc: vpcName,
			Routes: []*v1.Route{{Destination: "192.168.0.0/16", Blackhole: true}}}}))
		subnet.NetworkAcl, subnet.RouteTable = ACL(p), RT(p)
		pt.FixedIps, pt.MacAddress, pt.Node = []string{PortIP}, mac, Node1
	}
	e.Ok(c.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: vpcName, SubnetId: sn, Subnet: subnet}))
	e.Ok(c.Sec.CreateSecurityGroup(ctx, &v1.CreateSecurityGroupRequest{Parent: p, SecurityGroupId: sg, SecurityGroup: &v1.SecurityGroup{Vpc: vpcName,
		Rules: []*v1.SecurityGroupRule{{Direction: v1.Direction_INGRESS, Protocol: "tcp", PortRangeMin: 22, PortRangeMax: 22}}}}))
	e.Ok(c.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: p, PortId: port, Port: pt}))
}

// Seeded starts an Env with the seeded topology.
func Seeded(t testing.TB) *Env {
	e := New(t, Options{})
	e.Seed()
	return e
}

// ProjectOf returns the project part of a resource name.
func ProjectOf(name string) string {
	if i := strings.Index(strings.TrimPrefix(name, "projects/"), "/"); strings.HasPrefix(name, "projects/") && i >= 0 {
		return name[:len("projects/")+i]
	}
	return name
}
