package lb

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// topo is three namespaces in a row, all private to one test:
//
//	client [c0 172.31.250.2] -- [g0 172.31.250.1] gateway [g1 172.31.251.1] -- [b1 172.31.251.2] backend node
//
// The gateway's uplink is g0 (the client's side), its underlay g1. The
// client routes the VIP to the gateway.
type topo struct {
	cli, gw, be        string // namespace names
	c0MAC, g0MAC       net.HardwareAddr
	g1MAC, b1MAC       net.HardwareAddr
	c0, g0, g1, b1     int // ifindexes, each in its namespace
	clientIP, gwUnder  net.IP
	beUnder            net.IP
	underlayMTU        int
	uplinkMTU          int
	backendNodeAddress string
}

func ipCmd(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

func nsExec(tb testing.TB, ns string, args ...string) {
	tb.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

func newTopo(tb testing.TB) *topo {
	tb.Helper()
	sfx := fmt.Sprintf("%d-%04x", os.Getpid(), rand.Uint32()&0xffff)
	t := &topo{cli: "lbt-cli-" + sfx, gw: "lbt-gw-" + sfx, be: "lbt-be-" + sfx,
		clientIP: net.IP{172, 31, 250, 2}, gwUnder: net.IP{172, 31, 251, 1}, beUnder: net.IP{172, 31, 251, 2},
		underlayMTU: 1550, uplinkMTU: 1500, backendNodeAddress: "172.31.251.2"}
	for _, ns := range []string{t.cli, t.gw, t.be} {
		ipCmd(tb, "netns", "add", ns)
		tb.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				tb.Errorf("ip netns del %s: %v: %s", ns, err, out)
			}
		})
		ipCmd(tb, "-n", ns, "link", "set", "lo", "up")
	}
	ipCmd(tb, "-n", t.cli, "link", "add", "c0", "mtu", "1500", "type", "veth", "peer", "name", "g0", "netns", t.gw, "mtu", "1500")
	ipCmd(tb, "-n", t.gw, "link", "add", "g1", "mtu", "1550", "type", "veth", "peer", "name", "b1", "netns", t.be, "mtu", "1550")
	ipCmd(tb, "-n", t.cli, "addr", "add", "172.31.250.2/24", "dev", "c0")
	ipCmd(tb, "-n", t.gw, "addr", "add", "172.31.250.1/24", "dev", "g0")
	ipCmd(tb, "-n", t.gw, "addr", "add", "172.31.251.1/24", "dev", "g1")
	ipCmd(tb, "-n", t.be, "addr", "add", "172.31.251.2/24", "dev", "b1")
	for ns, dev := range map[string]string{t.cli: "c0", t.gw: "g0", t.be: "b1"} {
		ipCmd(tb, "-n", ns, "link", "set", dev, "up")
	}
	ipCmd(tb, "-n", t.gw, "link", "set", "g1", "up")
	nsExec(tb, t.gw, "sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=1")
	ipCmd(tb, "-n", t.cli, "route", "add", "203.0.113.10/32", "via", "172.31.250.1")
	// A client on the internet sends complete checksums; a local socket
	// on a veth leaves them to offload, which an unchanged encapsulation
	// carries as is.
	nsExec(tb, t.cli, "ethtool", "-K", "c0", "tx", "off")

	linkOf := func(ns, name string) netlink.Link {
		h, err := netns.GetFromName(ns)
		if err != nil {
			tb.Fatalf("open netns %s: %v", ns, err)
		}
		defer h.Close()
		nl, err := netlink.NewHandleAt(h)
		if err != nil {
			tb.Fatalf("netlink in %s: %v", ns, err)
		}
		defer nl.Close()
		l, err := nl.LinkByName(name)
		if err != nil {
			tb.Fatalf("%s in %s: %v", name, ns, err)
		}
		return l
	}
	c0, g0, g1, b1 := linkOf(t.cli, "c0"), linkOf(t.gw, "g0"), linkOf(t.gw, "g1"), linkOf(t.be, "b1")
	t.c0MAC, t.g0MAC, t.g1MAC, t.b1MAC = c0.Attrs().HardwareAddr, g0.Attrs().HardwareAddr, g1.Attrs().HardwareAddr, b1.Attrs().HardwareAddr
	t.c0, t.g0, t.g1, t.b1 = c0.Attrs().Index, g0.Attrs().Index, g1.Attrs().Index, b1.Attrs().Index
	ipCmd(tb, "-n", t.cli, "neigh", "replace", "172.31.250.1", "lladdr", t.g0MAC.String(), "dev", "c0", "nud", "permanent")
	ipCmd(tb, "-n", t.gw, "neigh", "replace", "172.31.251.2", "lladdr", t.b1MAC.String(), "dev", "g1", "nud", "permanent")
	return t
}

// inNS runs fn on a locked OS thread switched into namespace ns.
func inNS(tb testing.TB, ns string, fn func()) {
	tb.Helper()
	if err := inNSErr(ns, fn); err != nil {
		tb.Fatal(err)
	}
}

// inNSErr is inNS for goroutines other than the test's.
func inNSErr(ns string, fn func()) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", ns, err)
	}
	fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("restore netns: %w (thread retired)", err) // stays locked: Go retires it
	}
	runtime.UnlockOSThread()
	return nil
}

// attachXDP attaches prog to ifindex of namespace ns in driver mode.
func attachXDP(tb testing.TB, ns string, ifindex int, prog *ebpf.Program) {
	tb.Helper()
	var ln link.Link
	var err error
	inNS(tb, ns, func() {
		ln, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	})
	if err != nil {
		tb.Fatalf("attach XDP to %d in %s: %v", ifindex, ns, err)
	}
	tb.Cleanup(func() { ln.Close() })
}

// counter is an XDP program that counts packets (per-CPU) and returns
// verdict: a receiver that costs next to nothing, and the XDP program a
// veth needs to receive redirected frames.
type counter struct {
	prog *ebpf.Program
	m    *ebpf.Map
}

func newCounter(tb testing.TB, verdict int32) *counter {
	tb.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		tb.Fatalf("counter map: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, verdict).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		tb.Fatalf("counter program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return &counter{prog: p, m: m}
}

func (c *counter) count(tb testing.TB) uint64 {
	tb.Helper()
	var per []uint64
	if err := c.m.Lookup(uint32(0), &per); err != nil {
		tb.Fatalf("read counter: %v", err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// capture opens an AF_PACKET socket on ifindex of namespace ns.
func capture(tb testing.TB, ns string, ifindex int) int {
	tb.Helper()
	var fd int
	var err error
	proto := int(htons(unix.ETH_P_ALL))
	inNS(tb, ns, func() {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err == nil {
			err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifindex})
		}
	})
	if err != nil {
		tb.Fatalf("packet socket in %s: %v", ns, err)
	}
	tb.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		tb.Fatalf("receive timeout: %v", err)
	}
	return fd
}

// readUntil reads frames from fd until match accepts one or ctx ends.
func readUntil(ctx context.Context, fd int, match func([]byte) bool) ([]byte, error) {
	buf := make([]byte, 65536)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if err == unix.EAGAIN || err == unix.EINTR {
				continue
			}
			return nil, err
		}
		if match(buf[:n]) {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
	return nil, ctx.Err()
}

// l4ChecksumOK verifies the TCP/UDP checksum of an IPv4 packet (no options).
func l4ChecksumOK(ip []byte) bool {
	if len(ip) < 20 {
		return false
	}
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot > len(ip) || tot < 20 {
		return false
	}
	seg := ip[20:tot]
	ph := make([]byte, 12, 12+len(seg))
	copy(ph[0:8], ip[12:20])
	ph[9] = ip[9]
	binary.BigEndian.PutUint16(ph[10:], uint16(len(seg)))
	return checksumOK(append(ph, seg...))
}
