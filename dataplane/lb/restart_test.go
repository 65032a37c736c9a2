package lb

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// privateBPFFS mounts a bpffs of the test's own, so pins never meet other
// tests' or the host's.
func privateBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a private bpffs on %s (needs root): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// xdpProgID returns the ID of the XDP program on dev in namespace ns (0:
// none).
func xdpProgID(t testing.TB, ns, dev string) uint32 {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	l, err := nl.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId
	}
	return 0
}

// TestRestartWithPinnedMaps: with PinDir, closing the LB (an agent exiting)
// leaves the program attached and forwarding; a new LB on the same
// directory recovers the services, backend slots and connection table, so
// re-sending the same services changes no flow, and later changes behave
// as without the restart. Unpin and Close then remove everything.
func TestRestartWithPinnedMaps(t *testing.T) {
	dir := privateBPFFS(t)
	ns := fmt.Sprintf("lbt-pin-%d-%04x", os.Getpid(), rand.Uint32()&0xffff)
	ipCmd(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ipCmd(t, "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1")
	ipCmd(t, "-n", ns, "link", "set", "up0", "up")
	ipCmd(t, "-n", ns, "link", "set", "up1", "up")
	var ifindex int
	inNS(t, ns, func() {
		l, err := netlink.LinkByName("up0")
		if err == nil {
			ifindex = l.Attrs().Index
		}
	})

	opts := Options{MaxServices: 16, MaxBackends: 1024, ConnTableSize: 1 << 16, PinDir: dir}
	open := func() *LB {
		l, err := Load(opts)
		if err != nil {
			t.Fatalf("load with pins: %v", err)
		}
		return l
	}
	l1 := open()
	if err := l1.Configure(Config{UnderlayIP: underlay, MTU: testMTU, RouterMAC: routerMAC,
		NextHopMAC: nextHopMAC, SourceMAC: uplinkMAC}); err != nil {
		t.Fatal(err)
	}
	s := svcMsg(1, 80, 251, 1, 2, 3)
	mustSet(t, l1, s)
	var err error
	inNS(t, ns, func() { err = l1.Attach(ifindex, ModeDriver) })
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 8))
	type flow struct {
		src   netip.Addr
		sport uint16
		node  int
	}
	var flows []flow
	for range 200 {
		src, sport := randClient(r)
		flows = append(flows, flow{src, sport, nodeIndex(t, send(t, l1, clientPkt(src, sport)))})
	}
	// Backend 2 drains: its flows stay only thanks to the connection table.
	drain := svcMsg(1, 80, 251, 1, 2, 3)
	drain.Backends[1].Draining = true
	mustSet(t, l1, drain)
	info, err := l1.objs.LbXdp.Info()
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := info.ID()
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	if got := xdpProgID(t, ns, "up0"); got != uint32(id1) {
		t.Fatalf("after Close with pins, XDP program %d on the uplink, want %d still there", got, id1)
	}

	l2 := open()
	t.Cleanup(func() { l2.Close() })
	st, err := l2.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Services[1]; !ok || len(st.Services) != 1 || !slices.Equal(l2.ServiceIDs(), []uint32{1}) {
		t.Fatalf("recovered services %v (%v), want service 1", st.Services, l2.ServiceIDs())
	}
	check := func(what string, moved func(f flow) bool) {
		t.Helper()
		for _, f := range flows {
			got := nodeIndex(t, send(t, l2, clientPkt(f.src, f.sport)))
			if moved(f) {
				if got == f.node {
					t.Fatalf("%s: flow %v:%d still on backend %d", what, f.src, f.sport, got)
				}
			} else if got != f.node {
				t.Fatalf("%s: flow %v:%d moved from backend %d to %d", what, f.src, f.sport, f.node, got)
			}
		}
	}
	check("after the restart", func(flow) bool { return false })
	mustSet(t, l2, drain) // the restarted agent re-sends its services
	check("after re-sending the same service", func(flow) bool { return false })
	inNS(t, ns, func() { err = l2.Attach(ifindex, ModeDriver) })
	if err != nil {
		t.Fatal(err)
	}
	info, err = l2.objs.LbXdp.Info()
	if err != nil {
		t.Fatal(err)
	}
	id2, _ := info.ID()
	if got := xdpProgID(t, ns, "up0"); got != uint32(id2) {
		t.Fatalf("after Attach by the new LB, XDP program %d, want its own %d", got, id2)
	}
	mustSet(t, l2, svcMsg(1, 80, 251, 1, 3))
	check("after removing backend 2", func(f flow) bool { return f.node == 2 })
	// A new service gets a slot of its own, not the recovered one's.
	mustSet(t, l2, svcMsg(2, 443, 251, 4))
	p := clientPkt(client, 1)
	p.dport = 443
	if n := nodeIndex(t, send(t, l2, p)); n != 4 {
		t.Fatalf("new service after restart sent to backend %d, want 4", n)
	}
	check("after adding another service", func(f flow) bool { return f.node == 2 })

	if err := l2.Unpin(); err != nil {
		t.Fatal(err)
	}
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	if got := xdpProgID(t, ns, "up0"); got != 0 {
		t.Fatalf("after Unpin and Close, XDP program %d still attached", got)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch e.Name() {
		case "links", "maps.debug", "progs.debug": // ours (empty), bpffs's own
		default:
			t.Errorf("pin left in %s: %s", dir, e.Name())
		}
	}
}
