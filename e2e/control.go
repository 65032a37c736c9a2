package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/ctl"
)

// ControllerEndpoint is the controller's gRPC address: a unix socket in the
// run directory, reachable from every namespace through the filesystem.
func (r *Run) ControllerEndpoint() string { return "unix:" + r.controllerSocket() }

func (r *Run) controllerSocket() string { return filepath.Join(r.st.RunDir, "controller.sock") }

// Token is the system-admin bearer token of the run's controller.
func (r *Run) Token() string { return r.st.Token }

// RunDir is the directory holding the run's state, logs and sockets.
func (r *Run) RunDir() string { return r.st.RunDir }

// RunID is the random ID in every name the run creates.
func (r *Run) RunID() string { return r.st.RunID }

// spawn records and starts a process, then waits until it accepts
// connections on its unix socket.
func (r *Run) spawn(ctx context.Context, name, socket string, argv []string) error {
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
	return c.waitReady(ctx, dialable(socket))
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

func (r *Run) binary(name string) (string, error) {
	p := filepath.Join(r.st.BinDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s: %w (build it with `make build` or e2e.Build)", name, err)
	}
	return p, nil
}

// startController starts the run's controller in the root namespace, on a
// unix socket for gRPC, and applies the topology's documents.
func (r *Run) startController(ctx context.Context, topo Topology) error {
	bin, err := r.binary("meridian-controller")
	if err != nil {
		return err
	}
	dir := r.st.RunDir
	tokens := filepath.Join(dir, "tokens.yaml")
	ident := fmt.Sprintf("identities:\n- subject: e2e-admin\n  role: system-admin\n  tokens: [%q]\n", r.st.Token)
	if err := os.WriteFile(tokens, []byte(ident), 0o600); err != nil {
		return fmt.Errorf("write tokens file: %w", err)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return fmt.Errorf("controller data directory: %w", err)
	}
	httpAddr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	if err := r.record(func(st *State) { st.HTTP = httpAddr }); err != nil {
		return err
	}
	argv := []string{bin, "--data-dir", data, "--tokens-file", tokens, "--listen-grpc", r.ControllerEndpoint(),
		"--listen-http", httpAddr, "--log-level", "debug"}
	if err := r.spawn(ctx, "controller", r.controllerSocket(), argv); err != nil {
		return err
	}
	docs, err := topo.Documents(r.State().underlay())
	if err != nil {
		return err
	}
	if err := r.Apply(ctx, docs); err != nil {
		return err
	}
	return r.record(func(st *State) { st.Applied = true })
}

// freeLoopbackAddr picks a free TCP port on 127.0.0.1. Another process may
// take it before the controller binds it; the controller then fails to
// start and says so.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Ctl runs meridianctl (in process) against the run's controller as its
// system admin and returns its output.
func (r *Run) Ctl(ctx context.Context, args ...string) (string, error) {
	var out, errOut bytes.Buffer
	full := append([]string{"--config=", "--endpoint", r.ControllerEndpoint(), "--token", r.st.Token}, args...)
	// No environment: only the flags above count.
	err := ctl.Run(ctx, full, ctl.Streams{In: strings.NewReader(""), Out: &out, Err: &errOut}, func(string) string { return "" })
	if err != nil {
		return out.String(), fmt.Errorf("meridianctl %s: %w\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String(), nil
}

// Apply applies meridianctl documents to the run's controller.
func (r *Run) Apply(ctx context.Context, docs string) error {
	f, err := os.CreateTemp(r.st.RunDir, "apply-*.yaml")
	if err != nil {
		return fmt.Errorf("write documents: %w", err)
	}
	_, werr := f.WriteString(docs)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("write documents: %w", err)
	}
	out, err := r.Ctl(ctx, "apply", "-f", f.Name())
	if err != nil {
		return err
	}
	r.log.Debug("applied", "file", f.Name(), "output", out)
	return r.record(func(st *State) { st.Intent = f.Name() })
}

// startAgents starts one agent per node inside the node's namespace. They
// start together and are waited for together.
func (r *Run) startAgents(ctx context.Context, topo Topology) error {
	bin, err := r.binary("meridian-agent")
	if err != nil {
		return err
	}
	bpffs, err := r.mountBPFFS()
	if err != nil {
		return err
	}
	st := r.State()
	errs := make([]error, len(st.Nodes))
	var wg sync.WaitGroup
	for i, n := range st.Nodes {
		node, _ := topo.node(n.Name)
		sock := filepath.Join(st.RunDir, n.Name+"-agent.sock")
		pins := filepath.Join(bpffs, "meridian-"+st.RunID+"-"+n.Name)
		if len(sock) > maxSockPath {
			return fmt.Errorf("agent socket path %s is longer than %d bytes: set TMPDIR shorter", sock, maxSockPath)
		}
		if err := r.record(func(st *State) { st.Nodes[i].AgentSocket, st.Nodes[i].BPFFS = sock, pins }); err != nil {
			return err
		}
		argv := []string{"nsenter", "--net=" + netnsPath(n.Netns), "--", bin,
			"--node", n.Name, "--controller", r.ControllerEndpoint(), "--token", st.Token,
			"--underlay-ip", n.Underlay.String(), "--socket", sock, "--bpffs", pins,
			"--state-dir", filepath.Join(st.RunDir, n.Name+"-state"),
			"--roles", strings.Join(node.nodeRoles(), ","), "--log-level", "debug"}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.spawn(ctx, n.Name+"-agent", sock, argv); err != nil {
				errs[i] = fmt.Errorf("node %s: %w", n.Name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// mountBPFFS mounts a bpffs of the run's own in the run directory. A
// private instance, rather than directories under a shared /sys/fs/bpf
// (which need not even be mounted), isolates runs from each other and from
// the host, and unmounting it releases every pin an agent left behind.
func (r *Run) mountBPFFS() (string, error) {
	dir := filepath.Join(r.st.RunDir, "bpffs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("bpffs mount point: %w", err)
	}
	if err := r.record(func(st *State) { st.BPFFS = dir }); err != nil {
		return "", err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return "", fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return dir, nil
}

// unmountBPFFS undoes mountBPFFS; nothing mounted there is fine.
func unmountBPFFS(dir string) error {
	if dir == "" {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount bpffs %s: %w", dir, err)
	}
	return nil
}

// AgentClient connects to a node agent's local API.
func (r *Run) AgentClient(node string) (agentv1.LocalAgentServiceClient, func() error, error) {
	n, ok := r.State().node(node)
	if !ok || n.AgentSocket == "" {
		return nil, nil, fmt.Errorf("node %s has no agent in run %s", node, r.st.RunID)
	}
	conn, err := grpc.NewClient("unix:"+n.AgentSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("agent of %s: %w", node, err)
	}
	return agentv1.NewLocalAgentServiceClient(conn), conn.Close, nil
}

// attachWorkloads creates each workload's namespace and plugs it in
// through its node's agent.
func (r *Run) attachWorkloads(ctx context.Context, topo Topology) error {
	for _, w := range topo.Workloads {
		if err := r.AttachWorkload(ctx, w); err != nil {
			return err
		}
	}
	return nil
}

// AttachWorkload creates the workload's namespace if needed and attaches
// it to its port through the node's agent, retrying while the agent is
// still catching up with the controller (until ReadyTimeout).
func (r *Run) AttachWorkload(ctx context.Context, w Workload) error {
	ns, err := r.Netns(w.Name)
	if err != nil {
		if ns, err = r.createNetns(ctx, w.Name); err != nil {
			return fmt.Errorf("workload %s: %w", w.Name, err)
		}
		if err := r.record(func(st *State) {
			st.Workloads = append(st.Workloads, WorkloadState{Name: w.Name, Node: w.Node, Port: w.Port, Netns: ns})
		}); err != nil {
			return err
		}
	}
	client, closeConn, err := r.AgentClient(w.Node)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, r.opts.ReadyTimeout)
	defer cancel()
	req := &agentv1.AttachPortRequest{Port: w.Port, Target: &agentv1.AttachPortRequest_NetnsPath{NetnsPath: netnsPath(ns)}}
	var resp *agentv1.AttachPortResponse
	for {
		resp, err = client.AttachPort(ctx, req)
		if err == nil {
			break
		}
		r.log.Debug("attach retry", "workload", w.Name, "err", err)
		if permanent(err) {
			return fmt.Errorf("attach workload %s to %s on %s: %w", w.Name, w.Port, w.Node, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("attach workload %s to %s on %s: %w\nagent log:\n%s", w.Name, w.Port, w.Node, err,
				logTail(filepath.Join(r.st.RunDir, w.Node+"-agent.log"), 30))
		case <-time.After(200 * time.Millisecond):
		}
	}
	return r.record(func(st *State) {
		for i := range st.Workloads {
			if st.Workloads[i].Name == w.Name {
				ws := &st.Workloads[i]
				ws.HostIf, ws.MAC, ws.IPs, ws.Gateway = resp.GetHostInterface(), resp.GetMac(), resp.GetIps(), resp.GetGateway()
			}
		}
	})
}

// permanent says whether retrying a call cannot help: the request itself
// is wrong. Anything else may be an agent still catching up.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.Unimplemented, codes.AlreadyExists:
		return true
	}
	return false
}

// DetachWorkload unplugs a workload through its node's agent; its
// namespace stays until Close.
func (r *Run) DetachWorkload(ctx context.Context, name string) error {
	w, ok := r.State().workload(name)
	if !ok {
		return fmt.Errorf("no workload %q in run %s", name, r.st.RunID)
	}
	client, closeConn, err := r.AgentClient(w.Node)
	if err != nil {
		return err
	}
	defer closeConn()
	if _, err := client.DetachPort(ctx, &agentv1.DetachPortRequest{Port: w.Port}); err != nil {
		return fmt.Errorf("detach workload %s (%s): %w", name, w.Port, err)
	}
	return nil
}

// Build compiles packages of the module (e.g. "./cmd/meridian-controller")
// into dir, so a test runs the code it was built with rather than whatever
// bin/ holds.
func Build(ctx context.Context, dir string, pkgs ...string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	// Go is not always on root's PATH on these machines.
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	cmd := exec.CommandContext(ctx, gobin, append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}
