package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// collect reads responses until it has n revisions or the timeout hits.
func collect(t *testing.T, ch <-chan WatchResponse, n int, timeout time.Duration) []WatchResponse {
	t.Helper()
	var out []WatchResponse
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case r, ok := <-ch:
			if !ok {
				t.Fatalf("watch closed after %d of %d responses", len(out), n)
			}
			if r.Err != nil {
				t.Fatalf("watch error after %d responses: %v", len(out), r.Err)
			}
			out = append(out, r)
		case <-deadline:
			t.Fatalf("timeout after %d of %d responses", len(out), n)
		}
	}
	return out
}

func revs(rs []WatchResponse) []int64 {
	out := make([]int64, len(rs))
	for i, r := range rs {
		out[i] = r.Revision
	}
	return out
}

func expectNothing(t *testing.T, ch <-chan WatchResponse) {
	t.Helper()
	select {
	case r, ok := <-ch:
		if ok {
			t.Fatalf("unexpected response %+v", r)
		}
	case <-time.After(50 * time.Millisecond):
	}
}

func TestWatchFromRevision(t *testing.T) {
	tests := []struct {
		name     string
		prefix   string
		from     int64
		wantRevs string
		live     string // key written after the watch starts; its rev must follow
	}{
		{"from zero", "", 0, "[1 2 3 4]", "c"},
		{"from the middle", "", 2, "[3 4]", "c"},
		{"from current", "", -1, "[]", "c"},
		{"prefix filtering", "a/", 0, "[1 3 4]", "a/9"},
		{"prefix with no history", "z/", 0, "[]", "z/1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t, Options{})
			put(t, s, "a/1", "x") // 1
			put(t, s, "b/1", "x") // 2
			put(t, s, "a/2", "x") // 3
			del(t, s, "a/1")      // 4
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			from := tt.from
			if from < 0 {
				from = s.Revision()
			}
			ch, err := s.Watch(ctx, tt.prefix, from)
			if err != nil {
				t.Fatal(err)
			}
			n := len(tt.wantRevs) - 2
			if n > 0 {
				n = (n + 1) / 2
			}
			got := collect(t, ch, n, 5*time.Second)
			if fmt.Sprint(revs(got)) != tt.wantRevs {
				t.Fatalf("revisions = %v, want %s", revs(got), tt.wantRevs)
			}
			rev := put(t, s, tt.live, "live", "unwatched/"+tt.name, "x")
			live := collect(t, ch, 1, 5*time.Second)[0]
			wantEvents := 1
			if tt.prefix == "" {
				wantEvents = 2
			}
			if live.Revision != rev || len(live.Events) != wantEvents || live.Events[0].KV.Key != tt.live {
				t.Fatalf("live response = %+v, want rev %d with %d events, first %s", live, rev, wantEvents, tt.live)
			}
			cancel()
			for range ch { // closed on ctx done
			}
		})
	}
}

func TestWatchEventContents(t *testing.T) {
	s, _ := openTest(t, Options{})
	put(t, s, "k", "v1")
	put(t, s, "k", "v2")
	del(t, s, "k")
	ch, err := s.Watch(context.Background(), "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, ch, 3, 5*time.Second)
	want := []Event{
		{EventPut, KV{"k", []byte("v1"), 1, 1}},
		{EventPut, KV{"k", []byte("v2"), 1, 2}},
		{EventDelete, KV{"k", []byte("v2"), 1, 3}},
	}
	for i, r := range got {
		if len(r.Events) != 1 {
			t.Fatalf("rev %d: %d events", r.Revision, len(r.Events))
		}
		e := r.Events[0]
		if e.Type != want[i].Type || e.KV.Key != want[i].KV.Key || string(e.KV.Value) != string(want[i].KV.Value) ||
			e.KV.CreateRevision != want[i].KV.CreateRevision || e.KV.ModRevision != want[i].KV.ModRevision {
			t.Fatalf("event %d = %v %+v, want %v %+v", i, e.Type, e.KV, want[i].Type, want[i].KV)
		}
	}
}

func TestWatchHandOverUnderConcurrentWrites(t *testing.T) {
	tests := []struct {
		name   string
		buffer int
		prefix string
	}{
		{"large buffer", 4096, ""},
		{"tiny buffer forces log fallback", 1, ""},
		{"prefix", 64, "even/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTest(t, Options{WatchBuffer: tt.buffer})
			const writers, perWriter = 8, 150
			sentinel := tt.prefix + "~sentinel"
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var wg sync.WaitGroup
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < perWriter; i++ {
						p := "odd/"
						if i%2 == 0 {
							p = "even/"
						}
						if _, err := s.Update(ctx, func(tx Tx) error {
							return tx.Put(fmt.Sprintf("%s%d-%d", p, w, i), []byte("x"))
						}); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			// Start watchers at various points while writes are going on.
			type result struct {
				from int64
				got  []int64
			}
			results := make(chan result, 4)
			var wwg sync.WaitGroup
			for k := 0; k < 4; k++ {
				time.Sleep(time.Duration(k) * 20 * time.Millisecond)
				from := s.Revision() / 2
				ch, err := s.Watch(ctx, tt.prefix, from)
				if err != nil {
					t.Fatal(err)
				}
				wwg.Add(1)
				go func() {
					defer wwg.Done()
					var got []int64
					for r := range ch {
						if r.Err != nil {
							t.Errorf("watch from %d: %v", from, r.Err)
							return
						}
						if tt.buffer == 1 {
							time.Sleep(50 * time.Microsecond) // be slow
						}
						got = append(got, r.Revision)
						if r.Events[0].KV.Key == sentinel {
							break
						}
					}
					results <- result{from, got}
				}()
			}
			wg.Wait()
			// Every watcher stops at the sentinel, which matches every prefix.
			final := put(t, s, sentinel, "x")
			if final != writers*perWriter+1 {
				t.Fatalf("final revision %d", final)
			}
			wwg.Wait()
			close(results)
			// Which revisions match the prefix? Read the log independently.
			expected := map[int64]bool{}
			all, err := s.Watch(ctx, tt.prefix, 0)
			if err != nil {
				t.Fatal(err)
			}
			for r := range all {
				expected[r.Revision] = true
				if r.Revision == final {
					break
				}
			}
			if tt.buffer == 1 && s.Stats().WatchFallbacks == 0 {
				t.Fatal("the tiny buffer never overflowed: the log fallback was not exercised")
			}
			for res := range results {
				var want []int64
				for r := res.from + 1; r <= final; r++ {
					if tt.prefix == "" || expected[r] {
						want = append(want, r)
					}
				}
				if fmt.Sprint(res.got) != fmt.Sprint(want) {
					t.Fatalf("watch from %d: got %d revisions, want %d (gap, duplicate or disorder)\n got %v\nwant %v",
						res.from, len(res.got), len(want), res.got, want)
				}
			}
		})
	}
}

func TestWatchCompacted(t *testing.T) {
	s, _ := openTest(t, Options{LogRetention: 10})
	for i := 0; i < 30; i++ {
		put(t, s, fmt.Sprintf("k%d", i), "x")
	}
	st := s.Stats()
	if st.CompactedRevision != 20 {
		t.Fatalf("compacted = %d, want 20", st.CompactedRevision)
	}
	tests := []struct {
		from    int64
		wantErr bool
	}{{0, true}, {19, true}, {20, false}, {25, false}, {30, false}}
	for _, tt := range tests {
		t.Run(fmt.Sprint("from ", tt.from), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			ch, err := s.Watch(ctx, "", tt.from)
			if tt.wantErr {
				if !errors.Is(err, ErrCompacted) {
					t.Fatalf("Watch from %d: err = %v, want ErrCompacted", tt.from, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := collect(t, ch, int(30-tt.from), 5*time.Second)
			if len(got) > 0 && got[0].Revision != tt.from+1 {
				t.Fatalf("first revision %d, want %d", got[0].Revision, tt.from+1)
			}
		})
	}
}

func TestSlowWatcherFallsBehindIntoCompactionGetsErrCompacted(t *testing.T) {
	s, _ := openTest(t, Options{LogRetention: 5, WatchBuffer: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads ch: writes must proceed regardless.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 50; i++ {
			put(t, s, "k", fmt.Sprint(i))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("writes blocked by a watcher that does not read")
	}
	var last WatchResponse
	for r := range ch {
		last = r
	}
	if !errors.Is(last.Err, ErrCompacted) {
		t.Fatalf("last response = %+v, want Err ErrCompacted", last)
	}
}

func TestSlowWatcherDoesNotBlockWriters(t *testing.T) {
	s, _ := openTest(t, Options{WatchBuffer: 4})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	start := time.Now()
	for i := 0; i < n; i++ {
		put(t, s, fmt.Sprintf("k%d", i), "x")
	}
	t.Logf("%d writes with a stalled watcher: %v", n, time.Since(start))
	if s.Stats().WatchFallbacks == 0 {
		t.Fatal("stalled watcher never overflowed its buffer")
	}
	// The watcher then reads everything, in order, from the log.
	got := collect(t, ch, n, 10*time.Second)
	for i, r := range got {
		if r.Revision != int64(i+1) {
			t.Fatalf("response %d has revision %d", i, r.Revision)
		}
	}
}

func TestWatchResumesAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		put(t, s, fmt.Sprintf("k%d", i), "x")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Revision() != 10 {
		t.Fatalf("revision after reopen = %d", s.Revision())
	}
	ch, err := s.Watch(context.Background(), "", 4)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "after", "x")
	got := collect(t, ch, 7, 5*time.Second)
	if fmt.Sprint(revs(got)) != "[5 6 7 8 9 10 11]" {
		t.Fatalf("revisions = %v", revs(got))
	}
	if got[0].Events[0].KV.Key != "k4" || got[6].Events[0].KV.Key != "after" {
		t.Fatalf("unexpected events %+v ... %+v", got[0], got[6])
	}
}

func TestWatchClosedOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := s.Watch(context.Background(), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("response after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch channel not closed by Close")
	}
	if _, err := s.Watch(context.Background(), "", 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Watch after Close: %v", err)
	}
	expectNothing(t, ch)
}
