package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Scenario is a topology plus the reachability it must show, phase after
// phase. It is data only, with nothing of a particular data plane in it, so
// that the same files run against every realization (the eBPF agent, OVN
// nodes): what happens between phases (an agent killed, the controller
// stopped, a port moved) is up to the test that walks through it.
//
//	nodes: ...          # as in Topology
//	workloads: ...
//	intent: |
//	  ...
//	phases:
//	- name: ssh-only
//	  expect:
//	  - {from: [a-1, a-2], to: [srv], allow: [tcp/22], deny: [tcp/80, icmp]}
//	- name: rule-removed
//	  apply: |          # meridianctl apply documents: creates or updates
//	    kind: SecurityGroup
//	    ...
//	  expect:
//	  - {from: [a-1], to: [srv], deny: [tcp/22]}
type Scenario struct {
	Topology `json:",inline"`
	Phases   []Phase `json:"phases"`
}

// Phase is one state of a scenario: the documents that lead to it, applied
// through the API, and the matrix that must hold in it.
type Phase struct {
	Name  string `json:"name"`
	Apply string `json:"apply,omitempty"`
	// Expect is the matrix, as blocks of sources × destinations ×
	// services (a workload is never probed from itself).
	Expect []MatrixRule `json:"expect"`
}

// MatrixRule expects every service in Allow to get from each of From to
// each of To, and every service in Deny to be dropped. A service is "icmp",
// "tcp/PORT" or "udp/PORT". From and To name nodes or workloads; To may be
// a literal IP address (nothing answers TCP or UDP there, so only deny
// makes sense for those).
type MatrixRule struct {
	From  []string `json:"from"`
	To    []string `json:"to"`
	Allow []string `json:"allow,omitempty"`
	Deny  []string `json:"deny,omitempty"`
}

// LoadScenario reads a scenario from a YAML file.
func LoadScenario(path string) (Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Scenario{}, fmt.Errorf("read scenario: %w", err)
	}
	var sc Scenario
	if err := yaml.UnmarshalStrict(b, &sc); err != nil {
		return Scenario{}, fmt.Errorf("%s: parse scenario: %w", path, err)
	}
	if err := sc.Validate(); err != nil {
		return Scenario{}, fmt.Errorf("%s: %w", path, err)
	}
	return sc, nil
}

// Validate checks the topology and that every phase names known nodes and
// workloads and well-formed services.
func (sc Scenario) Validate() error {
	errs := []error{sc.Topology.Validate()}
	names := map[string]bool{}
	for _, n := range sc.Nodes {
		names[n.Name] = true
	}
	for _, w := range sc.Workloads {
		names[w.Name] = true
	}
	if len(sc.Phases) == 0 {
		errs = append(errs, errors.New("phases: at least one is needed"))
	}
	seen := map[string]bool{}
	for i, ph := range sc.Phases {
		where := fmt.Sprintf("phases[%d] (%s)", i, ph.Name)
		if ph.Name == "" || seen[ph.Name] {
			errs = append(errs, fmt.Errorf("%s: names must be set and unique", where))
		}
		seen[ph.Name] = true
		if len(ph.Expect) == 0 {
			errs = append(errs, fmt.Errorf("%s: no expectations", where))
		}
		for j, m := range ph.Expect {
			for _, n := range slices.Concat(m.From, m.To) {
				if _, err := netip.ParseAddr(n); err != nil && !names[n] {
					errs = append(errs, fmt.Errorf("%s: expect[%d]: %q is no node or workload", where, j, n))
				}
			}
			if _, err := m.expand(); err != nil {
				errs = append(errs, fmt.Errorf("%s: expect[%d]: %w", where, j, err))
			}
		}
	}
	return errors.Join(errs...)
}

// Phase returns the named phase.
func (sc Scenario) Phase(name string) (Phase, error) {
	for _, ph := range sc.Phases {
		if ph.Name == name {
			return ph, nil
		}
	}
	return Phase{}, fmt.Errorf("scenario has no phase %q", name)
}

// Expectations expands the phase's matrix into single flows.
func (ph Phase) Expectations() []Expect {
	var out []Expect
	for _, m := range ph.Expect {
		exps, _ := m.expand() // validated on load
		out = append(out, exps...)
	}
	return out
}

func (m MatrixRule) expand() ([]Expect, error) {
	if len(m.From) == 0 || len(m.To) == 0 || len(m.Allow)+len(m.Deny) == 0 {
		return nil, errors.New("from, to and one of allow or deny are required")
	}
	var out []Expect
	for _, verdict := range []struct {
		services []string
		allow    bool
	}{{m.Allow, true}, {m.Deny, false}} {
		for _, svc := range verdict.services {
			proto, port, err := ParseService(svc)
			if err != nil {
				return nil, err
			}
			for _, from := range m.From {
				for _, to := range m.To {
					if from != to {
						out = append(out, Expect{Flow: Flow{From: from, To: to, Proto: proto, Port: port}, Allow: verdict.allow})
					}
				}
			}
		}
	}
	return out, nil
}

// ParseService parses "icmp", "tcp/80" or "udp/53", the spelling of a
// matrix's column headings.
func ParseService(s string) (Proto, uint16, error) {
	name, port, hasPort := strings.Cut(s, "/")
	proto := Proto(name)
	if proto == ICMP && !hasPort {
		return ICMP, 0, nil
	}
	if proto != TCP && proto != UDP || !hasPort {
		return "", 0, fmt.Errorf("service %q: want icmp, tcp/PORT or udp/PORT", s)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", 0, fmt.Errorf("service %q: port must be 1-65535", s)
	}
	return proto, uint16(p), nil
}

// Converge checks exps until they all hold or within has passed, and
// returns the last report and how long it took. A change made through the
// API reaches the data plane asynchronously, so right after one the old
// verdicts are still legitimate for a while; polling with a deadline says
// "eventually, and no later than within" instead of sleeping blindly.
func (r *Run) Converge(ctx context.Context, exps []Expect, within time.Duration) (Report, time.Duration, error) {
	start := time.Now()
	// One short attempt per flow and round: a flow still on its old verdict
	// is simply retried next round. Rounds always run whole, so the last
	// report is about the data plane, not about a deadline cutting probes.
	opts := ProbeOptions{Attempts: 1, Timeout: 500 * time.Millisecond}
	for {
		rep, err := r.CheckReachability(ctx, exps, opts)
		if err != nil || !rep.Failed() || time.Since(start) >= within {
			return rep, time.Since(start), err
		}
		select {
		case <-ctx.Done():
			return rep, time.Since(start), ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
