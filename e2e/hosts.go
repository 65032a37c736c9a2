package e2e

import (
	"context"
	"fmt"
	"maps"
)

// AddHost creates a namespace of the run's own beside the topology (a
// router, an "internet" host), recorded like every other so Close removes
// it; Netns, Exec and the probes then know it by name.
func (r *Run) AddHost(ctx context.Context, name string) (string, error) {
	if err := validName(name); err != nil {
		return "", fmt.Errorf("host: %w", err)
	}
	if _, err := r.Netns(name); err == nil {
		return "", fmt.Errorf("host %q: the name is taken in run %s", name, r.st.RunID)
	}
	ns, err := r.createNetns(ctx, name)
	if err != nil {
		return "", err
	}
	if err := r.record(func(st *State) {
		st.Hosts = maps.Clone(st.Hosts)
		if st.Hosts == nil {
			st.Hosts = map[string]string{}
		}
		st.Hosts[name] = ns
	}); err != nil {
		return "", err
	}
	return ns, nil
}
