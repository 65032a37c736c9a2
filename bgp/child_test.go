package bgp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A speaker's sessions live in the network namespace of its process, and
// GoBGP dials from its own goroutines, so a test cannot put two speakers in
// two namespaces inside one process. Each speaker of the FRR tests therefore
// runs in a child: this test binary re-executed (under nsenter) with
// childEnv set, driven over stdin/stdout with one JSON line per call. It is
// also what makes a crash real: the parent kill -9s the child, and the
// sessions close without a NOTIFICATION, as when an agent dies.
const childEnv = "MERIDIAN_BGP_TEST_CHILD"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		os.Exit(childMain(cfg))
	}
	os.Exit(m.Run())
}

type childRequest struct {
	Op     string  `json:"op"` // "peers", "routes", "states", "stop"
	Peers  []Peer  `json:"peers,omitempty"`
	Routes []Route `json:"routes,omitempty"`
}

type childReply struct {
	Err string `json:"err,omitempty"`
	// CallUnixNano is taken just before SetRoutes is called: the start
	// of Meridian's share of the latency.
	CallUnixNano   int64          `json:"call_unix_nano,omitempty"`
	ReturnUnixNano int64          `json:"return_unix_nano,omitempty"`
	States         []PeerState    `json:"states,omitempty"`
	Announced      []netip.Prefix `json:"announced,omitempty"`
}

func childMain(cfgJSON string) int {
	var cc childConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cc); err != nil {
		fmt.Fprintf(os.Stderr, "child: config: %v\n", err)
		return 2
	}
	cfg := cc.Config
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := New(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "child: %v\n", err)
		return 2
	}
	s.noBatch = cc.NoBatch
	ctx := context.Background()
	if err := s.Start(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "child: %v\n", err)
		return 2
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20) // 10,000 routes fit in one line
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req childRequest
		var rep childReply
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			rep.Err = err.Error()
		} else {
			switch req.Op {
			case "peers":
				err = s.SetPeers(ctx, req.Peers)
			case "routes":
				rep.CallUnixNano = time.Now().UnixNano()
				err = s.SetRoutes(ctx, req.Routes)
				rep.ReturnUnixNano = time.Now().UnixNano()
			case "states":
				rep.States, err = s.PeerStates(ctx)
			case "stop":
				err = s.Stop(ctx)
			default:
				err = fmt.Errorf("unknown op %q", req.Op)
			}
			if err != nil {
				rep.Err = err.Error()
			}
			rep.Announced = s.Routes()
		}
		if err := out.Encode(rep); err != nil {
			return 3
		}
		if req.Op == "stop" {
			return 0
		}
	}
	// stdin closed: the parent is gone; leave like a crash would.
	return 0
}

// child is the parent's handle on a speaker process.
type child struct {
	t       testing.TB
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	replies chan childReply
	exited  chan struct{}
	stderr  *lockedBuffer
	mu      sync.Mutex
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startChild runs a speaker in netns. It is killed at the end of the test if
// still running; its log is printed if the test failed.
// childConfig is a speaker's Config plus test-only switches.
type childConfig struct {
	Config
	NoBatch bool // the baseline of BenchmarkAnnounce10000: one AddPath per route
}

func startChild(t testing.TB, name, netns string, cfg Config) *child {
	t.Helper()
	return startChildWith(t, name, netns, childConfig{Config: cfg})
}

func startChildWith(t testing.TB, name, netns string, cfg childConfig) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+netns, "--", exe, "-test.run=^$")
	// The speaker's API socket directory goes in the test's temporary
	// directory, so a kill -9 leaves nothing behind in /tmp.
	cmd.Env = append(os.Environ(), childEnv+"="+string(cfgJSON), "TMPDIR="+t.TempDir())
	c := &child{t: t, name: name, cmd: cmd, replies: make(chan childReply, 16), exited: make(chan struct{}), stderr: &lockedBuffer{}}
	cmd.Stderr = c.stderr
	c.stdin, err = cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting speaker %s: %v", name, err)
	}
	go func() {
		dec := json.NewDecoder(stdout)
		for {
			var rep childReply
			if err := dec.Decode(&rep); err != nil {
				break
			}
			c.replies <- rep
		}
		_ = cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			t.Logf("speaker %s log:\n%s", name, c.stderr.String())
		}
	})
	return c
}

func (c *child) call(ctx context.Context, req childRequest) (childReply, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := json.Marshal(req)
	if err != nil {
		return childReply{}, err
	}
	if _, err := c.stdin.Write(append(b, '\n')); err != nil {
		return childReply{}, fmt.Errorf("speaker %s: %w", c.name, err)
	}
	select {
	case rep := <-c.replies:
		if rep.Err != "" {
			return rep, errors.New(rep.Err)
		}
		return rep, nil
	case <-c.exited:
		return childReply{}, fmt.Errorf("speaker %s exited: %s", c.name, c.stderr.String())
	case <-ctx.Done():
		return childReply{}, fmt.Errorf("speaker %s: %s: %w", c.name, req.Op, ctx.Err())
	}
}

func (c *child) SetPeers(ctx context.Context, peers ...Peer) error {
	_, err := c.call(ctx, childRequest{Op: "peers", Peers: peers})
	return err
}

// SetRoutes returns when the child called Speaker.SetRoutes, by its clock.
func (c *child) SetRoutes(ctx context.Context, routes ...Route) (time.Time, []netip.Prefix, error) {
	rep, err := c.setRoutes(ctx, routes...)
	return time.Unix(0, rep.CallUnixNano), rep.Announced, err
}

func (c *child) setRoutes(ctx context.Context, routes ...Route) (childReply, error) {
	return c.call(ctx, childRequest{Op: "routes", Routes: routes})
}

func (c *child) PeerStates(ctx context.Context) ([]PeerState, error) {
	rep, err := c.call(ctx, childRequest{Op: "states"})
	return rep.States, err
}

// Stop is the orderly shutdown (Speaker.Stop: Cease to every peer).
func (c *child) Stop(ctx context.Context) error {
	_, err := c.call(ctx, childRequest{Op: "stop"})
	<-c.exited
	return err
}

// Kill is a crash: SIGKILL, no NOTIFICATION, the kernel closes the sockets.
func (c *child) Kill() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}
