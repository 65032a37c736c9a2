// Command meridian-e2e builds a Meridian test topology out of network
// namespaces and leaves it running for manual work:
//
//	meridian-e2e up -f e2e/testdata/two-node.yaml   # prints the run directory
//	meridian-e2e status
//	meridian-e2e exec web-1 -- ip addr
//	meridian-e2e probe web-1 db-1 tcp/5432
//	meridian-e2e down
//
// Commands other than up act on --run DIR, by default the last run started
// on this host (a symlink in the temporary directory). It must run as root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/e2e"
)

const usage = `usage: meridian-e2e COMMAND [flags]

  up -f TOPOLOGY [--ovn] [--bin-dir DIR] [--until STAGE] [--log-level L]
                       build the topology; STAGE: fabric, controller, agents, workloads
  down [--run DIR]     stop the run's processes, remove its namespaces and directory
  status [--run DIR]   show nodes, workloads, processes and the agents' attachments
  exec [--run DIR] NAME -- COMMAND...
                       run a command in the namespace of a node, workload or "fabric"
  probe [--run DIR] FROM TO icmp|tcp/PORT|udp/PORT
                       send one probe and say whether it got through
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code, err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meridian-e2e:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// run executes one command and returns the exit code to use (for exec,
// the command's own).
func run(ctx context.Context, args []string, out io.Writer) (int, error) {
	if len(args) == 0 {
		return 2, errors.New(usage)
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("meridian-e2e "+cmd, flag.ContinueOnError)
	runDir := fs.String("run", "", "run directory (default: the last run started)")
	switch cmd {
	case "up":
		return 0, up(ctx, fs, args, out)
	case "down", "status", "exec", "probe":
	default:
		return 2, fmt.Errorf("unknown command %q\n%s", cmd, usage)
	}
	if err := fs.Parse(args); err != nil {
		return 2, err
	}
	dir, err := resolveRun(*runDir)
	if err != nil {
		return 1, err
	}
	r, err := e2e.Attach(dir)
	if err != nil {
		return 1, err
	}
	switch cmd {
	case "down":
		if err := r.Close(); err != nil {
			return 1, err
		}
		if cur, _ := os.Readlink(currentLink()); cur == dir {
			_ = os.Remove(currentLink()) // a stale link only misleads the next command
		}
		fmt.Fprintf(out, "run %s removed\n", r.RunID())
		return 0, nil
	case "status":
		return 0, status(ctx, r, out)
	case "exec":
		return execIn(ctx, r, fs.Args())
	default:
		return probe(ctx, r, fs.Args(), out)
	}
}

// currentLink points at the last run started, so that the other commands
// need no --run in the common case of one run at a time.
func currentLink() string { return filepath.Join(os.TempDir(), "meridian-e2e-current") }

func resolveRun(dir string) (string, error) {
	if dir != "" {
		return dir, nil
	}
	d, err := os.Readlink(currentLink())
	if err != nil {
		return "", fmt.Errorf("no --run given and no current run (%s): %w", currentLink(), err)
	}
	return d, nil
}

func up(ctx context.Context, fs *flag.FlagSet, args []string, out io.Writer) error {
	file := fs.String("f", "", "topology file (YAML)")
	binDir := fs.String("bin-dir", "", "directory of meridian-controller and meridian-agent (default $MERIDIAN_BIN_DIR or the module's bin/)")
	until := fs.String("until", "workloads", "last stage to build: fabric, controller, agents or workloads")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	ovn := fs.Bool("ovn", false, "realize the topology with OVN (OVN central, OVS + ovn-controller per node) instead of eBPF")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" {
		return errors.New("up: -f TOPOLOGY is required")
	}
	stage, err := e2e.ParseStage(*until)
	if err != nil {
		return err
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	topo, err := e2e.LoadTopology(*file)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	r, err := e2e.Up(ctx, topo, e2e.Options{BinDir: *binDir, Until: stage, Log: log, OVN: *ovn})
	if err != nil {
		return err
	}
	_ = os.Remove(currentLink()) // replaced below; absent is fine
	if err := os.Symlink(r.RunDir(), currentLink()); err != nil {
		log.Warn("cannot mark the run as current: pass --run to the other commands", "err", err)
	}
	fmt.Fprintf(out, "run %s up in %s\n", r.RunID(), r.RunDir())
	return status(ctx, r, out)
}

func status(ctx context.Context, r *e2e.Run, out io.Writer) error {
	st := r.State()
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintf(tw, "run %s\tunderlay %s\tcontroller %s\thttp %s\n\n", st.RunID, st.Subnet, r.ControllerEndpoint(), st.HTTP)
	fmt.Fprintln(tw, "PROCESS\tPID\tSTATE\tLOG")
	for _, p := range st.Procs {
		state := "exited"
		if p.Alive() {
			state = "running"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", p.Name, p.PID, state, p.Log)
	}
	fmt.Fprintln(tw, "\nNODE\tUNDERLAY\tNETNS\tATTACHMENTS")
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.Underlay, n.Netns, attachments(ctx, r, n))
	}
	fmt.Fprintln(tw, "\nWORKLOAD\tNODE\tPORT\tIPS\tHOST IF\tNETNS")
	for _, w := range st.Workloads {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", w.Name, w.Node, w.Port, strings.Join(w.IPs, ","), w.HostIf, w.Netns)
	}
	return nil
}

// attachments summarises what a node's agent reports, or why it cannot.
func attachments(ctx context.Context, r *e2e.Run, n e2e.NodeState) string {
	if n.AgentSocket == "" {
		return "(no agent)"
	}
	client, closeConn, err := r.AgentClient(n.Name)
	if err != nil {
		return err.Error()
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := client.ListAttachments(ctx, &agentv1.ListAttachmentsRequest{})
	if err != nil {
		return fmt.Sprintf("(agent: %v)", err)
	}
	var parts []string
	for _, a := range resp.GetAttachments() {
		s := a.GetPort() + "=" + a.GetHostInterface()
		if !a.GetReady() {
			s += " (not ready: " + a.GetError() + ")"
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// execIn runs a command in a namespace with the terminal attached and
// returns its exit code.
func execIn(ctx context.Context, r *e2e.Run, args []string) (int, error) {
	if len(args) < 2 {
		return 2, errors.New("exec: want NAME -- COMMAND...")
	}
	name, argv := args[0], args[1:]
	if argv[0] == "--" {
		argv = argv[1:]
	}
	ns, err := r.Netns(name)
	if err != nil {
		return 1, err
	}
	cmd := e2e.Command(ctx, ns, argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), nil
	}
	return 0, err
}

func probe(ctx context.Context, r *e2e.Run, args []string, out io.Writer) (int, error) {
	if len(args) != 3 {
		return 2, errors.New("probe: want FROM TO icmp|tcp/PORT|udp/PORT")
	}
	f := e2e.Flow{From: args[0], To: args[1], Proto: e2e.Proto(args[2])}
	if proto, port, ok := strings.Cut(args[2], "/"); ok {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return 2, fmt.Errorf("probe: port %q: %w", port, err)
		}
		f.Proto, f.Port = e2e.Proto(proto), uint16(n)
	}
	if err := r.Probe(ctx, f); err != nil {
		fmt.Fprintf(out, "deny: %v\n", err) // the error starts with the flow
		return 1, nil
	}
	fmt.Fprintf(out, "%s: allow\n", f)
	return 0, nil
}
