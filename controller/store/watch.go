package store

import (
	"context"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// catchUpChunk bounds how many log revisions one read transaction collects.
// Catch-up must not hold a bolt read tx while blocked on a slow consumer:
// a long-lived reader stops bolt from reusing freed pages and blocks mmap
// growth, which would stall commits.
const catchUpChunk = 256

// watcher is one Watch. The committer pushes live revisions into buf without
// ever blocking; if buf is full it marks the watcher lagging, stops pushing
// and signals it. The watcher goroutine then re-reads what it missed from the
// persisted log. This keeps commits independent of the slowest consumer.
type watcher struct {
	prefix string
	buf    chan WatchResponse
	// lagging is guarded by Bolt.mu. While set, the committer drops events
	// for this watcher; they are recovered from the log.
	lagging bool
	lagged  chan struct{} // cap 1: "you dropped events, catch up"
}

// Watch implements Store.Watch. Revisions with no event under the prefix are
// skipped. The events of a response are shared with other watchers and must
// be treated as read-only.
func (s *Bolt) Watch(ctx context.Context, prefix string, fromRev int64) (<-chan WatchResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &watcher{
		prefix: prefix,
		buf:    make(chan WatchResponse, s.opts.WatchBuffer),
		lagged: make(chan struct{}, 1),
	}
	// Register first, then catch up from the log to the revision current at
	// registration: every later revision is then either in buf or, if it
	// was dropped, covered by a lag signal. No gap at the hand-over.
	s.mu.Lock()
	select {
	case <-s.closing:
		s.mu.Unlock()
		return nil, ErrClosed
	default:
	}
	if c := s.compacted.Load(); fromRev < c {
		s.mu.Unlock()
		return nil, fmt.Errorf("store: watch %q from revision %d (compacted up to %d): %w", prefix, fromRev, c, ErrCompacted)
	}
	regRev := s.rev.Load()
	s.watchers[w] = struct{}{}
	s.watchWG.Add(1)
	s.mu.Unlock()

	out := make(chan WatchResponse)
	go s.runWatcher(ctx, w, out, fromRev, regRev)
	return out, nil
}

func (s *Bolt) runWatcher(ctx context.Context, w *watcher, out chan<- WatchResponse, last, upTo int64) {
	defer s.watchWG.Done()
	defer close(out)
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	}()

	send := func(r WatchResponse) bool {
		select {
		case out <- r:
			return true
		case <-ctx.Done():
		case <-s.closing:
		}
		return false
	}
	// catchUp delivers revisions (last, upTo] from the log.
	catchUp := func(upTo int64) bool {
		for last < upTo {
			resps, next, err := s.readLog(w.prefix, last, upTo)
			if err != nil {
				send(WatchResponse{Revision: last, Err: err})
				return false
			}
			for _, r := range resps {
				if !send(r) {
					return false
				}
			}
			last = next
		}
		return true
	}

	if !catchUp(upTo) {
		return
	}
	for {
		select {
		case r := <-w.buf:
			// Revisions at or before last were already delivered from the
			// log (buf may still hold some from before a lag).
			if r.Revision <= last {
				continue
			}
			if !send(r) {
				return
			}
			last = r.Revision
		case <-w.lagged:
			s.mu.Lock()
			w.lagging = false
			upTo := s.rev.Load()
			s.mu.Unlock()
			if !catchUp(upTo) {
				return
			}
		case <-ctx.Done():
			return
		case <-s.closing:
			return
		}
	}
}

// readLog reads at most catchUpChunk revisions in (after, upTo] and returns
// those with events under prefix, plus the last revision examined.
func (s *Bolt) readLog(prefix string, after, upTo int64) ([]WatchResponse, int64, error) {
	var resps []WatchResponse
	next := after
	err := s.db.View(func(tx *bolt.Tx) error {
		compacted, err := readMetaRev(tx.Bucket(bucketMeta), metaCompacted)
		if err != nil {
			return err
		}
		if after < compacted {
			return fmt.Errorf("store: watch %q resuming after revision %d (compacted up to %d): %w", prefix, after, compacted, ErrCompacted)
		}
		c := tx.Bucket(bucketLog).Cursor()
		n := 0
		for k, v := c.Seek(revKey(after + 1)); k != nil && n < catchUpChunk; k, v = c.Next() {
			rev, err := decodeRevKey(k)
			if err != nil {
				return err
			}
			if rev > upTo {
				break
			}
			evs, err := decodeEvents(v, prefix)
			if err != nil {
				return fmt.Errorf("read log revision %d: %w", rev, err)
			}
			if len(evs) > 0 {
				resps = append(resps, WatchResponse{Revision: rev, Events: evs})
			}
			next = rev
			n++
		}
		if n < catchUpChunk {
			// The range was exhausted, not cut short by the chunk limit:
			// everything up to upTo has been examined.
			next = upTo
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			return nil, 0, ErrClosed
		}
		return nil, 0, err
	}
	return resps, next, nil
}

// publish hands the revisions of a commit to the live watchers. It runs on
// the committer and never blocks: a watcher whose buffer is full is marked
// lagging and recovers from the log.
func (s *Bolt) publish(committed []revEvents, rev, compacted int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.compacted.Store(compacted)
	s.rev.Store(rev)
	for w := range s.watchers {
		if w.lagging {
			continue
		}
		for _, c := range committed {
			evs := filterEvents(c.events, w.prefix)
			if len(evs) == 0 {
				continue
			}
			select {
			case w.buf <- WatchResponse{Revision: c.rev, Events: evs}:
				continue
			default:
			}
			w.lagging = true
			s.watchFallbacks.Add(1)
			s.log.Debug("watcher fell behind, falling back to the log", "prefix", w.prefix, "revision", c.rev)
			select {
			case w.lagged <- struct{}{}:
			default:
			}
			break
		}
	}
}

func filterEvents(evs []Event, prefix string) []Event {
	if prefix == "" {
		return evs
	}
	var out []Event
	for _, ev := range evs {
		if len(ev.KV.Key) >= len(prefix) && ev.KV.Key[:len(prefix)] == prefix {
			out = append(out, ev)
		}
	}
	return out
}
