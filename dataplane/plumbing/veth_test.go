package plumbing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func baseSpec(workload string) WorkloadSpec {
	return WorkloadSpec{
		HostName:  "mp42",
		NetnsPath: workload,
		MAC:       net.HardwareAddr{0x02, 0, 0, 0, 0, 0x2a},
		Addrs:     []netip.Prefix{netip.MustParsePrefix("10.0.1.11/24")},
		Gateway:   netip.MustParseAddr("10.0.1.1"),
		MTU:       1450,
	}
}

// TestEnsureWorkloadVethConverges walks one pair through the changes an
// agent makes over a port's life; after every step the kernel must match
// the spec exactly.
func TestEnsureWorkloadVethConverges(t *testing.T) {
	node, workload := newNetns(t, "node"), newNetns(t, "wl")
	spec := baseSpec(workload)
	steps := []convergeStep[WorkloadSpec]{
		{name: "creates the pair", wantCreated: true},
		{name: "second ensure changes nothing"},
		{name: "new MTU is set on both ends", edit: func(s *WorkloadSpec) { s.MTU = 1400 },
			wantChanges: []string{"mp42: mtu 1450 -> 1400", "eth0: mtu 1450 -> 1400"}},
		{name: "unset MTU means 1500", edit: func(s *WorkloadSpec) { s.MTU = 0 },
			wantChanges: []string{"mp42: mtu 1400 -> 1500", "eth0: mtu 1400 -> 1500"}},
		{name: "new address replaces the old one", edit: func(s *WorkloadSpec) { s.Addrs = []netip.Prefix{netip.MustParsePrefix("10.0.1.12/24")} },
			wantChanges: []string{"eth0: address 10.0.1.11/24 removed", "eth0: address 10.0.1.12/24 added"}},
		{name: "new MAC is set on the workload end", edit: func(s *WorkloadSpec) { s.MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x2b} },
			wantChanges: []string{"eth0: mac 02:00:00:00:00:2a -> 02:00:00:00:00:2b"}},
		{name: "new gateway replaces the default route", edit: func(s *WorkloadSpec) { s.Gateway = netip.MustParseAddr("10.0.1.254") },
			wantChanges: []string{"eth0: default route via 10.0.1.254"}},
		{name: "host end set down is brought up", disturb: func(t *testing.T) { setDown(t, "mp42") },
			wantChanges: []string{"mp42: up"}},
		{name: "rp_filter turned on is turned off", disturb: func(t *testing.T) { writeSysctl(t, "net/ipv4/conf/mp42/rp_filter", "1") },
			wantChanges: []string{"sysctl net/ipv4/conf/mp42/rp_filter=0"}},
		{name: "deleted pair is recreated", disturb: func(t *testing.T) {
			if err := DeleteWorkloadVeth("mp42"); err != nil {
				t.Fatal(err)
			}
		}, wantCreated: true},
	}
	runConvergeSteps(t, node, spec, steps, EnsureWorkloadVeth, func(t *testing.T, spec WorkloadSpec, res Result) {
		checkPair(t, spec, res.Index)
	})
}

// checkPair asserts that the kernel holds exactly what spec says, from the
// calling thread's (node) namespace.
func checkPair(t *testing.T, spec WorkloadSpec, hostIndex int) {
	t.Helper()
	spec, err := spec.normalize()
	if err != nil {
		t.Fatal(err)
	}
	host, err := netlink.LinkByName(spec.HostName)
	if err != nil {
		t.Fatalf("host end: %v", err)
	}
	if host.Attrs().Index != hostIndex || host.Type() != "veth" || host.Attrs().MTU != spec.MTU || host.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host end: index %d (result %d), type %s, mtu %d, flags %v", host.Attrs().Index, hostIndex, host.Type(), host.Attrs().MTU, host.Attrs().Flags)
	}
	if addrs, _ := netlink.AddrList(host, netlink.FAMILY_ALL); len(addrs) != 0 {
		t.Errorf("host end has addresses %v, want none", addrs)
	}
	if v := readSysctlHere(t, "net/ipv4/conf/"+spec.HostName+"/rp_filter"); v != "0" {
		t.Errorf("host end rp_filter = %s", v)
	}

	ns, err := netns.GetFromPath(spec.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	wl, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer wl.Close()
	eth, err := wl.LinkByName("eth0")
	if err != nil {
		t.Fatalf("workload end: %v", err)
	}
	a := eth.Attrs()
	if a.HardwareAddr.String() != spec.MAC.String() || a.MTU != spec.MTU || a.Flags&net.FlagUp == 0 || a.ParentIndex != hostIndex {
		t.Errorf("workload end: mac %s, mtu %d, flags %v, peer %d; want %s, %d, up, %d", a.HardwareAddr, a.MTU, a.Flags, a.ParentIndex, spec.MAC, spec.MTU, hostIndex)
	}
	addrs, err := wl.AddrList(eth, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Prefix
	for _, ad := range addrs {
		p, _ := prefixOf(ad.IPNet)
		got = append(got, p)
	}
	if !slices.Equal(got, spec.Addrs) {
		t.Errorf("workload addresses %v, want %v (and no IPv6 link-local)", got, spec.Addrs)
	}
	routes, err := wl.RouteList(eth, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return isDefault(r.Dst) && r.Gw.String() == spec.Gateway.String() && r.Flags&int(netlink.FLAG_ONLINK) != 0
	}) {
		t.Errorf("no on-link default route via %s in %v", spec.Gateway, routes)
	}
	if v := readSysctlIn(t, spec.NetnsPath, "net", "ipv6", "conf", "eth0", "disable_ipv6"); v != "1" {
		t.Errorf("workload disable_ipv6 = %s", v)
	}
}

func readSysctlHere(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc/sys", key))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func writeSysctl(t *testing.T, key, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
		t.Fatal(err)
	}
}

func setDown(t *testing.T, name string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetDown(l)
	}
	if err != nil {
		t.Fatalf("set %s down: %v", name, err)
	}
}

// TestEnsureWorkloadVethNetnsGone: when the workload's namespace has gone,
// however it went, ensuring the port removes the host end and says why.
func TestEnsureWorkloadVethNetnsGone(t *testing.T) {
	tests := []struct {
		name   string
		remove func(path string) error
	}{
		{"namespace deleted", func(path string) error {
			out, err := exec.Command("ip", "netns", "del", filepath.Base(path)).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			return nil
		}},
		// What a crashed runtime can leave: the file without the namespace.
		{"namespace unmounted, file left", func(path string) error { return unix.Unmount(path, unix.MNT_DETACH) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			node, workload := newNetns(t, "node"), newNetns(t, "wl")
			enterNetns(t, node)
			spec := baseSpec(workload)
			if _, err := EnsureWorkloadVeth(spec); err != nil {
				t.Fatal(err)
			}
			if err := tc.remove(workload); err != nil {
				t.Fatalf("remove %s: %v", workload, err)
			}
			_, err := EnsureWorkloadVeth(spec)
			if !errors.Is(err, ErrNetnsGone) {
				t.Fatalf("EnsureWorkloadVeth: %v, want ErrNetnsGone", err)
			}
			if l, err := lookupLink(mustHandle(t), spec.HostName); err != nil || l != nil {
				t.Errorf("host end still there (%v) or lookup failed: %v", l, err)
			}
			if err := DeleteWorkloadVeth(spec.HostName); err != nil {
				t.Errorf("DeleteWorkloadVeth of a missing pair: %v, want nil", err)
			}
		})
	}
}

func mustHandle(t *testing.T) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// TestEnsureWorkloadVethRefuses: specs that cannot be realised, or that
// would take over a device that is not Meridian's, fail and change nothing.
func TestEnsureWorkloadVethRefuses(t *testing.T) {
	node, workload := newNetns(t, "node"), newNetns(t, "wl")
	tests := []struct {
		name    string
		edit    func(s *WorkloadSpec)
		setup   func(t *testing.T, s WorkloadSpec)
		wantErr string
	}{
		{name: "host name longer than 15 bytes", edit: func(s *WorkloadSpec) { s.HostName = "mp1234567890123456" }, wantErr: "want 1 to 15 bytes"},
		{name: "short MAC", edit: func(s *WorkloadSpec) { s.MAC = s.MAC[:4] }, wantErr: "not a 48-bit address"},
		{name: "MTU below the IPv4 minimum", edit: func(s *WorkloadSpec) { s.MTU = 60 }, wantErr: "out of range"},
		{name: "no namespace path", edit: func(s *WorkloadSpec) { s.NetnsPath = "" }, wantErr: "path is empty"},
		{name: "foreign device under the workload name", setup: func(t *testing.T, s WorkloadSpec) {
			addBridge(t, s.NetnsPath, "eth0")
		}, wantErr: "already has a bridge eth0"},
		{name: "foreign device under the host name", setup: func(t *testing.T, s WorkloadSpec) {
			addBridge(t, node, s.HostName)
		}, wantErr: "is a bridge, not a veth"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			enterNetns(t, node)
			spec := baseSpec(workload)
			spec.HostName = "mpref"
			if tc.edit != nil {
				tc.edit(&spec)
			}
			if tc.setup != nil {
				tc.setup(t, spec)
			}
			_, err := EnsureWorkloadVeth(spec)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if vs, err := ListWorkloadVeths("mp"); err != nil || len(vs) != 0 {
				t.Errorf("veths left behind: %v (%v)", vs, err)
			}
		})
	}
}

// addBridge puts a bridge named name into the namespace at nsPath until the
// test ends.
func addBridge(t *testing.T, nsPath, name string) {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(br); err != nil {
		h.Close()
		t.Fatalf("add bridge %s: %v", name, err)
	}
	t.Cleanup(func() {
		defer h.Close()
		if err := h.LinkDel(br); err != nil {
			t.Errorf("delete bridge %s: %v", name, err)
		}
	})
}

// TestListWorkloadVeths finds the host ends by prefix, with their peers in
// another namespace, and nothing else.
func TestListWorkloadVeths(t *testing.T) {
	node := newNetns(t, "node")
	enterNetns(t, node)
	want := map[string]bool{}
	for _, name := range []string{"mp1", "mp2"} {
		spec := baseSpec(newNetns(t, name))
		spec.HostName = name
		if _, err := EnsureWorkloadVeth(spec); err != nil {
			t.Fatal(err)
		}
		want[name] = true
	}
	addBridge(t, node, "mpbridge") // right prefix, wrong type
	got, err := ListWorkloadVeths("mp")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range got {
		if !want[v.Name] || v.PeerNetnsID < 0 || !v.Up || v.MTU != 1450 || v.PeerIndex == 0 {
			t.Errorf("unexpected %+v", v)
		}
		delete(want, v.Name)
	}
	if len(want) != 0 {
		t.Errorf("not listed: %v (got %+v)", want, got)
	}
}
