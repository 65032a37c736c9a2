// Package ovntest starts real OVN control planes for tests: an ovsdb-server
// for the northbound database, one for the southbound database and
// ovn-northd, all from nothing, with fresh database files, on unix sockets
// in private directories, stopped in t.Cleanup; and (InMemoryNB) an empty
// northbound database served by libovsdb's in-memory OVSDB server, for
// tests that need no OVN binaries.
//
// It owns those processes and nothing else: it kills only the PIDs it
// started, never touches the system's /var/run/openvswitch or /etc/ovn, and
// never starts anything through systemd. A missing binary is a test failure
// with the package to install, never a skip: CI runs these tests as root on
// a machine where `make test` has installed Debian's ovn-central.
package ovntest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Schemas of the OVN that Debian 12 ships; the NB one is what
// hack/ovn-modelgen.sh generated controller/ovn/nbdb from.
const (
	NBSchema = "/usr/share/ovn/ovn-nb.ovsschema"
	SBSchema = "/usr/share/ovn/ovn-sb.ovsschema"
)

// startTimeout bounds how long any one process may take to become ready;
// they take well under 0.1 s here, so hitting it means something is broken.
const startTimeout = 10 * time.Second

var binaries = []string{"ovsdb-tool", "ovsdb-server", "ovn-northd", "ovn-nbctl", "ovn-sbctl", "ovn-appctl"}

// Stack is a running OVN control plane.
type Stack struct {
	t testing.TB
	// Dir holds the database files and logs (a t.TempDir()).
	Dir string
	// RunDir holds the sockets and control sockets. It is short and outside
	// Dir because unix socket paths are limited to 107 bytes.
	RunDir string

	NB, SB  *DB
	northd  *proc
	stopped bool
}

// DB is one ovsdb-server and its database file.
type DB struct {
	Name   string // "nb" or "sb"
	File   string // the database file
	Socket string // the unix socket it listens on
	Log    string
	srv    *proc
	rundir string
}

// Endpoint is the OVSDB endpoint clients connect to ("unix:/...").
func (db *DB) Endpoint() string { return "unix:" + db.Socket }

// proc is a process this package started.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, valid once done is closed
}

// Options tunes Start.
type Options struct {
	// NoNorthd starts only the two database servers.
	NoNorthd bool
}

// Start starts NB and SB ovsdb-servers and ovn-northd and waits until
// northd is the active instance. Everything is stopped in t.Cleanup.
func Start(t testing.TB, opts Options) *Stack {
	t.Helper()
	CheckPrerequisites(t)
	runDir, err := os.MkdirTemp("", "mer-ovn-")
	if err != nil {
		t.Fatalf("ovntest: create run dir: %v", err)
	}
	s := &Stack{t: t, Dir: t.TempDir(), RunDir: runDir}
	// Registered first, so it runs last, after the processes are gone.
	t.Cleanup(func() { os.RemoveAll(runDir) })
	t.Cleanup(s.Stop)
	s.NB = s.newDB("nb", NBSchema)
	s.SB = s.newDB("sb", SBSchema)
	for _, db := range []*DB{s.NB, s.SB} {
		if err := db.start(s.env()); err != nil {
			t.Fatalf("ovntest: %v", err)
		}
	}
	// NB_Global is what `--wait` waits on; a real deployment always has it.
	if out, err := s.Ctl("ovn-nbctl", s.NB, "init"); err != nil {
		t.Fatalf("ovntest: ovn-nbctl init: %v: %s", err, out)
	}
	if !opts.NoNorthd {
		if err := s.startNorthd(); err != nil {
			t.Fatalf("ovntest: %v", err)
		}
	}
	return s
}

// CheckPrerequisites fails the test, naming what to install, when a binary
// the stack needs is missing.
func CheckPrerequisites(t testing.TB) {
	t.Helper()
	var missing []string
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	for _, f := range []string{NBSchema, SBSchema} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("ovntest: missing %s: install Debian's OVN (apt-get install -y ovn-central ovn-host openvswitch-switch; `make test` does it)",
			strings.Join(missing, ", "))
	}
}

func (s *Stack) newDB(name, schema string) *DB {
	db := &DB{
		Name:   name,
		File:   filepath.Join(s.Dir, name+".db"),
		Socket: filepath.Join(s.RunDir, name+".sock"),
		Log:    filepath.Join(s.Dir, name+".log"),
		rundir: s.RunDir,
	}
	if out, err := exec.Command("ovsdb-tool", "create", db.File, schema).CombinedOutput(); err != nil {
		s.t.Fatalf("ovntest: ovsdb-tool create %s: %v: %s", db.File, err, out)
	}
	return db
}

// env points every OVS/OVN default path at the stack's own directories, so
// nothing falls back to the system's run directories.
func (s *Stack) env() []string {
	env := os.Environ()
	for _, v := range []string{"OVS_RUNDIR", "OVN_RUNDIR"} {
		env = append(env, v+"="+s.RunDir)
	}
	for _, v := range []string{"OVS_LOGDIR", "OVS_DBDIR", "OVN_LOGDIR", "OVN_DBDIR"} {
		env = append(env, v+"="+s.Dir)
	}
	return env
}

func (db *DB) start(env []string) error {
	os.Remove(db.Socket)
	p, err := startProc("ovsdb-server "+db.Name, env,
		"ovsdb-server", "--remote=punix:"+db.Socket,
		"--unixctl="+filepath.Join(db.rundir, db.Name+".ctl"),
		"--pidfile="+filepath.Join(db.rundir, db.Name+".pid"),
		"--log-file="+db.Log, "--no-chdir", db.File)
	if err != nil {
		return err
	}
	db.srv = p
	if err := waitFor(p, func() error { return dial(db.Socket) }); err != nil {
		p.stop()
		return fmt.Errorf("ovsdb-server %s did not listen on %s: %w (log %s)", db.Name, db.Socket, err, db.Log)
	}
	return nil
}

func (s *Stack) startNorthd() error {
	ctl := filepath.Join(s.RunDir, "northd.ctl")
	log := filepath.Join(s.Dir, "northd.log")
	p, err := startProc("ovn-northd", s.env(), "ovn-northd",
		"--ovnnb-db="+s.NB.Endpoint(), "--ovnsb-db="+s.SB.Endpoint(),
		"--unixctl="+ctl, "--pidfile="+filepath.Join(s.RunDir, "northd.pid"),
		"--log-file="+log, "--no-chdir")
	if err != nil {
		return err
	}
	s.northd = p
	// Active means it holds the SB lock and has both databases: from then
	// on it translates every NB change.
	err = waitFor(p, func() error {
		out, err := exec.Command("ovn-appctl", "-t", ctl, "status").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		if !bytes.Contains(out, []byte("active")) {
			return fmt.Errorf("status %q", bytes.TrimSpace(out))
		}
		return nil
	})
	if err != nil {
		p.stop()
		return fmt.Errorf("ovn-northd did not become active: %w (log %s)", err, log)
	}
	return nil
}

func dial(sock string) error {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

func startProc(name string, env []string, argv ...string) (*proc, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// If the test binary dies without running its cleanups, the kernel
	// still takes its servers down with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		if p.err != nil && stderr.Len() > 0 {
			p.err = fmt.Errorf("%w: %s", p.err, bytes.TrimSpace(stderr.Bytes()))
		}
		close(p.done)
	}()
	return p, nil
}

// waitFor polls ready until it succeeds, the process exits or the timeout.
func waitFor(p *proc, ready func() error) error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", startTimeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop ends the process: SIGTERM (OVS daemons exit cleanly on it), then
// SIGKILL if it lingers. Only ever this process, by its PID.
func (p *proc) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Stop stops northd and both servers. It is idempotent and registered with
// t.Cleanup by Start.
func (s *Stack) Stop() {
	if s.stopped {
		return
	}
	s.stopped = true
	s.northd.stop()
	for _, db := range []*DB{s.NB, s.SB} {
		if db != nil {
			db.srv.stop()
		}
	}
}

// StopNB stops the northbound ovsdb-server, keeping its database file, to
// test clients against an NB outage.
func (s *Stack) StopNB() {
	s.t.Helper()
	s.NB.srv.stop()
}

// StartNB starts the northbound ovsdb-server again on the same file and
// socket after StopNB.
func (s *Stack) StartNB() {
	s.t.Helper()
	if err := s.NB.start(s.env()); err != nil {
		s.t.Fatalf("ovntest: restart NB: %v", err)
	}
}

// WipeNB restarts the northbound ovsdb-server on a fresh, empty database
// (with NB_Global), as after losing the database.
func (s *Stack) WipeNB() {
	s.t.Helper()
	s.NB.srv.stop()
	if err := os.Remove(s.NB.File); err != nil {
		s.t.Fatalf("ovntest: remove %s: %v", s.NB.File, err)
	}
	if out, err := exec.Command("ovsdb-tool", "create", s.NB.File, NBSchema).CombinedOutput(); err != nil {
		s.t.Fatalf("ovntest: ovsdb-tool create %s: %v: %s", s.NB.File, err, out)
	}
	s.StartNB()
	s.NBCtl("init")
}

// NBCtl runs ovn-nbctl against the stack and returns its trimmed stdout; a
// failure fails the test.
func (s *Stack) NBCtl(args ...string) string {
	s.t.Helper()
	out, err := s.Ctl("ovn-nbctl", s.NB, args...)
	if err != nil {
		s.t.Fatalf("ovntest: %v", err)
	}
	return out
}

// SBCtl runs ovn-sbctl against the stack like NBCtl.
func (s *Stack) SBCtl(args ...string) string {
	s.t.Helper()
	out, err := s.Ctl("ovn-sbctl", s.SB, args...)
	if err != nil {
		s.t.Fatalf("ovntest: %v", err)
	}
	return out
}

// Ctl runs an ovn-nbctl-like tool against db and returns its trimmed
// stdout, for callers that expect failures or feed it stdin-free batches.
func (s *Stack) Ctl(tool string, db *DB, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := []string{"--db=" + db.Endpoint()}
	if tool != "ovn-trace" { // the one OVN tool without --timeout
		argv = append(argv, "--timeout=60")
	}
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, tool, argv...)
	cmd.Env = s.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = ctx.Err()
		}
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Trace runs ovn-trace against SB on a logical datapath with a microflow
// and returns its output.
func (s *Stack) Trace(datapath, microflow string, flags ...string) string {
	s.t.Helper()
	out, err := s.Ctl("ovn-trace", s.SB, append(flags, datapath, microflow)...)
	if err != nil {
		s.t.Fatalf("ovntest: %v", err)
	}
	return out
}

// WaitNorthd waits until northd has processed everything committed to NB so
// far (NB_Global.sb_cfg catches up with nb_cfg). Without chassis this is as
// far as `--wait` can go.
func (s *Stack) WaitNorthd() {
	s.t.Helper()
	s.NBCtl("--wait=sb", "sync")
}
