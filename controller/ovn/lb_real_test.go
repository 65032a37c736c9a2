package ovn

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// lbOnOVNFixture has lbFixture's two internal listeners and nsFixture's
// north-south one, with the gateway nodes the latter needs.
func lbOnOVNFixture() map[string]*agentv1.Object {
	ns := nsFixture()
	return withOutside(lbFixture(), ns["gateway/gw1"].GetGateway(), ns["gateway/gw2"].GetGateway(), lbSvc(ns, 9))
}

// TestLoadBalancerOnRealOVN syncs internal and north-south listeners into
// a real NB: the rows land as rendered and are attached where they
// belong, ovn-northd turns them into ct_lb_mark flows and one SB
// Service_Monitor per monitored backend, a backend whose monitor goes
// offline leaves the flows, ovn-trace sends a packet for a VIP to a
// backend, and nothing is left once the listeners are gone.
func TestLoadBalancerOnRealOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	r := connect(t, stack.NB.Endpoint(), nil)
	objs := lbOnOVNFixture()
	syncExt(t, r, objs)
	assertNBMatches(t, r, renderExt(t, objs))
	stack.WaitNorthd()
	if res := syncExt(t, r, objs); res != (SyncResult{}) {
		t.Errorf("resync after northd wrote %+v", res)
	}

	t.Run("the listeners hang on their VPC's switches and router", func(t *testing.T) {
		for _, c := range []struct {
			cmd, dp string
			want    []string
		}{
			{"ls-lb-list", "mer-subnet-11", []string{"mer-lb-7", "mer-lb-8"}},
			{"ls-lb-list", "mer-subnet-12", []string{"mer-lb-7", "mer-lb-8"}},
			{"lr-lb-list", "mer-vpc-1", []string{"mer-lb-7", "mer-lb-8", "mer-lb-9"}},
		} {
			out := stack.NBCtl(c.cmd, c.dp)
			var got []string
			for _, name := range []string{"mer-lb-7", "mer-lb-8", "mer-lb-9"} {
				if strings.Contains(out, name) {
					got = append(got, name)
				}
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("%s %s = %v, want %v:\n%s", c.cmd, c.dp, got, c.want, out)
			}
		}
		if got := stack.NBCtl("--bare", "--columns=vip", "list", "Load_Balancer_Health_Check"); !strings.Contains(got, "10.0.1.100:80") || !strings.Contains(got, "172.16.0.80:443") {
			t.Errorf("health checks: %q", got)
		}
	})

	// lbFlow is the ct_lb_mark action northd writes for a VIP.
	lbFlow := func(vip, proto, port, backends, hash string) string {
		return "ip4.dst == " + vip + " && " + proto + ".dst == " + port + "), action=(reg0[1] = 0; ct_lb_mark(backends=" + backends + "; hash_fields=" + hash + ");)"
	}
	const fiveTuple = `"ip_dst,ip_src,tcp_dst,tcp_src"`
	t.Run("northd produces load-balancing flows", func(t *testing.T) {
		for _, dp := range []string{"mer-subnet-11", "mer-subnet-12"} {
			flows := stack.SBCtl("lflow-list", dp)
			for _, want := range []string{
				lbFlow("10.0.1.100", "tcp", "80", "10.0.1.10:8080,10.0.2.11:8080", fiveTuple),
				lbFlow("10.0.1.101", "udp", "53", "10.0.2.11:53", `"ip_src"`),
			} {
				if !stageHas(flows, "ls_in_lb", want) {
					t.Errorf("%s: no ls_in_lb flow with %s", dp, want)
				}
			}
			if t.Failed() {
				t.Logf("%s:\n%s", dp, grepLines(flows, "ls_in_lb"))
			}
		}
		flows := stack.SBCtl("lflow-list", "mer-vpc-1")
		want := `ip4.dst == 172.16.0.80 && tcp && tcp.dst == 443 && is_chassis_resident("cr-mer-gw-1")), action=(ct_lb_mark(backends=10.0.1.10:8443; hash_fields=` + fiveTuple + `);)`
		if !stageHas(flows, "lr_in_dnat", want) {
			t.Errorf("no lr_in_dnat flow with %s:\n%s", want, grepLines(flows, "lr_in_dnat"))
		}
		log, err := os.ReadFile(stack.Dir + "/northd.log")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "|ERR|") || strings.Contains(line, "|WARN|") && !strings.Contains(line, "Unknown chassis") {
				t.Errorf("northd: %s", line)
			}
		}
	})

	t.Run("northd creates a Service_Monitor per monitored backend", func(t *testing.T) {
		got := serviceMonitors(stack)
		want := []string{
			"10.0.1.10 8080 mer-port-101 10.0.1.254 tcp",
			"10.0.1.10 8443 mer-port-101 10.0.1.254 tcp",
			"10.0.2.11 8080 mer-port-104 10.0.2.253 tcp",
		}
		if !slices.Equal(got, want) {
			t.Errorf("Service_Monitor rows:\n got %q\nwant %q", got, want)
		}
	})

	t.Run("the monitor source answers ARP, the gateway stays the router's", func(t *testing.T) {
		flows := stack.SBCtl("lflow-list", "mer-subnet-11")
		if !stageHas(flows, "ls_in_arp_rsp", "priority=110  , match=(arp.tpa == 10.0.1.254 && arp.op == 1)") {
			t.Errorf("no service-monitor ARP responder for 10.0.1.254:\n%s", grepLines(flows, "ls_in_arp_rsp"))
		}
		if stageHas(flows, "ls_in_arp_rsp", "priority=110  , match=(arp.tpa == 10.0.1.1 ") {
			t.Errorf("the service monitor answers ARP for the gateway:\n%s", grepLines(flows, "10.0.1.1 "))
		}
	})

	t.Run("an offline backend leaves the flows and an online one returns", func(t *testing.T) {
		// ovn-controller on the backend's chassis writes the status; with
		// no chassis here, the test writes it the same way.
		uuid := stack.SBCtl("--bare", "--columns=_uuid", "find", "Service_Monitor", "ip=10.0.2.11", "port=8080")
		stack.SBCtl("set", "Service_Monitor", uuid, "status=offline")
		want := lbFlow("10.0.1.100", "tcp", "80", "10.0.1.10:8080", fiveTuple)
		waitFlow(t, stack, "mer-subnet-12", "ls_in_lb", want)
		// northd turns a monitor of a port that is not up back to
		// offline: the chassis claims the port first.
		pb := stack.SBCtl("--bare", "--columns=_uuid", "find", "Port_Binding", "logical_port=mer-port-104")
		stack.SBCtl("set", "Port_Binding", pb, "up=true")
		stack.SBCtl("set", "Service_Monitor", uuid, "status=online")
		waitFlow(t, stack, "mer-subnet-12", "ls_in_lb", lbFlow("10.0.1.100", "tcp", "80", "10.0.1.10:8080,10.0.2.11:8080", fiveTuple))
		// Meridian wrote nothing for it.
		if res := syncExt(t, r, objs); res != (SyncResult{}) {
			t.Errorf("a monitor status change made a pass write %+v", res)
		}
	})

	// Every conntrack lookup on the way is a new connection's: one --ct
	// per ct action (each use consumes one).
	ctNew := []string{"--ct=new", "--ct=new", "--ct=new", "--ct=new", "--ct=new", "--ct=new"}
	t.Run("ovn-trace: a client reaches the internal VIP's backends", func(t *testing.T) {
		// The router answers ARP for a VIP on its subnet.
		arp := stack.Trace("mer-subnet-11", `inport == "mer-port-102" && eth.src == 02:00:00:00:01:02 && eth.dst == ff:ff:ff:ff:ff:ff && `+
			`arp.op == 1 && arp.sha == 02:00:00:00:01:02 && arp.spa == 10.0.1.11 && arp.tha == 00:00:00:00:00:00 && arp.tpa == 10.0.1.100`, "--minimal")
		// (ovn-trace prints the MAC it loads as a number.)
		if !strings.Contains(arp, "arp.op = 2;") || !strings.Contains(arp, "arp.sha = 0x24d0000000b;") ||
			!strings.Contains(arp, "arp.spa = 10.0.1.100;") || !strings.Contains(arp, `output("mer-port-102")`) {
			t.Errorf("no ARP reply for the VIP from the router:\n%s", arp)
		}
		syn := `inport == "mer-port-102" && eth.src == 02:00:00:00:01:02 && eth.dst == 02:4d:00:00:00:0b && ` +
			`ip4.src == 10.0.1.11 && ip4.dst == 10.0.1.100 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == 80`
		for _, c := range []struct{ backend, port string }{{"10.0.1.10:8080", "mer-port-101"}, {"10.0.2.11:8080", "mer-port-104"}} {
			out := stack.Trace("mer-subnet-11", syn, append(ctNew, "--minimal", "--lb-dst="+c.backend)...)
			if !strings.Contains(out, "ct_lb_mark") || !strings.Contains(out, `output("`+c.port+`")`) {
				t.Errorf("to %s: no ct_lb_mark delivering to %s:\n%s", c.backend, c.port, out)
			}
		}
		// Without --lb-dst ovn-trace picks a backend itself: one of the two.
		out := stack.Trace("mer-subnet-11", syn, append(ctNew, "--minimal")...)
		if !strings.Contains(out, `output("mer-port-101")`) && !strings.Contains(out, `output("mer-port-104")`) {
			t.Errorf("the VIP's packet reached no backend:\n%s", out)
		}
	})

	t.Run("ovn-trace: the fabric reaches the north-south VIP's backend", func(t *testing.T) {
		out := stack.Trace(DefaultExternalSwitch, `inport == "meridian-ext-localnet" && eth.src == 02:aa:00:00:00:01 && `+
			`eth.dst == 02:4e:00:00:00:01 && ip4.src == 192.168.5.5 && ip4.dst == 172.16.0.80 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == 443`,
			append(ctNew, "--minimal")...)
		if !strings.Contains(out, "ct_lb_mark") || !strings.Contains(out, `output("mer-port-101")`) {
			t.Errorf("no ct_lb_mark delivering to mer-port-101:\n%s", out)
		}
		// The fabric finds the VIP: the gateway port answers ARP for it.
		arp := stack.Trace(DefaultExternalSwitch, `inport == "meridian-ext-localnet" && eth.src == 02:aa:00:00:00:01 && eth.dst == ff:ff:ff:ff:ff:ff && `+
			`arp.op == 1 && arp.sha == 02:aa:00:00:00:01 && arp.spa == 172.16.0.1 && arp.tha == 00:00:00:00:00:00 && arp.tpa == 172.16.0.80`, "--minimal")
		if !strings.Contains(arp, "arp.op = 2;") || !strings.Contains(arp, "arp.spa = 172.16.0.80;") {
			t.Errorf("no ARP reply for the north-south VIP:\n%s", arp)
		}
	})

	t.Run("a listener with no usable backend drops its packets", func(t *testing.T) {
		o := lbOnOVNFixture()
		for _, b := range lbSvc(o, 8).Backends {
			b.Draining = true
		}
		syncExt(t, r, o)
		waitFlow(t, stack, "mer-subnet-11", "ls_in_lb", "match=(ct.new && ip4.dst == 10.0.1.101 && udp.dst == 53), action=(drop;)")
	})
	t.Run("taking the listeners away leaves no row, monitor or flow", func(t *testing.T) {
		o := lbOnOVNFixture()
		for _, k := range []string{"lb/7", "lb/8", "lb/9"} {
			delete(o, k)
		}
		syncExt(t, r, o)
		assertNBMatches(t, r, renderExt(t, o))
		stack.WaitNorthd()
		for _, table := range []string{"Load_Balancer", "Load_Balancer_Health_Check"} {
			if rows := stack.NBCtl("--bare", "--columns=_uuid", "list", table); rows != "" {
				t.Errorf("%s rows left: %s", table, rows)
			}
		}
		if got := serviceMonitors(stack); len(got) != 0 {
			t.Errorf("Service_Monitor rows left: %q", got)
		}
		if flows := stack.SBCtl("lflow-list"); strings.Contains(flows, "10.0.1.100") || strings.Contains(flows, "172.16.0.80") {
			t.Errorf("flows still name a VIP:\n%s", grepLines(flows, "10.0.1.100", "172.16.0.80"))
		}
	})
}

// serviceMonitors lists the SB Service_Monitor rows as "ip port
// logical_port src_ip protocol", sorted.
func serviceMonitors(stack *ovntest.Stack) []string {
	out := stack.SBCtl("--bare", "--format=csv", "--no-headings", "--columns=ip,port,logical_port,src_ip,protocol", "list", "Service_Monitor")
	var rows []string
	for _, line := range strings.Split(out, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			rows = append(rows, strings.ReplaceAll(line, ",", " "))
		}
	}
	slices.Sort(rows)
	return rows
}

// waitFlow waits until a datapath has a flow of the stage containing text.
func waitFlow(t *testing.T, stack *ovntest.Stack, dp, stage, text string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		flows := stack.SBCtl("lflow-list", dp)
		if stageHas(flows, stage, text) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %s flow with %s:\n%s", dp, stage, text, grepLines(flows, stage))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
