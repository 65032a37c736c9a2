// Package distributor owns the controller side of the agent protocol
// (api/agent/v1): it drives the logical model from the store, keeps each
// node's versioned desired state, streams snapshots and deltas to agents,
// records their acknowledgements, and answers what is realized where (node
// and port status for the API, sync-lag metrics).
//
// Versions are store revisions. For every node the distributor holds the
// desired objects with the revision at which each last changed, plus
// tombstones of deleted keys, so an agent that reconnects with the version
// it applied gets only the difference. History before the distributor
// started is not kept (the model is rebuilt from the store, not replayed),
// so resuming from an older version, or from one whose tombstones were
// trimmed, gets a snapshot; agents are level-triggered and diff snapshots
// themselves.
//
// The distributor must not validate or change intent: the only resource it
// writes is the Node record of an agent that registers; the only other keys
// are the liveness markers of gateways and load-balancer backend hosts whose
// agent is away (see edge.go) and the backend health records folded from
// agents' reports (see lb.go). It does not compile
// anything itself (package model does) and it does not render OVN.
package distributor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/store"
)

// Defaults for Config.
const (
	DefaultBatchWindow   = 0    // no added delay: batches form while the previous one is applied
	DefaultMaxBatch      = 4096 // store revisions per batch
	DefaultMaxTombstones = 8192 // per node
)

// Config configures a Distributor.
type Config struct {
	Store  store.Store
	Logger *slog.Logger // default slog.Default()
	// BatchWindow is how long the distributor keeps collecting store
	// changes after the first one of a burst before computing deltas, so a
	// burst reaches each agent as one delta (default DefaultBatchWindow).
	BatchWindow time.Duration
	// MaxBatch caps the store revisions in one batch (default DefaultMaxBatch).
	MaxBatch int
	// MaxTombstones bounds the deleted keys remembered per node (default
	// DefaultMaxTombstones). Trimming raises the node's resume floor.
	MaxTombstones int
	// Authorize is called on every agent RPC; an error is returned to the
	// agent as is (use a gRPC status error). Default SystemAdminOnly, so a
	// wiring that forgets it fails closed.
	Authorize func(ctx context.Context) error
	// Now is the clock (default time.Now).
	Now func() time.Time
	// GatewayGrace is how long a gateway's agent may be away before the
	// NAT gateways it owns move to another gateway (default
	// DefaultGatewayGrace; negative: never).
	GatewayGrace time.Duration
	// MaglevSize is the Maglev table size of every LbService (default
	// resource.LbDefaultMaglevSize, 65537). Smaller primes are for tests
	// that build many tables; production keeps the default.
	MaglevSize uint32
}

// Distributor serves AgentService and tracks every node's sync state.
// Create it with New, register it on a gRPC server with Register, and drive
// it with Run.
type Distributor struct {
	cfg Config
	log *slog.Logger
	st  store.Store
	svc *service

	ready    chan struct{} // closed once the initial load is done
	stopping chan struct{} // closed when Run returns: Sync streams end

	mu        sync.Mutex
	model     *model.Model
	rev       int64  // last store revision applied to the model
	floor     uint64 // revision of the initial load: no history before it
	nodes     map[string]*nodeState
	revSignal chan struct{} // closed and replaced whenever rev advances
	counters  counters
}

type counters struct {
	snapshots, deltas, acks, batches, events uint64
}

// entry is one object of a node's desired state and the revision at which it
// last changed for that node.
type entry struct {
	obj *agentv1.Object
	rev uint64
}

// nodeState is everything the distributor knows about one node.
type nodeState struct {
	objs    map[string]entry
	tombs   map[string]uint64 // deleted key -> revision of the delete
	floor   uint64            // resume from v works iff v >= floor
	desired uint64            // revision at which the desired state last changed

	applied      uint64
	errors       []*agentv1.ObjectError
	errorByKey   map[string]string
	lastSeen     time.Time
	agentVersion string
	behindSince  time.Time // when desired first exceeded applied; zero if in sync
	subs         map[*subscriber]struct{}

	report    *agentv1.NodeReport // latest, while connected
	awayTimer *time.Timer         // gateway away: marks it down when it fires
}

// subscriber is one open Sync stream.
type subscriber struct {
	wake chan struct{} // cap 1: "your node's desired state changed"
}

// New returns a Distributor on cfg.Store.
func New(cfg Config) (*Distributor, error) {
	if cfg.Store == nil {
		return nil, errors.New("distributor: Config.Store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BatchWindow <= 0 {
		cfg.BatchWindow = DefaultBatchWindow
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxTombstones <= 0 {
		cfg.MaxTombstones = DefaultMaxTombstones
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.GatewayGrace == 0 {
		cfg.GatewayGrace = DefaultGatewayGrace
	}
	if cfg.MaglevSize != 0 && !prime(cfg.MaglevSize) {
		return nil, fmt.Errorf("distributor: Config.MaglevSize %d is not prime (Maglev needs a prime table size)", cfg.MaglevSize)
	}
	if cfg.Authorize == nil {
		cfg.Authorize = SystemAdminOnly
	}
	d := &Distributor{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "distributor"),
		st:        cfg.Store,
		ready:     make(chan struct{}),
		stopping:  make(chan struct{}),
		model:     newModel(cfg),
		nodes:     map[string]*nodeState{},
		revSignal: make(chan struct{}),
	}
	d.svc = &service{d: d}
	return d, nil
}

func newModel(cfg Config) *model.Model {
	m := model.New(cfg.Logger)
	if cfg.MaglevSize != 0 {
		m.SetMaglevSize(cfg.MaglevSize)
	}
	return m
}

// Register adds the agent service to a gRPC server.
func (d *Distributor) Register(g *grpc.Server) { agentv1.RegisterAgentServiceServer(g, d.svc) }

// Service returns the AgentService implementation, for servers other than
// *grpc.Server.
func (d *Distributor) Service() agentv1.AgentServiceServer { return d.svc }

// Ready is closed once Run has loaded the model and agents can be served.
func (d *Distributor) Ready() <-chan struct{} { return d.ready }

// Run loads the model from the store, then follows the store's changes and
// streams them to agents until ctx is done. When Run returns, open Sync
// streams end with UNAVAILABLE (agents reconnect to the next controller) —
// call it before grpc.Server.GracefulStop so that does not wait forever.
// Run may be called once.
func (d *Distributor) Run(ctx context.Context) error {
	defer close(d.stopping)
	if err := d.reload(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.floor = uint64(d.rev)
	for _, ns := range d.nodes {
		ns.floor = d.floor
		ns.desired = max(ns.desired, d.floor)
	}
	d.mu.Unlock()
	close(d.ready)
	d.watchGateways()
	for {
		err := d.follow(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, store.ErrClosed) {
			return fmt.Errorf("distributor: %w", err)
		}
		if errors.Is(err, store.ErrCompacted) {
			// The change log no longer covers our revision: rebuild from a
			// fresh listing. Diffing against what each node holds keeps the
			// deltas exact, so agents need no snapshot for this.
			d.log.Warn("watch compacted, reloading the model", "revision", d.revision(), "err", err)
			if err := d.reload(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			continue
		}
		d.log.Error("store watch failed, retrying", "revision", d.revision(), "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (d *Distributor) revision() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rev
}

// reload rebuilds the model from a fresh listing and brings every node's
// desired state to it, recording changes at the listing's revision.
func (d *Distributor) reload(ctx context.Context) error {
	m := newModel(d.cfg)
	var rev int64
	err := d.st.View(ctx, func(tx store.ReadTx) error {
		rev = tx.Revision()
		return m.Load(tx)
	})
	if err != nil {
		return fmt.Errorf("distributor: load model: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.model = m
	r := uint64(rev)
	dirty := map[string]struct{}{}
	for _, n := range m.Nodes() {
		dirty[n] = struct{}{}
	}
	for n := range d.nodes {
		dirty[n] = struct{}{}
	}
	for n := range dirty {
		ns := d.node(n)
		want := m.NodeState(n)
		if len(ns.objs) == 0 {
			ns.objs = make(map[string]entry, len(want))
		}
		changed := false
		for k := range ns.objs {
			if _, ok := want[k]; !ok {
				changed = d.set(ns, k, nil, r) || changed
			}
		}
		for k, o := range want {
			changed = d.set(ns, k, o, r) || changed
		}
		if changed {
			d.touched(ns, r)
		}
	}
	d.advance(rev)
	return nil
}

// follow watches the store from d.rev and applies batches until the watch
// ends; it returns why.
func (d *Distributor) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := d.st.Watch(wctx, "res/", d.revision())
	if err != nil {
		return fmt.Errorf("watch res/ from revision %d: %w", d.revision(), err)
	}
	for {
		var batch []store.WatchResponse
		select {
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok := <-ch:
			if !ok {
				return fmt.Errorf("watch ended: %w", store.ErrClosed)
			}
			if resp.Err != nil {
				return resp.Err
			}
			batch = append(batch, resp)
		}
		// Collect the rest of the burst: whatever is already queued and,
		// with a window, what arrives within it. Without a window the
		// batching is natural, as in group commit: what queues up while a
		// batch is being applied forms the next one, and nothing waits.
		var timeout <-chan time.Time
		var timer *time.Timer
		if d.cfg.BatchWindow > 0 {
			timer = time.NewTimer(d.cfg.BatchWindow)
			timeout = timer.C
		}
		endErr := d.collect(ctx, ch, &batch, timeout)
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.applyBatch(batch)
		if endErr != nil {
			return endErr
		}
	}
}

// collect appends to batch what ch has queued, and what it delivers before
// timeout (nil: nothing more), up to MaxBatch. It returns the watch's
// error if it ended.
func (d *Distributor) collect(ctx context.Context, ch <-chan store.WatchResponse, batch *[]store.WatchResponse, timeout <-chan time.Time) error {
	take := func(resp store.WatchResponse, ok bool) error {
		if !ok {
			return fmt.Errorf("watch ended: %w", store.ErrClosed)
		}
		if resp.Err != nil {
			return resp.Err
		}
		*batch = append(*batch, resp)
		return nil
	}
	for len(*batch) < d.cfg.MaxBatch {
		select { // what is queued already, before any waiting
		case resp, ok := <-ch:
			if err := take(resp, ok); err != nil {
				return err
			}
			continue
		default:
		}
		if timeout == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case resp, ok := <-ch:
			if err := take(resp, ok); err != nil {
				return err
			}
		case <-timeout:
			return nil
		}
	}
	return nil
}

// nodeKey is one object key of one node's desired state.
type nodeKey struct{ node, key string }

// applyBatch applies a burst of store revisions to the model and turns the
// result into one new desired version per affected node.
func (d *Distributor) applyBatch(batch []store.WatchResponse) {
	d.mu.Lock()
	defer d.mu.Unlock()
	last := map[nodeKey]uint64{} // revision of the last change of each (node, key)
	for _, resp := range batch {
		for _, ev := range resp.Events {
			d.counters.events++
			for n, keys := range d.model.Apply(ev) {
				for k := range keys {
					last[nodeKey{n, k}] = uint64(resp.Revision)
				}
			}
		}
		d.advanceLocked(resp.Revision)
	}
	d.counters.batches++
	touched := map[*nodeState]uint64{}
	for nk, rev := range last {
		ns := d.node(nk.node)
		if d.set(ns, nk.key, d.model.NodeObject(nk.node, nk.key), rev) {
			touched[ns] = max(touched[ns], rev)
		}
	}
	for ns, rev := range touched {
		d.touched(ns, rev)
	}
	d.watchNewBackendHosts(last)
	d.signalRev()
}

// set makes key hold obj (nil: absent) in ns at rev and reports whether
// anything changed. Called with d.mu held.
func (d *Distributor) set(ns *nodeState, key string, obj *agentv1.Object, rev uint64) bool {
	prev, had := ns.objs[key]
	if obj == nil {
		if !had {
			return false
		}
		delete(ns.objs, key)
		ns.tombs[key] = rev
		d.trimTombstones(ns)
		return true
	}
	// Pointers differ whenever the model recompiled; only content matters.
	if had && (prev.obj == obj || proto.Equal(prev.obj, obj)) {
		ns.objs[key] = entry{obj: obj, rev: prev.rev}
		return false
	}
	ns.objs[key] = entry{obj: obj, rev: rev}
	delete(ns.tombs, key)
	return true
}

// trimTombstones keeps the newest half when the bound is exceeded, raising
// the floor past the dropped ones: an agent older than the floor might not
// have seen a delete we no longer remember, so it gets a snapshot.
func (d *Distributor) trimTombstones(ns *nodeState) {
	if len(ns.tombs) <= d.cfg.MaxTombstones {
		return
	}
	revs := make([]uint64, 0, len(ns.tombs))
	for _, r := range ns.tombs {
		revs = append(revs, r)
	}
	slices.Sort(revs)
	cut := revs[len(revs)/2]
	for k, r := range ns.tombs {
		if r <= cut {
			delete(ns.tombs, k)
		}
	}
	ns.floor = max(ns.floor, cut)
}

// touched records that ns's desired state changed at rev and wakes its
// streams. Called with d.mu held.
func (d *Distributor) touched(ns *nodeState, rev uint64) {
	ns.desired = max(ns.desired, rev)
	if ns.desired > ns.applied && ns.behindSince.IsZero() {
		ns.behindSince = d.cfg.Now()
	}
	for s := range ns.subs {
		select {
		case s.wake <- struct{}{}:
		default: // already pending; the stream sends the latest state anyway
		}
	}
}

func (d *Distributor) advance(rev int64) {
	d.advanceLocked(rev)
	d.signalRev()
}

func (d *Distributor) advanceLocked(rev int64) { d.rev = max(d.rev, rev) }

func (d *Distributor) signalRev() {
	close(d.revSignal)
	d.revSignal = make(chan struct{})
}

// node returns the state of node n, creating it. Called with d.mu held.
func (d *Distributor) node(n string) *nodeState {
	ns := d.nodes[n]
	if ns == nil {
		// A node first seen now has a complete history since the floor:
		// it held nothing before.
		ns = &nodeState{
			objs: map[string]entry{}, tombs: map[string]uint64{}, subs: map[*subscriber]struct{}{},
			floor: d.floor, desired: d.floor,
		}
		d.nodes[n] = ns
	}
	return ns
}

// response computes what moves an agent from version from to the node's
// desired version: nil if it is there already. Called with d.mu held.
func (d *Distributor) response(ns *nodeState, from uint64) *agentv1.SyncResponse {
	if from == 0 || from < ns.floor || from > ns.desired {
		d.counters.snapshots++
		resp := &agentv1.SyncResponse{Version: ns.desired, Snapshot: true, Upserts: make([]*agentv1.Object, 0, len(ns.objs))}
		for _, e := range ns.objs {
			resp.Upserts = append(resp.Upserts, e.obj)
		}
		sortObjects(resp.Upserts)
		return resp
	}
	if from == ns.desired {
		return nil
	}
	d.counters.deltas++
	resp := &agentv1.SyncResponse{Version: ns.desired, FromVersion: from}
	for _, e := range ns.objs {
		if e.rev > from {
			resp.Upserts = append(resp.Upserts, e.obj)
		}
	}
	for k, r := range ns.tombs {
		if r > from {
			resp.Deletes = append(resp.Deletes, k)
		}
	}
	sortObjects(resp.Upserts)
	slices.Sort(resp.Deletes)
	return resp
}

func sortObjects(objs []*agentv1.Object) {
	slices.SortFunc(objs, func(a, b *agentv1.Object) int { return strings.Compare(a.GetKey(), b.GetKey()) })
}

// ack records an agent's acknowledgement.
func (d *Distributor) ack(node string, a *agentv1.Ack) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.counters.acks++
	ns := d.node(node)
	ns.lastSeen = d.cfg.Now()
	// The latest ack wins, even if lower: after a snapshot from a store
	// restored to an older revision, the lower version is the truth.
	ns.applied = a.GetVersion()
	ns.errors = make([]*agentv1.ObjectError, 0, len(a.GetErrors()))
	ns.errorByKey = make(map[string]string, len(a.GetErrors()))
	for _, e := range a.GetErrors() {
		ns.errors = append(ns.errors, proto.Clone(e).(*agentv1.ObjectError))
		ns.errorByKey[e.GetKey()] = e.GetMessage()
	}
	slices.SortFunc(ns.errors, func(a, b *agentv1.ObjectError) int { return cmp.Compare(a.GetKey(), b.GetKey()) })
	if ns.applied >= ns.desired {
		ns.behindSince = time.Time{}
	} else if ns.behindSince.IsZero() {
		ns.behindSince = ns.lastSeen
	}
}

// WaitRevision waits until the distributor has applied store revision rev
// (which must be a revision that wrote under "res/", or an older one: other
// revisions are never seen).
func (d *Distributor) WaitRevision(ctx context.Context, rev int64) error {
	for {
		d.mu.Lock()
		done, sig := d.rev >= rev, d.revSignal
		d.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("distributor: waiting for revision %d: %w", rev, ctx.Err())
		case <-d.stopping:
			return fmt.Errorf("distributor: waiting for revision %d: stopped", rev)
		case <-sig:
		}
	}
}

// NodeState returns the node's current desired state as the distributor
// holds it (shared, immutable objects).
func (d *Distributor) NodeState(node string) map[string]*agentv1.Object {
	d.mu.Lock()
	defer d.mu.Unlock()
	ns := d.nodes[node]
	if ns == nil {
		return map[string]*agentv1.Object{}
	}
	out := make(map[string]*agentv1.Object, len(ns.objs))
	for k, e := range ns.objs {
		out[k] = e.obj
	}
	return out
}

// Revision returns the last store revision the distributor applied.
func (d *Distributor) Revision() int64 { return d.revision() }

// Status is the sync status of one node.
type Status struct {
	Connected    bool
	Desired      uint64 // version the controller computed for it
	Applied      uint64 // version the agent last acknowledged
	LastSeen     time.Time
	Errors       []*agentv1.ObjectError // per-object errors of the last ack
	AgentVersion string
	SyncLag      time.Duration // how long desired has been ahead of applied; 0 in sync
}

// Status returns node's sync status (zero for a node never seen).
func (d *Distributor) Status(node string) Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	ns := d.nodes[node]
	if ns == nil {
		return Status{}
	}
	return d.statusLocked(ns)
}

func (d *Distributor) statusLocked(ns *nodeState) Status {
	s := Status{
		Connected: len(ns.subs) > 0, Desired: ns.desired, Applied: ns.applied,
		LastSeen: ns.lastSeen, AgentVersion: ns.agentVersion,
		Errors: slices.Clone(ns.errors),
	}
	if !ns.behindSince.IsZero() && ns.applied < ns.desired {
		s.SyncLag = d.cfg.Now().Sub(ns.behindSince)
	}
	return s
}

// ObjectStatus is the realization of one resource's object on one node.
type ObjectStatus struct {
	Known   bool   // the node's desired state holds the object
	Version uint64 // version at which it last changed for the node
	Applied bool   // the agent acknowledged Version or later, without error for it
	Error   string // the agent's error for the object, if any
}

// ObjectStatus tells whether the object compiled from resource name (e.g. a
// port, "projects/p/ports/web1") is realized on node (node ID).
func (d *Distributor) ObjectStatus(node, name string) ObjectStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	key := d.model.KeyOf(name)
	ns := d.nodes[node]
	if key == "" || ns == nil {
		return ObjectStatus{}
	}
	e, ok := ns.objs[key]
	if !ok {
		return ObjectStatus{}
	}
	msg, failed := ns.errorByKey[key]
	return ObjectStatus{Known: true, Version: e.rev, Applied: ns.applied >= e.rev && !failed, Error: msg}
}

// NodeStatus implements the API server's StatusProvider.
func (d *Distributor) NodeStatus(node string) *mv1.NodeStatus {
	s := d.Status(node)
	out := &mv1.NodeStatus{
		Connected: s.Connected, DesiredVersion: s.Desired, AppliedVersion: s.Applied,
		AgentVersion: s.AgentVersion, SyncLagSeconds: s.SyncLag.Seconds(),
	}
	if !s.LastSeen.IsZero() {
		out.LastSeen = timestamppb.New(s.LastSeen)
	}
	for _, e := range s.Errors {
		out.Errors = append(out.Errors, &mv1.ObjectError{Key: e.GetKey(), Message: e.GetMessage()})
	}
	return out
}

// PortStatus implements the API server's StatusProvider: a bound port is
// ACTIVE once its node acknowledged the version at which the port's object
// last changed, BUILD until then, ERROR if the agent reported an error.
func (d *Distributor) PortStatus(p *mv1.Port) *mv1.PortStatus {
	if p.GetNode() == "" {
		return &mv1.PortStatus{State: mv1.PortState_PORT_STATE_DOWN, Message: "not bound to a node"}
	}
	node := strings.TrimPrefix(p.GetNode(), "nodes/")
	// A port read at etag (its store revision) newer than what the
	// distributor has applied may differ from the object it holds.
	if etag := p.GetEtag(); etag != "" {
		var rev int64
		if _, err := fmt.Sscan(etag, &rev); err == nil && rev > d.revision() {
			return &mv1.PortStatus{State: mv1.PortState_PORT_STATE_BUILD, Message: "controller is computing the node's desired state"}
		}
	}
	obj := d.ObjectStatus(node, p.GetName())
	st := d.Status(node)
	switch {
	case !obj.Known:
		return &mv1.PortStatus{State: mv1.PortState_PORT_STATE_BUILD, Message: "controller is computing the node's desired state"}
	case obj.Error != "":
		return &mv1.PortStatus{State: mv1.PortState_PORT_STATE_ERROR, Message: obj.Error, AppliedVersion: st.Applied}
	case obj.Applied:
		return &mv1.PortStatus{State: mv1.PortState_PORT_STATE_ACTIVE, AppliedVersion: st.Applied}
	case !st.Connected:
		return &mv1.PortStatus{State: mv1.PortState_PORT_STATE_BUILD, Message: fmt.Sprintf("agent of node %s is not connected", node), AppliedVersion: st.Applied}
	}
	return &mv1.PortStatus{State: mv1.PortState_PORT_STATE_BUILD,
		Message:        fmt.Sprintf("waiting for node %s to apply version %d (applied %d)", node, obj.Version, st.Applied),
		AppliedVersion: st.Applied}
}

// NodeMetrics is one node's sync state as numbers.
type NodeMetrics struct {
	Node           string
	Connected      bool
	Desired        uint64
	Applied        uint64
	SyncLagSeconds float64
}

// Metrics returns every known node's sync metrics, sorted by node.
func (d *Distributor) Metrics() []NodeMetrics {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]NodeMetrics, 0, len(d.nodes))
	for n, ns := range d.nodes {
		s := d.statusLocked(ns)
		out = append(out, NodeMetrics{Node: n, Connected: s.Connected, Desired: s.Desired, Applied: s.Applied, SyncLagSeconds: s.SyncLag.Seconds()})
	}
	slices.SortFunc(out, func(a, b NodeMetrics) int { return strings.Compare(a.Node, b.Node) })
	return out
}
