// Package ipamtest provides an in-memory stand-in for the controller store, so
// ipam and its callers can be tested without bbolt.
//
// Store runs each Update atomically under one mutex (strictly serial, hence
// serializable): writes go to an overlay and are applied only if the function
// returns nil. It keeps no revisions history, no watches and no durability;
// use the real store for those.
package ipamtest

import (
	"context"
	"sort"
	"strings"
	"sync"

	"github.com/meridian-sdn/meridian/controller/store"
)

// Store is a mutex-serialized map store. The zero value is not usable; call
// NewStore.
type Store struct {
	mu   sync.Mutex
	data map[string]store.KV
	rev  int64
}

// NewStore returns an empty Store.
func NewStore() *Store { return &Store{data: map[string]store.KV{}} }

// Update runs fn in a transaction that commits only if fn returns nil. Its
// signature matches store.Store.Update.
func (s *Store) Update(ctx context.Context, fn func(store.Tx) error) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tx := &Tx{base: s.data, rev: s.rev + 1, writes: map[string]*store.KV{}}
	if err := fn(tx); err != nil {
		return 0, err // overlay discarded: nothing fn wrote is visible
	}
	if len(tx.writes) == 0 {
		return s.rev, nil
	}
	s.rev++
	for k, kv := range tx.writes {
		if kv == nil {
			delete(s.data, k)
		} else {
			s.data[k] = *kv
		}
	}
	return s.rev, nil
}

// View runs fn on a read-only transaction.
func (s *Store) View(ctx context.Context, fn func(store.ReadTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn(&Tx{base: s.data, rev: s.rev, writes: map[string]*store.KV{}})
}

// NewTx returns a standalone transaction over an empty map whose writes are
// applied immediately. Handy for single-goroutine unit tests and benchmarks.
func NewTx() *Tx { return &Tx{base: map[string]store.KV{}, rev: 1} }

// Tx implements store.Tx over a base map plus an overlay of pending writes (a
// nil entry is a pending delete). A Tx from NewTx has no overlay and writes
// the base map directly.
type Tx struct {
	base   map[string]store.KV
	writes map[string]*store.KV // nil map: write through to base
	rev    int64
}

var _ store.Tx = (*Tx)(nil)

// Revision implements store.ReadTx.
func (t *Tx) Revision() int64 { return t.rev }

// Get implements store.ReadTx.
func (t *Tx) Get(key string) (store.KV, bool, error) {
	if t.writes != nil {
		if kv, ok := t.writes[key]; ok {
			if kv == nil {
				return store.KV{}, false, nil
			}
			return cloneKV(*kv), true, nil
		}
	}
	kv, ok := t.base[key]
	if !ok {
		return store.KV{}, false, nil
	}
	return cloneKV(kv), true, nil
}

// List implements store.ReadTx. It sorts all matching keys: fine for tests.
func (t *Tx) List(prefix, startAfter string, limit int) ([]store.KV, error) {
	keys := t.keys(prefix)
	var out []store.KV
	for _, k := range keys {
		if startAfter != "" && k <= startAfter {
			continue
		}
		if limit > 0 && len(out) == limit {
			break
		}
		kv, _, _ := t.Get(k)
		out = append(out, kv)
	}
	return out, nil
}

// Count implements store.ReadTx.
func (t *Tx) Count(prefix string) (int, error) { return len(t.keys(prefix)), nil }

func (t *Tx) keys(prefix string) []string {
	seen := map[string]bool{}
	for k := range t.base {
		if strings.HasPrefix(k, prefix) {
			seen[k] = true
		}
	}
	for k, kv := range t.writes {
		if strings.HasPrefix(k, prefix) {
			seen[k] = kv != nil
		}
	}
	keys := make([]string, 0, len(seen))
	for k, live := range seen {
		if live {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// Put implements store.Tx.
func (t *Tx) Put(key string, value []byte) error {
	kv := store.KV{Key: key, Value: append([]byte(nil), value...), CreateRevision: t.rev, ModRevision: t.rev}
	if old, ok, _ := t.Get(key); ok {
		kv.CreateRevision = old.CreateRevision
	}
	if t.writes == nil {
		t.base[key] = kv
	} else {
		t.writes[key] = &kv
	}
	return nil
}

// Delete implements store.Tx.
func (t *Tx) Delete(key string) error {
	if t.writes == nil {
		delete(t.base, key)
	} else {
		t.writes[key] = nil
	}
	return nil
}

func cloneKV(kv store.KV) store.KV {
	kv.Value = append([]byte(nil), kv.Value...)
	return kv
}
