package apiserver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
)

// rel is where a request's target sits relative to the caller (seen from
// org-a's users: a1 is bob's project, a2 is in the same organisation, b1
// is in another).
type rel int

const (
	own rel = iota
	sameOrg
	otherOrg
)

func (r rel) String() string { return [...]string{"own", "same-org", "other-org"}[r] }

func (r rel) project() apitest.ProjectRef { return apitest.Projects[r] }

type role struct {
	name  string
	token string
}

var roles = []role{{"system-admin", apitest.AdminToken}, {"org-admin", apitest.OrgAdminToken}, {"user", apitest.UserToken}}

// op is one method of the API aimed at a project. ok is the code of an
// allowed call: every request is valid and non-destructive (validate_only,
// or a name that does not exist), so allowed calls have a fixed outcome.
type op struct {
	kind, method string
	ok           codes.Code
	call         func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error
}

func errOf(_ any, err error) error { return err }

// crudOps builds Create/Get/List/Update/Delete of a project-scoped kind.
func crudOps(kind string, create, get, list, update, del func(ctx context.Context, c *apitest.Client, p string) error) []op {
	wrap := func(f func(ctx context.Context, c *apitest.Client, p string) error) func(context.Context, *apitest.Client, apitest.ProjectRef) error {
		return func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error { return f(ctx, c, p.Name) }
	}
	return []op{
		{kind, "Create", codes.OK, wrap(create)}, {kind, "Get", codes.OK, wrap(get)}, {kind, "List", codes.OK, wrap(list)},
		{kind, "Update", codes.OK, wrap(update)}, {kind, "Delete", codes.NotFound, wrap(del)},
	}
}

func matrixOps() []op {
	desc := mask("description")
	var ops []op
	ops = append(ops, crudOps("Vpc",
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: p, VpcId: "new", Vpc: &v1.Vpc{CidrBlocks: []string{"10.9.0.0/16"}}, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.GetVpc(ctx, &v1.GetVpcRequest{Name: apitest.VPC(p)}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.ListVpcs(ctx, &v1.ListVpcsRequest{Parent: p}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC(p), Description: "d"}, UpdateMask: desc, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.DeleteVpc(ctx, &v1.DeleteVpcRequest{Name: p + "/vpcs/nope"}))
		})...)
	ops = append(ops, crudOps("Subnet",
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: apitest.VPC(p), SubnetId: "new", Subnet: &v1.Subnet{CidrBlock: "10.0.2.0/24"}, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.GetSubnet(ctx, &v1.GetSubnetRequest{Name: apitest.Subnet(p)}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.ListSubnets(ctx, &v1.ListSubnetsRequest{Parent: apitest.VPC(p)}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.UpdateSubnet(ctx, &v1.UpdateSubnetRequest{Subnet: &v1.Subnet{Name: apitest.Subnet(p), Description: "d"}, UpdateMask: desc, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.DeleteSubnet(ctx, &v1.DeleteSubnetRequest{Name: apitest.VPC(p) + "/subnets/nope"}))
		})...)
	ops = append(ops, crudOps("Port",
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: p, PortId: "new", Port: &v1.Port{Subnet: apitest.Subnet(p)}, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.GetPort(ctx, &v1.GetPortRequest{Name: apitest.Port(p)}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.ListPorts(ctx, &v1.ListPortsRequest{Parent: p}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(p), Description: "d"}, UpdateMask: desc, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: p + "/ports/nope"}))
		})...)
	ops = append(ops, crudOps("RouteTable",
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.CreateRouteTable(ctx, &v1.CreateRouteTableRequest{Parent: p, RouteTableId: "new", RouteTable: &v1.RouteTable{Vpc: apitest.VPC(p)}, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.GetRouteTable(ctx, &v1.GetRouteTableRequest{Name: apitest.RT(p)}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.ListRouteTables(ctx, &v1.ListRouteTablesRequest{Parent: p}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.UpdateRouteTable(ctx, &v1.UpdateRouteTableRequest{RouteTable: &v1.RouteTable{Name: apitest.RT(p), Description: "d"}, UpdateMask: desc, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Net.DeleteRouteTable(ctx, &v1.DeleteRouteTableRequest{Name: p + "/routeTables/nope"}))
		})...)
	ops = append(ops, crudOps("SecurityGroup",
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.CreateSecurityGroup(ctx, &v1.CreateSecurityGroupRequest{Parent: p, SecurityGroupId: "new", SecurityGroup: &v1.SecurityGroup{Vpc: apitest.VPC(p)}, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.GetSecurityGroup(ctx, &v1.GetSecurityGroupRequest{Name: apitest.SG(p)}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.ListSecurityGroups(ctx, &v1.ListSecurityGroupsRequest{Parent: p}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.UpdateSecurityGroup(ctx, &v1.UpdateSecurityGroupRequest{SecurityGroup: &v1.SecurityGroup{Name: apitest.SG(p), Description: "d"}, UpdateMask: desc, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: p + "/securityGroups/nope"}))
		})...)
	ops = append(ops, crudOps("NetworkAcl",
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.CreateNetworkAcl(ctx, &v1.CreateNetworkAclRequest{Parent: p, NetworkAclId: "new", NetworkAcl: &v1.NetworkAcl{Vpc: apitest.VPC(p)}, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.GetNetworkAcl(ctx, &v1.GetNetworkAclRequest{Name: apitest.ACL(p)}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.ListNetworkAcls(ctx, &v1.ListNetworkAclsRequest{Parent: p}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.UpdateNetworkAcl(ctx, &v1.UpdateNetworkAclRequest{NetworkAcl: &v1.NetworkAcl{Name: apitest.ACL(p), Description: "d"}, UpdateMask: desc, ValidateOnly: true}))
		},
		func(ctx context.Context, c *apitest.Client, p string) error {
			return errOf(c.Sec.DeleteNetworkAcl(ctx, &v1.DeleteNetworkAclRequest{Name: p + "/networkAcls/nope"}))
		})...)
	ops = append(ops,
		op{"Project", "Create", codes.OK, func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error {
			return errOf(c.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "new", Project: &v1.Project{Organization: p.Org}, ValidateOnly: true}))
		}},
		op{"Project", "Get", codes.OK, func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error {
			return errOf(c.Project.GetProject(ctx, &v1.GetProjectRequest{Name: p.Name}))
		}},
		op{"Project", "Update", codes.OK, func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error {
			return errOf(c.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: p.Name, Description: "d"}, UpdateMask: desc, ValidateOnly: true}))
		}},
		// Allowed deletes of a seeded project fail because it still has VPCs.
		op{"Project", "Delete", codes.FailedPrecondition, func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error {
			return errOf(c.Project.DeleteProject(ctx, &v1.DeleteProjectRequest{Name: p.Name, ValidateOnly: true}))
		}},
		op{"AuditRecord", "List", codes.OK, func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error {
			return errOf(c.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Project: p.Name}))
		}},
		// An allowed watch blocks waiting for events until its deadline.
		op{"Watch", "Watch", codes.DeadlineExceeded, func(ctx context.Context, c *apitest.Client, p apitest.ProjectRef) error {
			ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond) // a refusal comes at once
			defer cancel()
			s, err := c.Watch.Watch(ctx, &v1.WatchRequest{Parent: p.Name})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}},
	)
	return ops
}

// untargetedOps are methods whose permission does not depend on a project.
func untargetedOps() []op {
	return []op{
		{"Node", "Create", codes.OK, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.Node.CreateNode(ctx, &v1.CreateNodeRequest{NodeId: "new", Node: &v1.Node{UnderlayIp: "192.0.2.7"}, ValidateOnly: true}))
		}},
		{"Node", "Get", codes.OK, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.Node.GetNode(ctx, &v1.GetNodeRequest{Name: apitest.Node1}))
		}},
		{"Node", "List", codes.OK, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.Node.ListNodes(ctx, &v1.ListNodesRequest{}))
		}},
		{"Node", "Update", codes.OK, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.Node.UpdateNode(ctx, &v1.UpdateNodeRequest{Node: &v1.Node{Name: apitest.Node1, Description: "d"}, UpdateMask: mask("description"), ValidateOnly: true}))
		}},
		{"Node", "Delete", codes.NotFound, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.Node.DeleteNode(ctx, &v1.DeleteNodeRequest{Name: "nodes/nope"}))
		}},
		{"Project", "List", codes.OK, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.Project.ListProjects(ctx, &v1.ListProjectsRequest{}))
		}},
		{"AuditRecord", "ListAll", codes.OK, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{}))
		}},
		{"Identity", "WhoAmI", codes.OK, func(ctx context.Context, c *apitest.Client, _ apitest.ProjectRef) error {
			return errOf(c.ID.WhoAmI(ctx, &v1.WhoAmIRequest{}))
		}},
	}
}

// allowed is the policy the matrix expects, written independently of
// auth.Authorize.
func allowed(role, kind, method string, r rel) bool {
	switch {
	case role == "system-admin":
		return true
	case kind == "Identity" || kind == "Project" && method == "List":
		return true
	case kind == "Node":
		return false
	case kind == "AuditRecord":
		return role == "org-admin" && r != otherOrg
	case role == "org-admin":
		return r != otherOrg
	case kind == "Project" && (method == "Create" || method == "Delete"):
		return false
	}
	return r == own
}

// TestAuthorizationMatrix calls every method as every role on a target in
// the caller's own project, another project of its organisation and a
// project of another organisation.
func TestAuthorizationMatrix(t *testing.T) {
	e := apitest.Seeded(t)
	before := e.State()
	type row struct {
		role role
		op   op
		rel  rel
	}
	var rows []row
	for _, ro := range roles {
		for _, o := range matrixOps() {
			for _, r := range []rel{own, sameOrg, otherOrg} {
				rows = append(rows, row{ro, o, r})
			}
		}
		for _, o := range untargetedOps() {
			rows = append(rows, row{ro, o, own})
		}
	}
	clients := map[string]*apitest.Client{}
	for _, ro := range roles {
		clients[ro.name] = e.Client(ro.token)
	}
	for _, r := range rows {
		t.Run(fmt.Sprintf("%s/%s%s/%s", r.role.name, r.op.method, r.op.kind, r.rel), func(t *testing.T) {
			want := codes.PermissionDenied
			if allowed(r.role.name, r.op.kind, r.op.method, r.rel) {
				want = r.op.ok
			}
			err := r.op.call(apitest.Ctx(t), clients[r.role.name], r.rel.project())
			apitest.WantCode(t, err, want, "")
		})
	}
	if after := e.State(); after != before {
		t.Fatalf("the matrix changed the store: %+v -> %+v", before, after)
	}
}

func TestUnauthenticatedCallsAreRefused(t *testing.T) {
	e := apitest.Seeded(t)
	for name, c := range map[string]*apitest.Client{"no token": e.Client(""), "unknown token": e.Client("not-a-known-token")} {
		t.Run(name, func(t *testing.T) {
			for _, o := range append(matrixOps(), untargetedOps()...) {
				if err := o.call(apitest.Ctx(t), c, apitest.Projects[0]); apitest.Code(err) != codes.Unauthenticated {
					t.Errorf("%s%s: %v, want Unauthenticated", o.method, o.kind, err)
				}
			}
		})
	}
}

func TestListProjectsShowsOnlyVisibleProjects(t *testing.T) {
	e := apitest.Seeded(t)
	for _, tc := range []struct {
		c    *apitest.Client
		name string
		want []string
	}{
		{e.Admin, "system-admin", []string{apitest.ProjectA1, apitest.ProjectA2, apitest.ProjectB1}},
		{e.OrgAdmin, "org-admin", []string{apitest.ProjectA1, apitest.ProjectA2}},
		{e.User, "user", []string{apitest.ProjectA1}},
		{e.UserB, "user of another org", []string{apitest.ProjectB1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := apitest.Must[*v1.ListProjectsResponse](t)(tc.c.Project.ListProjects(apitest.Ctx(t), &v1.ListProjectsRequest{}))
			var got []string
			for _, p := range resp.Projects {
				got = append(got, p.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("projects = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWatchDeliversOnlyVisibleEvents: a user watching everything sees the
// changes of its own project only, not those of other projects or nodes.
func TestWatchDeliversOnlyVisibleEvents(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	from := e.Store.Revision()
	for _, p := range apitest.Projects {
		e.Ok(e.Admin.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC(p.Name), Description: "changed"}, UpdateMask: mask("description")}))
	}
	e.Ok(e.Admin.Node.UpdateNode(ctx, &v1.UpdateNodeRequest{Node: &v1.Node{Name: apitest.Node2, Description: "changed"}, UpdateMask: mask("description")}))
	for _, tc := range []struct {
		c    *apitest.Client
		name string
		want []string
	}{
		{e.User, "user", []string{apitest.VPC(apitest.ProjectA1)}},
		{e.OrgAdmin, "org-admin", []string{apitest.VPC(apitest.ProjectA1), apitest.VPC(apitest.ProjectA2)}},
		{e.Admin, "system-admin", []string{apitest.VPC(apitest.ProjectA1), apitest.VPC(apitest.ProjectA2), apitest.VPC(apitest.ProjectB1), apitest.Node2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs := watchUntil(t, tc.c, &v1.WatchRequest{FromRevision: from}, e.Store.Revision())
			var got []string
			for _, ev := range evs {
				got = append(got, resourceName(ev.Resource))
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("events for %v, want %v", got, tc.want)
			}
		})
	}
}

// watchUntil collects the events of a watch until the stream has gone
// quiet for a moment after revision last was due (events the caller may
// not see are never sent, so their absence is all there is to observe).
func watchUntil(t *testing.T, c *apitest.Client, req *v1.WatchRequest, last int64) []*v1.WatchEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(apitest.Ctx(t), 500*time.Millisecond)
	defer cancel()
	s, err := c.Watch.Watch(ctx, req)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	var out []*v1.WatchEvent
	for {
		ev, err := s.Recv()
		if err != nil {
			if apitest.Code(err) != codes.DeadlineExceeded && !errors.Is(err, io.EOF) {
				t.Fatalf("watch: %v", err)
			}
			return out
		}
		out = append(out, ev)
		if ev.Revision >= last {
			return out
		}
	}
}

func resourceName(r *v1.Resource) string {
	switch k := r.Kind.(type) {
	case *v1.Resource_Project:
		return k.Project.Name
	case *v1.Resource_Vpc:
		return k.Vpc.Name
	case *v1.Resource_Subnet:
		return k.Subnet.Name
	case *v1.Resource_Port:
		return k.Port.Name
	case *v1.Resource_SecurityGroup:
		return k.SecurityGroup.Name
	case *v1.Resource_NetworkAcl:
		return k.NetworkAcl.Name
	case *v1.Resource_RouteTable:
		return k.RouteTable.Name
	case *v1.Resource_Node:
		return k.Node.Name
	}
	return ""
}

// TestAuditListingIsFilteredToTheCallersOrganisation: an org-admin's
// listing holds exactly the records of its organisation's projects, also
// of a project that has since been deleted.
func TestAuditListingIsFilteredToTheCallersOrganisation(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	e.Ok(e.OrgAdmin.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "gone", Project: &v1.Project{Organization: apitest.OrgA}}))
	e.Ok(e.OrgAdmin.Project.DeleteProject(ctx, &v1.DeleteProjectRequest{Name: "projects/gone"}))
	all := apitest.Must[*v1.ListAuditRecordsResponse](t)(e.Admin.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{PageSize: 1000}))
	var want []string
	for _, r := range all.Records {
		if r.Project == apitest.ProjectA1 || r.Project == apitest.ProjectA2 || r.Project == "projects/gone" {
			want = append(want, fmt.Sprint(r.Revision))
		}
	}
	var got []string
	for token := ""; ; {
		resp := apitest.Must[*v1.ListAuditRecordsResponse](t)(e.OrgAdmin.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{PageSize: 7, PageToken: token}))
		for _, r := range resp.Records {
			got = append(got, fmt.Sprint(r.Revision))
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if len(want) < 10 || !slices.Equal(got, want) {
		t.Fatalf("org-admin sees records at revisions %v, want %v", got, want)
	}
	_, err := e.User.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Project: apitest.ProjectA1})
	apitest.WantCode(t, err, codes.PermissionDenied, "")
}

// TestWatchFollowsProjectDeletionAndRecreation: a long-running watch of an
// org-admin sees a project of its organisation deleted, and nothing of a
// project re-created under the same name in another organisation.
func TestWatchFollowsProjectDeletionAndRecreation(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	from := e.Store.Revision()
	project := func(org string) {
		e.Ok(e.Admin.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "x", Project: &v1.Project{Organization: org}}))
		e.Ok(e.Admin.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: "projects/x", VpcId: "v", Vpc: &v1.Vpc{CidrBlocks: []string{"10.0.0.0/16"}, Description: org}}))
	}
	project(apitest.OrgA)
	e.Ok(e.Admin.Net.DeleteVpc(ctx, &v1.DeleteVpcRequest{Name: "projects/x/vpcs/v"}))
	e.Ok(e.Admin.Project.DeleteProject(ctx, &v1.DeleteProjectRequest{Name: "projects/x"}))
	project(apitest.OrgB)
	evs := watchUntil(t, e.OrgAdmin, &v1.WatchRequest{FromRevision: from}, e.Store.Revision())
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Type.String()+" "+resourceName(ev.Resource))
	}
	// Replayed, the history is judged by the organisation of the time:
	// all of org-a's project x, nothing of org-b's.
	want := []string{"PUT projects/x", "PUT projects/x/vpcs/v", "DELETE projects/x/vpcs/v", "DELETE projects/x"}
	if !slices.Equal(got, want) {
		t.Fatalf("org-admin of %s saw %v", apitest.OrgA, got)
	}
}
