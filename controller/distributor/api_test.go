package distributor

import (
	"testing"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/store"
)

// TestWithAPIServer runs the distributor on what the real API server
// stores (the storage contract), with the distributor as the API's status
// provider: a port created through the API turns ACTIVE once the agent of
// its node acknowledged it, and the agent holds the compiled port.
func TestWithAPIServer(t *testing.T) {
	api := apitest.New(t, apitest.Options{Store: store.Options{Logger: quiet()}})
	api.Seed()
	ctx := apitest.Ctx(t)
	e := startEnv(t, api.Store, nil)
	api.Server.SetStatusProvider(e.d)

	a := agenttest.New(e.conn, "n1")
	if err := a.Register(ctx, "192.0.2.1", "compute"); err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", api.Store.Revision())

	p, err := api.Admin.Net.CreatePort(ctx, &mv1.CreatePortRequest{Parent: apitest.ProjectA1, PortId: "web1",
		Port: &mv1.Port{Subnet: apitest.Subnet(apitest.ProjectA1), Node: apitest.Node1,
			SecurityGroups: []string{apitest.SGWeb}, SecondaryIps: []string{"10.0.1.99"}}})
	if err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", api.Store.Revision())
	key := e.d.model.KeyOf(p.GetName())
	obj := a.State()[key].GetPort()
	if obj == nil {
		t.Fatalf("agent lacks the new port %s (%s); holds %v", p.GetName(), key, sortedKeys(a.State()))
	}
	if obj.GetId() != p.GetId() || obj.GetMac() != p.GetMacAddress() || obj.GetNode() != "n1" ||
		len(obj.GetIps()) != 2 || obj.GetIps()[1] != "10.0.1.99" || len(obj.GetSecurityGroupIds()) != 1 || !obj.GetSourceDestCheck() {
		t.Errorf("compiled port %v from API port %v", obj, p)
	}
	// web's rules reference db (remote group) and web itself: both reach n1.
	for _, name := range []string{apitest.SGWeb, apitest.SGDB} {
		if _, ok := a.State()[e.d.model.KeyOf(name)]; !ok {
			t.Errorf("agent lacks group %s", name)
		}
	}
	waitFor(t, func() bool { return e.d.Status("n1").Applied == a.Version() })
	got, err := api.Admin.Net.GetPort(ctx, &mv1.GetPortRequest{Name: p.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetStatus().GetState() != mv1.PortState_PORT_STATE_ACTIVE {
		t.Errorf("port status through the API = %v, want ACTIVE", got.GetStatus())
	}
	n, err := api.Admin.Node.GetNode(ctx, &mv1.GetNodeRequest{Name: "nodes/n1"})
	if err != nil {
		t.Fatal(err)
	}
	if s := n.GetStatus(); !s.GetConnected() || s.GetAppliedVersion() != s.GetDesiredVersion() {
		t.Errorf("node status through the API = %v", s)
	}

	// A port on a node whose agent is away stays BUILD, then turns ACTIVE
	// once it resumes.
	a.Disconnect()
	p2, err := api.Admin.Net.CreatePort(ctx, &mv1.CreatePortRequest{Parent: apitest.ProjectA1, PortId: "web2",
		Port: &mv1.Port{Subnet: apitest.Subnet(apitest.ProjectA1), Node: apitest.Node1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.d.WaitRevision(ctx, api.Store.Revision()); err != nil {
		t.Fatal(err)
	}
	got, err = api.Admin.Net.GetPort(ctx, &mv1.GetPortRequest{Name: p2.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetStatus().GetState() != mv1.PortState_PORT_STATE_BUILD {
		t.Errorf("port on a disconnected node: %v, want BUILD", got.GetStatus())
	}
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", api.Store.Revision())
	waitFor(t, func() bool {
		got, err := api.Admin.Net.GetPort(ctx, &mv1.GetPortRequest{Name: p2.GetName()})
		return err == nil && got.GetStatus().GetState() == mv1.PortState_PORT_STATE_ACTIVE
	})
}
