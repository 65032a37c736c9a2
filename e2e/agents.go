package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

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
		argv = append(argv, r.ovnAgentArgs(n.Name)...)
		argv = append(argv, node.AgentArgs...)
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
