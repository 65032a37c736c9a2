package ovn

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// datapathObjects: one VPC, two subnets; ports 1-3 in group 21 (ICMP in,
// everything out), port 4 in no group; optionally a network ACL on subnet
// 12 that denies ICMP in.
func datapathObjects(naclDenyICMP bool) map[string]*agentv1.Object {
	port := func(id, subnet uint32, ip string, sgs ...uint32) *agentv1.Port {
		return &agentv1.Port{Id: id, VpcId: 1, SubnetId: subnet, Mac: "02:00:00:00:00:0" + itoa(id), Ips: []string{ip},
			Node: "n1", SecurityGroupIds: sgs, SourceDestCheck: true}
	}
	s12 := &agentv1.Subnet{Id: 12, VpcId: 1, Cidr: "10.0.2.0/24", GatewayIp: "10.0.2.1", Mtu: 1450}
	bodies := []proto.Message{
		&agentv1.Vpc{Id: 1, Cidrs: []string{"10.0.0.0/16"}},
		&agentv1.Subnet{Id: 11, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450}, s12,
		port(1, 11, "10.0.1.10", 21), port(2, 11, "10.0.1.11", 21), port(3, 12, "10.0.2.10", 21), port(4, 11, "10.0.1.12"),
		&agentv1.SecurityGroup{Id: 21, VpcId: 1, Rules: []*agentv1.Rule{rule(1, true, true, 1), rule(2, true, false, 0)}},
	}
	if naclDenyICMP {
		s12.NetworkAclId = 31
		bodies = append(bodies, &agentv1.NetworkAcl{Id: 31, VpcId: 1, Rules: []*agentv1.Rule{
			rule(5, false, true, 1), rule(6, true, true, 0), rule(7, true, false, 0)}})
	}
	return objects(bodies...)
}

// rule is a rule numbered ten times its id, of any address and port.
func rule(id uint32, allow, ingress bool, proto uint32) *agentv1.Rule {
	return &agentv1.Rule{Id: id, Number: id * 10, Allow: allow, Ingress: ingress, Protocol: proto, IcmpType: -1, IcmpCode: -1}
}

// TestDataPathOnRealOVN plugs namespaces into a real chassis (ovs-vswitchd
// on the userspace datapath and ovn-controller) and checks that the rendered
// NB forwards and drops what Meridian's model says: same-subnet and routed
// traffic allowed by a group passes, a port without groups is cut off both
// ways, and a network ACL deny wins over a group allow.
func TestDataPathOnRealOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	hv := stack.StartChassis("n1")
	r := connect(t, stack.NB.Endpoint(), nil)
	mustSync(t, r, datapathObjects(false))
	w := map[uint32]*ovntest.Workload{
		1: hv.Plug(LogicalPortName(1), "02:00:00:00:00:01", "10.0.1.10/24", "10.0.1.1"),
		2: hv.Plug(LogicalPortName(2), "02:00:00:00:00:02", "10.0.1.11/24", "10.0.1.1"),
		3: hv.Plug(LogicalPortName(3), "02:00:00:00:00:03", "10.0.2.10/24", "10.0.2.1"),
		4: hv.Plug(LogicalPortName(4), "02:00:00:00:00:04", "10.0.1.12/24", "10.0.1.1"),
	}
	for id := range w {
		hv.WaitUp(LogicalPortName(id))
	}
	stack.NBCtl("--wait=hv", "sync")

	type probe struct {
		from uint32
		to   string
		ok   bool
	}
	// check waits for each probe's expected outcome: --wait=hv returns once
	// ovn-controller installed the new OpenFlow rules, but the userspace
	// datapath revalidates its cached flows a moment later.
	check := func(t *testing.T, probes []probe) {
		t.Helper()
		for _, p := range probes {
			var out string
			deadline := time.Now().Add(5 * time.Second)
			for {
				o, err := w[p.from].Exec("ping", "-c", "1", "-W", "1", p.to)
				out = o
				if (err == nil) == p.ok {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("ping from port %d to %s: got reply %v, want %v\n%s", p.from, p.to, !p.ok, p.ok, strings.TrimSpace(out))
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	}
	t.Run("groups allow, ports without groups are denied", func(t *testing.T) {
		check(t, []probe{
			{1, "10.0.1.11", true},  // same subnet, group allows ICMP in
			{1, "10.0.2.10", true},  // routed to the other subnet
			{1, "10.0.1.12", false}, // port 4 has no group: nothing in
			{4, "10.0.1.10", false}, // nor out
		})
	})
	t.Run("a network ACL deny wins over a group allow", func(t *testing.T) {
		mustSync(t, r, datapathObjects(true))
		stack.NBCtl("--wait=hv", "sync")

		check(t, []probe{
			{1, "10.0.2.10", false}, // subnet 12 denies ICMP in
			{1, "10.0.1.11", true},  // subnet 11 has no network ACL
			// Port 3's echo request leaves (egress allows all) and the
			// reply comes back although subnet 12 denies ICMP in: OVN lets
			// replies of allowed connections bypass ACLs, where the eBPF
			// path would drop it. The documented difference, pinned here
			// so a fix shows up.
			{3, "10.0.1.10", true},
		})
	})
	// Rules after an allow rule, and the closing deny, once never matched
	// in OVN: their exclusions negated ip4, protocols and ICMP types.
	withNACL := func(rules ...*agentv1.Rule) map[string]*agentv1.Object {
		o := datapathObjects(true)
		o["acl/31"].GetNetworkAcl().Rules = rules
		return o
	}
	icmpFrom := func(id uint32, cidr string) *agentv1.Rule {
		r := rule(id, true, true, 1)
		r.Cidr = cidr
		return r
	}
	t.Run("a deny after an allow naming the protocol still denies", func(t *testing.T) {
		mustSync(t, r, withNACL(rule(1, true, true, 6), icmpFrom(2, "10.0.9.0/24"), rule(3, false, true, 1),
			rule(4, true, true, 0), rule(7, true, false, 0)))
		stack.NBCtl("--wait=hv", "sync")
		check(t, []probe{{1, "10.0.2.10", false}, {3, "10.0.1.10", true}})
	})
	t.Run("the closing deny drops what the allow rules do not name", func(t *testing.T) {
		mustSync(t, r, withNACL(rule(1, true, true, 6), icmpFrom(2, "10.0.9.0/24"), rule(7, true, false, 0)))
		stack.NBCtl("--wait=hv", "sync")
		check(t, []probe{{1, "10.0.2.10", false}, {3, "10.0.1.10", true}})
	})
	t.Run("an allow naming the protocol lets it through", func(t *testing.T) {
		mustSync(t, r, withNACL(rule(1, true, true, 6), icmpFrom(2, "10.0.1.0/24"), rule(7, true, false, 0)))
		stack.NBCtl("--wait=hv", "sync")
		check(t, []probe{{1, "10.0.2.10", true}})
	})
	// A flow log logging port 1's default deny splits the default deny
	// into port 1's logged rows and the others' (flowlog.go): port 4 must
	// stay cut off both ways, port 1 still reach what its group allows.
	t.Run("a flow log on one port keeps the other ports' default deny", func(t *testing.T) {
		mustSync(t, r, mergeObjects(datapathObjects(false), objects(
			&agentv1.FlowLogConfig{Id: 9, VpcId: 1, PortId: 1, TrafficType: "REJECT", RateLimit: 100})))
		stack.NBCtl("--wait=hv", "sync")
		check(t, []probe{{1, "10.0.1.11", true}, {1, "10.0.1.12", false}, {4, "10.0.1.10", false}})
	})
}
