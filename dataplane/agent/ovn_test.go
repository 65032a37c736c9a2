package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/controller/ovn"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

func TestParseRealization(t *testing.T) {
	for in, want := range map[string]Realization{"": RealizationEBPF, "ebpf": RealizationEBPF, "ovn": RealizationOVN} {
		if got, err := ParseRealization(in); err != nil || got != want {
			t.Errorf("ParseRealization(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseRealization("dpdk"); err == nil {
		t.Error(`ParseRealization("dpdk") succeeded, want an error`)
	}
}

// TestOVSNodePlug runs the OVN realization's OVS side against a real
// chassis (ovsdb-server, userspace ovs-vswitchd, ovn-controller): the
// chassis must be the node, plug returns only once OVN has installed the
// port, and unplug takes it out of br-int.
func TestOVSNodePlug(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	const node, portID = "node-a", 7
	c := stack.StartChassis(node)
	o := &ovsNode{db: "unix:" + filepath.Join(c.RunDir, "db.sock")}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	if err := o.setup(ctx, "node-b"); err == nil || !strings.Contains(err.Error(), `"node-a"`) {
		t.Fatalf("setup as another node: %v, want an error naming the chassis", err)
	}
	if err := o.setup(ctx, node); err != nil {
		t.Fatal(err)
	}

	lsp := ovn.LogicalPortName(portID)
	stack.NBCtl("ls-add", "sw", "--", "lsp-add", "sw", lsp, "--",
		"lsp-set-addresses", lsp, "02:4d:52:00:00:07 10.9.0.7", "--",
		"lsp-set-options", lsp, "requested-chassis="+node)
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	ns, host := "mer-at-"+hex.EncodeToString(suffix), "mer-ah-"+hex.EncodeToString(suffix)
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() })
	run("ip", "link", "set", host, "up")

	start := time.Now()
	if err := o.plug(ctx, host, portID, "/run/netns/"+ns, "eth0"); err != nil {
		t.Fatal(err)
	}
	t.Logf("plugged and installed by OVN in %s", time.Since(start).Round(time.Millisecond))
	got, err := o.installed(ctx)
	if err != nil || !got[lsp] {
		t.Fatalf("installed() = %v, %v; want %s", got, err, lsp)
	}
	if ch := stack.SBCtl("--bare", "--columns=chassis", "find", "Port_Binding", "logical_port="+lsp); ch == "" {
		t.Errorf("Port_Binding of %s has no chassis after plug returned", lsp)
	}
	// Checksum offload is off on the workload end (see plug).
	out, err := exec.Command("ip", "netns", "exec", ns, "ethtool", "-k", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tx-checksumming: off") {
		t.Errorf("eth0 offloads after plug: %v\n%s", err, out)
	}

	if err := o.unplug(ctx, host); err != nil {
		t.Fatal(err)
	}
	if err := o.unplug(ctx, host); err != nil {
		t.Errorf("second unplug: %v, want nothing to do", err)
	}
	if got, err := o.installed(ctx); err != nil || got[lsp] {
		t.Errorf("installed() after unplug = %v, %v; want without %s", got, err, lsp)
	}
}
