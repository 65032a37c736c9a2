package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// stateFile is the name of the run's record inside its run directory.
const stateFile = "state.json"

// State is everything a run created, written to RUNDIR/state.json after
// each creation so that a crash at any point leaves a record `down` can
// clean up from.
type State struct {
	RunID     string          `json:"runId"`
	RunDir    string          `json:"runDir"`
	Subnet    netip.Prefix    `json:"subnet"` // underlay /24
	Token     string          `json:"token"`  // system-admin bearer token of the run's controller
	BinDir    string          `json:"binDir"`
	Fabric    string          `json:"fabric,omitempty"` // netns name
	HTTP      string          `json:"http,omitempty"`   // controller's HTTP address
	Netns     []string        `json:"netns,omitempty"`  // every namespace created, in order
	Procs     []ProcState     `json:"processes,omitempty"`
	BPFFS     string          `json:"bpffs,omitempty"` // the run's own bpffs mount; agents pin below it
	Nodes     []NodeState     `json:"nodes,omitempty"`
	Workloads []WorkloadState `json:"workloads,omitempty"`
	// Hosts are namespaces a test added beside the topology (AddHost),
	// e.g. a router and an "internet" host: name -> netns.
	Hosts   map[string]string `json:"hosts,omitempty"`
	Intent  string            `json:"intent,omitempty"` // path of the applied documents
	Applied bool              `json:"applied,omitempty"`
}

// NodeState is one node of a run.
type NodeState struct {
	Name        string     `json:"name"`
	Netns       string     `json:"netns"`
	Underlay    netip.Addr `json:"underlay"`
	AgentSocket string     `json:"agentSocket,omitempty"`
	BPFFS       string     `json:"bpffs,omitempty"`
}

// WorkloadState is one workload of a run, with what its agent assigned.
type WorkloadState struct {
	Name    string   `json:"name"`
	Node    string   `json:"node"`
	Port    string   `json:"port"`
	Netns   string   `json:"netns"`
	HostIf  string   `json:"hostInterface,omitempty"`
	MAC     string   `json:"mac,omitempty"`
	IPs     []string `json:"ips,omitempty"` // with prefix length
	Gateway string   `json:"gateway,omitempty"`
}

// ProcState identifies a started process well enough to never signal a
// stranger that reused its PID: the kernel's start time must match too.
type ProcState struct {
	Name      string   `json:"name"`
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	Argv      []string `json:"argv"`
	Log       string   `json:"log"`
	Socket    string   `json:"socket"` // serving on it means ready`
}

func (s *State) save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp := filepath.Join(s.RunDir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(s.RunDir, stateFile)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// LoadState reads the state of the run in runDir.
func LoadState(runDir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(runDir, stateFile))
	if err != nil {
		return nil, fmt.Errorf("read run state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Join(runDir, stateFile), err)
	}
	return &s, nil
}

// underlay maps node names to their underlay addresses.
func (s State) underlay() map[string]netip.Addr {
	m := make(map[string]netip.Addr, len(s.Nodes))
	for _, n := range s.Nodes {
		m[n.Name] = n.Underlay
	}
	return m
}

func (s State) node(name string) (NodeState, bool) {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return NodeState{}, false
}

func (s State) workload(name string) (WorkloadState, bool) {
	for _, w := range s.Workloads {
		if w.Name == name {
			return w, true
		}
	}
	return WorkloadState{}, false
}
