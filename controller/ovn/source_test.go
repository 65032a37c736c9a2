package ovn

import (
	"context"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

func put(t *testing.T, st store.Store, msgs ...proto.Message) int64 {
	t.Helper()
	rev, err := st.Update(testCtx(t), func(tx store.Tx) error {
		for _, m := range msgs {
			k, ok := resource.KindOf(m)
			if !ok {
				t.Fatalf("no kind for %T", m)
			}
			b, err := proto.Marshal(m)
			if err != nil {
				return err
			}
			if err := tx.Put(k.Key(resource.Name(m)), b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("store update: %v", err)
	}
	return rev
}

// TestRunFollowsTheStore drives the reconciler from a real bbolt store
// through package model, as the controller wires it: what is in the store
// at start is rendered, later writes and deletes follow.
func TestRunFollowsTheStore(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "meridian.db"), store.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	vpc := &mv1.Vpc{Name: "projects/p/vpcs/v", CidrBlocks: []string{"10.0.0.0/16"}, Id: 1, Vni: 1001}
	subnet := &mv1.Subnet{Name: "projects/p/vpcs/v/subnets/s", CidrBlock: "10.0.1.0/24", Id: 11}
	put(t, st, vpc, subnet)

	r := runReconciler(t, ovntest.InMemoryNB(t), nil, st)
	waitSynced(t, r, st.Revision())
	if ls := meridianRows(r, nbdb.LogicalSwitchTable)["subnet/11"]; ls == nil || ls.(*nbdb.LogicalSwitch).Name != "mer-subnet-11" {
		t.Fatalf("switch of the subnet in the store at start: %+v", ls)
	}

	p := &mv1.Port{Name: "projects/p/ports/web", Subnet: subnet.Name, MacAddress: "02:00:00:00:01:05",
		FixedIps: []string{"10.0.1.5"}, Id: 105}
	waitSynced(t, r, put(t, st, p))
	lsp := meridianRows(r, nbdb.LogicalSwitchPortTable)["port/105"]
	if lsp == nil || lsp.(*nbdb.LogicalSwitchPort).Addresses[0] != "02:00:00:00:01:05 10.0.1.5" {
		t.Fatalf("switch port of the port written later: %+v", lsp)
	}

	rev, err := st.Update(context.Background(), func(tx store.Tx) error {
		return tx.Delete(resource.KindPort.Key(p.Name))
	})
	if err != nil {
		t.Fatal(err)
	}
	waitSynced(t, r, rev)
	if lsp := meridianRows(r, nbdb.LogicalSwitchPortTable)["port/105"]; lsp != nil {
		t.Fatalf("switch port of a deleted port left: %+v", lsp)
	}
}

// TestSourceGivesTheOutsideObjects checks that the store source hands the
// renderer what issue [4] adds: elastic IPs, NAT gateways, and a Gateway
// object per node with the gateway role (and none for other nodes).
func TestSourceGivesTheOutsideObjects(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "meridian.db"), store.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	vpc := &mv1.Vpc{Name: "projects/p/vpcs/v", CidrBlocks: []string{"10.0.0.0/16"}, Id: 1, Vni: 1001}
	subnet := &mv1.Subnet{Name: "projects/p/vpcs/v/subnets/s", CidrBlock: "10.0.1.0/24", Id: 11}
	port := &mv1.Port{Name: "projects/p/ports/web", Subnet: subnet.Name, MacAddress: "02:00:00:00:01:05",
		FixedIps: []string{"10.0.1.5"}, Id: 105, Node: "nodes/w1"}
	pool := &mv1.PublicAddressPool{Name: "publicAddressPools/inet", Cidrs: []string{"203.0.113.0/24"}, Id: 3}
	eip := &mv1.ElasticIp{Name: "projects/p/elasticIps/e", Pool: pool.Name, Address: "203.0.113.7", Port: port.Name, PrivateIp: "10.0.1.5", Id: 7}
	gw := &mv1.Node{Name: "nodes/g1", UnderlayIp: "192.0.2.1", Roles: []mv1.NodeRole{mv1.NodeRole_GATEWAY}}
	worker := &mv1.Node{Name: "nodes/w1", UnderlayIp: "192.0.2.2", Roles: []mv1.NodeRole{mv1.NodeRole_COMPUTE}}
	lb := &mv1.LoadBalancer{Name: "projects/p/loadBalancers/web", Vpc: vpc.Name, Scheme: "internal", Subnet: subnet.Name,
		Vip: "10.0.1.100", Id: 9, Listeners: []*mv1.LoadBalancerListener{{Id: 31, Name: "http", Protocol: "tcp", Port: 80,
			Backends: []*mv1.LoadBalancerBackend{{Id: 1, Port: port.Name, Address: "10.0.1.5", TargetPort: 8080}}}}}
	put(t, st, vpc, subnet, port, pool, eip, gw, worker, lb)

	src := NewStoreSource(st, quiet())
	ctx, cancel := context.WithCancel(testCtx(t))
	changed := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- src.Run(ctx, func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	<-changed
	objs, _ := src.Objects()
	for _, key := range []string{"eip/7", "gateway/g1", "port/105", "lb/31"} {
		if objs[key] == nil {
			t.Errorf("source misses %s (has %d objects)", key, len(objs))
		}
	}
	if objs["gateway/w1"] != nil {
		t.Errorf("a compute node became a gateway object")
	}
	if svc := objs["lb/31"].GetLbService(); svc.GetVip() != "10.0.1.100" || len(svc.GetBackends()) != 1 ||
		Render(objs).Row("Load_Balancer", "lb/31") == nil {
		t.Errorf("listener 31: %v, rendered: %v", svc, Render(objs).Row("Load_Balancer", "lb/31") != nil)
	}
	// A node that loses the gateway role stops being one.
	gw.Roles = []mv1.NodeRole{mv1.NodeRole_COMPUTE}
	rev := put(t, st, gw)
	eventually(t, "gateway/g1 gone", func() bool {
		objs, r := src.Objects()
		return r >= rev && objs["gateway/g1"] == nil
	})
}
