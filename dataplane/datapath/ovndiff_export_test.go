package datapath

import (
	"net"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/meridian-sdn/meridian/fw"
)

// Exports of this package's test helpers for ovndiff_test.go. That test
// lives in package datapath_test because it installs objects through the
// agent, which imports this package; these wrappers let it reuse the
// helpers the pipeline tests use instead of copying them.

// Test-run verdicts of the port program.
const (
	ActShot     = actShot
	ActRedirect = actRedirect
)

// OpenTest opens a data path pinned in a private bpffs, removed at cleanup.
func OpenTest(t testing.TB) *Datapath { return openTest(t) }

// InNewNetns runs fn on a locked OS thread in a fresh network namespace.
func InNewNetns(t *testing.T, fn func()) {
	inNewNetns(t, func(netns.NsHandle) { fn() })
}

// FrameBytes serializes p as a frame from srcMAC to dstMAC: TCP with the
// given flags ("SAFR"), ICMP with identifier icmpID.
func FrameBytes(t testing.TB, srcMAC, dstMAC net.HardwareAddr, p fw.Packet, tcpFlags string, icmpID uint16) []byte {
	fr := frame{srcMAC: srcMAC, dstMAC: dstMAC, src: p.Src, dst: p.Dst, proto: p.Protocol,
		sport: p.SrcPort, dport: p.DstPort, flags: tcpFlags, icmpType: p.ICMPType, icmpCode: p.ICMPCode, icmpID: icmpID}
	return fr.bytes(t)
}

// RunFromPort test-runs the port program on pkt as received on ifindex and
// returns the verdict and the frame after it.
func RunFromPort(t testing.TB, d *Datapath, ifindex int, pkt []byte) (uint32, []byte) {
	return run(t, d.objs.MeridianFromPort, ifindex, 0, pkt)
}

// FlushConntrack empties the conntrack table, so the next packet is the
// first of a new flow whatever ran before.
func FlushConntrack(t testing.TB, d *Datapath) { (&fixture{d: d}).flushConntrack(t) }
