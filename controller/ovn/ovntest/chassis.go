package ovntest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Chassis is one hypervisor of a Stack: its own Open_vSwitch database,
// ovs-vswitchd on the userspace datapath (the kernel one does not exist
// here) and ovn-controller, registered with the stack's SB as Name.
type Chassis struct {
	Name   string
	Dir    string
	RunDir string
	db     *DB
	vsd    *proc
	ctl    *proc
	stack  *Stack
	t      testing.TB
	netns  []string
	links  []string
}

const vswitchSchema = "/usr/share/openvswitch/vswitch.ovsschema"

// StartChassis starts a chassis named name and waits until it has
// registered in SB. Everything is stopped, and its namespaces and links
// removed, in t.Cleanup.
func (s *Stack) StartChassis(name string) *Chassis {
	t := s.t
	t.Helper()
	for _, b := range []string{"ovs-vswitchd", "ovs-vsctl", "ovn-controller", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Fatalf("ovntest: missing %s: apt-get install -y ovn-host openvswitch-switch iproute2", b)
		}
	}
	runDir, err := os.MkdirTemp("", "mer-hv-")
	if err != nil {
		t.Fatalf("ovntest: %v", err)
	}
	c := &Chassis{Name: name, Dir: t.TempDir(), RunDir: runDir, stack: s, t: t}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	t.Cleanup(c.stop)
	c.db = &DB{Name: "conf", File: filepath.Join(c.Dir, "conf.db"), Socket: filepath.Join(runDir, "db.sock"),
		Log: filepath.Join(c.Dir, "ovsdb.log"), rundir: runDir}
	if out, err := exec.Command("ovsdb-tool", "create", c.db.File, vswitchSchema).CombinedOutput(); err != nil {
		t.Fatalf("ovntest: ovsdb-tool create: %v: %s", err, out)
	}
	if err := c.db.start(c.env()); err != nil {
		t.Fatalf("ovntest: chassis %s: %v", name, err)
	}
	c.VsCtl("--no-wait", "init")
	c.VsCtl("--no-wait", "set", "Open_vSwitch", ".",
		"external_ids:system-id="+name,
		"external_ids:ovn-remote="+s.SB.Endpoint(),
		"external_ids:ovn-encap-type=geneve",
		"external_ids:ovn-encap-ip=127.0.0.1",
		"external_ids:ovn-bridge-datapath-type=netdev",
		"other_config:userspace-tso-enable=true")
	c.vsd, err = startProc("ovs-vswitchd "+name, c.env(), "ovs-vswitchd", c.db.Endpoint(),
		"--unixctl="+filepath.Join(runDir, "ovs-vswitchd.ctl"), "--pidfile="+filepath.Join(runDir, "ovs-vswitchd.pid"),
		"--log-file="+filepath.Join(c.Dir, "ovs-vswitchd.log"), "--no-chdir")
	if err != nil {
		t.Fatalf("ovntest: %v", err)
	}
	// br-int exists before ovn-controller starts, on the userspace datapath.
	c.VsCtl("--may-exist", "add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
		"fail-mode=secure", "other-config:disable-in-band=true")
	c.ctl, err = startProc("ovn-controller "+name, c.env(), "ovn-controller", c.db.Endpoint(),
		"--pidfile="+filepath.Join(runDir, "ovn-controller.pid"),
		"--log-file="+filepath.Join(c.Dir, "ovn-controller.log"), "--no-chdir")
	if err != nil {
		t.Fatalf("ovntest: %v", err)
	}
	err = waitFor(c.ctl, func() error {
		out, err := s.Ctl("ovn-sbctl", s.SB, "--bare", "--columns=name", "find", "Chassis", "name="+name)
		if err != nil {
			return err
		}
		if out != name {
			return fmt.Errorf("chassis %s not in SB yet", name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ovntest: chassis %s did not register: %v (logs in %s)", name, err, c.Dir)
	}
	return c
}

// env points OVS and OVN at the chassis' own directories: ovn-controller
// 23.03 has no --unixctl and finds br-int.mgmt through OVS_RUNDIR.
func (c *Chassis) env() []string {
	env := os.Environ()
	for _, v := range []string{"OVS_RUNDIR", "OVN_RUNDIR"} {
		env = append(env, v+"="+c.RunDir)
	}
	for _, v := range []string{"OVS_LOGDIR", "OVS_DBDIR", "OVN_LOGDIR", "OVN_DBDIR"} {
		env = append(env, v+"="+c.Dir)
	}
	return env
}

// VsCtl runs ovs-vsctl against the chassis' database.
func (c *Chassis) VsCtl(args ...string) string {
	c.t.Helper()
	cmd := exec.Command("ovs-vsctl", append([]string{"--db=" + c.db.Endpoint(), "--timeout=30"}, args...)...)
	cmd.Env = c.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("ovntest: ovs-vsctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// Workload is a network namespace plugged into br-int as a logical port.
type Workload struct {
	Netns string
	c     *Chassis
}

// Plug creates a namespace with interface eth0 (mac, ip/prefix, default
// route via gw) and plugs the host end of its veth into br-int with
// iface-id = logicalPort, which binds the port to this chassis.
func (c *Chassis) Plug(logicalPort, mac, ipPrefix, gw string) *Workload {
	c.t.Helper()
	suffix := randHex(3)
	ns, host := "mer-w-"+suffix, "mer-h-"+suffix
	c.netns = append(c.netns, ns)
	c.links = append(c.links, host)
	run(c.t, "ip", "netns", "add", ns)
	run(c.t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
	run(c.t, "ip", "-n", ns, "link", "set", "eth0", "address", mac)
	run(c.t, "ip", "-n", ns, "addr", "add", ipPrefix, "dev", "eth0")
	run(c.t, "ip", "-n", ns, "link", "set", "eth0", "up")
	run(c.t, "ip", "-n", ns, "link", "set", "lo", "up")
	run(c.t, "ip", "-n", ns, "route", "add", "default", "via", gw)
	run(c.t, "ip", "link", "set", host, "up")
	c.VsCtl("add-port", "br-int", host, "--", "set", "Interface", host, "external_ids:iface-id="+logicalPort)
	return &Workload{Netns: ns, c: c}
}

// Exec runs a command in the workload's namespace and returns its error
// and combined output.
func (w *Workload) Exec(argv ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", w.Netns}, argv...)...).CombinedOutput()
	return string(out), err
}

// WaitUp waits until OVN reports the logical port up (bound and its flows
// installed by ovn-controller).
func (c *Chassis) WaitUp(logicalPort string) {
	c.t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		out, err := c.stack.Ctl("ovn-nbctl", c.stack.NB, "lsp-get-up", logicalPort)
		if err == nil && out == "up" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("ovntest: %s not up after %v (%q, %v; logs in %s)", logicalPort, startTimeout, out, err, c.Dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *Chassis) stop() {
	c.ctl.stop()
	if c.vsd != nil {
		// vswitchd's userspace ports are persistent: --cleanup removes them.
		cmd := exec.Command("ovs-appctl", "-t", filepath.Join(c.RunDir, "ovs-vswitchd.ctl"), "exit", "--cleanup")
		cmd.Env = c.env()
		_ = cmd.Run()
		select {
		case <-c.vsd.done:
		case <-time.After(5 * time.Second):
		}
		c.vsd.stop()
	}
	if c.db != nil {
		c.db.srv.stop()
	}
	for _, l := range c.links {
		_ = exec.Command("ip", "link", "del", l).Run()
	}
	for _, ns := range c.netns {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

func run(t testing.TB, argv ...string) {
	t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("ovntest: %s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
