package trace_test

import (
	"fmt"
	"strings"
	"testing"
)

// outsideIntent is e2e/outside_test.go's topology (issue [4]): a workload
// node, two gateways, the web and tiny subnets, a group letting in tcp/8080
// and ICMP from anywhere; the pool of public addresses.
const outsideIntent = `kind: Project
name: projects/demo
organization: acme
---
kind: Vpc
name: projects/demo/vpcs/prod
cidrBlocks: [10.0.0.0/16]
---
kind: Subnet
name: projects/demo/vpcs/prod/subnets/web
cidrBlock: 10.0.1.0/24
---
kind: Subnet
name: projects/demo/vpcs/prod/subnets/tiny
cidrBlock: 10.0.3.0/24
---
kind: SecurityGroup
name: projects/demo/securityGroups/web
vpc: projects/demo/vpcs/prod
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 8080, portRangeMax: 8080, remoteCidr: 0.0.0.0/0}
- {direction: INGRESS, protocol: icmp, remoteCidr: 0.0.0.0/0}
- {direction: EGRESS, protocol: all, remoteCidr: 0.0.0.0/0}
---
kind: Node
name: nodes/node-1
underlayIp: 192.0.2.11
roles: [COMPUTE]
---
kind: Node
name: nodes/gw-1
underlayIp: 192.0.2.12
roles: [GATEWAY]
---
kind: Node
name: nodes/gw-2
underlayIp: 192.0.2.13
roles: [GATEWAY]
---
kind: Port
name: projects/demo/ports/web-1
subnet: projects/demo/vpcs/prod/subnets/web
node: nodes/node-1
fixedIps: [10.0.1.11]
securityGroups: [projects/demo/securityGroups/web]
---
kind: Port
name: projects/demo/ports/web-2
subnet: projects/demo/vpcs/prod/subnets/web
node: nodes/node-1
fixedIps: [10.0.1.12]
securityGroups: [projects/demo/securityGroups/web]
---
kind: Port
name: projects/demo/ports/tiny-1
subnet: projects/demo/vpcs/prod/subnets/tiny
node: nodes/node-1
fixedIps: [10.0.3.11]
securityGroups: [projects/demo/securityGroups/web]
---
kind: PublicAddressPool
name: publicAddressPools/internet
cidrs: [198.51.100.0/24]
`

const (
	inetAddr = "100.64.0.10"
	webEIP   = "198.51.100.10"
)

func webEIPDoc(port string) string {
	return fmt.Sprintf("kind: ElasticIp\nname: projects/demo/elasticIps/web\npool: publicAddressPools/internet\naddress: %s\nport: %q\n", webEIP, port)
}

// TestTraceAgreesWithOutsideScenarios replays the steps of the issue [4]
// end-to-end test (e2e TestOutside) through meridianctl apply and traces
// each connection that test makes with real packets, expecting the verdict
// it asserts: an internet host reaches web-1 through its elastic IP (ping,
// tcp/8080, with its real source); web-2 and tiny-1 reach the internet
// host through their NAT gateways; after disassociation the elastic IP
// leads nowhere. Plus what the security group decides on the same path.
func TestTraceAgreesWithOutsideScenarios(t *testing.T) {
	env := startController(t)
	env.apply(t, outsideIntent)
	type conn struct {
		from, to, proto string
		port            int
		allow           bool
		via             string // a stage rule the trace must show, "" for none
	}
	steps := []struct {
		name  string
		apply string
		conns []conn
	}{
		{"1-associate", webEIPDoc("projects/demo/ports/web-1"), []conn{
			{inetAddr, webEIP, "icmp", 0, true, "elastic IP 198.51.100.10 -> 10.0.1.11"},
			{inetAddr, webEIP, "tcp", 8080, true, "elastic IP 198.51.100.10 -> 10.0.1.11"},
			{inetAddr, webEIP, "tcp", 22, false, ""}, // the group lets in 8080 only
			{"projects/demo/ports/web-1", inetAddr, "tcp", 9090, true, "10.0.1.11 -> 198.51.100.10"},
			{"projects/demo/ports/web-2", inetAddr, "tcp", 9090, false, ""}, // no elastic IP, no NAT gateway yet
		}},
		{"2-nat-gateway", `kind: ElasticIp
name: projects/demo/elasticIps/egress
pool: publicAddressPools/internet
address: 198.51.100.20
---
kind: NatGateway
name: projects/demo/natGateways/egress
vpc: projects/demo/vpcs/prod
elasticIps: [projects/demo/elasticIps/egress]
subnets: [projects/demo/vpcs/prod/subnets/web]
portMin: 20000
portMax: 29999
`, []conn{
			{"projects/demo/ports/web-2", inetAddr, "tcp", 9090, true, "10.0.1.12 -> 198.51.100.20, source port from 20000-29999"},
			// web-1's elastic IP wins over its subnet's NAT gateway.
			{"projects/demo/ports/web-1", inetAddr, "tcp", 9090, true, "10.0.1.11 -> 198.51.100.10"},
			// A NAT gateway's address lets in replies only.
			{inetAddr, "198.51.100.20", "tcp", 20000, false, ""},
		}},
		{"6-port-exhaustion", `kind: ElasticIp
name: projects/demo/elasticIps/tiny
pool: publicAddressPools/internet
address: 198.51.100.30
---
kind: NatGateway
name: projects/demo/natGateways/tiny
vpc: projects/demo/vpcs/prod
elasticIps: [projects/demo/elasticIps/tiny]
subnets: [projects/demo/vpcs/prod/subnets/tiny]
portMin: 30000
portMax: 30001
`, []conn{
			// The model admits the first flows; exhaustion is run-time state.
			{"projects/demo/ports/tiny-1", inetAddr, "tcp", 9090, true, "10.0.3.11 -> 198.51.100.30, source port from 30000-30001"},
			{inetAddr, webEIP, "tcp", 8080, true, ""},
			{"projects/demo/ports/web-2", inetAddr, "tcp", 9090, true, ""},
		}},
		{"3-disassociate", webEIPDoc(""), []conn{
			{inetAddr, webEIP, "tcp", 8080, false, ""},
			{inetAddr, webEIP, "icmp", 0, false, ""},
		}},
	}
	n := 0
	for _, st := range steps {
		env.apply(t, st.apply)
		for _, c := range st.conns {
			args := []string{"--from", c.from, "--to", c.to, "-p", c.proto, "--reply"}
			if c.port != 0 {
				args = append(args, "--dport", fmt.Sprint(c.port))
			}
			r, err := env.trace(t, args...)
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			n++
			what := fmt.Sprintf("%s: %s -> %s %s/%d", st.name, c.from, c.to, c.proto, c.port)
			if r.GetAllowed() != c.allow {
				t.Errorf("%s: e2e says %s, trace says %s", what, word(c.allow), explainVerdict(r))
				continue
			}
			if c.via == "" {
				continue
			}
			var rules []string
			for _, s := range r.GetForward().GetStages() {
				rules = append(rules, s.GetRule())
			}
			if !strings.Contains(strings.Join(rules, "\n"), c.via) {
				t.Errorf("%s: the trace does not go through %q: rules %q", what, c.via, rules)
			}
		}
	}
	t.Logf("%d connections traced", n)
}
