package ovn

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// manyElasticIPs: vpcs VPCs of one subnet each, two gateway nodes, and n
// elastic IPs (198.18.0.0/15) associated with ports spread over the VPCs.
func manyElasticIPs(vpcs, n int) map[string]*agentv1.Object {
	var bodies []proto.Message
	for v := 1; v <= vpcs; v++ {
		bodies = append(bodies, &agentv1.Vpc{Id: uint32(v), Cidrs: []string{"10.0.0.0/8"}},
			&agentv1.Subnet{Id: uint32(v), VpcId: uint32(v), Cidr: "10.0.0.0/16", GatewayIp: "10.0.0.1", Mtu: 1450})
	}
	objs := objects(bodies...)
	withOutside(objs, &agentv1.Gateway{Node: "gw1"}, &agentv1.Gateway{Node: "gw2"})
	for i := range n {
		withOutside(objs, &agentv1.ElasticIp{Id: uint32(i + 1), Address: fmt.Sprintf("198.18.%d.%d", i/250, i%250+1),
			VpcId: uint32(i%vpcs + 1), PortId: uint32(i + 1), PrivateIp: fmt.Sprintf("10.0.%d.%d", i/250, i%250+2)})
	}
	return objs
}

// BenchmarkElasticIPsOVN measures 10,000 elastic IPs over 100 VPCs against
// a real ovsdb-server with ovn-northd: render, commit into NB (gateway
// ports and NAT rows), until northd has settled; one elastic IP moved to
// another port (NB commit, rows written); and, on a second stack holding
// the same routers and gateway ports, the same NAT rows added with
// `ovn-nbctl lr-nat-add`, 1,000 per invocation. Run it once:
// go test -run '^$' -bench ElasticIPsOVN -benchtime 1x ./controller/ovn/
func BenchmarkElasticIPsOVN(b *testing.B) {
	const vpcs, n = 100, 10000
	for range b.N {
		if la, err := os.ReadFile("/proc/loadavg"); err == nil {
			b.Logf("load average at start: %s", strings.TrimSpace(string(la)))
		}
		objs := manyElasticIPs(vpcs, n)
		rr := extRenderer(b)
		start := time.Now()
		d := rr.Render(objs)
		b.ReportMetric(time.Since(start).Seconds()*1000, "render-ms")

		stack := ovntest.Start(b, ovntest.Options{})
		// One transaction per phase: a gateway port and its chassis rows
		// must share one (see the note on Logical_Router_Port in tables.go).
		big := func(c *Config) { c.Timeout, c.MaxOps = 10*time.Minute, 1<<20 }
		r := connect(b, stack.NB.Endpoint(), big)
		start = time.Now()
		if _, err := r.SyncDesired(context.Background(), d); err != nil {
			b.Fatalf("initial sync: %v", err)
		}
		commit := time.Since(start)
		start = time.Now()
		waitNorthdLong(b, stack)
		b.ReportMetric(commit.Seconds(), "commit-s")
		b.ReportMetric(time.Since(start).Seconds(), "northd-settle-s")

		e := objs[owner("eip", n/2)].GetElasticIp()
		e.PortId, e.PrivateIp = 20000, "10.0.200.200"
		start = time.Now()
		res, err := r.SyncDesired(context.Background(), rr.Render(objs))
		if err != nil {
			b.Fatalf("move: %v", err)
		}
		b.ReportMetric(time.Since(start).Seconds()*1000, "move-ms")
		b.ReportMetric(float64(res.Writes()), "move-rows")
		r.Close()
		stack.Stop()

		base := ovntest.Start(b, ovntest.Options{})
		rb := connect(b, base.NB.Endpoint(), big)
		// Routers and gateway ports first (one elastic IP per VPC keeps
		// them), then the NAT rows by hand.
		if _, err := rb.SyncDesired(context.Background(), rr.Render(manyElasticIPs(vpcs, vpcs))); err != nil {
			b.Fatalf("baseline topology: %v", err)
		}
		var cmds [][]string
		for i := vpcs; i < n; i++ {
			cmds = append(cmds, []string{"lr-nat-add", RouterName(uint32(i%vpcs + 1)), "dnat_and_snat",
				fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), fmt.Sprintf("10.0.%d.%d", i/250, i%250+2)})
		}
		start = time.Now()
		for len(cmds) > 0 {
			k := min(1000, len(cmds))
			var args []string
			for j, c := range cmds[:k] {
				if j > 0 {
					args = append(args, "--")
				}
				args = append(args, c...)
			}
			if _, err := base.Ctl("ovn-nbctl", base.NB, args...); err != nil {
				b.Fatalf("baseline: %v", err)
			}
			cmds = cmds[k:]
		}
		baseline := time.Since(start)
		b.ReportMetric(baseline.Seconds(), "nbctl-commit-s")
		b.ReportMetric(baseline.Seconds()/commit.Seconds(), "speedup-x")
		rb.Close()
		base.Stop()
		if la, err := os.ReadFile("/proc/loadavg"); err == nil {
			b.Logf("load average at end: %s", strings.TrimSpace(string(la)))
		}
	}
}

// waitNorthdLong is Stack.WaitNorthd without its one-minute bound: northd
// 23.03 takes minutes over thousands of NAT rows on a loaded machine.
func waitNorthdLong(b *testing.B, stack *ovntest.Stack) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ovn-nbctl", "--db="+stack.NB.Endpoint(), "--timeout=1200", "--wait=sb", "sync").CombinedOutput()
	if err != nil {
		b.Fatalf("ovn-nbctl --wait=sb sync: %v: %s", err, out)
	}
}
