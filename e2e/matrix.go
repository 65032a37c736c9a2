package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"
)

// Expect is a flow with its expected fate.
type Expect struct {
	Flow
	Allow bool
}

// Allow expects the flow to get through.
func Allow(from, to string, proto Proto, port uint16) Expect {
	return Expect{Flow: Flow{From: from, To: to, Proto: proto, Port: port}, Allow: true}
}

// Deny expects the flow to be dropped.
func Deny(from, to string, proto Proto, port uint16) Expect {
	return Expect{Flow: Flow{From: from, To: to, Proto: proto, Port: port}}
}

// Outcome is what a probe found.
type Outcome struct {
	Expect
	Got bool  // the flow got through
	Err error // why it did not, when it did not
}

// Mismatch says whether the outcome differs from the expectation.
func (o Outcome) Mismatch() bool { return o.Got != o.Allow }

// Report is the result of a reachability check, in the order of the
// expectations.
type Report struct{ Outcomes []Outcome }

// Failed reports whether any flow did not go as expected.
func (rep Report) Failed() bool { return slices.ContainsFunc(rep.Outcomes, Outcome.Mismatch) }

// ProbeOptions tune CheckReachability.
type ProbeOptions struct {
	Parallel int // concurrent probes; 0 means 16
	// Attempts per flow; a flow is allowed if any attempt gets through, so
	// a lost first packet (ARP, a flow being installed) does not count as a
	// deny. 0 means 2.
	Attempts int
	Timeout  time.Duration // per attempt; 0 means DefaultProbeTimeout
}

func (o ProbeOptions) withDefaults() ProbeOptions {
	if o.Parallel <= 0 {
		o.Parallel = 16
	}
	if o.Attempts <= 0 {
		o.Attempts = 2
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultProbeTimeout
	}
	return o
}

// CheckReachability probes every expectation, in parallel, against echo
// listeners it starts for the TCP and UDP targets. The error is for probes
// that could not be set up; traffic that misbehaves is in the report.
func (r *Run) CheckReachability(ctx context.Context, exps []Expect, opts ProbeOptions) (Report, error) {
	opts = opts.withDefaults()
	flows := make([]Flow, len(exps))
	for i, e := range exps {
		flows[i] = e.Flow
	}
	ls, err := r.startListeners(flows)
	if err != nil {
		return Report{}, err
	}
	defer ls.Close()

	rep := Report{Outcomes: make([]Outcome, len(exps))}
	sem := make(chan struct{}, opts.Parallel)
	var wg sync.WaitGroup
	for i, e := range exps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			err := r.try(ctx, e.Flow, opts)
			rep.Outcomes[i] = Outcome{Expect: e, Got: err == nil, Err: err}
		}()
	}
	wg.Wait()
	return rep, ctx.Err()
}

// AssertReachability checks the expectations and fails t with the matrix
// if any flow did not go as expected.
func (r *Run) AssertReachability(t testing.TB, exps ...Expect) {
	t.Helper()
	rep, err := r.CheckReachability(t.Context(), exps, ProbeOptions{})
	if err != nil {
		t.Fatalf("reachability check: %v", err)
	}
	if rep.Failed() {
		t.Errorf("reachability differs from expectation:\n%s", rep)
	}
}

// String renders one matrix per service (icmp, tcp/80, ...): sources down,
// destinations across. A cell shows the outcome in lower case when it was
// expected and in upper case with "!" when it was not; "." means no probe.
// The mismatched flows follow, with why each probe failed.
func (rep Report) String() string {
	var b strings.Builder
	var services []string
	for _, o := range rep.Outcomes {
		if !slices.Contains(services, o.service()) {
			services = append(services, o.service())
		}
	}
	for _, svc := range services {
		var froms, tos []string
		cells := map[[2]string]string{}
		for _, o := range rep.Outcomes {
			if o.service() != svc {
				continue
			}
			if !slices.Contains(froms, o.From) {
				froms = append(froms, o.From)
			}
			if !slices.Contains(tos, o.To) {
				tos = append(tos, o.To)
			}
			cells[[2]string{o.From, o.To}] = o.cell()
		}
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "%s\t%s\n", svc+" from\\to", strings.Join(tos, "\t"))
		for _, from := range froms {
			row := make([]string, len(tos))
			for i, to := range tos {
				if row[i] = cells[[2]string{from, to}]; row[i] == "" {
					row[i] = "."
				}
			}
			fmt.Fprintf(tw, "%s\t%s\n", from, strings.Join(row, "\t"))
		}
		_ = tw.Flush() // writes to a strings.Builder do not fail
		b.WriteString("\n")
	}
	for _, o := range rep.Outcomes {
		if o.Mismatch() {
			fmt.Fprintf(&b, "%s: want %s, got %s", o.Flow, verdict(o.Allow), verdict(o.Got))
			if o.Err != nil {
				fmt.Fprintf(&b, " (%v)", o.Err)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func (o Outcome) cell() string {
	if o.Mismatch() {
		return strings.ToUpper(verdict(o.Got)) + "!"
	}
	return verdict(o.Got)
}

func verdict(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}
