package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
)

// Stage is how far Up builds a run; each stage includes the ones before.
type Stage int

const (
	// StageFabric: the fabric and node namespaces, wired and addressed.
	StageFabric Stage = iota + 1
	// StageController: plus the controller, with the topology's documents
	// applied.
	StageController
	// StageAgents: plus one agent per node.
	StageAgents
	// StageWorkloads: plus every workload attached. The default.
	StageWorkloads
)

func (s Stage) String() string {
	switch s {
	case StageFabric:
		return "fabric"
	case StageController:
		return "controller"
	case StageAgents:
		return "agents"
	case StageWorkloads:
		return "workloads"
	}
	return fmt.Sprintf("stage(%d)", int(s))
}

// ParseStage is the inverse of Stage.String.
func ParseStage(name string) (Stage, error) {
	var names []string
	for s := StageFabric; s <= StageWorkloads; s++ {
		if s.String() == name {
			return s, nil
		}
		names = append(names, s.String())
	}
	return 0, fmt.Errorf("stage %q is not one of %s", name, strings.Join(names, ", "))
}

// Options tune Up. The zero value builds everything with binaries from
// $MERIDIAN_BIN_DIR or the module's bin/ directory.
type Options struct {
	BinDir string
	Until  Stage
	Log    *slog.Logger
	// ReadyTimeout bounds each wait: a process to serve, a workload to
	// attach. 0 means 30 s.
	ReadyTimeout time.Duration
	// KeepRunDir leaves the run directory (logs, state, data) after Close.
	KeepRunDir bool
	// OVN realizes the topology with OVN instead of the eBPF data path: an
	// OVN central stack for the run, OVS and ovn-controller on every node
	// (see ovn.go).
	OVN bool
}

const (
	fabricName   = "fabric"
	bridgeName   = "br0"
	uplinkName   = "uplink0" // the node's underlay interface
	stopGrace    = 5 * time.Second
	maxSockPath  = 107 // sun_path holds 108 bytes with the NUL
	runDirPrefix = "meridian-e2e-"
)

// Run is one built topology. Its methods are safe for concurrent use.
type Run struct {
	log  *slog.Logger
	opts Options

	mu       sync.Mutex
	st       *State
	children map[int]*child // processes started by this Run, by PID
}

// Up builds topo up to opts.Until. On failure everything it made so far is
// removed and the error says where it stopped.
func Up(ctx context.Context, topo Topology, opts Options) (*Run, error) {
	if err := topo.Validate(); err != nil {
		return nil, err
	}
	r, err := newRun(opts)
	if err != nil {
		return nil, err
	}
	if err := r.up(ctx, topo); err != nil {
		return nil, errors.Join(fmt.Errorf("e2e run %s: %w", r.st.RunID, err), r.Close())
	}
	return r, nil
}

// Attach returns the run recorded in runDir, e.g. for `meridian-e2e down`
// from another process. Its processes are known by PID only.
func Attach(runDir string) (*Run, error) {
	st, err := LoadState(runDir)
	if err != nil {
		return nil, err
	}
	opts := Options{BinDir: st.BinDir}.withDefaults()
	return &Run{log: opts.Log, opts: opts, st: st, children: map[int]*child{}}, nil
}

func (o Options) withDefaults() Options {
	if o.Until == 0 {
		o.Until = StageWorkloads
	}
	if o.ReadyTimeout == 0 {
		o.ReadyTimeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

func newRun(opts Options) (*Run, error) {
	opts = opts.withDefaults()
	if opts.BinDir == "" {
		var err error
		if opts.BinDir, err = defaultBinDir(); err != nil {
			return nil, err
		}
	}
	id := make([]byte, 5)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("run id: %w", err)
	}
	runID := hex.EncodeToString(id[:3])
	// 10.200.0.0/24 .. 10.255.255.0/24: private, and random per run so
	// concurrent runs never share an underlay subnet.
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + id[3]%56, id[4], 0}), 24)
	runDir := filepath.Join(os.TempDir(), runDirPrefix+runID)
	if err := os.Mkdir(runDir, 0o700); err != nil {
		return nil, fmt.Errorf("run directory: %w", err)
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("token: %w", err)
	}
	st := &State{RunID: runID, RunDir: runDir, Subnet: subnet, Token: hex.EncodeToString(tok), BinDir: opts.BinDir}
	r := &Run{log: opts.Log.With("run", runID), opts: opts, st: st, children: map[int]*child{}}
	return r, st.save()
}

// defaultBinDir is $MERIDIAN_BIN_DIR, else bin/ at the root of the module
// containing the working directory (tests run in their package directory).
func defaultBinDir() (string, error) {
	if d := os.Getenv("MERIDIAN_BIN_DIR"); d != "" {
		return d, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin"), nil
}

// ModuleRoot finds the directory of go.mod above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s: set MERIDIAN_BIN_DIR or Options.BinDir", dir)
		}
	}
}

func (r *Run) up(ctx context.Context, topo Topology) error {
	steps := []struct {
		stage Stage
		name  string
		do    func(context.Context, Topology) error
		ovn   bool // only in the OVN realization
	}{
		{StageFabric, "fabric", r.buildFabric, false},
		{StageController, "ovn central", r.startOVNCentral, true},
		{StageController, "controller", r.startController, false},
		{StageAgents, "ovn chassis", r.startOVNChassis, true},
		{StageAgents, "agents", r.startAgents, false},
		{StageWorkloads, "workloads", r.attachWorkloads, false},
	}
	for _, s := range steps {
		if s.stage > r.opts.Until {
			break
		}
		if s.ovn && !r.opts.OVN {
			continue
		}
		start := time.Now()
		if err := s.do(ctx, topo); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		r.log.Info("e2e stage up", "stage", s.name, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// record applies a change to the state and saves it, so the state file
// names a resource before anything can go wrong with it.
func (r *Run) record(change func(st *State)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(r.st)
	return r.st.save()
}

// nsName is the namespace of a node, workload or the fabric in this run.
func (r *Run) nsName(name string) string { return "me2e-" + r.st.RunID + "-" + name }

// createNetns records, then creates, a namespace with lo up.
func (r *Run) createNetns(ctx context.Context, name string) (string, error) {
	ns := r.nsName(name)
	if err := r.record(func(st *State) { st.Netns = append(st.Netns, ns) }); err != nil {
		return "", err
	}
	if err := addNetns(ctx, ns); err != nil {
		return "", err
	}
	h, nsh, err := handleAt(ns)
	if err != nil {
		return "", err
	}
	defer nsh.Close()
	defer h.Close()
	return ns, setUp(h, "lo")
}

// buildFabric creates the fabric bridge and wires each node to it: the
// veth is created with its node end directly inside the node's namespace,
// so the root namespace never sees any of this run's links.
func (r *Run) buildFabric(ctx context.Context, topo Topology) error {
	fabric, err := r.createNetns(ctx, fabricName)
	if err != nil {
		return err
	}
	if err := r.record(func(st *State) { st.Fabric = fabric }); err != nil {
		return err
	}
	fh, fns, err := handleAt(fabric)
	if err != nil {
		return err
	}
	defer fns.Close()
	defer fh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := fh.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge in %s: %w", fabric, err)
	}
	if err := setUp(fh, bridgeName); err != nil {
		return err
	}
	for i, n := range topo.Nodes {
		addr := r.st.Subnet.Addr().As4()
		addr[3] = topo.underlayHost(i)
		ip := netip.AddrFrom4(addr)
		ns, err := r.createNetns(ctx, n.Name)
		if err != nil {
			return err
		}
		port := fmt.Sprintf("n%d", i)
		if err := r.wireNode(fh, br.Index, port, ns, netip.PrefixFrom(ip, r.st.Subnet.Bits()), topo.underlayMTU()); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		// The fabric stands in for a switch: a frame an XDP program
		// redirects into a node's uplink (the load balancer's VXLAN) must
		// reach it, and a veth drops redirected frames unless its peer
		// runs NAPI (GRO on, or an XDP program) — a physical NIC has no
		// such limit.
		if out, err := Exec(ctx, fabric, "ethtool", "-K", port, "gro", "on"); err != nil {
			return fmt.Errorf("node %s: GRO on fabric port %s: %w (%s)", n.Name, port, err, out)
		}
		if err := r.record(func(st *State) {
			st.Nodes = append(st.Nodes, NodeState{Name: n.Name, Netns: ns, Underlay: ip})
		}); err != nil {
			return err
		}
	}
	return nil
}

func (r *Run) wireNode(fh *netlink.Handle, bridge int, portName, ns string, addr netip.Prefix, mtu int) error {
	nh, nns, err := handleAt(ns)
	if err != nil {
		return err
	}
	defer nns.Close()
	defer nh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: portName, MasterIndex: bridge, MTU: mtu},
		PeerName:      uplinkName,
		PeerMTU:       uint32(mtu),
		PeerNamespace: netlink.NsFd(int(nns)),
	}
	if err := fh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s to %s: %w", portName, ns, err)
	}
	if err := setUp(fh, portName); err != nil {
		return err
	}
	up, err := nh.LinkByName(uplinkName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", uplinkName, ns, err)
	}
	ipn := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
	if err := nh.AddrAdd(up, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, uplinkName, err)
	}
	return setUp(nh, uplinkName)
}

// Close stops every process of the run, removes its namespaces, bpffs and
// (unless KeepRunDir) its directory. It is idempotent; if something cannot
// be removed, the state file stays so that `meridian-e2e down` can retry.
func (r *Run) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	// Reverse start order: agents before the controller they talk to.
	for _, p := range slices.Backward(r.st.Procs) {
		var exited <-chan struct{}
		if c := r.children[p.PID]; c != nil {
			exited = c.exited
		}
		if err := p.stop(exited, stopGrace); err != nil {
			errs = append(errs, err)
		}
	}
	// Reverse creation order: workloads, then nodes, then the fabric.
	for _, ns := range slices.Backward(r.st.Netns) {
		if err := delNetns(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := unmountBPFFS(r.st.BPFFS); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 || r.opts.KeepRunDir {
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(r.st.RunDir); err != nil {
		return fmt.Errorf("remove run directory: %w", err)
	}
	return nil
}

// RunDir is the directory holding the run's state, logs and sockets.
func (r *Run) RunDir() string { return r.st.RunDir }

// RunID is the random ID in every name the run creates.
func (r *Run) RunID() string { return r.st.RunID }

// State returns a copy of the run's record.
func (r *Run) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := *r.st
	st.Netns = slices.Clone(st.Netns)
	st.Procs = slices.Clone(st.Procs)
	st.Nodes = slices.Clone(st.Nodes)
	st.Workloads = slices.Clone(st.Workloads)
	return st
}

// Netns returns the namespace name of a node, a workload or "fabric".
func (r *Run) Netns(name string) (string, error) {
	st := r.State()
	if name == fabricName && st.Fabric != "" {
		return st.Fabric, nil
	}
	if n, ok := st.node(name); ok {
		return n.Netns, nil
	}
	if w, ok := st.workload(name); ok {
		return w.Netns, nil
	}
	if ns, ok := st.Hosts[name]; ok {
		return ns, nil
	}
	return "", fmt.Errorf("no node or workload %q in run %s", name, st.RunID)
}

// Addr returns the IPv4 address probes use to reach a node (its underlay
// address) or a workload (its port's first IPv4 address). A literal IP
// address is returned as is.
func (r *Run) Addr(name string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		return a, nil
	}
	st := r.State()
	if n, ok := st.node(name); ok {
		return n.Underlay, nil
	}
	if w, ok := st.workload(name); ok {
		for _, ip := range w.IPs {
			// The agent reports addresses with their prefix length; accept
			// bare ones too.
			a, err := netip.ParseAddr(ip)
			if p, perr := netip.ParsePrefix(ip); perr == nil {
				a, err = p.Addr(), nil
			}
			if err == nil && a.Is4() {
				return a, nil
			}
		}
		return netip.Addr{}, fmt.Errorf("workload %s has no IPv4 address (not attached?)", name)
	}
	return netip.Addr{}, fmt.Errorf("no node or workload %q in run %s", name, st.RunID)
}

// Exec runs argv in the namespace of a node, a workload or the fabric.
func (r *Run) Exec(ctx context.Context, name string, argv ...string) (string, error) {
	ns, err := r.Netns(name)
	if err != nil {
		return "", err
	}
	return Exec(ctx, ns, argv...)
}

// Logs returns the last lines of every process log of the run, for a
// failing test's output.
func (r *Run) Logs(lines int) string {
	var b strings.Builder
	for _, p := range r.State().Procs {
		fmt.Fprintf(&b, "==> %s (%s) <==\n%s\n", p.Name, p.Log, logTail(p.Log, lines))
	}
	return b.String()
}
