package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket and meta key names. Changing them breaks existing data files.
var (
	bucketData = []byte("data") // key -> encodeData(value, createRev, modRev)
	bucketLog  = []byte("log")  // revKey(rev) -> encodeEvents(events of rev)
	bucketMeta = []byte("meta") // metaRev, metaCompacted -> revKey(rev)

	metaRev       = []byte("rev")       // revision of the last committed transaction
	metaCompacted = []byte("compacted") // log entries <= this revision are gone
)

// Defaults for Options.
const (
	DefaultLogRetention = 100000
	DefaultMaxBatch     = 512
	DefaultWatchBuffer  = 1024
	DefaultMmapSize     = 1 << 30
)

// Options configures Open. The zero value is usable.
type Options struct {
	// LogRetention is how many revisions the change log keeps for watchers
	// to resume from (default DefaultLogRetention). Older entries are
	// compacted away a bounded number per commit.
	LogRetention int64
	// MaxBatch caps how many Update transactions share one commit
	// (default DefaultMaxBatch). It bounds the latency of a single commit.
	MaxBatch int
	// WatchBuffer is the number of revisions buffered per watcher before it
	// falls back to reading the persisted log (default DefaultWatchBuffer).
	WatchBuffer int
	// MmapSize is the initial size of bolt's memory map (default
	// DefaultMmapSize). It only reserves address space. It matters because
	// bolt must remap to grow the file, and a remap waits for every open
	// read transaction: with a small map, one long View would stall all
	// commits. Size it above the expected file size.
	MmapSize int
	// Logger receives operational messages (default slog.Default()).
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.LogRetention <= 0 {
		o.LogRetention = DefaultLogRetention
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	if o.WatchBuffer <= 0 {
		o.WatchBuffer = DefaultWatchBuffer
	}
	if o.MmapSize <= 0 {
		o.MmapSize = DefaultMmapSize
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Stats are counters of a Bolt store since Open.
type Stats struct {
	// Commits is the number of bolt commits (each one fsync).
	Commits uint64
	// Transactions is the number of Update transactions that created a
	// revision. Transactions/Commits is the average group-commit size.
	Transactions uint64
	// MaxBatch is the largest number of Update requests handled by one commit.
	MaxBatch uint64
	// WatchFallbacks counts how often a watcher's live buffer overflowed
	// and it had to re-read the persisted log (a sign of slow consumers).
	WatchFallbacks uint64
	// Revision and CompactedRevision are the current values.
	Revision          int64
	CompactedRevision int64
}

// Bolt is the embedded Store on a single bbolt file.
//
// All writes go through one committer goroutine that group-commits: it takes
// every Update queued while the previous commit was fsyncing, runs them one
// after the other in a single bolt write transaction and commits once. This
// gives serializability for free (fns run strictly one at a time) and
// amortizes the fsync, without the fixed delay of bolt's DB.Batch.
type Bolt struct {
	db   *bolt.DB
	opts Options
	log  *slog.Logger

	reqs    chan *updateReq // unbuffered: "queued" means a sender is blocked
	closing chan struct{}   // closed by Close
	done    chan struct{}   // closed when the committer has exited

	closeOnce sync.Once
	closeErr  error

	// mu orders the publication of committed revisions against watcher
	// registration; that ordering is what makes the watch hand-over from
	// the log to live events gap-free.
	mu       sync.Mutex
	watchers map[*watcher]struct{}
	watchWG  sync.WaitGroup

	rev       atomic.Int64 // last committed (and published) revision
	compacted atomic.Int64

	commits        atomic.Uint64
	txns           atomic.Uint64
	maxBatch       atomic.Uint64
	watchFallbacks atomic.Uint64
}

var _ Store = (*Bolt)(nil)

// Open opens or creates the store file at path. It reads only the meta
// bucket, never the data, so opening a large store is fast.
func Open(path string, opts Options) (*Bolt, error) {
	opts = opts.withDefaults()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		// Fail instead of hanging forever if another process holds the file.
		Timeout:         5 * time.Second,
		NoSync:          false,
		InitialMmapSize: opts.MmapSize,
		// As etcd does: not writing the freelist on every commit keeps
		// commits small on a large store (the list is rebuilt at open), and
		// the map freelist allocates in O(1) instead of scanning an array.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &Bolt{
		db:       db,
		opts:     opts,
		log:      opts.Logger.With("component", "store", "path", path),
		reqs:     make(chan *updateReq),
		closing:  make(chan struct{}),
		done:     make(chan struct{}),
		watchers: make(map[*watcher]struct{}),
	}
	var rev, compacted int64
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketData, bucketLog, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bucketMeta)
		if rev, err = readMetaRev(meta, metaRev); err != nil {
			return err
		}
		compacted, err = readMetaRev(meta, metaCompacted)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: initialize %s: %w", path, err)
	}
	s.rev.Store(rev)
	s.compacted.Store(compacted)
	s.log.Info("store opened", "revision", rev, "compacted", compacted)
	go s.commitLoop()
	return s, nil
}

func readMetaRev(meta *bolt.Bucket, key []byte) (int64, error) {
	v := meta.Get(key)
	if v == nil {
		return 0, nil
	}
	r, err := decodeRevKey(v)
	if err != nil {
		return 0, fmt.Errorf("read meta %s: %w", key, err)
	}
	return r, nil
}

// Revision returns the revision of the last committed transaction.
func (s *Bolt) Revision() int64 { return s.rev.Load() }

// Stats returns the commit counters.
func (s *Bolt) Stats() Stats {
	return Stats{
		Commits:           s.commits.Load(),
		Transactions:      s.txns.Load(),
		MaxBatch:          s.maxBatch.Load(),
		WatchFallbacks:    s.watchFallbacks.Load(),
		Revision:          s.rev.Load(),
		CompactedRevision: s.compacted.Load(),
	}
}

// View runs fn in a bolt read transaction.
func (s *Bolt) View(ctx context.Context, fn func(ReadTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.closing:
		return ErrClosed
	default:
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		rev, err := readMetaRev(tx.Bucket(bucketMeta), metaRev)
		if err != nil {
			return err
		}
		r := &readTx{tx: tx, rev: rev}
		defer func() { r.done = true }()
		return fn(r)
	})
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// updateReq is one queued Update.
type updateReq struct {
	ctx    context.Context
	fn     func(Tx) error
	result chan updateResult // buffered 1: the committer never blocks on it
}

type updateResult struct {
	rev      int64
	err      error
	panicVal any // fn panicked: re-raised in the caller's goroutine
}

// Update queues fn for the committer and waits for its commit.
//
// fn runs on the committer goroutine, one fn at a time, which is what makes
// transactions serializable. It must therefore be short and must not call
// Update or View on the same store (that would deadlock the committer).
//
// ctx is honoured while waiting for the committer to take the request. Once
// taken, the request is answered within one commit; Update then waits for
// that answer even if ctx is cancelled, because returning early would leave
// the caller not knowing whether its write became durable.
func (s *Bolt) Update(ctx context.Context, fn func(Tx) error) (int64, error) {
	req := &updateReq{ctx: ctx, fn: fn, result: make(chan updateResult, 1)}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-s.closing:
		return 0, ErrClosed
	}
	res := <-req.result
	if res.panicVal != nil {
		panic(res.panicVal)
	}
	return res.rev, res.err
}

// Close stops the committer, fails queued Updates with ErrClosed, closes all
// watch channels and closes the file. It is safe to call more than once.
func (s *Bolt) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		<-s.done // the batch in flight, if any, finishes and is answered
		// A Watch that saw the store open has registered (watchWG.Add)
		// under mu; taking mu once orders those Adds before the Wait.
		s.mu.Lock()
		s.mu.Unlock() //nolint:staticcheck // empty critical section is the point
		s.watchWG.Wait()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("store: close: %w", err)
		}
		s.log.Info("store closed", "revision", s.rev.Load())
	})
	return s.closeErr
}

func (s *Bolt) commitLoop() {
	defer close(s.done)
	batch := make([]*updateReq, 0, s.opts.MaxBatch)
	for {
		select {
		case <-s.closing:
			return
		default:
		}
		var first *updateReq
		select {
		case first = <-s.reqs:
		case <-s.closing:
			return
		}
		// Take everything that queued up while the previous commit was
		// fsyncing, but no more than MaxBatch. No waiting for stragglers:
		// under low load a transaction commits alone, immediately.
		batch = append(batch[:0], first)
	drain:
		for len(batch) < s.opts.MaxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		s.commitBatch(batch)
		clear(batch) // drop references for the GC
	}
}

// pending is the outcome of one request within a batch, answered after the
// commit.
type pending struct {
	req *updateReq
	res updateResult
}

// revEvents are the events of one committed revision.
type revEvents struct {
	rev    int64
	events []Event
}

func (s *Bolt) commitBatch(batch []*updateReq) {
	if n := uint64(len(batch)); n > s.maxBatch.Load() {
		s.maxBatch.Store(n) // only the committer writes it
	}
	answers := make([]pending, len(batch))
	for i, r := range batch {
		answers[i].req = r
	}
	fail := func(err error) {
		for _, a := range answers {
			a.req.result <- updateResult{err: err}
		}
	}

	tx, err := s.db.Begin(true)
	if err != nil {
		fail(fmt.Errorf("store: begin write transaction: %w", err))
		return
	}
	startRev := s.rev.Load()
	rev := startRev
	var committed []revEvents
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			answers[i].res = updateResult{err: err}
			continue
		}
		w := newWriteTx(tx, rev)
		fnErr, panicVal := runFn(r.fn, w)
		w.done = true
		switch {
		case panicVal != nil:
			answers[i].res = updateResult{panicVal: panicVal}
			continue
		case fnErr != nil:
			// The overlay is simply dropped: nothing reached the bolt tx.
			answers[i].res = updateResult{err: fnErr}
			continue
		}
		evs, err := applyWrites(tx, w, rev+1)
		if err != nil {
			// The bolt tx may hold part of this fn's writes; the only
			// safe way out is to abandon the whole batch.
			_ = tx.Rollback()
			fail(fmt.Errorf("store: apply transaction at revision %d: %w", rev+1, err))
			return
		}
		if len(evs) == 0 {
			// Nothing written: no revision. It read state that is only
			// durable once this batch commits, so it is answered after.
			answers[i].res = updateResult{rev: rev}
			continue
		}
		rev++
		committed = append(committed, revEvents{rev: rev, events: evs})
		answers[i].res = updateResult{rev: rev}
	}

	if len(committed) == 0 {
		// Read-only or failed fns only: no commit, no fsync.
		_ = tx.Rollback()
		s.answer(answers)
		return
	}
	compacted, err := s.finishTx(tx, startRev, committed, rev)
	if err == nil {
		err = tx.Commit() // the single fsync of the batch
	} else {
		_ = tx.Rollback()
	}
	if err != nil {
		s.log.Error("commit failed", "revision", rev, "transactions", len(committed), "err", err)
		fail(fmt.Errorf("store: commit revisions %d..%d: %w", startRev+1, rev, err))
		return
	}
	s.commits.Add(1)
	s.txns.Add(uint64(len(committed)))
	// Publish before answering, so that once Update returns rev, Revision()
	// and new watchers already see it.
	s.publish(committed, rev, compacted)
	s.answer(answers)
}

func (s *Bolt) answer(answers []pending) {
	for _, a := range answers {
		a.req.result <- a.res
	}
}

// runFn runs an Update fn, turning a panic into a value so that a buggy
// caller cannot kill the committer (and with it every other writer).
func runFn(fn func(Tx) error, tx Tx) (err error, panicVal any) {
	defer func() {
		if p := recover(); p != nil {
			panicVal = p
		}
	}()
	return fn(tx), nil
}

// applyWrites writes the overlay of a successful fn into the bolt tx at
// revision rev and returns its events, in key order (deterministic logs make
// debugging and tests easier). Deletes of missing keys produce no event.
func applyWrites(tx *bolt.Tx, w *writeTx, rev int64) ([]Event, error) {
	keys := make([]string, 0, len(w.writes))
	for k := range w.writes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	data := tx.Bucket(bucketData)
	var evs []Event
	for _, k := range keys {
		e := w.writes[k]
		bk := []byte(k)
		var prev KV
		existed := false
		if raw := data.Get(bk); raw != nil {
			var err error
			if prev, err = decodeData(bk, raw); err != nil {
				return nil, err
			}
			existed = true
		}
		if e.deleted {
			if !existed {
				continue
			}
			if err := data.Delete(bk); err != nil {
				return nil, fmt.Errorf("delete %q: %w", k, err)
			}
			// Keep the old value and create revision so watchers can tell
			// what went away; ModRevision is the delete's revision.
			prev.ModRevision = rev
			evs = append(evs, Event{Type: EventDelete, KV: prev})
			continue
		}
		create := rev
		if existed {
			create = prev.CreateRevision
		}
		if err := data.Put(bk, encodeData(e.value, create, rev)); err != nil {
			return nil, fmt.Errorf("put %q: %w", k, err)
		}
		evs = append(evs, Event{Type: EventPut, KV: KV{Key: k, Value: e.value, CreateRevision: create, ModRevision: rev}})
	}
	return evs, nil
}

// finishTx writes the log entries and meta of a batch and compacts the log a
// bounded amount. It returns the new compacted revision.
func (s *Bolt) finishTx(tx *bolt.Tx, startRev int64, committed []revEvents, rev int64) (int64, error) {
	logB := tx.Bucket(bucketLog)
	// Revisions are appended in order; a full fill keeps the log's pages
	// dense instead of half-empty after splits.
	logB.FillPercent = 1.0
	for _, c := range committed {
		if err := logB.Put(revKey(c.rev), encodeEvents(c.events)); err != nil {
			return 0, fmt.Errorf("write log revision %d: %w", c.rev, err)
		}
	}
	meta := tx.Bucket(bucketMeta)
	if err := meta.Put(metaRev, revKey(rev)); err != nil {
		return 0, fmt.Errorf("write meta revision: %w", err)
	}

	// Compaction: keep the last LogRetention revisions. Deleting at most
	// twice the batch cap per commit keeps each commit's cost bounded while
	// still outpacing the append rate, so the log converges to its bound.
	compacted := s.compacted.Load()
	target := rev - s.opts.LogRetention
	if target <= compacted {
		return compacted, nil
	}
	upTo := min(target, compacted+int64(2*s.opts.MaxBatch))
	for r := compacted + 1; r <= upTo; r++ {
		// Every revision has exactly one log entry, so no scan is needed.
		if err := logB.Delete(revKey(r)); err != nil {
			return 0, fmt.Errorf("compact log revision %d: %w", r, err)
		}
	}
	if err := meta.Put(metaCompacted, revKey(upTo)); err != nil {
		return 0, fmt.Errorf("write meta compacted: %w", err)
	}
	s.log.Debug("log compacted", "compacted", upTo, "revision", rev, "startRev", startRev)
	return upTo, nil
}
