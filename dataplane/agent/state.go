package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// attachment is a workload plugged into a port on this node.
type attachment struct {
	Port      string `json:"port"`
	PortID    uint32 `json:"port_id"`
	NetnsPath string `json:"netns_path,omitempty"`
	IfName    string `json:"if_name,omitempty"`
	HostIf    string `json:"host_if"`
	Ready     bool   `json:"-"`
	Error     string `json:"-"`
}

// state is what must survive an agent restart: which workloads are plugged
// where (the kernel does not say which netns a veth came from) and what was
// installed (so what disappeared meanwhile can be removed).
type state struct {
	Attachments map[string]*attachment `json:"attachments"`
	Applied     applied                `json:"applied"`
}

func (a *Agent) statePath() string { return filepath.Join(a.cfg.StateDir, "state.json") }

func loadState(path string) (state, error) {
	st := state{Attachments: map[string]*attachment{}, Applied: newApplied()}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("agent: read state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("agent: state %s is corrupt: %w", path, err)
	}
	fill := newApplied()
	for _, m := range []struct {
		dst *map[uint32]bool
		def map[uint32]bool
	}{{&st.Applied.Ports, fill.Ports}, {&st.Applied.Subnets, fill.Subnets}, {&st.Applied.ACLs, fill.ACLs},
		{&st.Applied.Policies, fill.Policies}, {&st.Applied.VPCs, fill.VPCs}} {
		if *m.dst == nil {
			*m.dst = m.def
		}
	}
	if st.Applied.Attached == nil {
		st.Applied.Attached = fill.Attached
	}
	st.Applied.Routes = map[routeKey]bool{}
	for _, r := range st.Applied.RouteL {
		st.Applied.Routes[r] = true
	}
	if st.Attachments == nil {
		st.Attachments = map[string]*attachment{}
	}
	return st, nil
}

// saveState writes the state atomically (temp file + rename), so a crash
// leaves either the old or the new state, never half of one.
func (a *Agent) saveState() error {
	a.mu.Lock()
	st := state{Attachments: a.attach, Applied: a.applied}
	st.Applied.RouteL = st.Applied.RouteL[:0:0]
	for r := range a.applied.Routes {
		st.Applied.RouteL = append(st.Applied.RouteL, r)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("agent: encode state: %w", err)
	}
	tmp := a.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("agent: write state: %w", err)
	}
	if err := os.Rename(tmp, a.statePath()); err != nil {
		return fmt.Errorf("agent: write state: %w", err)
	}
	return nil
}
