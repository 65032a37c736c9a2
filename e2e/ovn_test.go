package e2e

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meridian-sdn/meridian/controller/ovn"
)

// ovnScenarios are the scenario files of issue [2] that run on OVN too:
// all of them, scenario 3 with ovnReplyBypass.
var ovnScenarios = []string{
	"01-full-mesh.yaml",
	"02-sg-ssh-from-subnet.yaml",
	"03-acl-numbered-stateless.yaml",
	"04-vpc-isolation.yaml",
	"05-port-move.yaml",
	"06-agent-crash.yaml",
	"07-controller-down.yaml",
}

// The OVN realization: the same agent binary with --realization ovn, OVS
// and ovn-controller on every node, the controller writing OVN northbound.
// An agent marks an attachment ready once OVN has installed the port, so
// readiness is checked the same way as for eBPF.
func init() {
	realizations = append(realizations, realization{
		name: "ovn",
		options: func(t *testing.T) Options {
			if err := checkOVN(); err != nil {
				t.Fatal(err)
			}
			if err := buildAgent(); err != nil {
				t.Fatal(err)
			}
			return Options{BinDir: testBins, OVN: true}
		},
		agent:       func(node string) string { return node + "-agent" },
		ready:       attachmentsReady,
		runs:        func(file string) bool { return slices.Contains(ovnScenarios, file) },
		differences: ovnReplyBypass,
	})
}

// ovnReplyBypass: OVN lets the replies of a connection it allowed bypass
// every ACL, so a network ACL cannot drop them; Meridian's network ACLs are
// stateless and do (scenario 3: without an egress rule for the client's
// ephemeral ports, or an ingress one when client and server share the
// subnet, the SYN-ACK is dropped and the connection fails).
var ovnReplyBypass = func() []difference {
	const file, why = "03-acl-numbered-stateless.yaml", "OVN lets the SYN-ACK of an allowed connection bypass the network ACL (stateless in Meridian)"
	tcp80 := func(from string) Flow { return Flow{From: from, To: "s-2", Proto: TCP, Port: 80} }
	return []difference{
		{file: file, phase: "no-return", flow: tcp80("c-1"), allow: true, why: why},
		{file: file, phase: "no-return", flow: tcp80("s-1"), allow: true, why: why},
		{file: file, phase: "with-return", flow: tcp80("s-1"), allow: true, why: why},
	}
}()

// TestOVNRealizationContract checks, on a run with OVN nodes, the contract
// between the agents and OVN that the scenarios rely on without looking:
// every node registers with realization OVN and as an SB chassis named
// after its node ID, and every attached workload's logical port is up in
// NB, bound to the chassis of its workload's node, and plugged into that
// node's br-int under iface-id = the logical port.
func TestOVNRealizationContract(t *testing.T) {
	sc, err := LoadScenario(filepath.Join("testdata", "scenarios", "01-full-mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	opts := realizationNamed(t, "ovn").options(t)
	r := Setup(t, sc.Topology, opts)
	ctx := t.Context()
	for _, n := range r.State().Nodes {
		out, err := r.Ctl(ctx, "node", "get", "nodes/"+n.Name, "-o", "json")
		if err != nil || !strings.Contains(out, `"OVN"`) {
			t.Errorf("node %s does not have realization OVN: %v\n%s", n.Name, err, out)
		}
		if got, err := ovsTool(ctx, "ovn-sbctl", r.ovnSBSocket(), "--bare", "--columns=name", "find", "Chassis", "name="+n.Name); err != nil || got != n.Name {
			t.Errorf("SB chassis %s: %q, %v", n.Name, got, err)
		}
	}
	for _, w := range r.State().Workloads {
		out, err := r.Ctl(ctx, "port", "get", w.Port, "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			ID uint32 `json:"id"`
		}
		if err := json.Unmarshal([]byte(out), &p); err != nil || p.ID == 0 {
			t.Fatalf("port %s: no ID (%v):\n%s", w.Port, err, out)
		}
		lsp := ovn.LogicalPortName(p.ID)
		if up, err := ovsTool(ctx, "ovn-nbctl", r.ovnNBSocket(), "lsp-get-up", lsp); err != nil || up != "up" {
			t.Errorf("%s (%s): lsp-get-up %q, %v", w.Name, lsp, up, err)
		}
		chassis, err := ovsTool(ctx, "ovn-sbctl", r.ovnSBSocket(), "--bare", "--columns=_uuid", "find", "Chassis", "name="+w.Node)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := ovsTool(ctx, "ovn-sbctl", r.ovnSBSocket(), "--bare", "--columns=chassis", "find", "Port_Binding", "logical_port="+lsp); err != nil || got != chassis {
			t.Errorf("%s (%s): bound to chassis %q (%v), want %s's %q", w.Name, lsp, got, err, w.Node, chassis)
		}
		if got, err := ovsTool(ctx, "ovs-vsctl", r.ovsDBSocket(w.Node), "get", "Interface", w.HostIf, "external_ids:iface-id"); err != nil || strings.Trim(got, `"`) != lsp {
			t.Errorf("%s: %s on %s has iface-id %s (%v), want %s", w.Name, w.HostIf, w.Node, got, err, lsp)
		}
		if got, err := ovsTool(ctx, "ovs-vsctl", r.ovsDBSocket(w.Node), "iface-to-br", w.HostIf); err != nil || got != "br-int" {
			t.Errorf("%s: %s is on bridge %q (%v), want br-int", w.Name, w.HostIf, got, err)
		}
	}
}

// realizationNamed returns one of the scenario realizations.
func realizationNamed(t *testing.T, name string) realization {
	t.Helper()
	i := slices.IndexFunc(realizations, func(re realization) bool { return re.name == name })
	if i < 0 {
		t.Fatalf("no realization %q", name)
	}
	return realizations[i]
}
