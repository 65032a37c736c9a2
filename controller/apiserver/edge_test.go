package apiserver_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
)

const (
	poolName = "publicAddressPools/pub"
	gwNode   = "nodes/gw1"
	ngwName  = a1 + "/natGateways/ngw"
)

// edgeEnv is the seeded topology plus a gateway node, a pool of two
// addresses (a /30: network and broadcast are never allocated) and an IPv6
// pool.
func edgeEnv(t *testing.T) *apitest.Env {
	t.Helper()
	e := apitest.Seeded(t)
	ctx, c := apitest.Ctx(t), e.Admin
	e.Ok(c.Node.CreateNode(ctx, &v1.CreateNodeRequest{NodeId: "gw1", Node: &v1.Node{UnderlayIp: "192.0.2.9", Roles: []v1.NodeRole{v1.NodeRole_GATEWAY}}}))
	e.Ok(c.Edge.CreatePublicAddressPool(ctx, &v1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "pub",
		PublicAddressPool: &v1.PublicAddressPool{Cidrs: []string{"203.0.113.0/30"}, Communities: []string{"65000:100", "65000:1:2"}, Med: 10}}))
	e.Ok(c.Edge.CreatePublicAddressPool(ctx, &v1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "pub6",
		PublicAddressPool: &v1.PublicAddressPool{Cidrs: []string{"2001:db8:1::/64"}}}))
	return e
}

func createEIP(ctx context.Context, c *apitest.Client, id string, e *v1.ElasticIp) (*v1.ElasticIp, error) {
	if e.Pool == "" {
		e.Pool = poolName
	}
	return c.Edge.CreateElasticIp(ctx, &v1.CreateElasticIpRequest{Parent: a1, ElasticIpId: id, ElasticIp: e})
}

func eipCall(e *v1.ElasticIp) call {
	return func(ctx context.Context, c *apitest.Client) error { _, err := createEIP(ctx, c, "x", e); return err }
}

func ngwCall(n *v1.NatGateway) call {
	if n.Vpc == "" {
		n.Vpc = apitest.VPC(a1)
	}
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Edge.CreateNatGateway(ctx, &v1.CreateNatGatewayRequest{Parent: a1, NatGatewayId: "x", NatGateway: n})
		return err
	}
}

func poolCall(p *v1.PublicAddressPool) call {
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Edge.CreatePublicAddressPool(ctx, &v1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "x", PublicAddressPool: p})
		return err
	}
}

func peerCall(p *v1.BgpPeer) call {
	return func(ctx context.Context, c *apitest.Client) error {
		_, err := c.Edge.CreateBgpPeer(ctx, &v1.CreateBgpPeerRequest{BgpPeerId: "x", BgpPeer: p})
		return err
	}
}

func okPeer(mod func(*v1.BgpPeer)) *v1.BgpPeer {
	p := &v1.BgpPeer{Node: gwNode, LocalAsn: 65001, PeerAsn: 65000, PeerAddress: "192.0.2.254"}
	mod(p)
	return p
}

func TestPublicAddressPoolLifecycleAndStatus(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	// Any authenticated user reads pools.
	p := apitest.Must[*v1.PublicAddressPool](t)(e.User.Edge.GetPublicAddressPool(ctx, &v1.GetPublicAddressPoolRequest{Name: poolName}))
	if p.Id == 0 || !p.GetAnnounce() || p.Status.GetTotal() != 2 || p.Status.GetAllocated() != 0 {
		t.Fatalf("pool: %v", p)
	}
	l := apitest.Must[*v1.ListPublicAddressPoolsResponse](t)(e.UserB.Edge.ListPublicAddressPools(ctx, &v1.ListPublicAddressPoolsRequest{}))
	if len(l.PublicAddressPools) != 2 {
		t.Fatalf("list: %v", l)
	}
	// Users and org admins do not change them.
	for _, c := range []*apitest.Client{e.User, e.OrgAdmin} {
		before := e.State()
		_, err := c.Edge.CreatePublicAddressPool(ctx, &v1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "mine", PublicAddressPool: &v1.PublicAddressPool{Cidrs: []string{"198.51.100.0/24"}}})
		apitest.WantCode(t, err, codes.PermissionDenied, "")
		_, err = c.Edge.UpdatePublicAddressPool(ctx, &v1.UpdatePublicAddressPoolRequest{PublicAddressPool: &v1.PublicAddressPool{Name: poolName, Med: 1}, UpdateMask: mask("med")})
		apitest.WantCode(t, err, codes.PermissionDenied, "")
		_, err = c.Edge.DeletePublicAddressPool(ctx, &v1.DeletePublicAddressPoolRequest{Name: poolName})
		apitest.WantCode(t, err, codes.PermissionDenied, "")
		if after := e.State(); after != before {
			t.Fatalf("refused request changed state")
		}
	}
	// announce may be turned off explicitly, and defaults back when cleared.
	p = apitest.Must[*v1.PublicAddressPool](t)(e.Admin.Edge.UpdatePublicAddressPool(ctx, &v1.UpdatePublicAddressPoolRequest{
		PublicAddressPool: &v1.PublicAddressPool{Name: poolName, Announce: proto.Bool(false), Cidrs: []string{"203.0.113.0/30", "203.0.113.8/30"}}, UpdateMask: mask("announce", "cidrs")}))
	if p.GetAnnounce() || p.Status.GetTotal() != 4 {
		t.Fatalf("after update: %v", p)
	}
	// An allocated address pins its CIDR and the pool.
	eip := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, "e1", &v1.ElasticIp{Address: "203.0.113.9"}))
	before := e.State()
	_, err := e.Admin.Edge.UpdatePublicAddressPool(ctx, &v1.UpdatePublicAddressPoolRequest{
		PublicAddressPool: &v1.PublicAddressPool{Name: poolName, Cidrs: []string{"203.0.113.0/30"}}, UpdateMask: mask("cidrs")})
	apitest.WantCode(t, err, codes.InvalidArgument, "public_address_pool.cidrs")
	_, err = e.Admin.Edge.DeletePublicAddressPool(ctx, &v1.DeletePublicAddressPoolRequest{Name: poolName})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
	if !strings.Contains(err.Error(), eip.Name) {
		t.Fatalf("refusal does not name the elastic IP: %v", err)
	}
	if after := e.State(); after != before {
		t.Fatalf("refused request changed state")
	}
	if p := apitest.Must[*v1.PublicAddressPool](t)(e.User.Edge.GetPublicAddressPool(ctx, &v1.GetPublicAddressPoolRequest{Name: poolName})); p.Status.GetAllocated() != 1 {
		t.Fatalf("allocated = %d, want 1", p.Status.GetAllocated())
	}
	e.Ok(e.User.Edge.DeleteElasticIp(ctx, &v1.DeleteElasticIpRequest{Name: eip.Name}))
	e.Ok(e.Admin.Edge.DeletePublicAddressPool(ctx, &v1.DeletePublicAddressPoolRequest{Name: poolName}))
}

func TestElasticIpAllocationAndExhaustion(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	var got []string
	for _, id := range []string{"e1", "e2"} {
		eip := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, id, &v1.ElasticIp{}))
		if eip.Id == 0 {
			t.Fatalf("no ID: %v", eip)
		}
		got = append(got, eip.Address)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"203.0.113.1", "203.0.113.2"}) {
		t.Fatalf("allocated %v from 203.0.113.0/30", got)
	}
	before := e.State()
	_, err := createEIP(ctx, e.User, "e3", &v1.ElasticIp{})
	apitest.WantCode(t, err, codes.ResourceExhausted, "")
	if after := e.State(); after != before {
		t.Fatalf("exhausted create changed state %+v -> %+v", before, after)
	}
	// Releasing one makes room again.
	e.Ok(e.User.Edge.DeleteElasticIp(ctx, &v1.DeleteElasticIpRequest{Name: a1 + "/elasticIps/e1"}))
	e.Ok(createEIP(ctx, e.User, "e3", &v1.ElasticIp{}))
	v6 := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, "e6", &v1.ElasticIp{Pool: "publicAddressPools/pub6", Ipv6: true}))
	if !strings.HasPrefix(v6.Address, "2001:db8:1::") {
		t.Fatalf("IPv6 elastic IP %s", v6.Address)
	}
	l := apitest.Must[*v1.ListElasticIpsResponse](t)(e.User.Edge.ListElasticIps(ctx, &v1.ListElasticIpsRequest{Parent: a1}))
	if len(l.ElasticIps) != 3 {
		t.Fatalf("list: %d elastic IPs", len(l.ElasticIps))
	}
	// Another organisation sees none of them.
	_, err = e.UserB.Edge.ListElasticIps(ctx, &v1.ListElasticIpsRequest{Parent: a1})
	apitest.WantCode(t, err, codes.PermissionDenied, "")
}

func TestElasticIpAssociationWithAPort(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	eip := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, "e1", &v1.ElasticIp{}))
	eip = apitest.Must[*v1.ElasticIp](t)(e.User.Edge.UpdateElasticIp(ctx, &v1.UpdateElasticIpRequest{
		ElasticIp: &v1.ElasticIp{Name: eip.Name, Port: apitest.Port(a1), Etag: eip.Etag}, UpdateMask: mask("port")}))
	if eip.Port != apitest.Port(a1) || eip.PrivateIp != apitest.PortIP {
		t.Fatalf("associated: %v", eip)
	}
	// One elastic IP per private address of a port.
	before := e.State()
	_, err := createEIP(ctx, e.User, "e2", &v1.ElasticIp{Port: apitest.Port(a1)})
	apitest.WantCode(t, err, codes.InvalidArgument, "elastic_ip.port")
	if after := e.State(); after != before {
		t.Fatalf("refused create changed state")
	}
	// The port cannot go while the elastic IP points at it.
	_, err = e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port(a1)})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
	if !strings.Contains(err.Error(), eip.Name) {
		t.Fatalf("refusal does not name the elastic IP: %v", err)
	}
	// Disassociate by clearing the port; private_ip goes with it.
	eip = apitest.Must[*v1.ElasticIp](t)(e.User.Edge.UpdateElasticIp(ctx, &v1.UpdateElasticIpRequest{
		ElasticIp: &v1.ElasticIp{Name: eip.Name}, UpdateMask: mask("port")}))
	if eip.Port != "" || eip.PrivateIp != "" {
		t.Fatalf("disassociated: %v", eip)
	}
	e.Ok(createEIP(ctx, e.User, "e2", &v1.ElasticIp{Port: apitest.Port(a1), PrivateIp: apitest.PortIP}))
	// Moving an association to another port picks that port's address.
	eip = apitest.Must[*v1.ElasticIp](t)(e.User.Edge.UpdateElasticIp(ctx, &v1.UpdateElasticIpRequest{
		ElasticIp: &v1.ElasticIp{Name: eip.Name, Port: apitest.Port2}, UpdateMask: mask("port")}))
	p2 := apitest.Must[*v1.Port](t)(e.User.Net.GetPort(ctx, &v1.GetPortRequest{Name: apitest.Port2}))
	if eip.Port != apitest.Port2 || eip.PrivateIp != p2.FixedIps[0] {
		t.Fatalf("moved association: %v (port p2 has %v)", eip, p2.FixedIps)
	}
	// Releasing an associated elastic IP ends the association: the port may go.
	e.Ok(e.User.Edge.DeleteElasticIp(ctx, &v1.DeleteElasticIpRequest{Name: a1 + "/elasticIps/e2"}))
	e.Ok(e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port(a1)}))
}

func TestNatGatewayKeepsElasticIpsInStep(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	e1 := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, "e1", &v1.ElasticIp{}))
	e2 := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, "e2", &v1.ElasticIp{}))
	n := apitest.Must[*v1.NatGateway](t)(e.User.Edge.CreateNatGateway(ctx, &v1.CreateNatGatewayRequest{Parent: a1, NatGatewayId: "ngw", NatGateway: &v1.NatGateway{
		Vpc: apitest.VPC(a1), ElasticIps: []string{e1.Name}, Subnets: []string{apitest.Subnet(a1)}, PortMin: 2000,
		PortMappings: []*v1.NatGatewayPortMapping{{Protocol: "TCP", ElasticIp: e1.Name, PublicPort: 443, Port: apitest.Port(a1), PrivatePort: 8443}},
	}}))
	if n.Id == 0 || n.PortMax != 65535 || n.PortMappings[0].Protocol != "tcp" || n.PortMappings[0].PrivateIp != apitest.PortIP {
		t.Fatalf("NAT gateway: %v", n)
	}
	getEIP := func(name string) *v1.ElasticIp {
		return apitest.Must[*v1.ElasticIp](t)(e.User.Edge.GetElasticIp(ctx, &v1.GetElasticIpRequest{Name: name}))
	}
	if got := getEIP(e1.Name); got.NatGateway != ngwName {
		t.Fatalf("e1.nat_gateway = %q", got.NatGateway)
	}
	// The other side: associating e2 through the elastic IP adds it to the NAT gateway.
	e.Ok(e.User.Edge.UpdateElasticIp(ctx, &v1.UpdateElasticIpRequest{ElasticIp: &v1.ElasticIp{Name: e2.Name, NatGateway: ngwName}, UpdateMask: mask("nat_gateway")}))
	n = apitest.Must[*v1.NatGateway](t)(e.User.Edge.GetNatGateway(ctx, &v1.GetNatGatewayRequest{Name: ngwName}))
	if !slices.Equal(n.ElasticIps, []string{e1.Name, e2.Name}) {
		t.Fatalf("elastic_ips %v", n.ElasticIps)
	}
	before := e.State()
	for _, tc := range []struct {
		name  string
		err   error
		code  codes.Code
		field string
	}{
		{"release an elastic IP the NAT gateway uses", func() error {
			_, err := e.User.Edge.DeleteElasticIp(ctx, &v1.DeleteElasticIpRequest{Name: e1.Name})
			return err
		}(), codes.FailedPrecondition, ""},
		{"disassociate an elastic IP a port mapping uses", func() error {
			_, err := e.User.Edge.UpdateElasticIp(ctx, &v1.UpdateElasticIpRequest{ElasticIp: &v1.ElasticIp{Name: e1.Name}, UpdateMask: mask("nat_gateway")})
			return err
		}(), codes.InvalidArgument, "elastic_ip.nat_gateway"},
		{"associate with a port and a NAT gateway", func() error {
			_, err := e.User.Edge.UpdateElasticIp(ctx, &v1.UpdateElasticIpRequest{ElasticIp: &v1.ElasticIp{Name: e2.Name, NatGateway: ngwName, Port: apitest.Port(a1)}, UpdateMask: mask("port")})
			return err
		}(), codes.InvalidArgument, "elastic_ip"},
		{"delete the mapped port", func() error {
			_, err := e.User.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: apitest.Port(a1)})
			return err
		}(), codes.FailedPrecondition, ""},
	} {
		apitest.WantCode(t, tc.err, tc.code, tc.field)
	}
	if after := e.State(); after != before {
		t.Fatalf("refused requests changed state %+v -> %+v", before, after)
	}
	// Removing e2 from the NAT gateway clears its side.
	e.Ok(e.User.Edge.UpdateNatGateway(ctx, &v1.UpdateNatGatewayRequest{NatGateway: &v1.NatGateway{Name: ngwName, ElasticIps: []string{e1.Name}}, UpdateMask: mask("elastic_ips")}))
	if got := getEIP(e2.Name); got.NatGateway != "" {
		t.Fatalf("e2 still names %q", got.NatGateway)
	}
	// Deleting the NAT gateway frees e1 for release.
	audit := e.AuditCount()
	e.Ok(e.User.Edge.DeleteNatGateway(ctx, &v1.DeleteNatGatewayRequest{Name: ngwName}))
	if got := e.AuditCount() - audit; got != 2 {
		t.Fatalf("delete wrote %d audit records, want 2 (the NAT gateway and e1)", got)
	}
	if got := getEIP(e1.Name); got.NatGateway != "" {
		t.Fatalf("e1 still names %q", got.NatGateway)
	}
	e.Ok(e.User.Edge.DeleteElasticIp(ctx, &v1.DeleteElasticIpRequest{Name: e1.Name}))
}

func TestBgpPeerPasswordIsWriteOnly(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	const secret = "s3cret-md5-key"
	w, err := e.Admin.Watch.Watch(ctx, &v1.WatchRequest{Kinds: []string{"BgpPeer"}, FromRevision: e.Store.Revision()})
	if err != nil {
		t.Fatal(err)
	}
	p := apitest.Must[*v1.BgpPeer](t)(e.Admin.Edge.CreateBgpPeer(ctx, &v1.CreateBgpPeerRequest{BgpPeerId: "tor", BgpPeer: okPeer(func(p *v1.BgpPeer) { p.Password = secret })}))
	if p.Password != "" || !p.PasswordSet || !p.GetGracefulRestart() || p.Id == 0 {
		t.Fatalf("create answer: %v", p)
	}
	// A read-modify-write with an empty mask keeps the password.
	p.Description = "to the ToR"
	p = apitest.Must[*v1.BgpPeer](t)(e.Admin.Edge.UpdateBgpPeer(ctx, &v1.UpdateBgpPeerRequest{BgpPeer: p}))
	if !p.PasswordSet || p.Description != "to the ToR" {
		t.Fatalf("empty-mask update: %v", p)
	}
	l := apitest.Must[*v1.ListBgpPeersResponse](t)(e.Admin.Edge.ListBgpPeers(ctx, &v1.ListBgpPeersRequest{}))
	recs := apitest.Must[*v1.ListAuditRecordsResponse](t)(e.Admin.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{}))
	for _, ev := range []int{0, 1} {
		got, err := w.Recv()
		if err != nil {
			t.Fatalf("watch event %d: %v", ev, err)
		}
		if got.Resource.GetBgpPeer().GetPassword() != "" {
			t.Fatalf("watch event carries the password")
		}
	}
	for _, r := range recs.Records {
		if strings.Contains(r.Before+r.After, secret) {
			t.Fatalf("audit record %s carries the password", r.Method)
		}
	}
	if len(l.BgpPeers) != 1 || l.BgpPeers[0].Password != "" {
		t.Fatalf("list: %v", l)
	}
	// Sending back what a read returned, even with a mask naming the
	// password, keeps it.
	p = apitest.Must[*v1.BgpPeer](t)(e.Admin.Edge.UpdateBgpPeer(ctx, &v1.UpdateBgpPeerRequest{BgpPeer: p, UpdateMask: mask("password", "description")}))
	if !p.PasswordSet {
		t.Fatalf("echoed read cleared the password")
	}
	// Clearing it takes a mask that names it.
	p = apitest.Must[*v1.BgpPeer](t)(e.Admin.Edge.UpdateBgpPeer(ctx, &v1.UpdateBgpPeerRequest{BgpPeer: &v1.BgpPeer{Name: p.Name}, UpdateMask: mask("password")}))
	if p.PasswordSet {
		t.Fatalf("password not cleared")
	}
	// Only system administrators see or touch peers.
	_, err = e.OrgAdmin.Edge.GetBgpPeer(ctx, &v1.GetBgpPeerRequest{Name: p.Name})
	apitest.WantCode(t, err, codes.PermissionDenied, "")
	_, err = e.User.Edge.CreateBgpPeer(ctx, &v1.CreateBgpPeerRequest{BgpPeerId: "u", BgpPeer: okPeer(func(*v1.BgpPeer) {})})
	apitest.WantCode(t, err, codes.PermissionDenied, "")
	// The gateway node cannot go while it has a peer.
	_, err = e.Admin.Node.DeleteNode(ctx, &v1.DeleteNodeRequest{Name: gwNode})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
}

func TestEdgeQuotas(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	e.Ok(e.Admin.Project.UpdateProject(ctx, &v1.UpdateProjectRequest{Project: &v1.Project{Name: a1, Quota: &v1.Quota{ElasticIps: 1, NatGateways: 1}}, UpdateMask: mask("quota")}))
	e.Ok(createEIP(ctx, e.User, "e1", &v1.ElasticIp{}))
	before := e.State()
	_, err := createEIP(ctx, e.User, "e2", &v1.ElasticIp{})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
	e.Ok(e.User.Edge.CreateNatGateway(ctx, &v1.CreateNatGatewayRequest{Parent: a1, NatGatewayId: "n1", NatGateway: &v1.NatGateway{Vpc: apitest.VPC(a1)}}))
	before = e.State()
	_, err = e.User.Edge.CreateNatGateway(ctx, &v1.CreateNatGatewayRequest{Parent: a1, NatGatewayId: "n2", NatGateway: &v1.NatGateway{Vpc: apitest.VPC2}})
	apitest.WantCode(t, err, codes.FailedPrecondition, "")
	if after := e.State(); after != before {
		t.Fatalf("over-quota create changed state")
	}
	p := apitest.Must[*v1.Project](t)(e.User.Project.GetProject(ctx, &v1.GetProjectRequest{Name: a1}))
	if p.Usage.ElasticIps != 1 || p.Usage.NatGateways != 1 {
		t.Fatalf("usage %v", p.Usage)
	}
}

// TestEdgeRejectedRequestsChangeNothing runs the validation rules of the
// new kinds: each must fail with its code, name its field and change nothing.
func TestEdgeRejectedRequestsChangeNothing(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	e1 := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, "e1", &v1.ElasticIp{}))
	e2 := apitest.Must[*v1.ElasticIp](t)(createEIP(ctx, e.User, "e2", &v1.ElasticIp{Port: apitest.Port(a1)}))
	e.Ok(e.Admin.Edge.CreateBgpPeer(ctx, &v1.CreateBgpPeerRequest{BgpPeerId: "tor", BgpPeer: okPeer(func(*v1.BgpPeer) {})}))
	e.Ok(e.User.Edge.CreateNatGateway(ctx, &v1.CreateNatGatewayRequest{Parent: a1, NatGatewayId: "ngw", NatGateway: &v1.NatGateway{
		Vpc: apitest.VPC(a1), Subnets: []string{apitest.Subnet(a1)}}}))
	pm := func(mod func(*v1.NatGatewayPortMapping)) []*v1.NatGatewayPortMapping {
		m := &v1.NatGatewayPortMapping{Protocol: "tcp", ElasticIp: e1.Name, PublicPort: 80, Port: apitest.Port(a1), PrivatePort: 80}
		mod(m)
		return []*v1.NatGatewayPortMapping{m}
	}
	ngw := func(mod func(*v1.NatGateway)) call {
		n := &v1.NatGateway{ElasticIps: []string{e1.Name}}
		mod(n)
		return ngwCall(n)
	}
	cases := []rejectCase{
		invalidCase("pool without cidrs", poolCall(&v1.PublicAddressPool{}), "public_address_pool.cidrs"),
		invalidCase("pool cidr malformed", poolCall(&v1.PublicAddressPool{Cidrs: []string{"198.51.100/24"}}), "public_address_pool.cidrs[0]"),
		invalidCase("pool cidr host bits", poolCall(&v1.PublicAddressPool{Cidrs: []string{"198.51.100.1/24"}}), "public_address_pool.cidrs[0]"),
		invalidCase("pool cidr /31", poolCall(&v1.PublicAddressPool{Cidrs: []string{"198.51.100.0/31"}}), "public_address_pool.cidrs[0]"),
		invalidCase("pool ipv6 cidr larger than /64", poolCall(&v1.PublicAddressPool{Cidrs: []string{"2001:db8::/48"}}), "public_address_pool.cidrs[0]"),
		invalidCase("pool cidrs overlap each other", poolCall(&v1.PublicAddressPool{Cidrs: []string{"198.51.100.0/24", "198.51.100.128/25"}}), "public_address_pool.cidrs[1]"),
		invalidCase("pool overlaps another pool", poolCall(&v1.PublicAddressPool{Cidrs: []string{"203.0.113.0/24"}}), "public_address_pool.cidrs[0]"),
		invalidCase("pool community malformed", poolCall(&v1.PublicAddressPool{Cidrs: []string{"198.51.100.0/24"}, Communities: []string{"65000"}}), "public_address_pool.communities[0]"),
		invalidCase("pool community part too large", poolCall(&v1.PublicAddressPool{Cidrs: []string{"198.51.100.0/24"}, Communities: []string{"65536:1"}}), "public_address_pool.communities[0]"),

		invalidCase("eip without pool", eipCall(&v1.ElasticIp{Pool: "x"}), "elastic_ip.pool"),
		invalidCase("eip pool does not exist", eipCall(&v1.ElasticIp{Pool: "publicAddressPools/nope"}), "elastic_ip.pool"),
		invalidCase("eip address outside the pool", eipCall(&v1.ElasticIp{Address: "198.51.100.1"}), "elastic_ip.address"),
		invalidCase("eip address taken", eipCall(&v1.ElasticIp{Address: e1.Address}), "elastic_ip.address"),
		invalidCase("eip address is the network address", eipCall(&v1.ElasticIp{Address: "203.0.113.0"}), "elastic_ip.address"),
		invalidCase("eip address malformed", eipCall(&v1.ElasticIp{Address: "eip"}), "elastic_ip.address"),
		invalidCase("eip ipv6 from an IPv4-only pool", eipCall(&v1.ElasticIp{Ipv6: true}), "elastic_ip.pool"),
		invalidCase("eip port of another project", eipCall(&v1.ElasticIp{Port: apitest.Port(apitest.ProjectA2)}), "elastic_ip.port"),
		invalidCase("eip port does not exist", eipCall(&v1.ElasticIp{Port: a1 + "/ports/nope"}), "elastic_ip.port"),
		invalidCase("eip private ip not the port's", eipCall(&v1.ElasticIp{Port: apitest.Port2, PrivateIp: "10.0.1.99"}), "elastic_ip.private_ip"),
		invalidCase("eip private ip without port", eipCall(&v1.ElasticIp{PrivateIp: apitest.PortIP}), "elastic_ip.private_ip"),
		invalidCase("eip with port and NAT gateway", eipCall(&v1.ElasticIp{Port: apitest.Port2, NatGateway: ngwName}), "elastic_ip"),
		invalidCase("eip NAT gateway does not exist", eipCall(&v1.ElasticIp{NatGateway: a1 + "/natGateways/nope"}), "elastic_ip.nat_gateway"),
		invalidCase("eip update of immutable pool", func(ctx context.Context, c *apitest.Client) error {
			_, err := c.Edge.UpdateElasticIp(ctx, &v1.UpdateElasticIpRequest{ElasticIp: &v1.ElasticIp{Name: e1.Name, Pool: "publicAddressPools/pub6"}, UpdateMask: mask("pool")})
			return err
		}, "update_mask"),

		invalidCase("ngw without vpc", ngwCall(&v1.NatGateway{Vpc: "projects/a1/vpcs/nope"}), "nat_gateway.vpc"),
		invalidCase("ngw eip associated with a port", ngw(func(n *v1.NatGateway) { n.ElasticIps = []string{e2.Name} }), "nat_gateway.elastic_ips[0]"),
		invalidCase("ngw eip listed twice", ngw(func(n *v1.NatGateway) { n.ElasticIps = []string{e1.Name, e1.Name} }), "nat_gateway.elastic_ips[1]"),
		invalidCase("ngw eip does not exist", ngw(func(n *v1.NatGateway) { n.ElasticIps = []string{a1 + "/elasticIps/nope"} }), "nat_gateway.elastic_ips[0]"),
		invalidCase("ngw subnet of another vpc", ngw(func(n *v1.NatGateway) { n.Subnets = []string{apitest.Subnet2} }), "nat_gateway.subnets[0]"),
		invalidCase("ngw subnet already behind another NAT gateway", ngw(func(n *v1.NatGateway) { n.Subnets = []string{apitest.Subnet(a1)} }), "nat_gateway.subnets[0]"),
		invalidCase("ngw port range inverted", ngw(func(n *v1.NatGateway) { n.PortMin, n.PortMax = 5000, 4000 }), "nat_gateway.port_min"),
		invalidCase("ngw mapping protocol", ngw(func(n *v1.NatGateway) { n.PortMappings = pm(func(m *v1.NatGatewayPortMapping) { m.Protocol = "icmp" }) }), "nat_gateway.port_mappings[0].protocol"),
		invalidCase("ngw mapping eip not the gateway's", ngw(func(n *v1.NatGateway) {
			n.PortMappings = pm(func(m *v1.NatGatewayPortMapping) { m.ElasticIp = e2.Name })
		}), "nat_gateway.port_mappings[0].elastic_ip"),
		invalidCase("ngw mapping public port inside the SNAT range", ngw(func(n *v1.NatGateway) {
			n.PortMappings = pm(func(m *v1.NatGatewayPortMapping) { m.PublicPort = 8080 })
		}), "nat_gateway.port_mappings[0].public_port"),
		invalidCase("ngw mapping public port 0", ngw(func(n *v1.NatGateway) { n.PortMappings = pm(func(m *v1.NatGatewayPortMapping) { m.PublicPort = 0 }) }), "nat_gateway.port_mappings[0].public_port"),
		invalidCase("ngw mapping private port too large", ngw(func(n *v1.NatGateway) {
			n.PortMappings = pm(func(m *v1.NatGatewayPortMapping) { m.PrivatePort = 70000 })
		}), "nat_gateway.port_mappings[0].private_port"),
		invalidCase("ngw mapping port of another vpc", ngw(func(n *v1.NatGateway) {
			n.PortMappings = pm(func(m *v1.NatGatewayPortMapping) { m.Port = apitest.Port2 })
		}), "nat_gateway.port_mappings[0].port"),
		invalidCase("ngw mapping duplicated", ngw(func(n *v1.NatGateway) {
			n.PortMappings = append(pm(func(*v1.NatGatewayPortMapping) {}), pm(func(m *v1.NatGatewayPortMapping) { m.PrivatePort = 81 })...)
		}), "nat_gateway.port_mappings[1]"),

		invalidCase("peer without node", peerCall(okPeer(func(p *v1.BgpPeer) { p.Node = "" })), "bgp_peer.node"),
		invalidCase("peer node without the gateway role", peerCall(okPeer(func(p *v1.BgpPeer) { p.Node = apitest.Node1 })), "bgp_peer.node"),
		invalidCase("peer local asn 0", peerCall(okPeer(func(p *v1.BgpPeer) { p.LocalAsn = 0 })), "bgp_peer.local_asn"),
		invalidCase("peer asn reserved", peerCall(okPeer(func(p *v1.BgpPeer) { p.PeerAsn = 4294967295 })), "bgp_peer.peer_asn"),
		invalidCase("peer address missing", peerCall(okPeer(func(p *v1.BgpPeer) { p.PeerAddress = "" })), "bgp_peer.peer_address"),
		invalidCase("peer address duplicated on the node", peerCall(okPeer(func(*v1.BgpPeer) {})), "bgp_peer.peer_address"),
		invalidCase("peer router id IPv6", peerCall(okPeer(func(p *v1.BgpPeer) { p.RouterId = "2001:db8::1" })), "bgp_peer.router_id"),
		invalidCase("peer hold time 2", peerCall(okPeer(func(p *v1.BgpPeer) { p.HoldTime = 2 })), "bgp_peer.hold_time"),
		invalidCase("peer restart time too long", peerCall(okPeer(func(p *v1.BgpPeer) { p.RestartTime = 5000 })), "bgp_peer.restart_time"),
		invalidCase("peer password too long", peerCall(okPeer(func(p *v1.BgpPeer) { p.PeerAddress = "192.0.2.253"; p.Password = strings.Repeat("k", 81) })), "bgp_peer.password"),
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

// TestTranslatedAddressesStayPut: a port keeps an address an elastic IP
// maps to, and a gateway node keeps its role while BGP peers use it.
func TestTranslatedAddressesStayPut(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	e.Ok(e.User.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1), SecondaryIps: []string{"10.0.1.50"}}, UpdateMask: mask("secondary_ips")}))
	e.Ok(createEIP(ctx, e.User, "e1", &v1.ElasticIp{Port: apitest.Port(a1), PrivateIp: "10.0.1.50"}))
	e.Ok(e.Admin.Edge.CreateBgpPeer(ctx, &v1.CreateBgpPeerRequest{BgpPeerId: "tor", BgpPeer: okPeer(func(*v1.BgpPeer) {})}))
	before := e.State()
	_, err := e.User.Net.UpdatePort(ctx, &v1.UpdatePortRequest{Port: &v1.Port{Name: apitest.Port(a1)}, UpdateMask: mask("secondary_ips")})
	apitest.WantCode(t, err, codes.InvalidArgument, "port.secondary_ips")
	_, err = e.Admin.Node.UpdateNode(ctx, &v1.UpdateNodeRequest{Node: &v1.Node{Name: gwNode, Roles: []v1.NodeRole{v1.NodeRole_COMPUTE}}, UpdateMask: mask("roles")})
	apitest.WantCode(t, err, codes.InvalidArgument, "node.roles")
	if after := e.State(); after != before {
		t.Fatalf("refused updates changed state")
	}
}

// TestWatchShowsPoolsToEveryoneAndPeersToAdmins: top-level kinds are
// judged per kind in watch streams.
func TestWatchShowsPoolsToEveryoneAndPeersToAdmins(t *testing.T) {
	e := edgeEnv(t)
	ctx := apitest.Ctx(t)
	e.Ok(e.Admin.Edge.CreateBgpPeer(ctx, &v1.CreateBgpPeerRequest{BgpPeerId: "tor", BgpPeer: okPeer(func(*v1.BgpPeer) {})}))
	w, err := e.User.Watch.Watch(ctx, &v1.WatchRequest{FromRevision: 1})
	if err != nil {
		t.Fatal(err)
	}
	// The last pool is created after the peer: once it arrives, the
	// peer's event would have come before it.
	e.Ok(e.Admin.Edge.CreatePublicAddressPool(ctx, &v1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "last",
		PublicAddressPool: &v1.PublicAddressPool{Cidrs: []string{"198.51.100.0/24"}}}))
	pools := 0
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		r := ev.GetResource()
		if r.GetBgpPeer() != nil || r.GetNode() != nil {
			t.Fatalf("user sees %v", r)
		}
		if p := r.GetPublicAddressPool(); p != nil {
			pools++
			if p.Name == "publicAddressPools/last" {
				break
			}
		}
	}
	if pools != 3 {
		t.Fatalf("user saw %d pool events, want 3", pools)
	}
}
