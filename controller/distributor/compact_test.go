package distributor

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/meridian-sdn/meridian/controller/distributor/agenttest"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// lossyStore wraps a store so the first watch can be made to lose events
// (pause) and then fail with ErrCompacted (fail), as a watcher that fell
// behind the retained change log would.
type lossyStore struct {
	store.Store
	mu          sync.Mutex
	calls       int
	pause, fail chan struct{}
}

func (s *lossyStore) Watch(ctx context.Context, prefix string, from int64) (<-chan store.WatchResponse, error) {
	s.mu.Lock()
	s.calls++
	first := s.calls == 1
	s.mu.Unlock()
	in, err := s.Store.Watch(ctx, prefix, from)
	if err != nil || !first {
		return in, err
	}
	out := make(chan store.WatchResponse)
	go func() {
		defer close(out)
		paused, pause := false, s.pause
		for {
			select {
			case <-s.fail:
				select {
				case out <- store.WatchResponse{Err: fmt.Errorf("test: %w", store.ErrCompacted)}:
				case <-ctx.Done():
				}
				return
			case <-pause:
				paused = true
				pause = nil // a nil channel never fires again
			case r, ok := <-in:
				if !ok {
					return
				}
				if paused {
					continue // lost
				}
				select {
				case out <- r:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// TestCompactedWatchReloads: when the watch fails with ErrCompacted after
// losing events, the distributor rebuilds from the store and the agent
// still converges by delta.
func TestCompactedWatchReloads(t *testing.T) {
	ctx := testCtx(t)
	bolt, _ := openStore(t)
	rev := fixture(t, bolt)
	st := &lossyStore{Store: bolt, pause: make(chan struct{}), fail: make(chan struct{})}
	e := startEnv(t, st, nil)
	a := agenttest.New(e.conn, "n1")
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	converge(t, e, a, "n1", rev)

	close(st.pause)
	write(t, st, sg(sgD, 2, vpcA, 5432))
	write(t, st, port(proj+"/ports/a4", 5, subA, "nodes/n1", "10.0.1.13", sgD))
	rev = write(t, st, del(resource.KindPort, proj+"/ports/a2"))
	close(st.fail)
	converge(t, e, a, "n1", rev)
	if s := a.Stats(); s.Snapshots != 1 || s.LastSnapshot {
		t.Errorf("after reload: %+v, want deltas only", s)
	}
}
