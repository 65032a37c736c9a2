package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// The OVN realization of a run (Options.OVN): the run starts OVN's central
// stack (NB and SB ovsdb-servers, ovn-northd) in the root namespace, and
// in each node's namespace an Open_vSwitch database, ovs-vswitchd on the
// userspace datapath (the kernel has no openvswitch module here) and
// ovn-controller registered as chassis <node name>. The controller runs
// with --ovn-nb and the agents with --realization ovn: the same intent and
// the same AttachPort calls, realized by OVN instead of the eBPF data path.
//
// Everything talks over unix sockets in the run directory, which every
// namespace reaches through the filesystem. Every daemon is a process of
// the run (stopped by Close in reverse start order) and logs to the
// console, i.e. to its log in the run directory. OVS_RUNDIR and friends
// point at the run's own directories, so nothing touches the system's
// /var/run/openvswitch. ovs-vswitchd stops on SIGTERM like the rest,
// without `exit --cleanup`: its persistent tap devices (br-int, br-phy)
// are in the node's namespace, and go when Close deletes it.
//
// Tunnels: the kernel has no GENEVE (nor the openvswitch module), but
// userspace OVS encapsulates GENEVE itself ("native tunnelling"). That
// needs the tunnel's underlay route to leave through an OVS bridge: each
// node's underlay address moves from uplink0 to br-phy, a netdev bridge
// with uplink0 as its port. GENEVE is what OVN 23.03 prefers and works
// this way, so there is no VXLAN fallback.
//
// What differs from the eBPF realization, as the scenarios meet it:
//   - OVN lets replies of an allowed connection bypass every ACL, so a
//     stateless network ACL does not filter them (controller/ovn's doc).
//   - Workload interfaces do not offload transmit checksums (the agent's
//     plug, dataplane/agent/ovn.go): OVS 3.1 would encapsulate partial
//     checksums in GENEVE unfinished.
//   - The agent is off the data path: killing it (scenario 6) stops no
//     packet, and a moved port (scenario 5) is reachable once
//     ovn-controller on the new node has installed it, which is when
//     AttachPort returns.
//   - The node's underlay address lives on br-phy, not uplink0.

// OVN tools and schemas (Debian's ovn-central, ovn-host, openvswitch-switch).
const (
	ovnNBSchema      = "/usr/share/ovn/ovn-nb.ovsschema"
	ovnSBSchema      = "/usr/share/ovn/ovn-sb.ovsschema"
	ovsVswitchSchema = "/usr/share/openvswitch/vswitch.ovsschema"
	ovnEncapType     = "geneve"
	physBridge       = "br-phy"
)

var ovnBinaries = []string{"ovsdb-tool", "ovsdb-server", "ovn-northd", "ovn-nbctl", "ovn-sbctl",
	"ovs-vswitchd", "ovs-vsctl", "ovn-controller"}

// checkOVN names what to install when OVN is missing.
func checkOVN() error {
	var missing []string
	for _, b := range ovnBinaries {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	for _, f := range []string{ovnNBSchema, ovnSBSchema, ovsVswitchSchema} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("OVN realization: missing %s: apt-get install -y ovn-central ovn-host openvswitch-switch (`make test` does it)",
			strings.Join(missing, ", "))
	}
	return nil
}

// ovnDir is the directory of the central stack (""), or of a node's OVS.
// Short names: unix socket paths are limited to 107 bytes.
func (r *Run) ovnDir(node string) string {
	if node == "" {
		return filepath.Join(r.st.RunDir, "ovn")
	}
	return filepath.Join(r.st.RunDir, "ovs-"+node)
}

func (r *Run) ovnNBSocket() string { return filepath.Join(r.ovnDir(""), "nb.sock") }
func (r *Run) ovnSBSocket() string { return filepath.Join(r.ovnDir(""), "sb.sock") }

// ovsDBSocket is a node's Open_vSwitch database.
func (r *Run) ovsDBSocket(node string) string { return filepath.Join(r.ovnDir(node), "db.sock") }

// ovsEnv prefixes argv with env settings that keep OVS and OVN in dir:
// ovn-controller 23.03 has no --unixctl and finds br-int.mgmt through
// OVS_RUNDIR.
func ovsEnv(dir string, argv ...string) []string {
	env := []string{"env"}
	for _, v := range []string{"OVS_RUNDIR", "OVN_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVN_LOGDIR", "OVN_DBDIR"} {
		env = append(env, v+"="+dir)
	}
	return append(env, argv...)
}

// ovsTool runs an ovs-vsctl-like tool against db and returns its trimmed
// output.
func ovsTool(ctx context.Context, tool, db string, args ...string) (string, error) {
	argv := append([]string{"--db=unix:" + db, "--timeout=30"}, args...)
	out, err := exec.CommandContext(ctx, tool, argv...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// createDB creates a fresh database file from a schema.
func createDB(ctx context.Context, file, schema string) error {
	if out, err := exec.CommandContext(ctx, "ovsdb-tool", "create", file, schema).CombinedOutput(); err != nil {
		return fmt.Errorf("ovsdb-tool create %s: %w: %s", file, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// startOVSDB starts an ovsdb-server named name on a fresh database of
// schema, serving socket, with prefix before its command line (nsenter).
func (r *Run) startOVSDB(ctx context.Context, name, dir, schema, socket string, prefix ...string) error {
	file := filepath.Join(dir, strings.TrimSuffix(filepath.Base(socket), ".sock")+".db")
	if err := createDB(ctx, file, schema); err != nil {
		return err
	}
	argv := append(prefix, ovsEnv(dir, "ovsdb-server", "--remote=punix:"+socket,
		"--unixctl="+strings.TrimSuffix(socket, ".sock")+".ctl", "-vconsole:info", "-vsyslog:off", "--no-chdir", file)...)
	return r.spawn(ctx, name, socket, argv)
}

// startOVNCentral starts NB, SB and ovn-northd for the run.
func (r *Run) startOVNCentral(ctx context.Context, _ Topology) error {
	if err := checkOVN(); err != nil {
		return err
	}
	dir := r.ovnDir("")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("OVN directory: %w", err)
	}
	if err := r.startOVSDB(ctx, "ovn-nb", dir, ovnNBSchema, r.ovnNBSocket()); err != nil {
		return err
	}
	if err := r.startOVSDB(ctx, "ovn-sb", dir, ovnSBSchema, r.ovnSBSocket()); err != nil {
		return err
	}
	// NB_Global is what northd and `--wait` work from.
	if _, err := ovsTool(ctx, "ovn-nbctl", r.ovnNBSocket(), "init"); err != nil {
		return err
	}
	ctl := filepath.Join(dir, "northd.ctl")
	argv := ovsEnv(dir, "ovn-northd", "--ovnnb-db=unix:"+r.ovnNBSocket(), "--ovnsb-db=unix:"+r.ovnSBSocket(),
		"--unixctl="+ctl, "-vconsole:info", "-vsyslog:off", "--no-chdir")
	return r.spawn(ctx, "ovn-northd", ctl, argv)
}

// startOVNChassis starts every node's OVS and ovn-controller, together.
func (r *Run) startOVNChassis(ctx context.Context, topo Topology) error {
	st := r.State()
	errs := make([]error, len(st.Nodes))
	var wg sync.WaitGroup
	for i, n := range st.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.startChassis(ctx, n, topo.underlayMTU()); err != nil {
				errs[i] = fmt.Errorf("node %s: OVN chassis: %w", n.Name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *Run) startChassis(ctx context.Context, n NodeState, mtu int) error {
	dir := r.ovnDir(n.Name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("OVS directory: %w", err)
	}
	inNode := []string{"nsenter", "--net=" + netnsPath(n.Netns), "--"}
	db := r.ovsDBSocket(n.Name)
	if err := r.startOVSDB(ctx, n.Name+"-ovsdb", dir, ovsVswitchSchema, db, inNode...); err != nil {
		return err
	}
	vsctl := func(args ...string) error {
		_, err := ovsTool(ctx, "ovs-vsctl", db, args...)
		return err
	}
	// The chassis is named after the node: the controller binds ports with
	// options:requested-chassis=<node ID>.
	if err := vsctl("--no-wait", "init", "--", "set", "Open_vSwitch", ".",
		"external_ids:system-id="+n.Name,
		"external_ids:ovn-remote=unix:"+r.ovnSBSocket(),
		"external_ids:ovn-encap-type="+ovnEncapType,
		"external_ids:ovn-encap-ip="+n.Underlay.String(),
		"external_ids:ovn-bridge-datapath-type=netdev",
		// Without it TCP over veth fails on partial checksums.
		"other_config:userspace-tso-enable=true"); err != nil {
		return err
	}
	ctl := filepath.Join(dir, "vswitchd.ctl")
	if err := r.spawn(ctx, n.Name+"-vswitchd", ctl, append(inNode, ovsEnv(dir, "ovs-vswitchd", "unix:"+db,
		"--unixctl="+ctl, "-vconsole:info", "-vsyslog:off", "--no-chdir")...)); err != nil {
		return err
	}
	if err := r.underlayOnBridge(ctx, n, mtu, vsctl); err != nil {
		return err
	}
	// br-int exists before ovn-controller starts, on the userspace datapath.
	if err := vsctl("--may-exist", "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
		"fail-mode=secure", "other-config:disable-in-band=true"); err != nil {
		return err
	}
	// Ready once registered in SB: from then on it claims the node's ports.
	registered := func() error {
		out, err := ovsTool(ctx, "ovn-sbctl", r.ovnSBSocket(), "--bare", "--columns=name", "find", "Chassis", "name="+n.Name)
		if err == nil && out != n.Name {
			err = fmt.Errorf("chassis %s not in SB yet", n.Name)
		}
		return err
	}
	return r.spawnReady(ctx, n.Name+"-ovn-controller", db, append(inNode, ovsEnv(dir, "ovn-controller", "unix:"+db,
		"-vconsole:info", "-vsyslog:off", "--no-chdir")...), registered)
}

// underlayOnBridge moves the node's underlay address from uplink0 to
// br-phy, with uplink0 as br-phy's port, so that userspace OVS can route
// and encapsulate tunnel packets itself. br-phy gets a MAC of its own: with
// uplink0's, frames for it would reach the kernel twice (on uplink0 and on
// br-phy); and uplink0, left without an address, must not answer ARP for
// br-phy's.
func (r *Run) underlayOnBridge(ctx context.Context, n NodeState, mtu int, vsctl func(...string) error) error {
	mac := underlayBridgeMAC(n.Underlay)
	if err := vsctl("--may-exist", "add-br", physBridge, "--", "set", "Bridge", physBridge, "datapath_type=netdev",
		"other-config:hwaddr="+mac, "--", "--may-exist", "add-port", physBridge, uplinkName); err != nil {
		return err
	}
	prefix := netip.PrefixFrom(n.Underlay, r.st.Subnet.Bits()).String()
	for _, argv := range [][]string{
		{"sysctl", "-qw", "net.ipv4.conf." + uplinkName + ".arp_ignore=1"},
		{"ip", "addr", "del", prefix, "dev", uplinkName},
		{"ip", "link", "set", physBridge, "mtu", fmt.Sprint(mtu), "up"},
		{"ip", "addr", "add", prefix, "dev", physBridge},
	} {
		if _, err := Exec(ctx, n.Netns, argv...); err != nil {
			return err
		}
	}
	return nil
}

// underlayBridgeMAC is a locally administered MAC unique in the run's /24.
func underlayBridgeMAC(ip netip.Addr) string {
	a := ip.As4()
	return fmt.Sprintf("02:4d:4f:%02x:%02x:%02x", a[1], a[2], a[3])
}

// ovnControllerArgs are the controller's extra flags in the OVN realization.
func (r *Run) ovnControllerArgs() []string {
	if !r.opts.OVN {
		return nil
	}
	return []string{"--ovn-nb", "unix:" + r.ovnNBSocket()}
}

// ovnAgentArgs are a node agent's extra flags in the OVN realization.
func (r *Run) ovnAgentArgs(node string) []string {
	if !r.opts.OVN {
		return nil
	}
	return []string{"--realization", "ovn", "--ovs-db", "unix:" + r.ovsDBSocket(node)}
}
