package ovn

import (
	"os"
	"strings"
	"testing"

	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// TestOutsideOnRealOVN syncs elastic IPs, a NAT gateway and its port
// mappings into a real NB: the rows land as rendered, ovn-northd turns
// them into gateway-chassis NAT and load-balancing flows without a
// complaint, and ovn-trace shows a packet from the fabric to an elastic IP
// DNATed to the port's private address and delivered to its port.
func TestOutsideOnRealOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	r := connect(t, stack.NB.Endpoint(), nil)
	syncExt(t, r, outsideFixture())
	assertNBMatches(t, r, renderExt(t, outsideFixture()))
	stack.WaitNorthd()
	// Nothing NB or northd normalises differs from the rendering.
	if res := syncExt(t, r, outsideFixture()); res != (SyncResult{}) {
		t.Errorf("resync after northd wrote %+v", res)
	}

	t.Run("the gateway port is bound to the gateway chassis, owner first", func(t *testing.T) {
		got := stack.NBCtl("lrp-get-gateway-chassis", "mer-gw-1")
		if want := "mer-gw-1-gw2   100\nmer-gw-1-gw1    50"; strings.Join(strings.Fields(got), " ") != strings.Join(strings.Fields(want), " ") {
			t.Errorf("lrp-get-gateway-chassis mer-gw-1 = %q, want %q", got, want)
		}
		if pb := stack.SBCtl("--bare", "--columns=type", "find", "Port_Binding", "logical_port=cr-mer-gw-1"); pb != "chassisredirect" {
			t.Errorf("SB port binding cr-mer-gw-1 has type %q, want chassisredirect", pb)
		}
	})

	t.Run("northd produces NAT and load-balancing flows on the gateway chassis", func(t *testing.T) {
		flows := stack.SBCtl("lflow-list", "mer-vpc-1")
		for _, want := range []struct{ stage, text string }{
			// the elastic IP, both ways
			{"lr_in_dnat", `ip4.dst == 172.16.0.50 && inport == "mer-gw-1" && is_chassis_resident("cr-mer-gw-1")), action=(ct_dnat_in_czone(10.0.1.10);)`},
			{"lr_out_snat", `ip4.src == 10.0.1.10 && outport == "mer-gw-1" && is_chassis_resident("cr-mer-gw-1")), action=(ct_snat_in_czone(172.16.0.50);)`},
			// the NAT gateway's subnets, with its port range
			{"lr_out_snat", `ip4.src == 10.0.1.0/24 && outport == "mer-gw-1" && is_chassis_resident("cr-mer-gw-1")), action=(ct_snat_in_czone(172.16.0.60,20000-30000);)`},
			{"lr_out_snat", `ip4.src == 10.0.2.0/24 && outport == "mer-gw-1" && is_chassis_resident("cr-mer-gw-1")), action=(ct_snat_in_czone(172.16.0.60,20000-30000);)`},
			// the port mappings
			{"lr_in_dnat", `ip4.dst == 172.16.0.60 && tcp && tcp.dst == 8080 && is_chassis_resident("cr-mer-gw-1")), action=(ct_lb_mark(backends=10.0.1.11:80);)`},
			{"lr_in_dnat", `ip4.dst == 172.16.0.60 && udp && udp.dst == 5353 && is_chassis_resident("cr-mer-gw-1")), action=(ct_lb_mark(backends=10.0.2.10:53);)`},
			// the default route toward the fabric
			{"lr_in_ip_routing", `reg7 == 0 && ip4.dst == 0.0.0.0/0), action=(ip.ttl--; reg8[0..15] = 0; reg0 = 172.16.0.1; reg1 = 172.16.0.129; eth.src = 02:4e:00:00:00:01; outport = "mer-gw-1";`},
		} {
			if !stageHas(flows, want.stage, want.text) {
				t.Errorf("no %s flow with %s", want.stage, want.text)
			}
		}
		if t.Failed() {
			t.Logf("logical flows of mer-vpc-1:\n%s", grepLines(flows, "lr_in_dnat", "lr_out_snat", "lr_in_ip_routing"))
		}
		log, err := os.ReadFile(stack.Dir + "/northd.log")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(log), "\n") {
			// The gateway nodes have no chassis in this test.
			if strings.Contains(line, "|ERR|") || strings.Contains(line, "|WARN|") && !strings.Contains(line, "Unknown chassis") {
				t.Errorf("northd: %s", line)
			}
		}
	})

	t.Run("ovn-trace: the fabric reaches a port through its elastic IP", func(t *testing.T) {
		// From the fabric (192.168.5.5, which group 21 lets in on TCP 22)
		// to the elastic IP, addressed to the gateway port's MAC, as the
		// first packet of a connection.
		out := stack.Trace(DefaultExternalSwitch, `inport == "meridian-ext-localnet" && eth.src == 02:aa:00:00:00:01 && `+
			`eth.dst == 02:4e:00:00:00:01 && ip4.src == 192.168.5.5 && ip4.dst == 172.16.0.50 && ip.ttl == 64 && tcp && tcp.dst == 22`,
			"--minimal", "--ct=new")
		for _, want := range []string{"ct_dnatin_czone(ip4.dst=10.0.1.10)", `output("mer-port-101")`} {
			if !strings.Contains(out, want) {
				t.Errorf("trace lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "ip4.src=") {
			t.Errorf("the fabric's address was rewritten on the way in:\n%s", out)
		}
	})

	t.Run("ovn-trace: a port without an elastic IP leaves through the NAT gateway", func(t *testing.T) {
		// From subnet 12's router port, past the switch's ACLs (port 103
		// has no group, so they would drop it), to a fabric whose MAC the
		// router knows (else the trace ends in an ARP request).
		dp := stack.SBCtl("--bare", "--columns=_uuid", "find", "Datapath_Binding", "external_ids:name="+RouterName(1))
		stack.SBCtl("create", "MAC_Binding", "logical_port=mer-gw-1", "ip=172.16.0.1", `mac="02:aa:00:00:00:01"`, "datapath="+dp)
		out := stack.Trace(RouterName(1), `inport == "mer-lrp-12" && eth.src == 02:00:00:00:02:01 && eth.dst == 02:4d:00:00:00:0c && `+
			`ip4.src == 10.0.2.10 && ip4.dst == 203.0.113.9 && ip.ttl == 64 && udp && udp.dst == 53`, "--minimal", "--ct=new")
		for _, want := range []string{"ip4.src=172.16.0.60", "eth.dst = 02:aa:00:00:00:01", `output("meridian-ext-localnet")`} {
			if !strings.Contains(out, want) {
				t.Errorf("trace lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("taking the outside objects away leaves no row and no flow", func(t *testing.T) {
		syncExt(t, r, fixture())
		stack.WaitNorthd()
		for _, table := range []string{"NAT", "Load_Balancer", "Gateway_Chassis"} {
			if rows := stack.NBCtl("--bare", "--columns=_uuid", "list", table); rows != "" {
				t.Errorf("%s rows left: %s", table, rows)
			}
		}
		if sw := stack.NBCtl("ls-list"); strings.Contains(sw, DefaultExternalSwitch) {
			t.Errorf("external switch left: %s", sw)
		}
		if flows := stack.SBCtl("lflow-list", "mer-vpc-1"); strings.Contains(flows, "172.16.0.") {
			t.Errorf("flows still name the external network:\n%s", grepLines(flows, "172.16.0."))
		}
		// And back, then the whole VPC at once: the gateway port's chassis
		// go with it.
		syncExt(t, r, outsideFixture())
		syncExt(t, r, nil)
		for _, table := range []string{"NAT", "Load_Balancer", "Gateway_Chassis", "Logical_Router_Port", "Logical_Router"} {
			if rows := stack.NBCtl("--bare", "--columns=_uuid", "list", table); rows != "" {
				t.Errorf("%s rows left after deleting everything: %s", table, rows)
			}
		}
	})
}

// stageHas reports whether a flow of the stage contains text.
func stageHas(flows, stage, text string) bool {
	for _, line := range strings.Split(flows, "\n") {
		if strings.Contains(line, "table=") && (strings.Contains(line, "("+stage+")") || strings.Contains(line, "("+stage+" ")) &&
			strings.Contains(line, text) {
			return true
		}
	}
	return false
}

func grepLines(s string, words ...string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
