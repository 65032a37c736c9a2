package trace_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/ovn"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
	"github.com/meridian-sdn/meridian/controller/trace"
)

// TestServiceShowsOVNTrace goes the way of a `meridianctl trace` on a
// deployment with OVN nodes: API resources in the store, the OVN
// reconciler's rendering of them in a real OVN control plane, and the
// trace service with ovn_southbound answering with both verdicts.
func TestServiceShowsOVNTrace(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "meridian.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	const p = "projects/p"
	put(t, st,
		&mv1.Project{Name: p, Organization: "o"},
		&mv1.Node{Name: "nodes/o1", UnderlayIp: "192.0.2.1", Realization: mv1.Realization_OVN},
		&mv1.Node{Name: "nodes/e1", UnderlayIp: "192.0.2.2"},
		&mv1.Vpc{Name: p + "/vpcs/v", Id: 1, Vni: 1, CidrBlocks: []string{"10.0.0.0/16"}},
		&mv1.Subnet{Name: p + "/vpcs/v/subnets/a", Id: 1, CidrBlock: "10.0.1.0/24"},
		&mv1.Subnet{Name: p + "/vpcs/v/subnets/b", Id: 2, CidrBlock: "10.0.2.0/24"},
		&mv1.SecurityGroup{Name: p + "/securityGroups/web", Id: 1, Vpc: p + "/vpcs/v", Rules: []*mv1.SecurityGroupRule{
			{Id: 1, Direction: mv1.Direction_INGRESS, Protocol: "tcp", PortRangeMin: 22, PortRangeMax: 22, RemoteCidr: "10.0.0.0/16"},
			{Id: 2, Direction: mv1.Direction_EGRESS, Protocol: "all"},
		}},
		&mv1.SecurityGroup{Name: p + "/securityGroups/client", Id: 2, Vpc: p + "/vpcs/v", Rules: []*mv1.SecurityGroupRule{
			{Id: 3, Direction: mv1.Direction_EGRESS, Protocol: "all"},
		}},
		&mv1.Port{Name: p + "/ports/client", Id: 1, Subnet: p + "/vpcs/v/subnets/a", Node: "nodes/o1", MacAddress: "02:00:00:00:00:01",
			FixedIps: []string{"10.0.1.10"}, SecurityGroups: []string{p + "/securityGroups/client"}},
		&mv1.Port{Name: p + "/ports/web", Id: 2, Subnet: p + "/vpcs/v/subnets/b", Node: "nodes/o1", MacAddress: "02:00:00:00:00:02",
			FixedIps: []string{"10.0.2.10"}, SecurityGroups: []string{p + "/securityGroups/web"}},
		&mv1.Port{Name: p + "/ports/ebpf-client", Id: 3, Subnet: p + "/vpcs/v/subnets/a", Node: "nodes/e1", MacAddress: "02:00:00:00:00:03",
			FixedIps: []string{"10.0.1.11"}, SecurityGroups: []string{p + "/securityGroups/client"}},
	)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The OVN reconciler realizes the model.
	stack := ovntest.Start(t, ovntest.Options{})
	var objs trace.Objects
	if err := st.View(ctx, func(tx store.ReadTx) error {
		m := model.New(log)
		if err := m.Load(tx); err != nil {
			return err
		}
		objs = m.Objects()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r, err := ovn.NewReconciler(ovn.Config{NB: stack.NB.Endpoint(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Sync(ctx, objs); err != nil {
		t.Fatal(err)
	}
	stack.WaitNorthd()

	svc := trace.NewService(st, log).WithOVN(&trace.OVNTracer{SB: stack.SB.Endpoint()})
	actx := auth.WithIdentity(ctx, &auth.Identity{Subject: "t", Role: auth.RoleSystemAdmin})
	for _, tc := range []struct {
		from    string
		dport   uint32
		allowed bool
		ovn     string // in ovn-trace's verdict; "" = not run
	}{
		{p + "/ports/client", 22, true, "output to mer-port-2"},
		{p + "/ports/client", 8080, false, "drop at ls_out_acl priority 2000 (ACL priority 1000: Meridian's default deny"},
		{p + "/ports/ebpf-client", 22, true, ""}, // an eBPF node: OVN does not forward its packets
	} {
		t.Run(fmt.Sprintf("%s to tcp/%d", tc.from, tc.dport), func(t *testing.T) {
			out, err := svc.Trace(actx, &mv1.TraceRequest{Source: tc.from, Destination: p + "/ports/web", Protocol: "tcp",
				DestinationPort: tc.dport, OvnDetail: true})
			if err != nil {
				t.Fatal(err)
			}
			if out.GetAllowed() != tc.allowed {
				t.Errorf("model: allowed=%v, want %v", out.GetAllowed(), tc.allowed)
			}
			o := out.GetOvn()
			if tc.ovn == "" {
				if o != nil {
					t.Errorf("ovn-trace ran for a source on an eBPF node: %v", o)
				}
				return
			}
			if o.GetError() != "" || o.GetAllowed() != tc.allowed || !o.GetAgrees() || !strings.Contains(o.GetVerdict(), tc.ovn) {
				t.Errorf("ovn: %v, want allowed=%v agreeing, verdict with %q", o, tc.allowed, tc.ovn)
			}
			t.Logf("ovn-trace: %s; microflow on %s: %s", o.GetVerdict(), o.GetDatapath(), o.GetMicroflow())
			if o.GetDatapath() != "mer-subnet-1" || !strings.Contains(o.GetText(), `ingress(dp="mer-subnet-1", inport="mer-port-1")`) {
				t.Errorf("datapath %q, detail text:\n%s", o.GetDatapath(), o.GetText())
			}
		})
	}
}

func put(t *testing.T, st store.Store, msgs ...proto.Message) {
	t.Helper()
	_, err := st.Update(context.Background(), func(tx store.Tx) error {
		for _, m := range msgs {
			k, ok := resource.KindOf(m)
			if !ok {
				return fmt.Errorf("no kind for %T", m)
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
		t.Fatal(err)
	}
}
