package distributor

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// benchStore writes the model benchmark's topology (10,000 ports, 1,000
// groups, 20,000 rules, 20 VPCs, 500 nodes) into a real bbolt store.
func benchStore(b *testing.B) store.Store {
	st, err := store.Open(filepath.Join(b.TempDir(), "bench.db"), store.Options{Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = st.Close() })
	var msgs []proto.Message
	for n := range 500 {
		msgs = append(msgs, node(fmt.Sprintf("n%d", n), fmt.Sprintf("192.0.%d.%d", n/250, n%250+1)))
	}
	for v := range 20 {
		vn := fmt.Sprintf("projects/p%d/vpcs/v", v)
		msgs = append(msgs, vpc(vn, uint32(v+1)))
		for s := range 4 {
			msgs = append(msgs, subnet(fmt.Sprintf("%s/subnets/s%d", vn, s), uint32(v*4+s+1), fmt.Sprintf("10.0.%d.0/24", s), "", ""))
		}
		for g := range 50 {
			msgs = append(msgs, benchGroup(v, g, 0))
		}
		for p := range 500 {
			n := (v*25 + p%50) % 500
			msgs = append(msgs, port(fmt.Sprintf("projects/p%d/ports/q%d", v, p), uint32(v*500+p+1),
				fmt.Sprintf("%s/subnets/s%d", vn, p%4), fmt.Sprintf("nodes/n%d", n), fmt.Sprintf("10.0.%d.%d", p%4, p/4+2),
				fmt.Sprintf("projects/p%d/securityGroups/g%d", v, p%50), fmt.Sprintf("projects/p%d/securityGroups/g%d", v, (p+7)%50)))
		}
	}
	_, err = st.Update(context.Background(), func(tx store.Tx) error {
		for _, m := range msgs {
			k, _ := resource.KindOf(m)
			buf, err := proto.Marshal(m)
			if err != nil {
				return err
			}
			if err := tx.Put(k.Key(resource.Name(m)), buf); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return st
}

func benchGroup(v, g, variant int) *mv1.SecurityGroup {
	grp := sg(fmt.Sprintf("projects/p%d/securityGroups/g%d", v, g), uint32(v*50+g+1), fmt.Sprintf("projects/p%d/vpcs/v", v))
	for r := range 20 {
		rule := &mv1.SecurityGroupRule{Id: uint32(r + 1), Direction: mv1.Direction(1 + r%2), Protocol: "tcp",
			PortRangeMin: uint32(1000 + r + variant), PortRangeMax: uint32(1000 + r + variant)}
		if r%4 == 0 {
			rule.RemoteSecurityGroup = fmt.Sprintf("projects/p%d/securityGroups/g%d", v, (g+r)%50)
		} else {
			rule.RemoteCidr = fmt.Sprintf("10.%d.0.0/16", r)
		}
		grp.Rules = append(grp.Rules, rule)
	}
	return grp
}

func startBench(b *testing.B, st store.Store) (*Distributor, context.CancelFunc) {
	d, err := New(Config{Store: st, Logger: quiet(), BatchWindow: time.Microsecond,
		Authorize: func(context.Context) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Ready():
	case err := <-done:
		b.Fatal(err)
	}
	return d, func() { cancel(); <-done }
}

// BenchmarkStartup: Run until Ready (store listing, model build, per-node
// versioned state) at the benchmark scale.
func BenchmarkStartup(b *testing.B) {
	st := benchStore(b)
	for b.Loop() {
		_, stop := startBench(b, st)
		stop()
	}
}

// BenchmarkRuleChangeEndToEnd: one rule change, from the store commit
// (fsync included) until the distributor has new per-node versions.
func BenchmarkRuleChangeEndToEnd(b *testing.B) {
	st := benchStore(b)
	d, stop := startBench(b, st)
	defer stop()
	ctx := context.Background()
	grp := [2][]byte{}
	for i := range grp {
		grp[i], _ = proto.Marshal(benchGroup(3, 7, i+1))
	}
	key := resource.KindSecurityGroup.Key("projects/p3/securityGroups/g7")
	i := 0
	for b.Loop() {
		rev, err := st.Update(ctx, func(tx store.Tx) error { return tx.Put(key, grp[i%2]) })
		if err != nil {
			b.Fatal(err)
		}
		i++
		if err := d.WaitRevision(ctx, rev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAgentsFanOut: 500 simulated agents (one per node of the
// benchmark topology) connect over gRPC (bufconn) and take their snapshots;
// then one rule change must be applied and acknowledged by every agent
// holding the group. Reports both latencies.
func BenchmarkAgentsFanOut(b *testing.B) {
	st := benchStore(b)
	d, stop := startBench(b, st)
	defer stop()
	lis := bufconn.Listen(16 << 20)
	srv := grpc.NewServer()
	d.Register(srv)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	grp := [2][]byte{}
	for i := range grp {
		grp[i], _ = proto.Marshal(benchGroup(3, 7, i+1))
	}
	key := resource.KindSecurityGroup.Key("projects/p3/securityGroups/g7")
	var snap, change time.Duration
	i := 0
	for b.Loop() {
		agents := make([]*agenttest.Agent, 500)
		start := time.Now()
		for n := range agents {
			agents[n] = agenttest.New(conn, fmt.Sprintf("n%d", n))
			if err := agents[n].Connect(ctx); err != nil {
				b.Fatal(err)
			}
		}
		for n, a := range agents {
			if err := a.WaitVersion(ctx, d.Status(fmt.Sprintf("n%d", n)).Desired); err != nil {
				b.Fatal(err)
			}
		}
		snap += time.Since(start)

		start = time.Now()
		rev, err := st.Update(ctx, func(tx store.Tx) error { return tx.Put(key, grp[i%2]) })
		if err != nil {
			b.Fatal(err)
		}
		i++
		if err := d.WaitRevision(ctx, rev); err != nil {
			b.Fatal(err)
		}
		for n, a := range agents {
			if err := a.WaitVersion(ctx, d.Status(fmt.Sprintf("n%d", n)).Desired); err != nil {
				b.Fatal(err)
			}
		}
		change += time.Since(start)
		for _, a := range agents {
			a.Disconnect()
		}
	}
	b.ReportMetric(float64(snap.Milliseconds())/float64(b.N), "ms-500-snapshots")
	b.ReportMetric(float64(change.Microseconds())/1000/float64(b.N), "ms-rule-change-acked")
}
