package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"

	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/ipam/ipamtest"
	"github.com/meridian-sdn/meridian/controller/store"
)

// updater is the part of store.Store the concurrency test needs; both the real
// bbolt store and the map double provide it.
type updater interface {
	Update(ctx context.Context, fn func(store.Tx) error) (int64, error)
	View(ctx context.Context, fn func(store.ReadTx) error) error
}

func TestConcurrentAllocationsNeverDuplicate(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) updater
	}{
		{"map store", func(t *testing.T) updater { return ipamtest.NewStore() }},
		{"bbolt store", func(t *testing.T) updater {
			st, err := store.Open(filepath.Join(t.TempDir(), "meridian.db"), store.Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = st.Close() })
			return st
		}},
	}
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			st := sc.open(t)
			s := subnet("sub-27", "10.20.30.32/27", "10.20.30.33")
			const usable = 32 - 3 // network, gateway, broadcast
			const workers = 100

			var (
				mu        sync.Mutex
				got       = map[netip.Addr]string{}
				exhausted int
				wg        sync.WaitGroup
			)
			for i := 0; i < workers; i++ {
				wg.Add(1)
				go func(owner string) {
					defer wg.Done()
					var a netip.Addr
					// fn may run more than once: only the last run's result counts.
					_, err := st.Update(context.Background(), func(tx store.Tx) (err error) {
						a, err = ipam.AllocateIP(tx, s, owner)
						return err
					})
					mu.Lock()
					defer mu.Unlock()
					switch {
					case errors.Is(err, ipam.ErrExhausted):
						exhausted++
					case err != nil:
						t.Errorf("%s: %v", owner, err)
					default:
						if prev, dup := got[a]; dup {
							t.Errorf("%s handed to both %s and %s", a, prev, owner)
						}
						got[a] = owner
					}
				}(fmt.Sprintf("port-%d", i))
			}
			wg.Wait()
			if len(got) != usable || exhausted != workers-usable {
				t.Fatalf("%d allocations succeeded and %d exhausted, want %d and %d", len(got), exhausted, usable, workers-usable)
			}
			for a := range got {
				if isReserved(s, a) || !s.CIDR.Contains(a) {
					t.Errorf("allocated bad address %s", a)
				}
			}
			// The committed state agrees with what the callers were told.
			if err := st.View(context.Background(), func(tx store.ReadTx) error {
				for a, owner := range got {
					o, ok, err := ipam.Owner(tx, s, a)
					if err != nil || !ok || o != owner {
						t.Errorf("stored owner of %s = %q, %v, %v; want %q", a, o, ok, err, owner)
					}
				}
				used, total, err := ipam.Usage(tx, s)
				if err != nil || used != usable || total != usable {
					t.Errorf("Usage = %d of %d, %v; want %d of %d", used, total, err, usable, usable)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
