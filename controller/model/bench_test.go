package model

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// Scale of the benchmarks: 10,000 ports, 1,000 security groups with 20,000
// rules in 20 VPCs, spread over 500 nodes. Tenants are placed with locality
// (each VPC on a window of 50 nodes, each node in about two VPCs), as a
// scheduler would, so per-node state is ~1,000 ports, not all 10,000.
const (
	benchVpcs         = 20
	benchSubnets      = 4 // per VPC
	benchPortsPerVpc  = 500
	benchSGsPerVpc    = 50
	benchRulesPerSG   = 20
	benchNodes        = 500
	benchNodesPerVpc  = 50
	benchSGsPerPort   = 2
	benchRemoteEveryN = 4 // every Nth rule names a remote group
)

func benchSG(v, g, variant int) *mv1.SecurityGroup {
	vpcName := fmt.Sprintf("projects/p%d/vpcs/v", v)
	rules := make([]*mv1.SecurityGroupRule, 0, benchRulesPerSG)
	for r := range benchRulesPerSG {
		rule := &mv1.SecurityGroupRule{
			Id: uint32(r + 1), Direction: mv1.Direction(1 + r%2), Protocol: "tcp",
			PortRangeMin: uint32(1000 + r + variant), PortRangeMax: uint32(1000 + r + variant),
		}
		if r%benchRemoteEveryN == 0 {
			rule.RemoteSecurityGroup = fmt.Sprintf("projects/p%d/securityGroups/g%d", v, (g+r)%benchSGsPerVpc)
		} else {
			rule.RemoteCidr = fmt.Sprintf("10.%d.0.0/16", r)
		}
		rules = append(rules, rule)
	}
	return sg(fmt.Sprintf("projects/p%d/securityGroups/g%d", v, g), uint32(v*benchSGsPerVpc+g+1), vpcName, rules...)
}

func benchStore(b *testing.B) *memTx {
	tx := newMemTx()
	for n := range benchNodes {
		tx.put(b, node(fmt.Sprintf("n%d", n), fmt.Sprintf("192.0.%d.%d", n/250, n%250+1)))
	}
	for v := range benchVpcs {
		vpcName := fmt.Sprintf("projects/p%d/vpcs/v", v)
		tx.put(b, vpc(vpcName, uint32(v+1), "10.0.0.0/16"))
		acl := fmt.Sprintf("projects/p%d/networkAcls/a", v)
		tx.put(b, &mv1.NetworkAcl{Name: acl, Id: uint32(v + 1), Vpc: vpcName, Rules: []*mv1.NetworkAclRule{
			{Id: 1, Number: 100, Action: mv1.Action_ALLOW, Direction: mv1.Direction_INGRESS, Protocol: "all"},
			{Id: 2, Number: 100, Action: mv1.Action_ALLOW, Direction: mv1.Direction_EGRESS, Protocol: "all"},
		}})
		rt := fmt.Sprintf("projects/p%d/routeTables/r", v)
		tx.put(b, &mv1.RouteTable{Name: rt, Id: uint32(v + 1), Vpc: vpcName, Routes: []*mv1.Route{{Destination: "0.0.0.0/0", NextHopIp: "10.0.0.5"}}})
		for s := range benchSubnets {
			tx.put(b, subnet(fmt.Sprintf("%s/subnets/s%d", vpcName, s), uint32(v*benchSubnets+s+1), fmt.Sprintf("10.0.%d.0/24", s), acl, rt))
		}
		for g := range benchSGsPerVpc {
			tx.put(b, benchSG(v, g, 0))
		}
		for p := range benchPortsPerVpc {
			var sgs []string
			for k := range benchSGsPerPort {
				sgs = append(sgs, fmt.Sprintf("projects/p%d/securityGroups/g%d", v, (p+k*7)%benchSGsPerVpc))
			}
			n := (v*benchNodes/benchVpcs + p%benchNodesPerVpc) % benchNodes
			tx.put(b, port(fmt.Sprintf("projects/p%d/ports/q%d", v, p), uint32(v*benchPortsPerVpc+p+1),
				fmt.Sprintf("%s/subnets/s%d", vpcName, p%benchSubnets), fmt.Sprintf("nodes/n%d", n),
				fmt.Sprintf("10.0.%d.%d", p%benchSubnets, p/benchSubnets+2), sgs...))
		}
	}
	return tx
}

// BenchmarkFullBuild: Load of the whole model (objects and per-node state).
func BenchmarkFullBuild(b *testing.B) {
	tx := benchStore(b)
	var m *Model
	b.ResetTimer()
	for b.Loop() {
		m = New(quiet())
		if err := m.Load(tx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Retained memory of one built model, for sizing.
	var before, after runtime.MemStats
	m = nil
	runtime.GC()
	runtime.ReadMemStats(&before)
	m = loadModel(b, tx)
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "heap-MB")
	entries := 0
	for _, n := range m.Nodes() {
		entries += len(m.NodeState(n))
	}
	b.ReportMetric(float64(entries), "node-objects")
	runtime.KeepAlive(m)
}

// BenchmarkRuleChange: one rule of one security group changes.
func BenchmarkRuleChange(b *testing.B) {
	tx := benchStore(b)
	m := loadModel(b, tx)
	e1, e2 := tx.put(b, benchSG(3, 7, 1)), tx.put(b, benchSG(3, 7, 0))
	i := 0
	b.ResetTimer()
	for b.Loop() {
		ev := e1
		if i%2 == 1 {
			ev = e2
		}
		i++
		if ch := m.Apply(ev); len(ch) == 0 {
			b.Fatal("rule change reached no node")
		}
	}
}

// BenchmarkPortMove: a port moves to another node (the elastic-NIC case).
func BenchmarkPortMove(b *testing.B) {
	tx := benchStore(b)
	m := loadModel(b, tx)
	name, sub := "projects/p3/ports/q10", "projects/p3/vpcs/v/subnets/s2"
	sgs := []string{"projects/p3/securityGroups/g10", "projects/p3/securityGroups/g17"}
	e1 := tx.put(b, port(name, 3*benchPortsPerVpc+11, sub, "nodes/n499", "10.0.2.4", sgs...))
	e2 := tx.put(b, port(name, 3*benchPortsPerVpc+11, sub, "nodes/n80", "10.0.2.4", sgs...))
	i := 0
	b.ResetTimer()
	for b.Loop() {
		ev := e1
		if i%2 == 1 {
			ev = e2
		}
		i++
		m.Apply(ev)
	}
}

// BenchmarkElasticIPAssociate: on the benchmark topology plus 4 gateways, a
// pool and 10,000 elastic IPs (one per port) and a NAT gateway per VPC, one
// elastic IP is associated with its port and disassociated again. The
// baseline is a full build of the same model in the same run: the ratio is
// what incremental compilation buys for the issue [4] association path.
func BenchmarkElasticIPAssociate(b *testing.B) {
	tx := benchStore(b)
	const gateways = 4
	for g := range gateways {
		n := node(fmt.Sprintf("g%d", g), fmt.Sprintf("192.0.3.%d", g+1))
		n.Roles = []mv1.NodeRole{mv1.NodeRole_GATEWAY}
		tx.put(b, n)
	}
	tx.put(b, &mv1.PublicAddressPool{Name: "publicAddressPools/pub", Id: 1, Cidrs: []string{"100.64.0.0/16"}})
	eip := func(v, p int, associated bool) *mv1.ElasticIp {
		i := v*benchPortsPerVpc + p
		e := &mv1.ElasticIp{Name: fmt.Sprintf("projects/p%d/elasticIps/e%d", v, p), Id: uint32(i + 1), Pool: "publicAddressPools/pub",
			Address: fmt.Sprintf("100.64.%d.%d", i/250, i%250+1)}
		if associated {
			e.Port, e.PrivateIp = fmt.Sprintf("projects/p%d/ports/q%d", v, p), fmt.Sprintf("10.0.%d.%d", p%benchSubnets, p/benchSubnets+2)
		}
		return e
	}
	for v := range benchVpcs {
		for p := range benchPortsPerVpc {
			tx.put(b, eip(v, p, true))
		}
		tx.put(b, &mv1.NatGateway{Name: fmt.Sprintf("projects/p%d/natGateways/n", v), Id: uint32(v + 1), Vpc: fmt.Sprintf("projects/p%d/vpcs/v", v),
			Subnets: []string{fmt.Sprintf("projects/p%d/vpcs/v/subnets/s0", v)}})
	}
	start := time.Now()
	m := loadModel(b, tx)
	full := time.Since(start)
	off, on := tx.put(b, eip(3, 10, false)), tx.put(b, eip(3, 10, true))
	i := 0
	b.ResetTimer()
	for b.Loop() {
		ev := off
		if i%2 == 1 {
			ev = on
		}
		i++
		// The gateways and the port's node, nobody else.
		if ch := m.Apply(ev); len(ch) != gateways+1 {
			b.Fatalf("association reached %d nodes, want %d", len(ch), gateways+1)
		}
	}
	b.StopTimer()
	perOp := b.Elapsed() / time.Duration(b.N)
	b.ReportMetric(full.Seconds(), "full-build-s")
	b.ReportMetric(float64(full)/float64(perOp), "x-faster-than-full")
}
