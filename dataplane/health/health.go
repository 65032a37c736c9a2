// Package health probes load-balancer backends from the node that hosts
// them (issue [5]) and keeps their health with thresholds.
//
// A backend is a workload port on this node. The probe does not come from
// the node's own stack (the node has no address in the VPC, and the
// workload must not learn the node's): it is a small TCP client on raw
// frames written to the host end of the port's veth with an AF_PACKET
// socket, from the subnet gateway's address and the virtual router's MAC,
// exactly as if the VPC router opened the connection. Writing to the host
// end transmits into the workload. The workload answers its gateway: its
// ARP for the gateway address is answered by the tc pipeline, its replies
// come back on the host end, where the probe's socket (an ETH_P_ALL tap,
// which the kernel serves before the tc ingress hook) reads them through a
// classic BPF filter that admits only this probe's segments. The tc
// pipeline then drops those replies without counting them: TCP to the
// gateway address with a destination port in [ProbePortMin, ProbePortMax]
// is the probes' (bpf/c/meridian.c).
//
// Checks: "tcp" succeeds on a SYN-ACK (then resets the connection) and
// fails on a RST or no answer within the timeout; "http" completes the
// handshake, sends a GET and succeeds on a 2xx or 3xx status line.
// healthy_threshold consecutive successes make a backend healthy,
// unhealthy_threshold consecutive failures unhealthy; until one of them is
// reached its health is unknown and not reported. Every backend has its
// own goroutine, so a slow or flapping one never delays another, and the
// first probe of each is delayed at random within one interval so that
// many backends do not probe in step.
//
// The package owns the probes and the health state. It must not decide
// which backends a node checks (the agent does, from its desired state) nor
// what the controller does with the results.
package health

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// The probes' source ports at the gateway address. The tc pipeline drops
// the workload's segments to these ports at the gateway address silently:
// keep in step with PROBE_PORT_MASK in bpf/c/meridian.c.
const (
	ProbePortMin = 0xfc00
	ProbePortMax = 0xffff
)

// Defaults of the agent protocol's HealthCheck.
const (
	DefaultInterval           = 2 * time.Second
	DefaultTimeout            = time.Second
	DefaultHealthyThreshold   = 2
	DefaultUnhealthyThreshold = 2
)

// Check is how a backend is probed.
type Check struct {
	Protocol           string // "tcp" (connect) or "http" (GET)
	Port               uint16 // 0: the backend's port
	Path               string // http: request path, "" = "/"
	Interval           time.Duration
	Timeout            time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
}

// WithDefaults fills what is unset with the protocol's defaults.
func (c Check) WithDefaults() Check {
	if c.Path == "" {
		c.Path = "/"
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.HealthyThreshold == 0 {
		c.HealthyThreshold = DefaultHealthyThreshold
	}
	if c.UnhealthyThreshold == 0 {
		c.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	return c
}

// Validate says what is wrong with a check (after WithDefaults).
func (c Check) Validate() error {
	switch c.Protocol {
	case "tcp", "http":
	default:
		return fmt.Errorf("health check protocol %q: want tcp or http", c.Protocol)
	}
	if c.Interval < 10*time.Millisecond || c.Timeout < time.Millisecond {
		return fmt.Errorf("health check interval %v / timeout %v too short", c.Interval, c.Timeout)
	}
	if c.HealthyThreshold < 1 || c.UnhealthyThreshold < 1 || c.HealthyThreshold > 100 || c.UnhealthyThreshold > 100 {
		return fmt.Errorf("health check thresholds %d/%d: want 1..100", c.HealthyThreshold, c.UnhealthyThreshold)
	}
	if c.Protocol == "http" {
		if c.Path[0] != '/' {
			return fmt.Errorf("health check path %q must start with /", c.Path)
		}
		for _, r := range c.Path {
			if r <= ' ' || r == 0x7f {
				return fmt.Errorf("health check path %q has a space or control character", c.Path)
			}
		}
	}
	return nil
}

// Key names one checked backend of one service.
type Key struct {
	Service uint32 // LbService.id
	Backend uint32 // LbBackend.id
}

func (k Key) String() string { return fmt.Sprintf("%d/%d", k.Service, k.Backend) }

// Target is one backend to probe, as the node hosting it sees it.
type Target struct {
	Key
	HostIf    string           // host end of the backend port's veth
	RouterMAC net.HardwareAddr // source MAC: the workload's gateway
	PortMAC   net.HardwareAddr // the backend port's MAC
	Gateway   netip.Addr       // source address: the subnet gateway
	Address   netip.Addr       // the backend's address
	Port      uint16           // the backend's port
	Check     Check            // with defaults filled in
}

// probePort is the port the check connects to.
func (t Target) probePort() uint16 {
	if t.Check.Port != 0 {
		return t.Check.Port
	}
	return t.Port
}

// sameEndpoint: a changed target still probes the same thing, so the
// health found so far still holds.
func (t Target) sameEndpoint(o Target) bool {
	return t.Address == o.Address && t.probePort() == o.probePort() &&
		t.Check.Protocol == o.Check.Protocol && t.Check.Path == o.Check.Path
}

func (t Target) equal(o Target) bool {
	return t.Key == o.Key && t.HostIf == o.HostIf && t.RouterMAC.String() == o.RouterMAC.String() &&
		t.PortMAC.String() == o.PortMAC.String() && t.Gateway == o.Gateway && t.Address == o.Address &&
		t.Port == o.Port && t.Check == o.Check
}

// Status is a backend's health once a threshold was reached.
type Status struct {
	Key
	Healthy   bool
	Since     time.Time // when it entered this state
	LastError string    // why the last failed probe failed
}

// Config configures a Checker.
type Config struct {
	Log *slog.Logger
	// Netns is the path of the namespace holding the ports' host ends,
	// "" for the caller's (the agent runs in its node's namespace).
	Netns string
	// OnChange is called after a status changed or disappeared. It runs
	// on a probe's goroutine and must not block.
	OnChange func()
	// Probe replaces the raw-frame probe (tests of the thresholds only).
	Probe func(ctx context.Context, t Target) error
}

// Checker runs the probes of a set of targets.
type Checker struct {
	cfg   Config
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	mu    sync.Mutex
	procs map[Key]*prober
}

// prober is one target's goroutine and its state.
type prober struct {
	t      Target
	cancel context.CancelFunc
	st     state
}

type state struct {
	known, healthy bool
	since          time.Time
	ok, fail       int // consecutive successes, failures
	lastErr        string
}

// New starts a Checker with no targets; it stops when ctx is done or on
// Close.
func New(ctx context.Context, cfg Config) *Checker {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Checker{cfg: cfg, procs: map[Key]*prober{}}
	c.ctx, c.stop = context.WithCancel(ctx)
	if c.cfg.Probe == nil {
		c.cfg.Probe = c.probe
	}
	return c
}

// Close stops every probe and waits for them.
func (c *Checker) Close() {
	c.stop()
	c.wg.Wait()
}

// Set makes targets the set of backends probed: new ones start, removed
// ones stop, changed ones restart (keeping their health if they still
// probe the same endpoint). Targets must have valid checks.
func (c *Checker) Set(targets []Target) error {
	want := map[Key]Target{}
	var errs []error
	for _, t := range targets {
		if err := t.Check.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("backend %v: %w", t.Key, err))
			continue
		}
		if !t.Address.Is4() || !t.Gateway.Is4() || len(t.RouterMAC) != 6 || len(t.PortMAC) != 6 || t.HostIf == "" || t.probePort() == 0 {
			errs = append(errs, fmt.Errorf("backend %v: incomplete target %+v", t.Key, t))
			continue
		}
		want[t.Key] = t
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ctx.Err() != nil {
		return errors.New("health: checker closed")
	}
	removed := false
	for k, p := range c.procs {
		t, ok := want[k]
		if ok && p.t.equal(t) {
			continue
		}
		p.cancel()
		delete(c.procs, k)
		if !ok {
			removed = removed || p.st.known
			continue
		}
		np := &prober{t: t}
		if p.t.sameEndpoint(t) {
			np.st = p.st
		} else {
			removed = removed || p.st.known
		}
		c.start(np)
	}
	for k, t := range want {
		if _, ok := c.procs[k]; !ok {
			c.start(&prober{t: t})
		}
	}
	if removed && c.cfg.OnChange != nil {
		c.cfg.OnChange()
	}
	return errors.Join(errs...)
}

// start runs p's probe loop; c.mu is held.
func (c *Checker) start(p *prober) {
	ctx, cancel := context.WithCancel(c.ctx)
	p.cancel = cancel
	c.procs[p.t.Key] = p
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.loop(ctx, p)
	}()
}

// loop probes every interval, starting at a random point of the first
// one. A probe ends within its timeout, so the next starts on time unless
// the timeout is longer than the interval.
func (c *Checker) loop(ctx context.Context, p *prober) {
	t := p.t
	timer := time.NewTimer(rand.N(t.Check.Interval))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, t.Check.Timeout)
		err := c.cfg.Probe(pctx, t)
		cancel()
		if ctx.Err() != nil {
			return // stopped meanwhile: the result belongs to no one
		}
		if c.record(p, err) && c.cfg.OnChange != nil {
			c.cfg.OnChange()
		}
		timer.Reset(max(0, t.Check.Interval-time.Since(start)))
	}
}

// record folds one probe's result into p's state and says whether its
// status changed.
func (c *Checker) record(p *prober, err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procs[p.t.Key] != p {
		return false // replaced by Set meanwhile
	}
	s := &p.st
	now := time.Now()
	if err == nil {
		s.ok, s.fail = s.ok+1, 0
		if (!s.known || !s.healthy) && s.ok >= p.t.Check.HealthyThreshold {
			s.known, s.healthy, s.since = true, true, now
			c.cfg.Log.Info("backend healthy", "service", p.t.Service, "backend", p.t.Backend, "address", p.t.Address)
			return true
		}
		return false
	}
	s.ok, s.fail = 0, s.fail+1
	msg := err.Error()
	if (!s.known || s.healthy) && s.fail >= p.t.Check.UnhealthyThreshold {
		s.known, s.healthy, s.since, s.lastErr = true, false, now, msg
		c.cfg.Log.Info("backend unhealthy", "service", p.t.Service, "backend", p.t.Backend, "address", p.t.Address, "err", msg)
		return true
	}
	// While unhealthy the reason may change (refused, then no answer);
	// a healthy backend's passing failure changes nothing reported.
	if s.known && !s.healthy && s.lastErr != msg {
		s.lastErr = msg
		return true
	}
	return false
}

// Statuses returns the health of every backend that reached a threshold,
// by key.
func (c *Checker) Statuses() []Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Status, 0, len(c.procs))
	for k, p := range c.procs {
		if p.st.known {
			out = append(out, Status{Key: k, Healthy: p.st.healthy, Since: p.st.since, LastError: p.st.lastErr})
		}
	}
	slices.SortFunc(out, func(a, b Status) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Backend, b.Backend))
	})
	return out
}
