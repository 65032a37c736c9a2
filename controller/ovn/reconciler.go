package ovn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
	"github.com/meridian-sdn/meridian/controller/store"
)

// Defaults for Config.
const (
	DefaultDebounce       = 10 * time.Millisecond
	DefaultResyncInterval = 5 * time.Minute
	DefaultMaxOps         = 10000
	DefaultTimeout        = 30 * time.Second
)

// Config configures a Reconciler.
type Config struct {
	// NB is the northbound database endpoint ("unix:/run/ovn/ovnnb_db.sock",
	// "tcp:10.0.0.5:6641"); several, comma-separated, for a cluster.
	NB string
	// Store is the controller's store: Run follows it through package
	// model, like the distributor (shorthand for Source:
	// NewStoreSource(Store, Logger)).
	Store store.Store
	// Source is where the logical model comes from, when not Store. Run
	// needs one of the two; Sync needs neither.
	Source Source
	Logger *slog.Logger // default slog.Default()
	// Debounce is how long a pass waits after the first change of a burst,
	// so a burst becomes one pass (default DefaultDebounce).
	Debounce time.Duration
	// ResyncInterval is how often a pass runs with no change at all, a
	// safety net for drift the cache events missed (default
	// DefaultResyncInterval).
	ResyncInterval time.Duration
	// MaxOps caps the operations of one transaction (default DefaultMaxOps);
	// a parent and the children it links always share one. Large is good:
	// ovn-northd recomputes after every NB transaction it sees.
	MaxOps int
	// Timeout bounds connecting and each pass (default DefaultTimeout).
	Timeout time.Duration
	// External is the network gateway router ports attach to; without it
	// elastic IPs and NAT gateways are not rendered (see ExternalNetwork).
	External *ExternalNetwork
}

// Source supplies the logical model to Run.
type Source interface {
	// Run feeds the source until ctx is done, calling changed (which must
	// not block) whenever the objects may have changed.
	Run(ctx context.Context, changed func()) error
	// Objects returns every current object by key and the store revision
	// they reflect. The objects are shared and must not be modified.
	Objects() (map[string]*agentv1.Object, int64)
}

// Status is the reconciler's sync state.
type Status struct {
	Synced    bool      // the last pass succeeded
	Revision  int64     // store revision of the intent the last successful pass wrote
	LastSync  time.Time // end of the last successful pass
	LastError string    // error of the last pass, "" when it succeeded
	Passes    uint64
	Last      SyncResult // what the last successful pass wrote
	// LastScope is how many rows the last pass reconciled: -1 for a full
	// pass over every row, else the rows of an incremental pass.
	LastScope int
	Total     SyncResult // everything written since start
}

// Reconciler keeps OVN's northbound database equal to the rendering of the
// logical model. Create it with NewReconciler; drive it with Run, or call
// Connect and then Sync yourself.
type Reconciler struct {
	cfg Config
	log *slog.Logger

	wake  chan struct{} // cap 1: something may need a pass
	lostC chan struct{} // cap 1: the NB connection dropped

	passMu     sync.Mutex // one pass at a time; guards the fields below
	renderer   *Renderer
	verified   map[verifiedKey]verifiedPair // from the last pass on this client
	verifiedOn client.Client
	// synced is the rendering the last successful pass on verifiedOn made
	// true; the next pass need only look at rows that differ from it (and
	// at rows NB events named). nil: the next pass is a full one.
	synced *Desired

	driftMu sync.Mutex
	drift   map[string]map[string]bool // Meridian rows NB events named since the last pass

	mu     sync.Mutex // guards c and status; never held across I/O
	c      client.Client
	status Status
}

// NewReconciler returns a reconciler for cfg. It does not connect yet.
func NewReconciler(cfg Config) (*Reconciler, error) {
	if cfg.NB == "" {
		return nil, errors.New("ovn: Config.NB (the northbound endpoint) is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Source == nil && cfg.Store != nil {
		cfg.Source = NewStoreSource(cfg.Store, cfg.Logger)
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.MaxOps <= 0 {
		cfg.MaxOps = DefaultMaxOps
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	rr := NewRenderer()
	if cfg.External != nil {
		var err error
		if rr, err = NewRendererFor(*cfg.External); err != nil {
			return nil, fmt.Errorf("ovn: external network: %w", err)
		}
	}
	return &Reconciler{cfg: cfg, log: cfg.Logger.With("component", "ovn"), wake: make(chan struct{}, 1), lostC: make(chan struct{}, 1), renderer: rr}, nil
}

// Connect connects to the NB database and fills the cache with the tables
// Meridian manages. Run reconnects by itself when the connection drops.
func (r *Reconciler) Connect(ctx context.Context) error {
	dbModel, err := nbdb.FullDatabaseModel()
	if err != nil {
		return fmt.Errorf("ovn: NB model: %w", err)
	}
	// The cache indexes Meridian's rows by meridian:id, so an incremental
	// pass finds the rows it needs without scanning tables.
	indexes := map[string][]model.ClientIndex{}
	for _, s := range specs {
		indexes[s.name] = []model.ClientIndex{{Columns: []model.ColumnKey{{Column: "external_ids", Key: KeyID}}}}
	}
	dbModel.SetIndexes(indexes)
	lg := logr.FromSlogHandler(r.log.With("lib", "libovsdb").Handler())
	// No libovsdb reconnect: after a reconnect it refills its cache
	// without raising events, so a database that came back empty would go
	// unnoticed. A fresh client per connection, followed by a pass, is
	// explicit about it.
	opts := []client.Option{client.WithLogger(&lg)}
	for _, ep := range strings.Split(r.cfg.NB, ",") {
		opts = append(opts, client.WithEndpoint(strings.TrimSpace(ep)))
	}
	c, err := client.NewOVSDBClient(dbModel, opts...)
	if err != nil {
		return fmt.Errorf("ovn: NB client for %s: %w", r.cfg.NB, err)
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if err := c.Connect(cctx); err != nil {
		return fmt.Errorf("ovn: connect to NB %s: %w", r.cfg.NB, err)
	}
	// Listen before anything can fail: libovsdb drops the notification
	// when nobody is waiting for it.
	go func() {
		<-c.DisconnectNotify()
		r.lost(c)
	}()
	c.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    func(table string, m model.Model) { r.onRow(table, m) },
		UpdateFunc: func(table string, old, m model.Model) { r.onRow(table, old); r.onRow(table, m) },
		DeleteFunc: func(table string, m model.Model) { r.onRow(table, m) },
	})
	// Only the columns Meridian manages: decoding and caching the others
	// (status columns, features Meridian does not use) is most of the
	// client's work when tens of thousands of rows arrive.
	var tables []client.MonitorOption
	for _, s := range specs {
		m := reflectZero(s)
		var fields []any
		for _, c := range s.columns {
			fields = append(fields, s.fieldPtr(m, c))
		}
		for _, r := range s.refs {
			fields = append(fields, s.fieldPtr(m, r.column))
		}
		tables = append(tables, client.WithTable(m, fields...))
	}
	if _, err := c.Monitor(cctx, c.NewMonitor(tables...)); err != nil {
		c.Close()
		return fmt.Errorf("ovn: monitor NB %s: %w", r.cfg.NB, err)
	}
	r.mu.Lock()
	r.c = c
	r.mu.Unlock()
	r.log.Info("connected to the northbound database", "endpoint", c.CurrentEndpoint())
	return nil
}

// lost forgets a client whose connection dropped and tells Run.
func (r *Reconciler) lost(c client.Client) {
	r.mu.Lock()
	current := r.c == c
	if current {
		r.c = nil
	}
	r.mu.Unlock()
	if !current {
		return // closed by us
	}
	c.Close()
	r.log.Warn("lost the northbound database connection")
	select {
	case r.lostC <- struct{}{}:
	default:
	}
}

// onRow wakes the loop when a Meridian row changed in the NB: a pass puts
// it back if it was not Meridian's own write (and writes nothing if it was).
func (r *Reconciler) onRow(table string, m model.Model) {
	s := specByName[table]
	if s == nil {
		return
	}
	if _, ext := s.meta(m); ext[KeyID] != "" {
		r.driftMu.Lock()
		if r.drift == nil {
			r.drift = map[string]map[string]bool{}
		}
		if r.drift[table] == nil {
			r.drift[table] = map[string]bool{}
		}
		r.drift[table][ext[KeyID]] = true
		r.driftMu.Unlock()
		r.Trigger()
	}
}

// Trigger asks Run for a pass soon.
func (r *Reconciler) Trigger() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Close disconnects from the NB database.
func (r *Reconciler) Close() {
	r.mu.Lock()
	c := r.c
	r.c = nil
	r.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Client returns the libovsdb client (nil before Connect), for tests and
// tools that read the cache.
func (r *Reconciler) Client() client.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c
}

// Sync renders objs and makes the NB database match. After a successful
// pass on the current connection it is incremental: it reconciles only
// the rows whose rendering changed since and the rows NB events named
// (edits by others, which it reverts), reading them through the cache's
// meridian:id index. It is safe to call concurrently with Run (passes are
// serialised).
func (r *Reconciler) Sync(ctx context.Context, objs map[string]*agentv1.Object) (SyncResult, error) {
	return r.sync(ctx, objs, nil, false)
}

// Resync renders objs and compares every Meridian row in NB with it: a
// full pass, which also finds what no event reported.
func (r *Reconciler) Resync(ctx context.Context, objs map[string]*agentv1.Object) (SyncResult, error) {
	return r.sync(ctx, objs, nil, true)
}

// SyncDesired makes the NB database match already rendered rows, in a full
// pass.
func (r *Reconciler) SyncDesired(ctx context.Context, d *Desired) (SyncResult, error) {
	return r.sync(ctx, nil, d, true)
}

func (r *Reconciler) sync(ctx context.Context, objs map[string]*agentv1.Object, d *Desired, full bool) (SyncResult, error) {
	r.passMu.Lock()
	defer r.passMu.Unlock()
	c := r.Client()
	if c == nil {
		return SyncResult{}, errors.New("ovn: sync before Connect")
	}
	start := time.Now()
	if d == nil {
		d = r.renderer.Render(objs)
	}
	rendered := time.Since(start)
	ctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	if r.verifiedOn != c {
		// A new client has a new cache, and NB may have changed
		// meanwhile: start over with a full pass.
		r.verified, r.verifiedOn, r.synced = nil, c, nil
	}
	drift := r.takeDrift()
	var scope map[string]map[string]bool
	if !full && r.synced != nil {
		scope = changedRows(r.synced, d)
		for table, ids := range drift {
			for id := range ids {
				if scope[table] == nil {
					scope[table] = map[string]bool{}
				}
				scope[table][id] = true
			}
		}
		// Looking rows up one by one costs more than one scan when
		// most of them are in scope, as after a large write.
		if n := scopeSize(scope); n > d.Len()/4 {
			r.log.Debug("incremental NB pass too large, running a full one", "scope", n)
			scope = nil
		}
	}
	r.log.Debug("NB pass prepared", "render", rendered, "diff", time.Since(start)-rendered, "scope", scopeSize(scope), "full", scope == nil)
	p := r.newPass(c, d, scope)
	err := p.run(ctx)
	if errors.Is(err, errNeedFull) {
		r.log.Info("incremental NB pass needs a full one", "scope", scopeSize(scope))
		done := p.result
		if err := p.settle(ctx, r.cfg.Timeout); err != nil {
			return done, fmt.Errorf("ovn: sync NB: %w", err)
		}
		p = r.newPass(c, d, nil)
		p.result = done
		err = p.run(ctx)
	}
	r.verified = p.nextVerified
	if err == nil {
		err = p.settle(ctx, r.cfg.Timeout)
	}
	r.synced = d
	if err != nil {
		r.synced = nil // whatever failed is found again by a full pass
	}
	r.mu.Lock()
	r.status.Passes++
	r.status.Total.add(p.result)
	r.status.LastScope = -1
	if p.scope != nil {
		r.status.LastScope = scopeSize(p.scope)
	}
	r.mu.Unlock()
	if err != nil {
		return p.result, fmt.Errorf("ovn: sync NB: %w", err)
	}
	return p.result, nil
}

// newPass prepares a pass over d: over every row when scope is nil.
func (r *Reconciler) newPass(c client.Client, d *Desired, scope map[string]map[string]bool) *pass {
	p := &pass{log: r.log, c: c, d: d, max: r.cfg.MaxOps, scope: scope, verified: r.verified}
	if scope == nil || r.verified == nil {
		// A full pass keeps only what it verified, so the map never
		// holds rows that are gone.
		p.nextVerified = make(map[verifiedKey]verifiedPair, len(r.verified))
	} else {
		p.nextVerified = r.verified // a scoped pass updates its rows in place
	}
	return p
}

// takeDrift returns and forgets the rows NB events named.
func (r *Reconciler) takeDrift() map[string]map[string]bool {
	r.driftMu.Lock()
	defer r.driftMu.Unlock()
	d := r.drift
	r.drift = nil
	return d
}

// Status returns the current sync state.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

func (r *Reconciler) recordPass(rev int64, res SyncResult, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.status.Synced = false
		r.status.LastError = err.Error()
		return
	}
	r.status.Synced = true
	r.status.LastError = ""
	r.status.Revision = rev
	r.status.LastSync = time.Now()
	r.status.Last = res
}

// connectLoop connects, retrying every second; false when ctx ended first.
func (r *Reconciler) connectLoop(ctx context.Context) bool {
	for {
		err := r.Connect(ctx)
		if err == nil {
			return true
		}
		r.recordPass(0, SyncResult{}, err)
		r.log.Warn("cannot connect to the northbound database, retrying", "err", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Second):
		}
	}
}

// Run connects (retrying until it can), follows the source and keeps NB in
// sync until ctx is done. A failed pass is retried with backoff; passes
// also run when a Meridian row changes in NB and every ResyncInterval.
//
// When the connection drops, Run connects again with a fresh client (and
// cache) and runs a pass, which repairs whatever happened meanwhile, up to
// a database that came back empty. Passes meanwhile fail and are retried.
func (r *Reconciler) Run(ctx context.Context) error {
	if r.cfg.Source == nil {
		return errors.New("ovn: Run needs Config.Store or Config.Source")
	}
	if !r.connectLoop(ctx) {
		return nil
	}
	defer r.Close()
	srcErr := make(chan error, 1)
	go func() { srcErr <- r.cfg.Source.Run(ctx, r.Trigger) }()

	resync := time.NewTicker(r.cfg.ResyncInterval)
	defer resync.Stop()
	retry := time.Duration(0)
	var retryC <-chan time.Time
	for {
		full := false
		select {
		case <-ctx.Done():
			return nil
		case err := <-srcErr:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ovn: model source: %w", err)
		case <-r.wake:
		case <-resync.C:
			full = true
		case <-retryC:
		case <-r.lostC:
			if !r.connectLoop(ctx) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.cfg.Debounce):
		}
		objs, rev := r.cfg.Source.Objects()
		start := time.Now()
		res, err := r.sync(ctx, objs, nil, full)
		r.recordPass(rev, res, err)
		if err != nil {
			retry = min(max(2*retry, 100*time.Millisecond), 30*time.Second)
			retryC = time.After(retry)
			r.log.Error("NB sync failed, retrying", "revision", rev, "retry_in", retry, "err", err)
			continue
		}
		retry, retryC = 0, nil
		if res.Transactions > 0 {
			r.log.Info("NB synced", "revision", rev, "transactions", res.Transactions, "created", res.Created,
				"updated", res.Updated, "deleted", res.Deleted, "linked", res.Linked, "unlinked", res.Unlinked,
				"took", time.Since(start))
		}
	}
}
