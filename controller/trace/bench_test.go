package trace_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
	"github.com/meridian-sdn/meridian/controller/trace"
)

// Scale of the benchmark (issue [6]): 10,000 ports and 50,200 rules
// (50,000 security-group rules, 200 network-ACL rules) in 10 VPCs on 100
// nodes, placed with locality as a scheduler would (each VPC on its own 10
// nodes), as in controller/model's benchmarks. Every port is in two groups of 100 rules; every fourth rule names
// a remote group. The last rule of each group allows all egress, so the
// traced packet walks every egress rule of its port's groups before one
// allows it, and every ingress rule of the destination's groups before
// none does: the longest walk the model has.
const (
	bVpcs        = 10
	bSubnets     = 4
	bPortsPerVpc = 1000
	bSGsPerVpc   = 50
	bRulesPerSG  = 100
	bACLRules    = 20 // per VPC, one ACL on every subnet
	bNodes       = 100
)

func benchStore(b testing.TB) store.Store {
	b.Helper()
	return scaleStore(b, bVpcs, bPortsPerVpc)
}

// scaleStore writes the benchmark's resources, with vpcs VPCs of ports
// ports each, straight into a store (IDs included, as the API server would
// have allocated them).
func scaleStore(b testing.TB, vpcs, ports int) store.Store {
	b.Helper()
	st, err := store.Open(filepath.Join(b.TempDir(), "meridian.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	var msgs []proto.Message
	for n := range bNodes {
		msgs = append(msgs, &mv1.Node{Name: fmt.Sprintf("nodes/n%d", n), UnderlayIp: fmt.Sprintf("192.0.2.%d", n+1)})
	}
	for v := range vpcs {
		pfx := fmt.Sprintf("projects/p%d", v)
		vpc := pfx + "/vpcs/v"
		msgs = append(msgs, &mv1.Project{Name: pfx, Organization: "o"}, &mv1.Vpc{Name: vpc, Id: uint32(v + 1), Vni: uint32(v + 1), CidrBlocks: []string{"10.0.0.0/16"}})
		acl := &mv1.NetworkAcl{Name: pfx + "/networkAcls/a", Id: uint32(v + 1), Vpc: vpc}
		for r := range bACLRules {
			dir := mv1.Direction(1 + r%2)
			acl.Rules = append(acl.Rules, &mv1.NetworkAclRule{Id: uint32(r + 1), Number: uint32(100 + r), Action: mv1.Action_ALLOW, Direction: dir,
				Protocol: "tcp", PortRangeMin: uint32(2000 + r), PortRangeMax: uint32(2000 + r), Cidr: fmt.Sprintf("10.%d.0.0/16", r)})
		}
		acl.Rules = append(acl.Rules,
			&mv1.NetworkAclRule{Id: 1000, Number: 1000, Action: mv1.Action_ALLOW, Direction: mv1.Direction_INGRESS, Protocol: "all"},
			&mv1.NetworkAclRule{Id: 1001, Number: 1000, Action: mv1.Action_ALLOW, Direction: mv1.Direction_EGRESS, Protocol: "all"})
		msgs = append(msgs, acl)
		for s := range bSubnets {
			msgs = append(msgs, &mv1.Subnet{Name: fmt.Sprintf("%s/subnets/s%d", vpc, s), Id: uint32(v*bSubnets + s + 1),
				CidrBlock: fmt.Sprintf("10.0.%d.0/22", s*4), NetworkAcl: acl.Name})
		}
		for g := range bSGsPerVpc {
			sg := &mv1.SecurityGroup{Name: fmt.Sprintf("%s/securityGroups/g%d", pfx, g), Id: uint32(v*bSGsPerVpc + g + 1), Vpc: vpc}
			for r := range bRulesPerSG - 1 {
				rule := &mv1.SecurityGroupRule{Id: uint32(r + 1), Direction: mv1.Direction(1 + r%2), Protocol: "tcp",
					PortRangeMin: uint32(1000 + r), PortRangeMax: uint32(1000 + r)}
				if r%4 == 0 {
					rule.RemoteSecurityGroup = fmt.Sprintf("%s/securityGroups/g%d", pfx, (g+r)%bSGsPerVpc)
				} else {
					rule.RemoteCidr = fmt.Sprintf("10.%d.0.0/16", r)
				}
				sg.Rules = append(sg.Rules, rule)
			}
			sg.Rules = append(sg.Rules, &mv1.SecurityGroupRule{Id: bRulesPerSG, Direction: mv1.Direction_EGRESS, Protocol: "all"})
			msgs = append(msgs, sg)
		}
		for p := range ports {
			s := p % bSubnets
			msgs = append(msgs, &mv1.Port{Name: fmt.Sprintf("%s/ports/q%d", pfx, p), Id: uint32(v*bPortsPerVpc + p + 1),
				Subnet: fmt.Sprintf("%s/subnets/s%d", vpc, s), Node: fmt.Sprintf("nodes/n%d", v*bNodes/bVpcs+p%(bNodes/bVpcs)),
				MacAddress: fmt.Sprintf("02:00:00:%02x:%02x:%02x", v, p>>8, p&0xff),
				FixedIps:   []string{fmt.Sprintf("10.0.%d.%d", s*4+p/250, p%250+2)},
				SecurityGroups: []string{fmt.Sprintf("%s/securityGroups/g%d", pfx, p%bSGsPerVpc),
					fmt.Sprintf("%s/securityGroups/g%d", pfx, (p+7)%bSGsPerVpc)}})
		}
	}
	ctx := context.Background()
	for chunk := range slices.Chunk(msgs, 2000) {
		_, err := st.Update(ctx, func(tx store.Tx) error {
			for _, m := range chunk {
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
			b.Fatal(err)
		}
	}
	return st
}

// BenchmarkTrace measures a trace's latency on the 10,000-port / 50,000-
// rule model through the service (request parsing, authorization, the
// walk, the API answer), with the model already built for the store's
// revision; the baseline in the same run is that build (store -> logical
// model -> trace indexes), which a trace pays once after each change.
func BenchmarkTrace(b *testing.B) {
	st := benchStore(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := auth.WithIdentity(context.Background(), &auth.Identity{Subject: "bench", Role: auth.RoleSystemAdmin})
	req := &mv1.TraceRequest{Source: "projects/p3/ports/q0", Destination: "projects/p3/ports/q1", Protocol: "tcp", DestinationPort: 9999, Reply: true}

	start := time.Now()
	m, _, err := trace.Load(ctx, st, log)
	if err != nil {
		b.Fatal(err)
	}
	build := time.Since(start)
	objs := loadObjects(b, st, log)
	start = time.Now()
	trace.NewModel(objs)
	index := time.Since(start)
	if m.Port("projects/p9/ports/q999") == nil {
		b.Fatal("the model lacks the last port")
	}

	svc := trace.NewService(st, log)
	r, err := svc.Trace(ctx, req) // builds the service's model
	if err != nil {
		b.Fatal(err)
	}
	if r.GetAllowed() || r.GetForward().GetDropReason() != "SG_INGRESS" {
		b.Fatalf("trace: allowed=%v reason=%s, want the walk to end at SG ingress", r.GetAllowed(), r.GetForward().GetDropReason())
	}
	// One rule changes: the next trace applies the change and rebuilds the
	// trace's index, no full build.
	changeRule(b, st, "projects/p5/securityGroups/g3", 1)
	start = time.Now()
	if _, err := svc.Trace(ctx, req); err != nil {
		b.Fatal(err)
	}
	afterChange := time.Since(start)
	const perIter = 200
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		for range perIter {
			t0 := time.Now()
			if _, err := svc.Trace(ctx, req); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	b.ReportMetric(float64(p50.Microseconds())/1000, "trace-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "trace-p99-ms")
	b.ReportMetric(float64(build.Milliseconds()), "model-build-ms")
	b.ReportMetric(float64(index.Milliseconds()), "trace-index-ms")
	b.ReportMetric(float64(afterChange.Milliseconds()), "trace-after-change-ms")
	b.ReportMetric(float64(build)/float64(p50), "build/trace")
}

func loadObjects(b *testing.B, st store.Store, log *slog.Logger) trace.Objects {
	var objs trace.Objects
	err := st.View(context.Background(), func(tx store.ReadTx) error {
		m := model.New(log)
		if err := m.Load(tx); err != nil {
			return err
		}
		objs = m.Objects()
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return objs
}

// changeRule rewrites the port range of the first rule of group name.
func changeRule(tb testing.TB, st store.Store, name string, port uint32) {
	tb.Helper()
	_, err := st.Update(context.Background(), func(tx store.Tx) error {
		kv, ok, err := tx.Get(resource.KindSecurityGroup.Key(name))
		if err != nil || !ok {
			return fmt.Errorf("get %s: %v (found %v)", name, err, ok)
		}
		var sg mv1.SecurityGroup
		if err := proto.Unmarshal(kv.Value, &sg); err != nil {
			return err
		}
		sg.Rules[0].PortRangeMin, sg.Rules[0].PortRangeMax = port, port
		b, err := proto.Marshal(&sg)
		if err != nil {
			return err
		}
		return tx.Put(kv.Key, b)
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// openRule makes the third rule of group name allow ingress tcp/1002 from
// anywhere.
func openRule(tb testing.TB, st store.Store, name string) {
	tb.Helper()
	_, err := st.Update(context.Background(), func(tx store.Tx) error {
		kv, ok, err := tx.Get(resource.KindSecurityGroup.Key(name))
		if err != nil || !ok {
			return fmt.Errorf("get %s: %v (found %v)", name, err, ok)
		}
		var sg mv1.SecurityGroup
		if err := proto.Unmarshal(kv.Value, &sg); err != nil {
			return err
		}
		sg.Rules[2].RemoteCidr = "0.0.0.0/0"
		b, err := proto.Marshal(&sg)
		if err != nil {
			return err
		}
		return tx.Put(kv.Key, b)
	})
	if err != nil {
		tb.Fatal(err)
	}
}
