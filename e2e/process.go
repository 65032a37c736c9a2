package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is a process this run started, while the starting process still
// holds it: Wait reaps it, so exits are seen at once.
type child struct {
	ProcState
	exited chan struct{}
	err    error // valid after exited is closed
}

// startProcess starts argv with output to logPath, in a session of its own
// so that it outlives `meridian-e2e up` and a terminal's signals.
func startProcess(name, logPath string, argv []string) (*child, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: open log: %w", name, err)
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{ProcState: ProcState{Name: name, PID: cmd.Process.Pid, Argv: argv, Log: logPath}, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	st, _, err := procStat(c.PID)
	if err != nil {
		// It died at once; the caller sees that when it waits for readiness.
		return c, nil
	}
	c.StartTime = st
	return c, nil
}

// procStat reads the start time (field 22 of /proc/PID/stat, clock ticks
// since boot: with the PID it names one process for good) and the state
// letter (field 3).
func procStat(pid int) (start uint64, state string, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", err
	}
	// The command name (field 2) may hold spaces and parentheses: split
	// after its closing parenthesis. Field 3 is then the first.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, "", fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, f[0], err
}

// Alive says whether the recorded process still runs (a zombie does not).
func (p ProcState) Alive() bool {
	start, state, err := procStat(p.PID)
	return err == nil && start == p.StartTime && state != "Z"
}

// stop ends the process: SIGTERM, then SIGKILL after grace. exited is the
// reaper's channel when this process started it, nil otherwise (then the
// process is polled; its parent, init, reaps it).
func (p ProcState) stop(exited <-chan struct{}, grace time.Duration) error {
	if p.StartTime == 0 || !p.Alive() {
		return nil
	}
	gone := func() bool {
		if exited != nil {
			select {
			case <-exited:
				return true
			default:
				return false
			}
		}
		return !p.Alive()
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := syscall.Kill(p.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal %s (pid %d): %w", p.Name, p.PID, err)
		}
		deadline := time.Now().Add(grace)
		for time.Now().Before(deadline) {
			if gone() {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return fmt.Errorf("%s (pid %d) survived SIGKILL", p.Name, p.PID)
}

// waitReady polls ready until it succeeds, the process exits or ctx ends;
// the error then carries the end of the process's log.
func (c *child) waitReady(ctx context.Context, ready func() error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready()
		if err == nil {
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited (%v) before it was ready:\n%s", c.Name, c.err, logTail(c.Log, 30))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %v)\n%s", c.Name, ctx.Err(), err, logTail(c.Log, 30))
		case <-tick.C:
		}
	}
}

// logTail returns the last n lines of a log file, for error messages.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "(no log)"
	}
	if err != nil {
		return fmt.Sprintf("(log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// spawn records and starts a process, then waits until it accepts
// connections on its unix socket.
func (r *Run) spawn(ctx context.Context, name, socket string, argv []string) error {
	return r.spawnReady(ctx, name, socket, argv, dialable(socket))
}

// spawnReady is spawn for processes that serve no socket of their own (or
// whose readiness is more than a socket): ready says when they are up.
func (r *Run) spawnReady(ctx context.Context, name, socket string, argv []string, ready func() error) error {
	c, err := startProcess(name, filepath.Join(r.st.RunDir, name+".log"), argv)
	if err != nil {
		return err
	}
	c.Socket = socket
	r.mu.Lock()
	r.children[c.PID] = c
	r.mu.Unlock()
	if err := r.record(func(st *State) {
		// A restarted process takes its predecessor's place in the order.
		if i := slices.IndexFunc(st.Procs, func(p ProcState) bool { return p.Name == name }); i >= 0 {
			st.Procs[i] = c.ProcState
		} else {
			st.Procs = append(st.Procs, c.ProcState)
		}
	}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.ReadyTimeout)
	defer cancel()
	return c.waitReady(ctx, ready)
}

// Stop ends one of the run's processes ("controller", "node-1-agent")
// the way Close does, leaving its pins and state behind, e.g. to check
// that the data path outlives its agent.
func (r *Run) Stop(name string) error {
	p, exited, err := r.proc(name)
	if err != nil {
		return err
	}
	return p.stop(exited, stopGrace)
}

// Restart stops a process if it runs and starts it again with the same
// command line, waiting until it serves.
func (r *Run) Restart(ctx context.Context, name string) error {
	if err := r.Stop(name); err != nil {
		return err
	}
	p, _, err := r.proc(name)
	if err != nil {
		return err
	}
	return r.spawn(ctx, name, p.Socket, p.Argv)
}

func (r *Run) proc(name string) (ProcState, <-chan struct{}, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.st.Procs, func(p ProcState) bool { return p.Name == name })
	if i < 0 {
		return ProcState{}, nil, fmt.Errorf("no process %q in run %s", name, r.st.RunID)
	}
	p := r.st.Procs[i]
	if c := r.children[p.PID]; c != nil {
		return p, c.exited, nil
	}
	return p, nil, nil
}

// dialable reports whether a unix socket accepts connections.
func dialable(path string) func() error {
	return func() error {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
}
