package apiserver_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
)

func mask(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }

func TestUpdateChangesOnlyMaskedFields(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	vpc := apitest.Must[*v1.Vpc](t)(e.Admin.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{
		Vpc:        &v1.Vpc{Name: apitest.VPC(a1), Description: "new", Labels: map[string]string{"ignored": "yes"}, CidrBlocks: []string{"10.0.0.0/16", "10.1.0.0/16"}},
		UpdateMask: mask("description")}))
	if vpc.Description != "new" || len(vpc.Labels) != 0 || len(vpc.CidrBlocks) != 1 {
		t.Fatalf("masked update changed unmasked fields: %v", vpc)
	}
	// A field in the mask but unset in the request is cleared.
	vpc = apitest.Must[*v1.Vpc](t)(e.Admin.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC(a1)}, UpdateMask: mask("description")}))
	if vpc.Description != "" {
		t.Fatalf("description not cleared: %q", vpc.Description)
	}
}

func TestUpdateAcceptsCamelCaseMaskPaths(t *testing.T) {
	e := apitest.Seeded(t)
	p := apitest.Must[*v1.Port](t)(e.Admin.Net.UpdatePort(apitest.Ctx(t), &v1.UpdatePortRequest{
		Port:       &v1.Port{Name: apitest.Port(a1), SecurityGroups: []string{apitest.SGDB}, DeviceId: "vm-1", DisableSourceDestCheck: true},
		UpdateMask: mask("securityGroups", "disableSourceDestCheck")}))
	if !slices.Equal(p.SecurityGroups, []string{apitest.SGDB}) || !p.DisableSourceDestCheck || p.SourceDestCheck || p.DeviceId != "" {
		t.Fatalf("camelCase mask: got %v", p)
	}
}

func TestNoOpUpdateCreatesNoRevisionAndNoAuditRecord(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	old := apitest.Must[*v1.Subnet](t)(e.Admin.Net.GetSubnet(ctx, &v1.GetSubnetRequest{Name: apitest.Subnet(a1)}))
	before := e.State()
	got := apitest.Must[*v1.Subnet](t)(e.Admin.Net.UpdateSubnet(ctx, &v1.UpdateSubnetRequest{Subnet: old}))
	if after := e.State(); after != before {
		t.Fatalf("no-op update changed state %+v -> %+v", before, after)
	}
	if got.Etag != old.Etag {
		t.Fatalf("etag changed on a no-op update: %s -> %s", old.Etag, got.Etag)
	}
}

func TestEtagGuardsUpdatesAndDeletes(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	sg := apitest.Must[*v1.SecurityGroup](t)(e.Admin.Sec.GetSecurityGroup(ctx, &v1.GetSecurityGroupRequest{Name: apitest.SGOther}))
	first := sg.Etag
	sg.Description = "v2"
	sg = apitest.Must[*v1.SecurityGroup](t)(e.Admin.Sec.UpdateSecurityGroup(ctx, &v1.UpdateSecurityGroupRequest{SecurityGroup: sg, UpdateMask: mask("description")}))
	if apitest.EtagRev(t, sg.Etag) <= apitest.EtagRev(t, first) {
		t.Fatalf("etag did not advance: %s -> %s", first, sg.Etag)
	}
	_, err := e.Admin.Sec.UpdateSecurityGroup(ctx, &v1.UpdateSecurityGroupRequest{SecurityGroup: &v1.SecurityGroup{Name: apitest.SGOther, Etag: first, Description: "v3"}})
	apitest.WantCode(t, err, codes.Aborted, "")
	_, err = e.Admin.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: apitest.SGOther, Etag: first})
	apitest.WantCode(t, err, codes.Aborted, "")
	_, err = e.Admin.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port2})
	e.Ok(nil, err)
	e.Ok(e.Admin.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: apitest.SGOther, Etag: sg.Etag}))
}

func TestValidateOnlyStoresNothing(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	before := e.State()
	vpc := apitest.Must[*v1.Vpc](t)(e.Admin.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: a1, VpcId: "dry", Vpc: &v1.Vpc{CidrBlocks: []string{"10.7.0.0/16"}}, ValidateOnly: true}))
	if vpc.Name != a1+"/vpcs/dry" || vpc.Vni == 0 {
		t.Fatalf("validate_only create should answer the would-be resource: %v", vpc)
	}
	e.Ok(e.Admin.Net.UpdateSubnet(ctx, &v1.UpdateSubnetRequest{Subnet: &v1.Subnet{Name: apitest.Subnet(a1), Mtu: 1400}, UpdateMask: mask("mtu"), ValidateOnly: true}))
	e.Ok(e.Admin.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port2, ValidateOnly: true}))
	e.Ok(e.Admin.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: "dry", Port: &v1.Port{Subnet: apitest.Subnet(a1)}, ValidateOnly: true}))
	if after := e.State(); after != before {
		t.Fatalf("validate_only changed state %+v -> %+v", before, after)
	}
	_, err := e.Admin.Net.GetVpc(ctx, &v1.GetVpcRequest{Name: a1 + "/vpcs/dry"})
	apitest.WantCode(t, err, codes.NotFound, "")
	e.Ok(e.Admin.Net.GetPort(ctx, &v1.GetPortRequest{Name: apitest.Port2}))
	sn := apitest.Must[*v1.Subnet](t)(e.Admin.Net.GetSubnet(ctx, &v1.GetSubnetRequest{Name: apitest.Subnet(a1)}))
	if sn.Mtu != 1450 {
		t.Fatalf("validate_only update stored mtu %d", sn.Mtu)
	}
}

func ruleIDs(rules []*v1.SecurityGroupRule) map[string]uint32 {
	m := map[string]uint32{}
	for _, r := range rules {
		m[fmt.Sprintf("%s/%d-%d/%s", r.Protocol, r.PortRangeMin, r.PortRangeMax, r.RemoteSecurityGroup)] = r.Id
	}
	return m
}

func TestRuleIDsStayStableWhenOtherRulesChange(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	web := apitest.Must[*v1.SecurityGroup](t)(e.Admin.Sec.GetSecurityGroup(ctx, &v1.GetSecurityGroupRequest{Name: apitest.SGWeb}))
	ids := ruleIDs(web.Rules)
	update := func(rules []*v1.SecurityGroupRule) map[string]uint32 {
		sg := apitest.Must[*v1.SecurityGroup](t)(e.Admin.Sec.UpdateSecurityGroup(ctx, &v1.UpdateSecurityGroupRequest{
			SecurityGroup: &v1.SecurityGroup{Name: apitest.SGWeb, Rules: rules}, UpdateMask: mask("rules")}))
		return ruleIDs(sg.Rules)
	}
	added := update(append([]*v1.SecurityGroupRule{tcp(443, 443)}, web.Rules...)) // new rule first: order must not matter
	for k, id := range ids {
		if added[k] != id {
			t.Fatalf("adding a rule renumbered %s: %d -> %d", k, id, added[k])
		}
	}
	newID := added["tcp/443-443/"]
	if newID == 0 || slices.Contains(slices.Collect(mapValues(ids)), newID) {
		t.Fatalf("new rule got ID %d, old IDs %v", newID, ids)
	}
	removed := update([]*v1.SecurityGroupRule{web.Rules[1], tcp(443, 443)})
	if len(removed) != 2 || removed["tcp/443-443/"] != newID || removed["all/0-0/"+apitest.SGWeb] != ids["all/0-0/"+apitest.SGWeb] {
		t.Fatalf("removing a rule renumbered the others: before %v, after %v", added, removed)
	}
}

func mapValues(m map[string]uint32) func(func(uint32) bool) {
	return func(yield func(uint32) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

func TestSecondaryIPsAreReservedAndReleased(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	const extra = "10.0.1.60"
	setSecondary := func(ips ...string) {
		e.Ok(e.Admin.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1), SecondaryIps: ips}, UpdateMask: mask("secondary_ips")}))
	}
	takeByOther := func() error {
		_, err := e.Admin.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: "other", Port: &v1.Port{Subnet: apitest.Subnet(a1), FixedIps: []string{extra}}})
		return err
	}
	setSecondary(extra)
	apitest.WantCode(t, takeByOther(), codes.InvalidArgument, "port.fixed_ips[0]")
	setSecondary("10.0.1.61") // replaces: extra is released, .61 reserved
	if err := takeByOther(); err != nil {
		t.Fatalf("released secondary address not reusable: %v", err)
	}
	_, err := e.Admin.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1), SecondaryIps: []string{"10.0.1.61", extra}}, UpdateMask: mask("secondary_ips")})
	apitest.WantCode(t, err, codes.InvalidArgument, "port.secondary_ips[1]")
}

func TestPortMigrationKeepsIPAndMAC(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	before := apitest.Must[*v1.Port](t)(e.Admin.Net.GetPort(ctx, &v1.GetPortRequest{Name: apitest.Port(a1)}))
	after := apitest.Must[*v1.Port](t)(e.User.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1), Node: apitest.Node2}, UpdateMask: mask("node")}))
	for _, p := range apitest.Projects[1:] {
		e.Ok(e.Admin.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(p.Name)}, UpdateMask: mask("node")})) // unbind
	}
	if after.Node != apitest.Node2 || after.MacAddress != before.MacAddress || !slices.Equal(after.FixedIps, before.FixedIps) || after.Id != before.Id {
		t.Fatalf("migration: before %v, after %v", before, after)
	}
	// n1 has no bound ports any more, so it can go; n2 cannot.
	e.Ok(e.Admin.Node.DeleteNode(ctx, &v1.DeleteNodeRequest{Name: apitest.Node1}))
	_, err := e.Admin.Node.DeleteNode(ctx, &v1.DeleteNodeRequest{Name: apitest.Node2})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
}

func TestQuotas(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	e.Ok(e.OrgAdmin.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "q", Project: &v1.Project{Organization: apitest.OrgA,
		Quota: &v1.Quota{Vpcs: 1, Ports: 2, SecurityGroupRules: 1}}}))
	e.Ok(e.Admin.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: "projects/q", VpcId: "v", Vpc: &v1.Vpc{CidrBlocks: []string{"10.0.0.0/16"}}}))
	e.Ok(e.Admin.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: "projects/q/vpcs/v", SubnetId: "s", Subnet: &v1.Subnet{CidrBlock: "10.0.0.0/24"}}))
	port := func(id string) error {
		_, err := e.Admin.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: "projects/q", PortId: id, Port: &v1.Port{Subnet: "projects/q/vpcs/v/subnets/s"}})
		return err
	}
	e.Ok(nil, port("p1"))
	e.Ok(nil, port("p2"))
	for _, tc := range []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"third port exceeds the quota of 2", func() error { return port("p3") }, codes.FailedPrecondition, ""},
		{"second vpc exceeds the quota of 1", func() error {
			_, err := e.Admin.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: "projects/q", VpcId: "w", Vpc: &v1.Vpc{CidrBlocks: []string{"10.1.0.0/16"}}})
			return err
		}, codes.FailedPrecondition, ""},
		{"two rules exceed the rule quota of 1", func() error {
			_, err := e.Admin.Sec.CreateSecurityGroup(ctx, &v1.CreateSecurityGroupRequest{Parent: "projects/q", SecurityGroupId: "g",
				SecurityGroup: &v1.SecurityGroup{Vpc: "projects/q/vpcs/v", Rules: []*v1.SecurityGroupRule{tcp(1, 1), tcp(2, 2)}}})
			return err
		}, codes.InvalidArgument, "security_group.rules"},
		{"a user cannot raise the quota of its own project", func() error {
			_, err := e.User.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: a1, Quota: &v1.Quota{Ports: 5}}, UpdateMask: mask("quota")})
			return err
		}, codes.PermissionDenied, ""},
		{"a user cannot create a project with a quota", func() error {
			_, err := e.User.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "u", Project: &v1.Project{Organization: apitest.OrgA, Quota: &v1.Quota{Ports: 5}}})
			return err
		}, codes.PermissionDenied, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.State()
			apitest.WantCode(t, tc.call(), tc.code, tc.field)
			if after := e.State(); after != before {
				t.Fatalf("rejected request changed state %+v -> %+v", before, after)
			}
		})
	}
	// Users may still edit their project's other fields; the usage reflects the counts.
	e.Ok(e.User.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: a1, Description: "mine"}, UpdateMask: mask("description")}))
	q := apitest.Must[*v1.Project](t)(e.OrgAdmin.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: "projects/q", Quota: &v1.Quota{Vpcs: 1, Ports: 3}}, UpdateMask: mask("quota")}))
	if q.Usage.GetPorts() != 2 || q.Usage.GetVpcs() != 1 || q.Usage.GetSubnets() != 1 {
		t.Fatalf("usage = %v", q.Usage)
	}
	e.Ok(nil, port("p3"))
}

func TestAuditRecordsEveryMutationOnce(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	last := func() *v1.AuditRecord {
		recs := apitest.Must[*v1.ListAuditRecordsResponse](t)(e.Admin.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{PageSize: 1000}))
		if len(recs.Records) != e.AuditCount() {
			t.Fatalf("listing has %d records, store %d", len(recs.Records), e.AuditCount())
		}
		return recs.Records[len(recs.Records)-1]
	}
	name := a1 + "/vpcs/audited"
	steps := []struct {
		method        string
		do            func() error
		before, after bool
	}{
		{"CreateVpc", func() error {
			_, err := e.User.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: a1, VpcId: "audited", Vpc: &v1.Vpc{CidrBlocks: []string{"10.5.0.0/16"}}})
			return err
		}, false, true},
		{"UpdateVpc", func() error {
			_, err := e.User.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: name, Description: "after"}, UpdateMask: mask("description")})
			return err
		}, true, true},
		{"DeleteVpc", func() error { _, err := e.User.Net.DeleteVpc(ctx, &v1.DeleteVpcRequest{Name: name}); return err }, true, false},
	}
	for _, s := range steps {
		before := e.State()
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.method, err)
		}
		after := e.State()
		if after.Audit != before.Audit+1 || after.Revision != before.Revision+1 {
			t.Fatalf("%s: state %+v -> %+v, want exactly one record and one revision", s.method, before, after)
		}
		rec := last()
		if rec.Subject != "bob" || rec.Role != "user" || rec.Method != s.method || rec.Resource != name || rec.Project != a1 ||
			rec.Revision != after.Revision || (rec.Before != "") != s.before || (rec.After != "") != s.after {
			t.Fatalf("%s: record %v", s.method, rec)
		}
		if s.method == "UpdateVpc" && (strings.Contains(rec.Before, "after") || !strings.Contains(rec.After, `"after"`)) {
			t.Fatalf("update record before/after: %v", rec)
		}
		// Each side carries the etag the resource had in that state.
		for _, side := range []struct {
			json string
			rev  int64
		}{{rec.Before, before.Revision}, {rec.After, after.Revision}} {
			var doc struct{ Etag string }
			if side.json != "" && (json.Unmarshal([]byte(side.json), &doc) != nil || doc.Etag != fmt.Sprint(side.rev)) {
				t.Fatalf("%s: a side of the record lacks etag %d: %s", s.method, side.rev, side.json)
			}
		}
	}
}

// TestConcurrentPortCreatesExhaustASlash27Exactly: 16 clients race for the
// 29 usable addresses of a /27; every address goes to exactly one port.
func TestConcurrentPortCreatesExhaustASlash27Exactly(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	const subnet = a1 + "/vpcs/v/subnets/small"
	e.Ok(e.Admin.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: apitest.VPC(a1), SubnetId: "small", Subnet: &v1.Subnet{CidrBlock: "10.0.9.0/27"}}))
	const clients, attempts = 16, 3
	var mu sync.Mutex
	var ports []*v1.Port
	codesSeen := map[codes.Code]int{}
	var wg sync.WaitGroup
	for i := range clients {
		c := e.Client(apitest.UserToken)
		wg.Go(func() {
			for j := range attempts {
				p, err := c.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: fmt.Sprintf("c%d-%d", i, j), Port: &v1.Port{Subnet: subnet}})
				mu.Lock()
				codesSeen[apitest.Code(err)]++
				if err == nil {
					ports = append(ports, p)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if codesSeen[codes.OK] != 29 || codesSeen[codes.FailedPrecondition] != clients*attempts-29 {
		t.Fatalf("outcomes %v, want 29 OK and the rest FailedPrecondition", codesSeen)
	}
	ips, macs := map[string]string{}, map[string]string{}
	for _, p := range ports {
		if len(p.FixedIps) != 1 {
			t.Fatalf("port %s has IPs %v", p.Name, p.FixedIps)
		}
		for _, held := range []struct {
			m map[string]string
			v string
		}{{ips, p.FixedIps[0]}, {macs, p.MacAddress}} {
			if other, dup := held.m[held.v]; dup {
				t.Fatalf("%s held by %s and %s", held.v, other, p.Name)
			}
			held.m[held.v] = p.Name
		}
	}
	sn := apitest.Must[*v1.Subnet](t)(e.Admin.Net.GetSubnet(ctx, &v1.GetSubnetRequest{Name: subnet}))
	if sn.AvailableIps != 0 {
		t.Fatalf("available_ips = %d after exhaustion", sn.AvailableIps)
	}
	freed := ports[7]
	e.Ok(e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: freed.Name}))
	p := apitest.Must[*v1.Port](t)(e.User.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: a1, PortId: "after", Port: &v1.Port{Subnet: subnet}}))
	if p.FixedIps[0] != freed.FixedIps[0] {
		t.Fatalf("new port got %v, the only free address is %v", p.FixedIps, freed.FixedIps)
	}
}

// TestEtagInTheMaskIsAPreconditionNotAField: grpc-gateway derives a
// PATCH's mask from the body, so {"description":..,"etag":..} arrives with
// "etag" in the mask; it must act as the precondition only, and a mask of
// nothing but the etag must change nothing.
func TestEtagInTheMaskIsAPreconditionNotAField(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	vpc := apitest.Must[*v1.Vpc](t)(e.Admin.Net.GetVpc(ctx, &v1.GetVpcRequest{Name: apitest.VPC2}))
	stale := vpc.Etag
	vpc = apitest.Must[*v1.Vpc](t)(e.Admin.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC2, Etag: vpc.Etag, Description: "kept"}, UpdateMask: mask("description", "etag")}))
	_, err := e.Admin.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC2, Etag: stale, Description: "lost"}, UpdateMask: mask("description", "etag")})
	apitest.WantCode(t, err, codes.Aborted, "")
	before := e.State()
	got := apitest.Must[*v1.Vpc](t)(e.Admin.Net.UpdateVpc(ctx, &v1.UpdateVpcRequest{Vpc: &v1.Vpc{Name: apitest.VPC2, Etag: vpc.Etag}, UpdateMask: mask("etag")}))
	if got.Description != "kept" || len(got.CidrBlocks) != 1 || e.State() != before {
		t.Fatalf("an etag-only mask changed the resource: %v", got)
	}
}

// TestDeletesInDependencyOrder: a port used as a next hop cannot go until
// the route does; then the port, the subnet (and its IPAM state), the
// group and the VPC go, and the names can be used again.
func TestDeletesInDependencyOrder(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	e.Ok(e.User.Net.CreateRouteTable(ctx, &v1.CreateRouteTableRequest{Parent: a1, RouteTableId: "hop", RouteTable: &v1.RouteTable{Vpc: apitest.VPC2,
		Routes: []*v1.Route{{Destination: "0.0.0.0/0", NextHopPort: apitest.Port2}}}}))
	_, err := e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port2})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
	e.Ok(e.User.Net.UpdateRouteTable(ctx, &v1.UpdateRouteTableRequest{RouteTable: &v1.RouteTable{Name: a1 + "/routeTables/hop"}, UpdateMask: mask("routes")}))
	for _, del := range []func() error{
		func() error { return errOf(e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port2})) },
		func() error {
			return errOf(e.User.Net.DeleteSubnet(ctx, &v1.DeleteSubnetRequest{Name: apitest.Subnet2}))
		},
		func() error {
			return errOf(e.User.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: apitest.SGOther}))
		},
		func() error {
			return errOf(e.User.Net.DeleteRouteTable(ctx, &v1.DeleteRouteTableRequest{Name: a1 + "/routeTables/hop"}))
		},
		func() error { return errOf(e.User.Net.DeleteVpc(ctx, &v1.DeleteVpcRequest{Name: apitest.VPC2})) },
	} {
		if err := del(); err != nil {
			t.Fatalf("delete in dependency order: %v", err)
		}
	}
	e.Ok(e.User.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: a1, VpcId: "v2", Vpc: &v1.Vpc{CidrBlocks: []string{"10.0.0.0/16"}}}))
	e.Ok(e.User.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: apitest.VPC2, SubnetId: "s2", Subnet: &v1.Subnet{CidrBlock: "10.0.1.0/29"}}))
	sn := apitest.Must[*v1.Subnet](t)(e.User.Net.GetSubnet(ctx, &v1.GetSubnetRequest{Name: apitest.Subnet2}))
	if sn.AvailableIps != 5 {
		t.Fatalf("re-created subnet inherited IPAM state: %d available, want 5", sn.AvailableIps)
	}
	p := apitest.Must[*v1.Project](t)(e.User.Project.GetProject(ctx, &v1.GetProjectRequest{Name: a1}))
	if p.Usage.GetVpcs() != 2 || p.Usage.GetSubnets() != 2 || p.Usage.GetPorts() != 1 || p.Usage.GetSecurityGroups() != 3 {
		t.Fatalf("usage after deletes: %v", p.Usage)
	}
}
