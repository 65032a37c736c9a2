package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openTest(t testing.TB, opts Options) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "store.db")
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

func put(t testing.TB, s Store, kvs ...string) int64 {
	t.Helper()
	rev, err := s.Update(context.Background(), func(tx Tx) error {
		for i := 0; i+1 < len(kvs); i += 2 {
			if err := tx.Put(kvs[i], []byte(kvs[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Update put %v: %v", kvs, err)
	}
	return rev
}

func del(t testing.TB, s Store, keys ...string) int64 {
	t.Helper()
	rev, err := s.Update(context.Background(), func(tx Tx) error {
		for _, k := range keys {
			if err := tx.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Update delete %v: %v", keys, err)
	}
	return rev
}

func get(t testing.TB, s Store, key string) (KV, bool) {
	t.Helper()
	var kv KV
	var ok bool
	err := s.View(context.Background(), func(tx ReadTx) error {
		var err error
		kv, ok, err = tx.Get(key)
		return err
	})
	if err != nil {
		t.Fatalf("View get %q: %v", key, err)
	}
	return kv, ok
}

func keysOf(kvs []KV) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = kv.Key
	}
	return out
}

func TestCRUDAndRevisions(t *testing.T) {
	s, _ := openTest(t, Options{})
	if got := s.Revision(); got != 0 {
		t.Fatalf("empty store revision = %d, want 0", got)
	}
	steps := []struct {
		name       string
		do         func() int64
		wantRev    int64
		key        string
		wantOK     bool
		wantValue  string
		wantCreate int64
		wantMod    int64
	}{
		{"create", func() int64 { return put(t, s, "a", "1") }, 1, "a", true, "1", 1, 1},
		{"update keeps create revision", func() int64 { return put(t, s, "a", "2") }, 2, "a", true, "2", 1, 2},
		{"other key", func() int64 { return put(t, s, "b", "x") }, 3, "b", true, "x", 3, 3},
		{"delete", func() int64 { return del(t, s, "a") }, 4, "a", false, "", 0, 0},
		{"delete missing key is a no-op", func() int64 { return del(t, s, "a") }, 4, "a", false, "", 0, 0},
		{"recreate gets new create revision", func() int64 { return put(t, s, "a", "3") }, 5, "a", true, "3", 5, 5},
		{"two keys in one transaction share a revision", func() int64 { return put(t, s, "c", "1", "d", "1") }, 6, "d", true, "1", 6, 6},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if rev := st.do(); rev != st.wantRev {
				t.Fatalf("rev = %d, want %d", rev, st.wantRev)
			}
			if s.Revision() != st.wantRev {
				t.Fatalf("Revision() = %d, want %d", s.Revision(), st.wantRev)
			}
			kv, ok := get(t, s, st.key)
			if ok != st.wantOK {
				t.Fatalf("Get(%q) ok = %v, want %v", st.key, ok, st.wantOK)
			}
			if !ok {
				return
			}
			if string(kv.Value) != st.wantValue || kv.CreateRevision != st.wantCreate || kv.ModRevision != st.wantMod {
				t.Fatalf("Get(%q) = %q create=%d mod=%d, want %q create=%d mod=%d",
					st.key, kv.Value, kv.CreateRevision, kv.ModRevision, st.wantValue, st.wantCreate, st.wantMod)
			}
		})
	}
	t.Run("view revision", func(t *testing.T) {
		err := s.View(context.Background(), func(tx ReadTx) error {
			if tx.Revision() != 6 {
				return fmt.Errorf("view revision %d, want 6", tx.Revision())
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

func TestUpdateErrorWritesNothing(t *testing.T) {
	s, _ := openTest(t, Options{})
	put(t, s, "keep", "v")
	boom := errors.New("boom")
	rev, err := s.Update(context.Background(), func(tx Tx) error {
		if err := tx.Put("new", []byte("x")); err != nil {
			return err
		}
		if err := tx.Delete("keep"); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) || err != boom {
		t.Fatalf("Update err = %v, want exactly boom", err)
	}
	if rev != 0 {
		t.Fatalf("rev = %d on error, want 0", rev)
	}
	if _, ok := get(t, s, "new"); ok {
		t.Fatal("write of failed transaction is visible")
	}
	if _, ok := get(t, s, "keep"); !ok {
		t.Fatal("delete of failed transaction is visible")
	}
	if s.Revision() != 1 {
		t.Fatalf("revision = %d, want 1", s.Revision())
	}
}

func TestNoWriteTransactionCreatesNoRevision(t *testing.T) {
	s, _ := openTest(t, Options{})
	put(t, s, "a", "1")
	tests := []struct {
		name string
		fn   func(Tx) error
	}{
		{"read only", func(tx Tx) error { _, _, err := tx.Get("a"); return err }},
		{"delete missing", func(tx Tx) error { return tx.Delete("missing") }},
		{"put then delete new key", func(tx Tx) error {
			if err := tx.Put("tmp", []byte("x")); err != nil {
				return err
			}
			return tx.Delete("tmp")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Stats().Commits
			rev, err := s.Update(context.Background(), tt.fn)
			if err != nil {
				t.Fatal(err)
			}
			if rev != 1 || s.Revision() != 1 {
				t.Fatalf("rev = %d, Revision() = %d, want 1", rev, s.Revision())
			}
			if s.Stats().Commits != before {
				t.Fatal("a no-write transaction committed")
			}
		})
	}
}

func TestTxReadsOwnWrites(t *testing.T) {
	s, _ := openTest(t, Options{})
	put(t, s, "p/a", "1", "p/b", "1", "p/c", "1")
	_, err := s.Update(context.Background(), func(tx Tx) error {
		if err := tx.Put("p/bb", []byte("new")); err != nil {
			return err
		}
		if err := tx.Put("p/a", []byte("2")); err != nil {
			return err
		}
		if err := tx.Delete("p/c"); err != nil {
			return err
		}
		kv, ok, err := tx.Get("p/a")
		if err != nil || !ok || string(kv.Value) != "2" || kv.CreateRevision != 1 || kv.ModRevision != 2 {
			return fmt.Errorf("Get(p/a) = %+v %v %v", kv, ok, err)
		}
		if _, ok, _ := tx.Get("p/c"); ok {
			return errors.New("deleted key visible")
		}
		list, err := tx.List("p/", "", 0)
		if err != nil {
			return err
		}
		if got := fmt.Sprint(keysOf(list)); got != "[p/a p/b p/bb]" {
			return fmt.Errorf("List = %s", got)
		}
		list, err = tx.List("p/", "p/a", 2)
		if err != nil {
			return err
		}
		if got := fmt.Sprint(keysOf(list)); got != "[p/b p/bb]" {
			return fmt.Errorf("List after p/a = %s", got)
		}
		n, err := tx.Count("p/")
		if err != nil || n != 3 {
			return fmt.Errorf("Count = %d %v, want 3", n, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestListAndCount(t *testing.T) {
	s, _ := openTest(t, Options{})
	// Prefix boundaries: "a/" must not include "a" or "a0" or "b/".
	put(t, s, "a", "x", "a/1", "x", "a/2", "x", "a/3", "x", "a/30", "x", "a0", "x", "b/1", "x")
	tests := []struct {
		name       string
		prefix     string
		startAfter string
		limit      int
		want       string
	}{
		{"whole prefix", "a/", "", 0, "[a/1 a/2 a/3 a/30]"},
		{"limit", "a/", "", 2, "[a/1 a/2]"},
		{"second page", "a/", "a/2", 2, "[a/3 a/30]"},
		{"last page is empty", "a/", "a/30", 2, "[]"},
		{"startAfter before prefix", "a/", "0", 0, "[a/1 a/2 a/3 a/30]"},
		{"startAfter after prefix", "a/", "a0", 0, "[]"},
		{"startAfter not a key", "a/", "a/25", 0, "[a/3 a/30]"},
		{"empty prefix lists all", "", "", 0, "[a a/1 a/2 a/3 a/30 a0 b/1]"},
		{"no match", "c/", "", 0, "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.View(context.Background(), func(tx ReadTx) error {
				list, err := tx.List(tt.prefix, tt.startAfter, tt.limit)
				if err != nil {
					return err
				}
				if got := fmt.Sprint(keysOf(list)); got != tt.want {
					return fmt.Errorf("List(%q, %q, %d) = %s, want %s", tt.prefix, tt.startAfter, tt.limit, got, tt.want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	counts := map[string]int{"a/": 4, "a": 6, "": 7, "b/": 1, "c/": 0}
	for prefix, want := range counts {
		t.Run("count "+strconv.Quote(prefix), func(t *testing.T) {
			err := s.View(context.Background(), func(tx ReadTx) error {
				n, err := tx.Count(prefix)
				if err != nil {
					return err
				}
				if n != want {
					return fmt.Errorf("Count(%q) = %d, want %d", prefix, n, want)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("paginate all", func(t *testing.T) {
		var all []string
		after := ""
		for {
			var page []KV
			_ = s.View(context.Background(), func(tx ReadTx) error {
				var err error
				page, err = tx.List("", after, 3)
				return err
			})
			if len(page) == 0 {
				break
			}
			all = append(all, keysOf(page)...)
			after = page[len(page)-1].Key
		}
		if got := fmt.Sprint(all); got != "[a a/1 a/2 a/3 a/30 a0 b/1]" {
			t.Fatalf("paginated = %s", got)
		}
	})
}

func TestInvalidKeysAreRejected(t *testing.T) {
	s, _ := openTest(t, Options{})
	_, err := s.Update(context.Background(), func(tx Tx) error { return tx.Put("", []byte("x")) })
	if err == nil {
		t.Fatal("empty key accepted")
	}
}

func TestConcurrentCounterIsSerializableAndGroupCommitted(t *testing.T) {
	s, _ := openTest(t, Options{})
	const workers, perWorker = 32, 200
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				_, err := s.Update(context.Background(), func(tx Tx) error {
					kv, ok, err := tx.Get("counter")
					if err != nil {
						return err
					}
					n := 0
					if ok {
						if n, err = strconv.Atoi(string(kv.Value)); err != nil {
							return err
						}
					}
					return tx.Put("counter", []byte(strconv.Itoa(n+1)))
				})
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	kv, _ := get(t, s, "counter")
	if got, want := string(kv.Value), strconv.Itoa(workers*perWorker); got != want {
		t.Fatalf("counter = %s, want %s (lost updates)", got, want)
	}
	st := s.Stats()
	t.Logf("stats: %+v (%.1f transactions per commit)", st, float64(st.Transactions)/float64(st.Commits))
	if st.Transactions != workers*perWorker || st.Revision != workers*perWorker {
		t.Fatalf("transactions = %d, revision = %d, want %d", st.Transactions, st.Revision, workers*perWorker)
	}
	if st.Commits*4 > st.Transactions {
		t.Fatalf("commits = %d for %d transactions: group commit is not batching", st.Commits, st.Transactions)
	}
}

func TestFailedFnInBatchDoesNotAffectOthers(t *testing.T) {
	s, _ := openTest(t, Options{})
	const n = 64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("k/%03d", i)
			_, err := s.Update(context.Background(), func(tx Tx) error {
				if err := tx.Put(key, []byte("v")); err != nil {
					return err
				}
				if i%2 == 1 {
					return errors.New("odd")
				}
				return nil
			})
			if (err != nil) != (i%2 == 1) {
				t.Errorf("update %d: err = %v", i, err)
			}
		}()
	}
	wg.Wait()
	err := s.View(context.Background(), func(tx ReadTx) error {
		c, err := tx.Count("k/")
		if err != nil {
			return err
		}
		if c != n/2 {
			return fmt.Errorf("count = %d, want %d", c, n/2)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Revision() != n/2 {
		t.Fatalf("revision = %d, want %d (failed fns must not take revisions)", s.Revision(), n/2)
	}
}

func TestUpdateHonoursContextAndClose(t *testing.T) {
	s, _ := openTest(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Update(ctx, func(tx Tx) error { return tx.Put("a", nil) }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Update with cancelled ctx: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(context.Background(), func(tx Tx) error { return tx.Put("a", nil) }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Update after Close: %v, want ErrClosed", err)
	}
	if err := s.View(context.Background(), func(ReadTx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("View after Close: %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestPanicInFnIsRaisedInCaller(t *testing.T) {
	s, _ := openTest(t, Options{})
	func() {
		defer func() {
			if p := recover(); p != "bad fn" {
				t.Fatalf("recovered %v, want bad fn", p)
			}
		}()
		_, _ = s.Update(context.Background(), func(tx Tx) error { panic("bad fn") })
	}()
	// The committer survived.
	if rev := put(t, s, "a", "1"); rev != 1 {
		t.Fatalf("rev = %d", rev)
	}
}

func TestReopenIsFastWithManyKeys(t *testing.T) {
	s, path := openTest(t, Options{})
	const keys = 100000
	const perTx = 5000
	val := make([]byte, 64)
	for i := 0; i < keys; i += perTx {
		_, err := s.Update(context.Background(), func(tx Tx) error {
			for j := i; j < i+perTx; j++ {
				if err := tx.Put(fmt.Sprintf("node/%08d", j), val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	rev := s.Revision()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s2, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	kv, ok := get(t, s2, "node/00099999")
	elapsed := time.Since(start)
	if !ok || kv.ModRevision != rev {
		t.Fatalf("last key = %+v %v", kv, ok)
	}
	t.Logf("open + first read of %d keys: %v", keys, elapsed)
	if elapsed > time.Second {
		t.Fatalf("open + first read took %v, want < 1s", elapsed)
	}
	if s2.Revision() != rev {
		t.Fatalf("revision after reopen = %d, want %d", s2.Revision(), rev)
	}
}

func TestViewIsASnapshot(t *testing.T) {
	s, _ := openTest(t, Options{})
	put(t, s, "a", "1")
	inView := make(chan struct{})
	written := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- s.View(context.Background(), func(tx ReadTx) error {
			close(inView)
			<-written
			kv, _, err := tx.Get("a")
			if err != nil {
				return err
			}
			n, err := tx.Count("")
			if err != nil {
				return err
			}
			if tx.Revision() != 1 || string(kv.Value) != "1" || n != 1 {
				return fmt.Errorf("view changed under it: rev %d, a=%q, count %d", tx.Revision(), kv.Value, n)
			}
			return nil
		})
	}()
	<-inView
	put(t, s, "a", "2", "b", "2") // must not wait for the reader
	close(written)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if kv, _ := get(t, s, "a"); string(kv.Value) != "2" {
		t.Fatalf("a = %q after the view, want 2", kv.Value)
	}
}

func TestLogIsCompactedToRetention(t *testing.T) {
	s, path := openTest(t, Options{LogRetention: 50, MaxBatch: 8})
	for i := 0; i < 400; i++ {
		put(t, s, "k", strconv.Itoa(i))
	}
	st := s.Stats()
	if st.CompactedRevision != 350 {
		t.Fatalf("compacted = %d, want 350", st.CompactedRevision)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The compacted revision is persisted: a reopened store refuses the
	// same old revisions and serves the retained ones.
	s2, err := Open(path, Options{LogRetention: 50, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Watch(context.Background(), "", 349); !errors.Is(err, ErrCompacted) {
		t.Fatalf("watch from 349 after reopen: %v, want ErrCompacted", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := s2.Watch(ctx, "", 350)
	if err != nil {
		t.Fatal(err)
	}
	first := <-ch
	if first.Revision != 351 || string(first.Events[0].KV.Value) != "350" {
		t.Fatalf("first retained response = %+v", first)
	}
}
