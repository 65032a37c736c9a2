// Package agent is Meridian's node agent: it registers its node with the
// controller, receives the node's desired state over the agent protocol,
// reconciles it into the eBPF data path and the kernel, and acknowledges
// each version it applied, with per-object errors. It also serves the
// compute layer's local API (AttachPort / DetachPort) on a unix socket.
//
// It is level-triggered: what it applies is computed from the desired state
// and what it finds on the node, never from a replay of events. Maps and
// programs stay pinned while it is down, so restarting it does not disturb
// traffic, and a snapshot after a restart changes only what is wrong.
//
// In the OVN realization (Config.Realization, ovn.go) the controller writes
// the policy into OVN northbound and ovn-controller programs OVS: the agent
// loads no eBPF, plugs workloads into br-int with iface-id = the logical
// port, and reports them ready once OVN has installed them.
//
// It must not decide policy semantics (package fw does) nor know map
// layouts (package datapath does).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/dataplane/health"
)

// Config configures an agent.
type Config struct {
	Node       string     // node ID: the last segment of nodes/{node}
	Controller string     // gRPC address of the controller: host:port or unix:/path
	Token      string     // bearer token of the node's identity
	UnderlayIP netip.Addr // this node's tunnel endpoint
	Socket     string     // unix socket of the local API
	BPFFS      string     // bpffs directory of this node's pinned maps and links
	StateDir   string     // small state that must survive restarts (attachments)
	Uplink     string     // gateway nodes: interface toward the fabric, unless the Gateway object names one
	VXLANName  string     // default "mvx0"
	Metrics    string     // address of /metrics and /healthz; "" = none
	Roles      []string
	Version    string
	Log        *slog.Logger
	Plumber    Plumber // nil: netlink (package plumbing)
	// Realization: the eBPF data path (default) or OVN, where OVSDB is the
	// node's Open_vSwitch database ("" = ovs-vsctl's default). See ovn.go.
	Realization Realization
	OVSDB       string
	// OVNControllerLog: with the OVN realization, ovn-controller's log
	// file, whose acl_log lines become flow-log records (ovnflowlog.go);
	// "" = no flow logs on this node.
	OVNControllerLog string
}

// RouterMAC is the virtual router's MAC, the same on every node, so a
// workload that migrates keeps a valid neighbour entry for its gateway.
var RouterMAC = net.HardwareAddr{0x0a, 0x4d, 0x52, 0x00, 0x00, 0x01}

// Agent is a running node agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	dp    *datapath.Datapath // nil in the OVN realization
	ovs   *ovsNode           // nil in the eBPF realization
	conn  *grpc.ClientConn
	plumb Plumber

	mu      sync.Mutex
	desired map[string]*agentv1.Object // the node's desired state, by object key
	version uint64                     // version of desired
	applied applied                    // what the last reconcile installed
	attach  map[string]*attachment     // by port name
	changed chan struct{}              // desired state or attachments changed
	waiters []chan struct{}            // woken after every reconcile
	errs    map[string]string          // per-object errors of the last reconcile
	overlay int                        // ifindex of the VXLAN device
	// synced: a desired state has arrived since start. Until then the agent
	// reconciles nothing, or a restart would tear down what the kernel
	// still forwards, before the controller said what should stay.
	synced bool
	stream agentv1.AgentService_SyncClient
	sendMu sync.Mutex // one Send at a time on stream
	bgp    bgpAgent   // gateway nodes' BGP speaker (bgp.go)
	syncm  syncClock  // received vs applied updates, for the sync lag metric (metrics_datapath.go)

	flowlogs *flowLogs    // flow logs (flowlog.go); nil in the OVN realization
	ovnflow  *ovnFlowLogs // flow logs of the OVN realization (ovnflowlog.go); nil without OVNControllerLog

	// dropSubs: drop events for meridianctl capture --drops (capture.go).
	dropSubs dropHub
	// health probes the load-balancer backends hosted here (lb.go); nil
	// until Run, and in the OVN realization.
	health    *health.Checker
	reportNow chan struct{} // a NodeReport may have changed: send it without waiting for the tick
	nslb      lbGateway     // a gateway's north-south XDP load balancer (lb.go)
}

// New prepares an agent: opens (or reuses) the pinned data path and loads
// saved attachments. Nothing is changed on the node yet.
func New(cfg Config) (*Agent, error) {
	if cfg.Node == "" || cfg.Controller == "" || !cfg.UnderlayIP.Is4() {
		return nil, errors.New("agent: node, controller and an IPv4 underlay IP are required")
	}
	if cfg.VXLANName == "" {
		cfg.VXLANName = "mvx0"
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join("/run/meridian", cfg.Node)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state dir: %w", err)
	}
	if err := validateOVNControllerLog(cfg); err != nil { // ovnflowlog.go
		return nil, err
	}
	var dp *datapath.Datapath
	var ovs *ovsNode
	if cfg.Realization == RealizationOVN {
		ovs = &ovsNode{db: cfg.OVSDB}
	} else {
		cfg.Realization = RealizationEBPF
		var err error
		if dp, err = datapath.Open(cfg.BPFFS); err != nil {
			return nil, fmt.Errorf("agent: data path: %w", err)
		}
	}
	if cfg.Plumber == nil {
		cfg.Plumber = netlinkPlumber{}
	}
	a := &Agent{
		cfg: cfg, log: cfg.Log.With("node", cfg.Node), dp: dp, ovs: ovs, plumb: cfg.Plumber,
		desired: map[string]*agentv1.Object{}, attach: map[string]*attachment{},
		changed: make(chan struct{}, 1), errs: map[string]string{}, reportNow: make(chan struct{}, 1),
	}
	if dp != nil {
		a.flowlogs = newFlowLogs(a.log, dp, cfg.Node)
	}
	if ovs != nil && cfg.OVNControllerLog != "" {
		a.ovnflow = newOVNFlowLogs(a.log, cfg.Node, cfg.OVNControllerLog)
	}
	st, err := loadState(a.statePath())
	if err != nil {
		a.closeDatapath()
		return nil, err
	}
	a.attach, a.applied = st.Attachments, st.Applied
	if a.attach == nil {
		a.attach = map[string]*attachment{}
	}
	a.conn, err = dial(cfg.Controller)
	if err != nil {
		a.closeDatapath()
		return nil, err
	}
	return a, nil
}

func dial(addr string) (*grpc.ClientConn, error) {
	target := addr
	if strings.HasPrefix(addr, "unix:") && !strings.HasPrefix(addr, "unix://") {
		target = "unix://" + strings.TrimPrefix(addr, "unix:")
	}
	// A node's snapshot can exceed gRPC's default 4 MiB receive limit on a
	// large VPC; the protocol does not chunk snapshots (yet).
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, fmt.Errorf("agent: controller %s: %w", addr, err)
	}
	return conn, nil
}

// tokenCtx adds the node's bearer token to outgoing calls.
func (a *Agent) tokenCtx(ctx context.Context) context.Context {
	return withToken(ctx, a.cfg.Token)
}

// Run runs the agent until ctx is done: the sync loop, the reconcile loop
// and the local API. The data path is left in place on return.
func (a *Agent) Run(ctx context.Context) error {
	defer a.closeDatapath()
	defer a.conn.Close()
	if a.ovs != nil {
		if err := a.ovs.setup(ctx, a.cfg.Node); err != nil {
			return err
		}
	} else if err := a.setupNode(); err != nil {
		return err
	}
	lis, err := a.listenLocal()
	if err != nil {
		return err
	}
	if a.dp != nil {
		a.health = health.New(ctx, health.Config{Log: a.log, OnChange: a.reportSoon})
		defer a.health.Close()
		defer a.nslb.close()
	}
	g := grpc.NewServer()
	agentv1.RegisterLocalAgentServiceServer(g, &localServer{a: a})
	agentv1.RegisterLiveTraceLocalServiceServer(g, newLiveTraceServer(a)) // livetrace.go
	agentv1.RegisterFlowLogLocalServiceServer(g, &flowLogServer{a: a})
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); g.Serve(lis) }()
	go func() { defer wg.Done(); a.syncLoop(ctx) }()
	go func() { defer wg.Done(); a.reconcileLoop(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); a.reportLoop(ctx) }()
	if a.dp != nil { // OVN reports its drops itself
		wg.Add(1)
		go func() { defer wg.Done(); a.watchDrops(ctx) }()
		wg.Add(1)
		go func() { defer wg.Done(); a.flowlogs.run(ctx) }()
	}
	if a.ovnflow != nil {
		wg.Add(1)
		go func() { defer wg.Done(); a.ovnflow.run(ctx) }()
	}
	if a.cfg.Metrics != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.serveMetrics(ctx, a.cfg.Metrics); err != nil {
				a.log.Error("metrics", "err", err)
			}
		}()
	}
	a.log.Info("agent running", "realization", a.cfg.Realization, "socket", a.cfg.Socket, "bpffs", a.cfg.BPFFS, "underlay", a.cfg.UnderlayIP)
	<-ctx.Done()
	g.Stop()
	wg.Wait()
	return nil
}

func (a *Agent) listenLocal() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("agent: socket dir: %w", err)
	}
	os.Remove(a.cfg.Socket)
	lis, err := net.Listen("unix", a.cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("agent: local API socket: %w", err)
	}
	return lis, nil
}

// kick tells the reconcile loop that something changed.
func (a *Agent) kick() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) reconcileLoop(ctx context.Context) {
	tick := time.NewTicker(30 * time.Second) // repairs drift even without changes
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.changed:
		case <-tick.C:
		}
		a.reconcileOnce()
	}
}

// reconcileOnce applies the desired state and wakes whoever waits for it.
func (a *Agent) reconcileOnce() {
	a.mu.Lock()
	if !a.synced {
		a.mu.Unlock()
		return
	}
	desired := make(map[string]*agentv1.Object, len(a.desired))
	for k, v := range a.desired {
		desired[k] = v
	}
	version := a.version
	seq := a.syncm.seen()
	attach := make(map[string]*attachment, len(a.attach))
	for k, v := range a.attach {
		c := *v
		attach[k] = &c
	}
	prev := a.applied
	a.mu.Unlock()

	var next applied
	var errs map[string]string
	if a.ovs != nil {
		next, errs = a.reconcileOVN(desired, attach)
	} else {
		next, errs = a.reconcile(desired, attach, prev)
	}
	if errs == nil {
		errs = map[string]string{}
	}
	if a.ovs == nil {
		a.reconcileNorthSouth(desired, errs)
		a.reconcileHealth(desired, attach, next.Ports, errs)
	}
	a.reconcileBGP(desired, errs) // after the data path: announce only what it serves

	a.syncm.apply(seq, version)
	a.mu.Lock()
	a.applied = next
	a.errs = errs
	for name, at := range attach {
		if cur, ok := a.attach[name]; ok {
			cur.Ready, cur.Error = at.Ready, at.Error
		}
	}
	ws := a.waiters
	a.waiters = nil
	a.mu.Unlock()
	if err := a.saveState(); err != nil {
		a.log.Error("save state", "err", err)
	}
	a.sendAck(version, errs)
	for _, w := range ws {
		close(w)
	}
}

// reportSoon asks the report loop to send the NodeReport now if it changed.
func (a *Agent) reportSoon() {
	select {
	case a.reportNow <- struct{}{}:
	default:
	}
}

// afterReconcile returns a channel closed after the next reconcile.
func (a *Agent) afterReconcile() <-chan struct{} {
	ch := make(chan struct{})
	a.mu.Lock()
	a.waiters = append(a.waiters, ch)
	a.mu.Unlock()
	a.kick()
	return ch
}

// portByName finds a port of the desired state.
func (a *Agent) portByName(name string) (*agentv1.Port, *agentv1.Subnet) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, o := range a.desired {
		if p := o.GetPort(); p != nil && p.Name == name {
			sn := a.desired[fmt.Sprintf("subnet/%d", p.SubnetId)].GetSubnet()
			return proto.Clone(p).(*agentv1.Port), sn
		}
	}
	return nil, nil
}

// closeDatapath releases the eBPF data path, which stays pinned; there is
// none in the OVN realization.
func (a *Agent) closeDatapath() {
	if a.dp != nil {
		a.dp.Close()
	}
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
