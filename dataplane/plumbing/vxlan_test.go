package plumbing

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestEnsureVXLANConverges: the overlay device is created in external mode,
// left alone when right, adjusted in place where the kernel allows it and
// replaced where it does not.
func TestEnsureVXLANConverges(t *testing.T) {
	node := newNetns(t, "node")
	spec := VXLANSpec{Name: "mvx0", Underlay: netip.MustParseAddr("10.201.7.11"), MTU: 1450}
	steps := []convergeStep[VXLANSpec]{
		{name: "creates the device", wantCreated: true},
		{name: "second ensure changes nothing"},
		{name: "new MTU is set in place", edit: func(s *VXLANSpec) { s.MTU = 1400 }, wantChanges: []string{"mvx0: mtu 1450 -> 1400"}},
		{name: "device set down is brought up", disturb: func(t *testing.T) { setDown(t, "mvx0") }, wantChanges: []string{"mvx0: up"}},
		{name: "new underlay address replaces the device", edit: func(s *VXLANSpec) { s.Underlay = netip.MustParseAddr("10.201.7.12") },
			wantCreated: true, wantChanges: []string{"mvx0: replaced, its local address was 10.201.7.11"}},
		{name: "learning device is replaced", disturb: func(t *testing.T) { replaceWithLearningVXLAN(t, "mvx0") },
			wantCreated: true, wantChanges: []string{"mvx0: replaced, it was not in external mode"}},
	}
	runConvergeSteps(t, node, spec, steps, EnsureVXLAN, func(t *testing.T, spec VXLANSpec, res Result) {
		l, err := netlink.LinkByName("mvx0")
		if err != nil {
			t.Fatal(err)
		}
		v, ok := l.(*netlink.Vxlan)
		if !ok {
			t.Fatalf("mvx0 is a %s", l.Type())
		}
		local, _ := netip.AddrFromSlice(v.SrcAddr)
		if !v.FlowBased || v.Learning || v.Port != DefaultVXLANPort || local.Unmap() != spec.Underlay ||
			v.MTU != spec.MTU || v.Flags&net.FlagUp == 0 || v.Index != res.Index {
			t.Errorf("mvx0 = external %v, learning %v, port %d, local %v, mtu %d, flags %v, index %d; want %+v at index %d",
				v.FlowBased, v.Learning, v.Port, local, v.MTU, v.Flags, v.Index, spec, res.Index)
		}
		if got := readSysctlHere(t, "net/ipv4/conf/mvx0/rp_filter"); got != "0" {
			t.Errorf("rp_filter = %s", got)
		}
	})
}

func replaceWithLearningVXLAN(t *testing.T, name string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkDel(l)
	}
	if err == nil {
		err = netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: name}, VxlanId: 7, Learning: true, Port: DefaultVXLANPort})
	}
	if err != nil {
		t.Fatalf("replace %s with a learning vxlan: %v", name, err)
	}
}

// TestConfigureTap converges an existing tap and refuses a missing one.
func TestConfigureTap(t *testing.T) {
	enterNetns(t, newNetns(t, "node"))
	if _, err := ConfigureTap("mtap0", 1450); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ConfigureTap of a missing tap: %v, want ErrNotFound", err)
	}
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "mtap0"}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatalf("create tap: %v", err)
	}
	t.Cleanup(func() {
		for _, f := range tap.Fds {
			f.Close()
		}
	})
	for _, want := range []struct {
		mtu       int
		unchanged bool
	}{{1450, false}, {1450, true}, {1400, false}} {
		res, err := ConfigureTap("mtap0", want.mtu)
		if err != nil {
			t.Fatal(err)
		}
		if res.Unchanged() != want.unchanged {
			t.Errorf("ConfigureTap(%d): changes %q, want unchanged=%v", want.mtu, res.Changes, want.unchanged)
		}
	}
}

// TestEnsureNodeSysctls turns the node-wide reverse-path filter off once.
func TestEnsureNodeSysctls(t *testing.T) {
	enterNetns(t, newNetns(t, "node"))
	writeSysctl(t, "net/ipv4/conf/all/rp_filter", "2")
	for _, want := range []int{1, 0} {
		changes, err := EnsureNodeSysctls()
		if err != nil || len(changes) != want {
			t.Fatalf("EnsureNodeSysctls: changes %q, err %v; want %d changes", changes, err, want)
		}
	}
	if got := readSysctlHere(t, "net/ipv4/conf/all/rp_filter"); got != "0" {
		t.Errorf("all/rp_filter = %s", got)
	}
}
