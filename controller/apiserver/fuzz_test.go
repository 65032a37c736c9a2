package apiserver_test

import (
	"context"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/resource"
)

// decode reads fuzz input as protojson or as binary proto.
func decode(data []byte, asJSON bool, m proto.Message) bool {
	if asJSON {
		return protojson.Unmarshal(data, m) == nil
	}
	return proto.Unmarshal(data, m) == nil
}

// checkOutcome fails unless err is OK or a proper status, and unless a
// rejected request left the store as it was.
func checkOutcome(t *testing.T, e *apitest.Env, before apitest.State, err error) {
	t.Helper()
	if !apitest.IsStatus(err) {
		t.Fatalf("not a proper status: %v", err)
	}
	if err != nil {
		if after := e.StateT(t); after != before {
			t.Fatalf("rejected request (%v) changed state %+v -> %+v", err, before, after)
		}
	}
}

func FuzzCreateSubnet(f *testing.F) {
	for _, seed := range []string{
		`{"parent":"projects/a1/vpcs/v","subnetId":"f","subnet":{"cidrBlock":"10.0.2.0/24"}}`,
		`{"parent":"projects/a1/vpcs/v","subnetId":"f","subnet":{"cidrBlock":"10.0.3.0/24","gatewayIp":"10.0.3.9","mtu":9000,"dhcp":{"dnsServers":["x"],"leaseSeconds":1}}}`,
		`{"parent":"projects/a1/vpcs/v","subnetId":"f","subnet":{"cidrBlock":"10.0.4.0/24","ipv6CidrBlock":"fd00::/64","networkAcl":"projects/a1/networkAcls/acl","routeTable":"projects/a2/routeTables/rt"}}`,
		`{"parent":"projects/b1/vpcs/v","subnetId":"f","subnet":{"cidrBlock":"10.0.1.0/25"},"validateOnly":true}`,
		`{"parent":"projects/a1/vpcs/nope","subnetId":"F","subnet":{"cidrBlock":"::/0"}}`,
		`{"parent":"","subnetId":"","subnet":{}}`,
	} {
		f.Add([]byte(seed), true)
		req := &v1.CreateSubnetRequest{}
		if err := protojson.Unmarshal([]byte(seed), req); err != nil {
			f.Fatalf("seed %s: %v", seed, err)
		}
		b, _ := proto.Marshal(req)
		f.Add(b, false)
	}
	e := apitest.Seeded(f)
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		req := &v1.CreateSubnetRequest{}
		if !decode(data, asJSON, req) {
			return
		}
		ctx := apitest.Ctx(t)
		before := e.StateT(t)
		sn, err := e.Admin.Net.CreateSubnet(ctx, req)
		checkOutcome(t, e, before, err)
		if err == nil && !req.ValidateOnly {
			if _, err := e.Admin.Net.DeleteSubnet(ctx, &v1.DeleteSubnetRequest{Name: sn.Name}); err != nil {
				t.Fatalf("delete the subnet just created: %v", err)
			}
		}
	})
}

func FuzzSecurityGroupRules(f *testing.F) {
	for _, seed := range []string{
		`{"vpc":"projects/a1/vpcs/v","rules":[{"direction":"INGRESS","protocol":"tcp","portRangeMin":22,"portRangeMax":22}]}`,
		`{"vpc":"projects/a1/vpcs/v","rules":[{"direction":"EGRESS","protocol":"icmp","icmpType":8,"icmpCode":0,"remoteCidr":"0.0.0.0/0"}]}`,
		`{"vpc":"projects/a1/vpcs/v","rules":[{"direction":"INGRESS","protocol":"all","remoteSecurityGroup":"projects/a1/securityGroups/f"},{"direction":"INGRESS","protocol":"all","remoteSecurityGroup":"projects/a1/securityGroups/db"}]}`,
		`{"vpc":"projects/a1/vpcs/v","rules":[{"direction":"INGRESS","protocol":"300","portRangeMin":9,"portRangeMax":1,"icmpCode":-4,"remoteCidr":"::1/64","remoteSecurityGroup":"x"}]}`,
		`{"vpc":"projects/a1/vpcs/v2","rules":[{"direction":7,"protocol":"udp","remoteSecurityGroup":"projects/a1/securityGroups/web"}]}`,
		`{"vpc":"projects/a2/vpcs/v"}`,
	} {
		f.Add([]byte(seed), true)
		sg := &v1.SecurityGroup{}
		if err := protojson.Unmarshal([]byte(seed), sg); err != nil {
			f.Fatalf("seed %s: %v", seed, err)
		}
		b, _ := proto.Marshal(sg)
		f.Add(b, false)
	}
	e := apitest.Seeded(f)
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		sg := &v1.SecurityGroup{}
		if !decode(data, asJSON, sg) {
			return
		}
		ctx := apitest.Ctx(t)
		before := e.StateT(t)
		created, err := e.Admin.Sec.CreateSecurityGroup(ctx, &v1.CreateSecurityGroupRequest{Parent: a1, SecurityGroupId: "f", SecurityGroup: sg})
		checkOutcome(t, e, before, err)
		// The same rules as an update of an existing group.
		before = e.StateT(t)
		_, uerr := e.Admin.Sec.UpdateSecurityGroup(ctx, &v1.UpdateSecurityGroupRequest{
			SecurityGroup: &v1.SecurityGroup{Name: apitest.SGOther, Rules: sg.Rules}, UpdateMask: mask("rules")})
		checkOutcome(t, e, before, uerr)
		if err == nil {
			if _, err := e.Admin.Sec.DeleteSecurityGroup(ctx, &v1.DeleteSecurityGroupRequest{Name: created.Name}); err != nil {
				t.Fatalf("delete the group just created: %v", err)
			}
		}
	})
}

// FuzzFilter: the filter parser never panics, and a listing answers OK
// exactly when the filter parses and InvalidArgument (naming "filter")
// otherwise.
func FuzzFilter(f *testing.F) {
	for _, seed := range []string{
		"", "node=nodes/n1", `subnet = "projects/a1/vpcs/v/subnets/s" AND node=nodes/n1`, "labels.app=web",
		"fixedIps=10.0.1.10", "disable_source_dest_check=true", "status=ACTIVE", "=", "a=b AND", " AND ", "labels.=x", "id=1",
	} {
		f.Add(seed)
	}
	e := apitest.Seeded(f)
	f.Fuzz(func(t *testing.T, filter string) {
		if !utf8.ValidString(filter) {
			return // proto3 strings are UTF-8: no client can send this
		}
		perr := apiserver.ParseFilter(resource.KindPort, filter)
		resp, err := e.Admin.Net.ListPorts(context.Background(), &v1.ListPortsRequest{Parent: a1, Filter: filter})
		switch {
		case perr == nil && err != nil:
			t.Fatalf("filter %q parses but listing failed: %v", filter, err)
		case perr != nil && (apitest.Code(err) != codes.InvalidArgument || apitest.Fields(err)[0] != "filter"):
			t.Fatalf("filter %q does not parse (%v) but listing answered %v", filter, perr, err)
		case err == nil && len(resp.Ports) > 2:
			t.Fatalf("filter %q matched %d ports of 2", filter, len(resp.Ports))
		}
	})
}

// FuzzLoadBalancer: any load balancer, as a create and as the listeners of
// an update, is accepted or refused with a proper status that changed
// nothing; one created is deleted again with its VIP released.
func FuzzLoadBalancer(f *testing.F) {
	for _, seed := range []string{
		`{"vpc":"projects/a1/vpcs/v","pool":"publicAddressPools/pub","listeners":[{"name":"http","protocol":"tcp","port":80,"backends":[{"port":"projects/a1/ports/p","targetPort":8080,"weight":3}],"healthCheck":{"protocol":"http","path":"/h"}}]}`,
		`{"vpc":"projects/a1/vpcs/v","scheme":"internal","subnet":"projects/a1/vpcs/v/subnets/s","vip":"10.0.1.77","listeners":[{"name":"dns","protocol":"UDP","port":53,"sourceIpPersistence":true,"backends":[{"address":"10.0.1.10"}]}]}`,
		`{"vpc":"projects/a1/vpcs/v","scheme":"internal","subnet":"projects/a1/vpcs/v2/subnets/s2","vip":"10.0.1.10","listeners":[{"name":"x","protocol":"tcp","port":1,"backends":[{"port":"projects/a1/ports/p2","weight":0}]}]}`,
		`{"vpc":"projects/a1/vpcs/v","pool":"publicAddressPools/pub","vip":"203.0.113.0","listeners":[{"name":"a","protocol":"tcp","port":80},{"name":"a","protocol":"tcp","port":80}]}`,
		`{"vpc":"projects/a1/vpcs/v","pool":"publicAddressPools/pub","listeners":[{"name":"a","protocol":"tcp","port":80,"healthCheck":{"protocol":"tcp","intervalMs":50,"timeoutMs":99999,"healthyThreshold":11}}]}`,
		`{"vpc":"projects/b1/vpcs/v","scheme":"mystery"}`,
	} {
		f.Add([]byte(seed), true)
		lb := &v1.LoadBalancer{}
		if err := protojson.Unmarshal([]byte(seed), lb); err != nil {
			f.Fatalf("seed %s: %v", seed, err)
		}
		b, _ := proto.Marshal(lb)
		f.Add(b, false)
	}
	e := apitest.Seeded(f)
	ctx := context.Background()
	e.Ok(e.Admin.Edge.CreatePublicAddressPool(ctx, &v1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "pub",
		PublicAddressPool: &v1.PublicAddressPool{Cidrs: []string{"203.0.113.0/29"}}}))
	e.Ok(e.Admin.LB.CreateLoadBalancer(ctx, &v1.CreateLoadBalancerRequest{Parent: a1, LoadBalancerId: "keep",
		LoadBalancer: &v1.LoadBalancer{Vpc: apitest.VPC(a1), Pool: "publicAddressPools/pub"}}))
	f.Fuzz(func(t *testing.T, data []byte, asJSON bool) {
		lb := &v1.LoadBalancer{}
		if !decode(data, asJSON, lb) {
			return
		}
		ctx := apitest.Ctx(t)
		before := e.StateT(t)
		created, err := e.Admin.LB.CreateLoadBalancer(ctx, &v1.CreateLoadBalancerRequest{Parent: a1, LoadBalancerId: "f", LoadBalancer: lb})
		checkOutcome(t, e, before, err)
		before = e.StateT(t)
		_, uerr := e.Admin.LB.UpdateLoadBalancer(ctx, &v1.UpdateLoadBalancerRequest{
			LoadBalancer: &v1.LoadBalancer{Name: a1 + "/loadBalancers/keep", Listeners: lb.Listeners}, UpdateMask: mask("listeners")})
		checkOutcome(t, e, before, uerr)
		if err == nil {
			if _, err := e.Admin.LB.DeleteLoadBalancer(ctx, &v1.DeleteLoadBalancerRequest{Name: created.Name}); err != nil {
				t.Fatalf("delete the load balancer just created: %v", err)
			}
		}
	})
}
