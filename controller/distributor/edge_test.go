package distributor

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/store"
)

// TestNodeReportsReachTheAPI: a gateway agent syncs the outside-world
// objects created through the API (the BGP password included: the agent
// needs it), and what it reports about its BGP session and NAT gateway
// shows in the API's status fields, until its agent goes away.
func TestNodeReportsReachTheAPI(t *testing.T) {
	api := apitest.New(t, apitest.Options{Store: store.Options{Logger: quiet()}})
	api.Seed()
	ctx := apitest.Ctx(t)
	e := startEnv(t, api.Store, nil)
	api.Server.SetStatusProvider(e.d)
	gw := agenttest.New(e.conn, "gw1")
	if err := gw.Register(ctx, "192.0.2.50", "gateway"); err != nil {
		t.Fatal(err)
	}
	if err := gw.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	c := api.Admin
	api.Ok(c.Edge.CreatePublicAddressPool(ctx, &mv1.CreatePublicAddressPoolRequest{PublicAddressPoolId: "pub",
		PublicAddressPool: &mv1.PublicAddressPool{Cidrs: []string{"203.0.113.0/29"}}}))
	peer := apitest.Must[*mv1.BgpPeer](t)(c.Edge.CreateBgpPeer(ctx, &mv1.CreateBgpPeerRequest{BgpPeerId: "tor", BgpPeer: &mv1.BgpPeer{
		Node: "nodes/gw1", LocalAsn: 65001, PeerAsn: 65000, PeerAddress: "192.0.2.254", Password: "md5-secret"}}))
	eip := apitest.Must[*mv1.ElasticIp](t)(c.Edge.CreateElasticIp(ctx, &mv1.CreateElasticIpRequest{Parent: apitest.ProjectA1, ElasticIpId: "out",
		ElasticIp: &mv1.ElasticIp{Pool: "publicAddressPools/pub"}}))
	ngw := apitest.Must[*mv1.NatGateway](t)(c.Edge.CreateNatGateway(ctx, &mv1.CreateNatGatewayRequest{Parent: apitest.ProjectA1, NatGatewayId: "out",
		NatGateway: &mv1.NatGateway{Vpc: apitest.VPC(apitest.ProjectA1), ElasticIps: []string{eip.Name}, Subnets: []string{apitest.Subnet(apitest.ProjectA1)}}}))
	converge(t, e, gw, "gw1", api.Store.Revision())
	state := gw.State()
	if got := state[e.d.model.KeyOf(peer.Name)].GetBgpPeer(); got.GetPassword() != "md5-secret" || got.GetNode() != "gw1" {
		t.Fatalf("gateway's BGP peer object: %v", got)
	}
	if got := state[e.d.model.KeyOf(ngw.Name)].GetNatGateway(); got.GetOwnerNode() != "gw1" || len(got.GetAddresses()) != 1 || got.GetAddresses()[0] != eip.Address {
		t.Fatalf("gateway's NAT gateway object: %v", got)
	}

	since := time.Unix(1_700_000_000, 0)
	report := &agentv1.NodeReport{
		BgpPeers: []*agentv1.BgpPeerState{{PeerId: peer.Id, PeerAddress: "192.0.2.254", State: "established", SinceUnix: since.Unix(), Advertised: 3, Received: 1}},
		Nat:      []*agentv1.NatStats{{NatGatewayId: ngw.Id, ActiveFlows: 42, PortExhausted: 7}},
	}
	if err := gw.Report(report); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		p, err := c.Edge.GetBgpPeer(ctx, &mv1.GetBgpPeerRequest{Name: peer.Name})
		return err == nil && p.GetStatus().GetState() == "established"
	})
	p := apitest.Must[*mv1.BgpPeer](t)(c.Edge.GetBgpPeer(ctx, &mv1.GetBgpPeerRequest{Name: peer.Name}))
	if s := p.GetStatus(); s.GetAdvertised() != 3 || s.GetReceived() != 1 || !s.GetSince().AsTime().Equal(since) || p.GetPassword() != "" {
		t.Fatalf("BGP peer through the API: %v", p)
	}
	n := apitest.Must[*mv1.NatGateway](t)(c.Edge.GetNatGateway(ctx, &mv1.GetNatGatewayRequest{Name: ngw.Name}))
	if s := n.GetStatus(); s.GetOwnerNode() != "gw1" || s.GetActiveFlows() != 42 || s.GetPortExhausted() != 7 {
		t.Fatalf("NAT gateway status through the API: %v", s)
	}
	// Status is not intent: reports write nothing to the store.
	rev := api.Store.Revision()
	report.Nat[0].ActiveFlows = 43
	if err := gw.Report(report); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		n, err := c.Edge.GetNatGateway(ctx, &mv1.GetNatGatewayRequest{Name: ngw.Name})
		return err == nil && n.GetStatus().GetActiveFlows() == 43
	})
	if api.Store.Revision() != rev {
		t.Fatalf("a report changed the store revision %d -> %d", rev, api.Store.Revision())
	}
	// An agent that is gone reports nothing.
	gw.Disconnect()
	waitFor(t, func() bool {
		p, err := c.Edge.GetBgpPeer(ctx, &mv1.GetBgpPeerRequest{Name: peer.Name})
		return err == nil && p.GetStatus().GetState() == "" && p.GetStatus().GetLastError() != ""
	})
	// The write-only password changes only when named, and reaches the agent.
	if err := gw.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// The stream's end marked the gateway away; its return unmarks it, in
	// a store write that may land after Connect returns: wait for it, or
	// converge below may compare against a revision before it.
	waitFor(t, func() bool { return !awayMarked(t, api.Store, "gw1") })
	api.Ok(c.Edge.UpdateBgpPeer(ctx, &mv1.UpdateBgpPeerRequest{BgpPeer: &mv1.BgpPeer{Name: peer.Name, Password: "rotated"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"password"}}}))
	converge(t, e, gw, "gw1", api.Store.Revision())
	if got := gw.State()[e.d.model.KeyOf(peer.Name)].GetBgpPeer().GetPassword(); got != "rotated" {
		t.Fatalf("agent's password after rotation: %q", got)
	}
}

// TestGatewayFailover: when the agent of a NAT gateway's owner stays away
// past the grace period, the distributor marks it down and the NAT gateway
// moves to the other gateway; when it returns, the mark goes and the NAT
// gateway moves back (rendezvous hashing is stable).
func TestGatewayFailover(t *testing.T) {
	st, _ := openStore(t)
	ctx := testCtx(t)
	fixture(t, st)
	gateway := func(id, ip string) *mv1.Node {
		n := node(id, ip)
		n.Roles = []mv1.NodeRole{mv1.NodeRole_GATEWAY}
		return n
	}
	rev := write(t, st, gateway("g1", "192.0.2.101"), gateway("g2", "192.0.2.102"),
		&mv1.PublicAddressPool{Name: "publicAddressPools/pub", Id: 1, Cidrs: []string{"203.0.113.0/24"}},
		&mv1.ElasticIp{Name: proj + "/elasticIps/e", Id: 1, Pool: "publicAddressPools/pub", Address: "203.0.113.5", NatGateway: proj + "/natGateways/n"},
		&mv1.NatGateway{Name: proj + "/natGateways/n", Id: 9, Vpc: vpcA, ElasticIps: []string{proj + "/elasticIps/e"}, Subnets: []string{subA}})
	e := startEnv(t, st, func(c *Config) { c.GatewayGrace = 100 * time.Millisecond })
	agents := map[string]*agenttest.Agent{}
	for _, g := range []string{"g1", "g2", "n1"} {
		a := agenttest.New(e.conn, g)
		if err := a.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		agents[g] = a
		converge(t, e, a, g, rev)
	}
	owner := func(a *agenttest.Agent) string { return a.State()["ngw/9"].GetNatGateway().GetOwnerNode() }
	first := owner(agents["g1"])
	other := map[string]string{"g1": "g2", "g2": "g1"}[first]
	if first == "" || owner(agents["n1"]) != first {
		t.Fatalf("owners: g1 sees %q, n1 sees %q", first, owner(agents["n1"]))
	}
	start := time.Now()
	agents[first].Disconnect()
	waitFor(t, func() bool { return owner(agents[other]) == other && owner(agents["n1"]) == other })
	t.Logf("NAT gateway moved from %s to %s %v after its agent left (grace 100ms)", first, other, time.Since(start).Round(time.Millisecond))
	if !downMarked(t, st, first) {
		t.Fatalf("%s not marked down in the store", first)
	}
	if err := agents[first].Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !downMarked(t, st, first) && owner(agents[other]) == first })
	converge(t, e, agents[first], first, st.Revision())
	if owner(agents[first]) != first {
		t.Fatalf("owner after %s came back: %q", first, owner(agents[first]))
	}
	// A compute node's agent going away marks nothing.
	agents["n1"].Disconnect()
	time.Sleep(300 * time.Millisecond)
	if downMarked(t, st, "n1") {
		t.Fatal("a compute node was marked down")
	}
}

func awayMarked(t *testing.T, st store.Store, node string) bool {
	t.Helper()
	var ok bool
	err := st.View(context.Background(), func(tx store.ReadTx) error {
		var err error
		_, ok, err = tx.Get(model.GatewayAwayKey(node))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func downMarked(t *testing.T, st store.Store, node string) bool {
	t.Helper()
	var ok bool
	err := st.View(context.Background(), func(tx store.ReadTx) error {
		var err error
		_, ok, err = tx.Get(model.GatewayDownKey(node))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestGatewayAbsentAtStartIsMarkedDown: a gateway whose agent never comes
// back to a (re)started controller is marked down after three grace
// periods, so its NAT gateways do not stay with a dead node.
func TestGatewayAbsentAtStartIsMarkedDown(t *testing.T) {
	st, _ := openStore(t)
	g := node("g1", "192.0.2.101")
	g.Roles = []mv1.NodeRole{mv1.NodeRole_GATEWAY}
	write(t, st, g, node("n1", "192.0.2.1"))
	start := time.Now()
	startEnv(t, st, func(c *Config) { c.GatewayGrace = 50 * time.Millisecond })
	waitFor(t, func() bool { return downMarked(t, st, "g1") })
	if took := time.Since(start); took < 150*time.Millisecond {
		t.Fatalf("marked down after %v, before three grace periods", took)
	}
	if downMarked(t, st, "n1") {
		t.Fatal("a compute node was marked down")
	}
}

// TestGatewayDrainsAtOnce: a gateway's agent leaving drains its Gateway
// object on the other nodes within a delta, long before the grace period
// moves its NAT gateways (which stay with it meanwhile); coming back
// undrains it.
func TestGatewayDrainsAtOnce(t *testing.T) {
	st, _ := openStore(t)
	ctx := testCtx(t)
	fixture(t, st)
	gateway := func(id, ip string) *mv1.Node {
		n := node(id, ip)
		n.Roles = []mv1.NodeRole{mv1.NodeRole_GATEWAY}
		return n
	}
	rev := write(t, st, gateway("g1", "192.0.2.101"), gateway("g2", "192.0.2.102"),
		&mv1.PublicAddressPool{Name: "publicAddressPools/pub", Id: 1, Cidrs: []string{"203.0.113.0/24"}},
		&mv1.ElasticIp{Name: proj + "/elasticIps/e", Id: 1, Pool: "publicAddressPools/pub", Address: "203.0.113.5", NatGateway: proj + "/natGateways/n"},
		&mv1.NatGateway{Name: proj + "/natGateways/n", Id: 9, Vpc: vpcA, ElasticIps: []string{proj + "/elasticIps/e"}, Subnets: []string{subA}})
	e := startEnv(t, st, func(c *Config) { c.GatewayGrace = time.Minute })
	agents := map[string]*agenttest.Agent{}
	for _, g := range []string{"g1", "g2", "n1"} {
		a := agenttest.New(e.conn, g)
		if err := a.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		agents[g] = a
		converge(t, e, a, g, rev)
	}
	owner := agents["n1"].State()["ngw/9"].GetNatGateway().GetOwnerNode()
	draining := func(g string) bool { return agents["n1"].State()["gateway/"+g].GetGateway().GetDraining() }
	if owner == "" || draining("g1") || draining("g2") {
		t.Fatalf("start: owner %q, draining g1 %v g2 %v", owner, draining("g1"), draining("g2"))
	}
	start := time.Now()
	agents[owner].Disconnect()
	waitFor(t, func() bool { return draining(owner) })
	t.Logf("gateway %s drained on n1 %v after its agent left (grace 1m)", owner, time.Since(start).Round(time.Millisecond))
	if got := agents["n1"].State()["ngw/9"].GetNatGateway().GetOwnerNode(); got != owner {
		t.Fatalf("NAT gateway moved to %q while its owner is only away", got)
	}
	if err := agents[owner].Connect(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return !draining(owner) })
}
