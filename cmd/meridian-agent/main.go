// Command meridian-agent is Meridian's node agent: it programs this node's
// eBPF data path from the controller's desired state (or, with
// --realization ovn, plugs workloads into OVS's br-int for ovn-controller)
// and serves the compute layer's AttachPort/DetachPort API on a unix socket.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/meridian-sdn/meridian/dataplane/agent"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "meridian-agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("meridian-agent", flag.ContinueOnError)
	node := fs.String("node", "", "node ID (nodes/{node}); default: the host name")
	ctl := fs.String("controller", "127.0.0.1:7443", "controller gRPC address: host:port or unix:/path")
	token := fs.String("token", "", "bearer token of the node's identity (or MERIDIAN_TOKEN, or --token-file)")
	tokenFile := fs.String("token-file", "", "file holding the bearer token")
	underlay := fs.String("underlay-ip", "", "this node's tunnel endpoint (IPv4)")
	socket := fs.String("socket", "/run/meridian/agent.sock", "unix socket of the local AttachPort/DetachPort API")
	bpffs := fs.String("bpffs", "/sys/fs/bpf/meridian", "bpffs directory for this node's pinned maps and links")
	stateDir := fs.String("state-dir", "", "directory for state that survives restarts (default /run/meridian/<node>)")
	metrics := fs.String("metrics", "", "address for /metrics and /healthz (empty: off)")
	roles := fs.String("roles", "compute", "comma-separated roles: compute, gateway, load-balancer")
	uplink := fs.String("uplink", "", "gateway nodes: interface toward the fabric where elastic IPs and NAT gateways are served (unless the Gateway object names one)")
	realization := fs.String("realization", "ebpf", "what forwards this node's traffic: ebpf (Meridian's data path) or ovn (OVS/OVN, programmed by ovn-controller)")
	ovnLog := fs.String("ovn-controller-log", "", "with --realization ovn: ovn-controller's log file, whose acl_log lines become flow-log records (default "+agent.DefaultOVNControllerLog+"; \"none\": no flow logs on this node)")
	ovsDB := fs.String("ovs-db", "", "with --realization ovn: the node's Open_vSwitch database, e.g. unix:/run/openvswitch/db.sock (default: ovs-vsctl's)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToUpper(*logLevel))); err != nil {
		return fmt.Errorf("--log-level %q: %w", *logLevel, err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *node == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--node not given and no host name: %w", err)
		}
		*node = h
	}
	tok := *token
	if tok == "" {
		tok = os.Getenv("MERIDIAN_TOKEN")
	}
	if *tokenFile != "" {
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	ip, err := netip.ParseAddr(*underlay)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("--underlay-ip %q: an IPv4 address is required", *underlay)
	}
	re, err := agent.ParseRealization(*realization)
	if err != nil {
		return fmt.Errorf("--realization: %w", err)
	}
	switch {
	case *ovnLog == "none":
		*ovnLog = ""
	case re != agent.RealizationOVN && *ovnLog != "":
		return fmt.Errorf("--ovn-controller-log needs --realization ovn (eBPF nodes log flows from their data path)")
	case re == agent.RealizationOVN && *ovnLog == "":
		*ovnLog = agent.DefaultOVNControllerLog
	}
	if *stateDir == "" {
		*stateDir = filepath.Join("/run/meridian", *node)
	}
	var rl []string
	for _, r := range strings.Split(*roles, ",") {
		if r = strings.TrimSpace(r); r != "" {
			rl = append(rl, r)
		}
	}
	a, err := agent.New(agent.Config{
		Node: *node, Controller: *ctl, Token: tok, UnderlayIP: ip, Socket: *socket, BPFFS: *bpffs,
		StateDir: *stateDir, Metrics: *metrics, Roles: rl, Version: "dev", Log: log,
		Realization: re, OVSDB: *ovsDB, Uplink: *uplink, OVNControllerLog: *ovnLog,
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return a.Run(ctx)
}
