package ovn

import (
	"context"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// scale describes a generated topology.
type scale struct {
	vpcs, subnetsPerVPC, ports, sgs, rulesPerSG int
}

// issue3 is the benchmark of issue [3]: 10,000 ports, 1,000 security
// groups, 50,000 rules.
var issue3 = scale{vpcs: 10, subnetsPerVPC: 10, ports: 10000, sgs: 1000, rulesPerSG: 50}

// generate builds the topology: ports spread evenly over subnets, each in
// two groups of its VPC; every tenth rule names another group as remote.
func generate(sc scale) map[string]*agentv1.Object {
	var bodies []proto.Message
	subnets := sc.vpcs * sc.subnetsPerVPC
	sgsPerVPC := sc.sgs / sc.vpcs
	for v := 1; v <= sc.vpcs; v++ {
		bodies = append(bodies, &agentv1.Vpc{Id: uint32(v), Vni: uint32(1000 + v), Cidrs: []string{"10.0.0.0/8"}})
		for s := range sc.subnetsPerVPC {
			id := uint32((v-1)*sc.subnetsPerVPC + s + 1)
			bodies = append(bodies, &agentv1.Subnet{Id: id, VpcId: uint32(v),
				Cidr: fmt.Sprintf("10.%d.0.0/16", s), GatewayIp: fmt.Sprintf("10.%d.0.1", s), Mtu: 1450})
		}
	}
	ruleID := uint32(0)
	for g := range sc.sgs {
		vpc := g/sgsPerVPC + 1
		sg := &agentv1.SecurityGroup{Id: uint32(g + 1), VpcId: uint32(vpc)}
		for i := range sc.rulesPerSG {
			ruleID++
			r := &agentv1.Rule{Id: ruleID, Allow: true, Ingress: i%2 == 0, Protocol: 6,
				PortMin: uint32(1000 + i), PortMax: uint32(1000 + i), IcmpType: -1, IcmpCode: -1,
				Cidr: fmt.Sprintf("192.168.%d.0/24", i)}
			if i%10 == 0 {
				r.Cidr, r.RemoteGroupId = "", uint32((vpc-1)*sgsPerVPC+(g+i/10)%sgsPerVPC+1)
			}
			sg.Rules = append(sg.Rules, r)
		}
		bodies = append(bodies, sg)
	}
	for p := range sc.ports {
		subnet := p%subnets + 1
		vpc := (subnet-1)/sc.subnetsPerVPC + 1
		s := (subnet - 1) % sc.subnetsPerVPC
		host := p/subnets + 10
		g1 := (vpc-1)*sgsPerVPC + p%sgsPerVPC + 1
		g2 := (vpc-1)*sgsPerVPC + (p+1)%sgsPerVPC + 1
		bodies = append(bodies, &agentv1.Port{Id: uint32(p + 1), VpcId: uint32(vpc), SubnetId: uint32(subnet),
			Mac: fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", byte(p>>24), byte(p>>16), byte(p>>8), byte(p)),
			Ips: []string{fmt.Sprintf("10.%d.%d.%d", s, host/250, host%250+2)}, SourceDestCheck: true,
			SecurityGroupIds: []uint32{uint32(min(g1, g2)), uint32(max(g1, g2))}})
	}
	return objects(bodies...)
}

// BenchmarkIssue3Scale measures, at the scale of issue [3], against a real
// ovsdb-server with ovn-northd running: the time to render, to commit into
// an empty NB, and until northd has settled; one rule change (time to NB
// commit and rows written); an idle resync; and, on a second fresh stack,
// the same rows applied with ovn-nbctl in batches of 1,000 rows per
// invocation. Run it once: go test -run '^$' -bench Issue3 -benchtime 1x.
func BenchmarkIssue3Scale(b *testing.B) {
	for range b.N {
		if la, err := os.ReadFile("/proc/loadavg"); err == nil {
			b.Logf("load average at start: %s", strings.TrimSpace(string(la)))
		}
		objs := generate(issue3)

		start := time.Now()
		d := Render(objs)
		render := time.Since(start)
		b.ReportMetric(render.Seconds(), "render-s")
		b.ReportMetric(float64(d.Len()), "rows")

		stack := ovntest.Start(b, ovntest.Options{})
		r := connect(b, stack.NB.Endpoint(), func(c *Config) { c.Timeout = 10 * time.Minute })
		start = time.Now()
		res, err := r.SyncDesired(context.Background(), d)
		if err != nil {
			b.Fatalf("initial sync: %v", err)
		}
		commit := time.Since(start)
		start = time.Now()
		stack.WaitNorthd()
		settle := time.Since(start)
		b.ReportMetric(commit.Seconds(), "commit-s")
		b.ReportMetric(settle.Seconds(), "northd-settle-s")
		b.ReportMetric(float64(res.Transactions), "commit-txns")

		// Steady state first: the passes caused by the events of the
		// initial write verify those rows until no event is left.
		for i := 0; r.Status().LastScope != 0 && i < 100; i++ {
			time.Sleep(100 * time.Millisecond)
			if _, err := r.Sync(context.Background(), objs); err != nil {
				b.Fatalf("steady state: %v", err)
			}
		}
		// Twenty rule changes, each followed by the pass its own NB
		// events cause (which verifies the one row, as Run does). The
		// rest of the rule-change metrics are of the last one.
		var walls, cpus []time.Duration
		for i := range 20 {
			sg := cloneSG(objs["sg/500"].GetSecurityGroup())
			sg.Rules[1].PortMin, sg.Rules[1].PortMax = uint32(4444+i), uint32(4444+i)
			objs["sg/500"] = objects(sg)["sg/500"]
			start, cpu := time.Now(), cpuTime()
			res, err = r.Sync(context.Background(), objs)
			if err != nil {
				b.Fatalf("rule change: %v", err)
			}
			walls, cpus = append(walls, time.Since(start)), append(cpus, cpuTime()-cpu)
			if res.Writes() != 1 || r.Status().LastScope != 1 {
				b.Fatalf("rule change %d wrote %+v over %d rows, want 1 row", i, res, r.Status().LastScope)
			}
			time.Sleep(50 * time.Millisecond)
			if _, err := r.Sync(context.Background(), objs); err != nil {
				b.Fatalf("verify: %v", err)
			}
			// Each change from a steady state: northd, recomputing after
			// the write, shares the two CPUs with the next pass otherwise.
			stack.WaitNorthd()
		}
		slices.Sort(walls)
		slices.Sort(cpus)
		b.ReportMetric(walls[len(walls)/2].Seconds()*1000, "rule-change-p50-ms")
		b.ReportMetric(walls[len(walls)-1].Seconds()*1000, "rule-change-max-ms")
		b.ReportMetric(cpus[len(cpus)/2].Seconds()*1000, "rule-change-cpu-p50-ms")
		b.ReportMetric(float64(res.Writes()), "rule-change-rows")
		b.ReportMetric(float64(r.Status().LastScope), "rule-change-scope-rows")

		// Nothing changed: an incremental pass, and a full resync that
		// compares every row.
		start = time.Now()
		res, err = r.Sync(context.Background(), objs)
		if err != nil {
			b.Fatalf("idle incremental pass: %v", err)
		}
		b.ReportMetric(time.Since(start).Seconds()*1000, "idle-incremental-ms")
		b.ReportMetric(float64(res.Writes()), "idle-incremental-rows")
		start, cpu := time.Now(), cpuTime()
		res, err = r.Resync(context.Background(), objs)
		if err != nil {
			b.Fatalf("idle resync: %v", err)
		}
		b.ReportMetric(time.Since(start).Seconds()*1000, "idle-resync-ms")
		b.ReportMetric((cpuTime()-cpu).Seconds()*1000, "idle-resync-cpu-ms")
		b.ReportMetric(float64(res.Writes()), "idle-resync-rows")
		r.Close()
		stack.Stop()

		base := ovntest.Start(b, ovntest.Options{})
		start = time.Now()
		nbctlBaseline(b, base, Render(generate(issue3)), 1000)
		baseline := time.Since(start)
		start = time.Now()
		base.WaitNorthd()
		b.ReportMetric(baseline.Seconds(), "nbctl-commit-s")
		b.ReportMetric(time.Since(start).Seconds(), "nbctl-northd-settle-s")
		b.ReportMetric(baseline.Seconds()/commit.Seconds(), "speedup-x")
		base.Stop()
		if la, err := os.ReadFile("/proc/loadavg"); err == nil {
			b.Logf("load average at end: %s", strings.TrimSpace(string(la)))
		}
	}
}

// nbctlBaseline writes the rows of d with ovn-nbctl, rows rows per
// invocation: generic create commands (so every column, external_ids
// included, is the same as Meridian's), children linked to their parent by
// name in the same invocation, port group members set by port name.
func nbctlBaseline(b testing.TB, stack *ovntest.Stack, d *Desired, rows int) {
	type cmd []string
	var cmds []cmd
	// child table + " " + id -> parent table, parent name, column
	parents := map[string][3]string{}
	for _, s := range specs {
		for _, row := range d.rows[s.name] {
			for _, ref := range s.refs {
				if ref.kind == refChildren {
					for _, cid := range row.Refs[ref.column] {
						parents[ref.table+" "+cid] = [3]string{s.name, s.field(row.Model, "name").String(), ref.column}
					}
				}
			}
		}
	}
	create := func(s *tableSpec, row *Row, id string) cmd {
		c := cmd{"--id=@" + id, "create", s.name}
		for _, col := range s.columns {
			if v := nbctlValue(s.field(row.Model, col)); v != "" {
				c = append(c, col+"="+v)
			}
		}
		return c
	}
	order := []string{nbdb.LogicalRouterTable, nbdb.LogicalSwitchTable, nbdb.AddressSetTable, nbdb.DHCPOptionsTable,
		nbdb.LogicalRouterPortTable, nbdb.LogicalRouterStaticRouteTable, nbdb.LogicalSwitchPortTable, nbdb.PortGroupTable, nbdb.ACLTable}
	for _, table := range order {
		s := specByName[table]
		for _, row := range d.Rows(table) {
			id := "r" + strconv.Itoa(len(cmds))
			c := create(s, row, id)
			if p, ok := parents[table+" "+row.ID]; ok {
				c = append(c, "--", "add", p[0], p[1], p[2], "@"+id)
			}
			if table == nbdb.PortGroupTable {
				var ports []string
				for _, pid := range row.Refs["ports"] {
					ports = append(ports, d.Row(nbdb.LogicalSwitchPortTable, pid).Model.(*nbdb.LogicalSwitchPort).Name)
				}
				if len(ports) > 0 {
					c = append(append(c, "--", "pg-set-ports", row.Model.(*nbdb.PortGroup).Name), ports...)
				}
			}
			cmds = append(cmds, c)
		}
	}
	for len(cmds) > 0 {
		n := min(rows, len(cmds))
		var args []string
		for i, c := range cmds[:n] {
			if i > 0 {
				args = append(args, "--")
			}
			args = append(args, c...)
		}
		if _, err := stack.Ctl("ovn-nbctl", stack.NB, args...); err != nil {
			b.Fatalf("baseline: %v", err)
		}
		cmds = cmds[n:]
	}
}

// nbctlValue formats a column value in ovn-nbctl's syntax; "" for empty.
func nbctlValue(v reflect.Value) string {
	switch v.Kind() {
	case reflect.String:
		if v.Len() == 0 {
			return ""
		}
		return strconv.Quote(v.String())
	case reflect.Int:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Pointer:
		if v.IsNil() {
			return ""
		}
		return nbctlValue(v.Elem())
	case reflect.Slice:
		var out []string
		for i := range v.Len() {
			out = append(out, strconv.Quote(v.Index(i).String()))
		}
		if len(out) == 0 {
			return ""
		}
		return "[" + strings.Join(out, ",") + "]"
	case reflect.Map:
		m := v.Interface().(map[string]string)
		var out []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			out = append(out, strconv.Quote(k)+"="+strconv.Quote(m[k]))
		}
		if len(out) == 0 {
			return ""
		}
		return "{" + strings.Join(out, ",") + "}"
	}
	panic(fmt.Sprintf("nbctlValue: %s", v.Kind()))
}

// cloneSG copies a group, as the model does when a group changes: a new
// object, so renderers that reuse work by object see the change.
func cloneSG(g *agentv1.SecurityGroup) *agentv1.SecurityGroup {
	return proto.Clone(g).(*agentv1.SecurityGroup)
}

// cpuTime is the CPU time this process has used: on a shared machine the
// wall-clock times above include waiting for a CPU.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
