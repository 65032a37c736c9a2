package e2e

import (
	"slices"
	"testing"
)

// ovnScenarios are the scenario files of issue [2] that issue [3] runs on
// OVN: reachability and its policy semantics. Port move, agent crash and
// controller outage are about Meridian's own agent and data path.
var ovnScenarios = []string{
	"01-full-mesh.yaml",
	"02-sg-ssh-from-subnet.yaml",
	"04-vpc-isolation.yaml",
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
		agent: func(node string) string { return node + "-agent" },
		ready: attachmentsReady,
		runs:  func(file string) bool { return slices.Contains(ovnScenarios, file) },
	})
}
