package agent

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn"
)

// Realization says what forwards the node's traffic.
type Realization string

const (
	// RealizationEBPF: the agent programs Meridian's own eBPF data path.
	RealizationEBPF Realization = "ebpf"
	// RealizationOVN: the controller renders the intent into OVN northbound
	// and the node's ovn-controller programs OVS; the agent only plugs
	// workloads into br-int and reports when OVN has installed them.
	RealizationOVN Realization = "ovn"
)

// ParseRealization accepts "ebpf" (or "", the default) and "ovn".
func ParseRealization(s string) (Realization, error) {
	switch Realization(s) {
	case "", RealizationEBPF:
		return RealizationEBPF, nil
	case RealizationOVN:
		return RealizationOVN, nil
	}
	return "", fmt.Errorf("unknown realization %q (want ebpf or ovn)", s)
}

// IntegrationBridge is the bridge ovn-controller owns on every chassis.
const IntegrationBridge = "br-int"

// ovsTimeout bounds one ovs-vsctl call that does not wait for OVN.
const ovsTimeout = 10 * time.Second

// ovsNode is the node's Open_vSwitch database, as the OVN realization uses
// it. It drives ovs-vsctl rather than libovsdb: the agent needs a handful
// of idempotent commands (--may-exist add-port, --if-exists del-port) and
// one wait (wait-until ovn-installed), which ovs-vsctl does in one call
// each with no monitor to keep; libovsdb would need generated models of the
// Open_vSwitch schema, which the module does not have (controller/ovn/nbdb
// is the northbound schema only), for no gain at a few calls per attach.
type ovsNode struct {
	db string // OVSDB endpoint, e.g. unix:/run/openvswitch/db.sock; "" = ovs-vsctl's default
}

// vsctl runs ovs-vsctl against the node's database and returns its
// trimmed stdout.
func (o *ovsNode) vsctl(ctx context.Context, args ...string) (string, error) {
	argv := []string{}
	if o.db != "" {
		argv = append(argv, "--db="+o.db)
	}
	// ovs-vsctl's own timeout too: ctx alone would kill it without saying
	// that it waited for the database.
	if dl, ok := ctx.Deadline(); ok {
		argv = append(argv, fmt.Sprintf("--timeout=%d", max(1, int(time.Until(dl).Seconds()+0.5))))
	}
	cmd := exec.CommandContext(ctx, "ovs-vsctl", append(argv, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("ovs-vsctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// setup checks that the chassis is this node: ovn-controller registers it
// under external_ids:system-id, and the controller binds ports to it with
// options:requested-chassis=<node ID>, so a chassis with another name would
// never claim them. An unset system-id is set; another one is an error
// rather than renamed under a running ovn-controller. br-int is created on
// the userspace datapath if missing, so a port can be plugged before
// ovn-controller has started.
func (o *ovsNode) setup(ctx context.Context, node string) error {
	ctx, cancel := context.WithTimeout(ctx, ovsTimeout)
	defer cancel()
	id, err := o.vsctl(ctx, "--if-exists", "get", "Open_vSwitch", ".", "external_ids:system-id")
	if err != nil {
		return fmt.Errorf("agent: OVN chassis: %w", err)
	}
	switch id = strings.Trim(id, `"`); id {
	case node:
	case "":
		if _, err := o.vsctl(ctx, "set", "Open_vSwitch", ".", "external_ids:system-id="+node); err != nil {
			return fmt.Errorf("agent: OVN chassis: %w", err)
		}
	default:
		return fmt.Errorf("agent: OVN chassis is %q, want the node ID %q (ports are bound with requested-chassis=%s)", id, node, node)
	}
	if _, err := o.vsctl(ctx, "--may-exist", "add-br", IntegrationBridge, "--",
		"set", "Bridge", IntegrationBridge, "datapath_type=netdev", "fail-mode=secure"); err != nil {
		return fmt.Errorf("agent: OVN integration bridge: %w", err)
	}
	return nil
}

// plug adds the workload's host interface to br-int as the logical port of
// portID and waits until ovn-controller has claimed it and installed its
// flows (Interface external_ids:ovn-installed=true), which is when the
// port forwards.
//
// The workload's interface (ifName in netnsPath) first stops offloading
// transmit checksums: OVS 3.1's userspace datapath takes a veth's partial
// checksums with userspace-tso-enable, but encapsulates them in GENEVE
// unfinished, so TCP and UDP across nodes arrive with bad checksums (ICMP,
// checksummed in full by the kernel, passes).
func (o *ovsNode) plug(ctx context.Context, hostIf string, portID uint32, netnsPath, ifName string) error {
	if out, err := exec.CommandContext(ctx, "nsenter", "--net="+netnsPath, "--", "ethtool", "-K", ifName, "tx", "off").CombinedOutput(); err != nil {
		return fmt.Errorf("turn off checksum offload on %s in %s: %w: %s", ifName, netnsPath, err, bytes.TrimSpace(out))
	}
	lsp := ovn.LogicalPortName(portID)
	if _, err := o.vsctl(ctx, "--may-exist", "add-port", IntegrationBridge, hostIf, "--",
		"set", "Interface", hostIf, "external_ids:iface-id="+lsp); err != nil {
		return fmt.Errorf("plug %s into %s as %s: %w", hostIf, IntegrationBridge, lsp, err)
	}
	if _, err := o.vsctl(ctx, "wait-until", "Interface", hostIf, "external_ids:ovn-installed=true"); err != nil {
		return fmt.Errorf("%s (%s) plugged but OVN did not install it: %w", hostIf, lsp, err)
	}
	return nil
}

// unplug removes the host interface from br-int; one already gone is fine.
func (o *ovsNode) unplug(ctx context.Context, hostIf string) error {
	ctx, cancel := context.WithTimeout(ctx, ovsTimeout)
	defer cancel()
	if _, err := o.vsctl(ctx, "--if-exists", "del-port", IntegrationBridge, hostIf); err != nil {
		return fmt.Errorf("unplug %s: %w", hostIf, err)
	}
	return nil
}

// installed returns the interfaces of br-int that OVN has installed, by
// iface-id, in one call.
func (o *ovsNode) installed(ctx context.Context) (map[string]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, ovsTimeout)
	defer cancel()
	out, err := o.vsctl(ctx, "--bare", "--columns=external_ids", "find", "Interface", "external_ids:ovn-installed=true")
	if err != nil {
		return nil, err
	}
	got := map[string]bool{}
	for _, f := range strings.Fields(out) {
		if id, ok := strings.CutPrefix(f, "iface-id="); ok {
			got[strings.Trim(id, `",`)] = true
		}
	}
	return got, nil
}

// reconcileOVN is reconcile for the OVN realization. The controller writes
// policy into OVN northbound, so the agent installs nothing; it re-plugs
// attachments whose port is missing from br-int (after an OVS restart, or
// removed by hand) and marks each ready when OVN has installed it.
func (a *Agent) reconcileOVN(desired map[string]*agentv1.Object, attach map[string]*attachment) (applied, map[string]string) {
	v := agentv1.IndexObjects(desired)
	errs := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), ovsTimeout)
	defer cancel()
	installed, err := a.ovs.installed(ctx)
	for _, at := range attach {
		p, ok := v.Ports[at.PortID]
		switch {
		case !ok || p.Node != a.cfg.Node:
			at.Ready, at.Error = false, "port is not bound to this node in the desired state"
		case err != nil:
			at.Ready, at.Error = false, err.Error()
		case installed[ovn.LogicalPortName(at.PortID)]:
			at.Ready, at.Error = true, ""
		default:
			// Plugging is idempotent and does not wait here: the reconcile
			// loop must not block on one port.
			_, perr := a.ovs.vsctl(ctx, "--may-exist", "add-port", IntegrationBridge, at.HostIf, "--",
				"set", "Interface", at.HostIf, "external_ids:iface-id="+ovn.LogicalPortName(at.PortID))
			at.Ready, at.Error = false, "not installed by OVN yet"
			if perr != nil {
				at.Error = perr.Error()
				errs[fmt.Sprintf("port/%d", at.PortID)] = perr.Error()
			}
		}
	}
	if a.ovnflow != nil {
		a.ovnflow.apply(desired, v, a.cfg.Node, func(key string, err error) { errs[key] = err.Error() })
	}
	return newApplied(), errs
}
