package ovn

import (
	"fmt"
	"slices"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// withListeners adds n internal listeners to a generated topology, each
// over four ports of its VPC's first subnet, every other one health-checked.
func withListeners(objs map[string]*agentv1.Object, n int) map[string]*agentv1.Object {
	out := make(map[string]*agentv1.Object, len(objs)+n)
	for k, v := range objs {
		out[k] = v
	}
	x := agentv1.IndexObjects(objs)
	byVPC := map[uint32][]*agentv1.Port{}
	for _, id := range sortedIDs(x.Ports) {
		p := x.Ports[id]
		byVPC[p.GetVpcId()] = append(byVPC[p.GetVpcId()], p)
	}
	vpcs := sortedIDs(x.VPCs)
	for i := range n {
		vpc := vpcs[i%len(vpcs)]
		svc := &agentv1.LbService{Id: uint32(i + 1), VpcId: vpc, Vip: fmt.Sprintf("10.200.%d.%d", i/250, i%250+1),
			Port: 80, Protocol: 6, Internal: true}
		if i%2 == 0 {
			svc.HealthCheck = &agentv1.HealthCheck{Protocol: "tcp"}
		}
		ports := byVPC[vpc]
		for j := range 4 {
			p := ports[(i*4+j)%len(ports)]
			svc.Backends = append(svc.Backends, &agentv1.LbBackend{Id: uint32(j + 1), Address: p.GetIps()[0], Port: 8080,
				Weight: 1, PortId: p.GetId(), Node: "n1", Healthy: true})
		}
		withOutside(out, svc)
	}
	return out
}

// BenchmarkRenderWithListeners: the render and comparison an incremental
// pass does after one rule change, at the scale of issue [3], with 1,000
// internal listeners (half health-checked) against the same topology
// without listeners as the baseline. Run it once:
// go test -run '^$' -bench RenderWithListeners -benchtime 1x ./controller/ovn/
func BenchmarkRenderWithListeners(b *testing.B) {
	base := generate(issue3)
	const listeners, changes = 1000, 20
	measure := func(objs map[string]*agentv1.Object) (time.Duration, int) {
		rr := NewRenderer()
		prev := rr.Render(objs)
		var took []time.Duration
		for i := range changes {
			key := fmt.Sprintf("sg/%d", i+1)
			g := cloneSG(objs[key].GetSecurityGroup())
			g.Rules[0].PortMin++
			objs[key] = objects(g)[key]
			start := time.Now()
			d := rr.Render(objs)
			changedRows(prev, d)
			took = append(took, time.Since(start))
			prev = d
		}
		slices.Sort(took)
		return took[len(took)/2], prev.Len()
	}
	for range b.N {
		baseP50, baseRows := measure(base)
		lbP50, lbRows := measure(withListeners(base, listeners))
		b.Logf("render+compare after one rule change, p50 of %d: %v (%d rows) without listeners, %v (%d rows) with %d",
			changes, baseP50, baseRows, lbP50, lbRows, listeners)
		b.ReportMetric(float64(baseP50.Microseconds())/1000, "ms-baseline")
		b.ReportMetric(float64(lbP50.Microseconds())/1000, "ms-1000-listeners")
		b.ReportMetric(float64(lbP50)/float64(baseP50), "ratio")
	}
}
