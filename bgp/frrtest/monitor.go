package frrtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// markerTable is a routing table no test uses: the watcher adds and removes
// a route there to know that `ip monitor` is listening, and hides it.
const markerTable = "4242"

// FIBWatch records every route change in a namespace (`ip monitor route`),
// to prove that something did not change at all.
type FIBWatch struct {
	mu    sync.Mutex
	lines []string
	seen  chan struct{} // closed when the marker route shows up
	once  sync.Once
	done  chan struct{}
}

// WatchFIB starts `ip monitor route` in the router's namespace and returns
// once it is listening. It stops with the test.
func (r *Router) WatchFIB(t testing.TB) *FIBWatch {
	t.Helper()
	return WatchRoutes(t, r.netns)
}

// WatchRoutes is WatchFIB for any namespace.
func WatchRoutes(t testing.TB, netns string) *FIBWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := Command(ctx, netns, "ip", "-ts", "monitor", "route")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatalf("frrtest: %v", err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("frrtest: ip monitor route in %s: %v", netns, err)
	}
	w := &FIBWatch{seen: make(chan struct{}), done: make(chan struct{})}
	go w.read(stdout)
	t.Cleanup(func() {
		cancel() // kills the ip process started above, nothing else
		_ = cmd.Wait()
		<-w.done
	})

	// Add and delete a marker route until the monitor reports it: from
	// then on no change can be missed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		mctx, mcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = Exec(mctx, netns, "ip", "route", "add", "unreachable", "192.0.2.255/32", "table", markerTable)
		_, _ = Exec(mctx, netns, "ip", "route", "del", "unreachable", "192.0.2.255/32", "table", markerTable)
		mcancel()
		select {
		case <-w.seen:
			return w
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("frrtest: ip monitor route in %s reports nothing", netns)
		}
	}
}

func (w *FIBWatch) read(r io.Reader) {
	defer close(w.done)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if strings.Contains(line, "table "+markerTable) {
			w.once.Do(func() { close(w.seen) })
			continue
		}
		// -ts prints "[timestamp]" on its own line before some
		// messages; keep them with the change they belong to.
		w.mu.Lock()
		w.lines = append(w.lines, line)
		w.mu.Unlock()
	}
}

// Changes returns the route changes seen so far that mention any of the
// given substrings (all of them when none is given).
func (w *FIBWatch) Changes(match ...string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, l := range w.lines {
		if len(match) == 0 {
			out = append(out, l)
			continue
		}
		for _, m := range match {
			if strings.Contains(l, m) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// String is for failure messages.
func (w *FIBWatch) String() string {
	return fmt.Sprintf("%d route changes:\n%s", len(w.Changes()), strings.Join(w.Changes(), "\n"))
}
