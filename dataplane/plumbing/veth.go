package plumbing

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrNetnsGone is returned when a workload's namespace no longer exists; the
// host end has then been removed, and the agent should report the port as
// detached rather than retry.
var ErrNetnsGone = errors.New("workload network namespace is gone")

// DefaultWorkloadIfName is the interface name inside a workload namespace
// when the spec gives none.
const DefaultWorkloadIfName = "eth0"

// WorkloadSpec describes the veth pair of one workload port.
type WorkloadSpec struct {
	// HostName is the host end, at most 15 bytes, derived from the port ID
	// (e.g. "mp42") so a restarted agent can find it again.
	HostName string
	// NetnsPath names the workload's namespace, e.g. /run/netns/web-1.
	NetnsPath string
	// IfName is the workload end's name; "" means DefaultWorkloadIfName.
	IfName string
	// MAC is the port's address, set on the workload end.
	MAC net.HardwareAddr
	// Addrs are the port's addresses with the subnet's prefix length.
	Addrs []netip.Prefix
	// Gateway is the next hop of the default route (added on-link); the
	// zero Addr means no default route.
	Gateway netip.Addr
	// MTU applies to both ends; 0 means DefaultMTU.
	MTU int
}

// DefaultMTU is Ethernet's, for specs (and subnets) that leave it unset.
const DefaultMTU = 1500

func (s WorkloadSpec) normalize() (WorkloadSpec, error) {
	if s.IfName == "" {
		s.IfName = DefaultWorkloadIfName
	}
	if s.MTU == 0 {
		s.MTU = DefaultMTU
	}
	if err := validIfName(s.HostName); err != nil {
		return s, fmt.Errorf("host end: %w", err)
	}
	if err := validIfName(s.IfName); err != nil {
		return s, fmt.Errorf("workload end: %w", err)
	}
	if s.NetnsPath == "" {
		return s, errors.New("workload netns path is empty")
	}
	if len(s.MAC) != 6 {
		return s, fmt.Errorf("mac %q is not a 48-bit address", s.MAC)
	}
	if s.MTU < 68 || s.MTU > 65535 {
		return s, fmt.Errorf("mtu %d out of range 68..65535", s.MTU)
	}
	for _, p := range s.Addrs {
		if !p.IsValid() {
			return s, fmt.Errorf("address %v is not valid", p)
		}
	}
	return s, nil
}

func (s WorkloadSpec) hasIPv6() bool {
	return slices.ContainsFunc(s.Addrs, func(p netip.Prefix) bool { return p.Addr().Is6() && !p.Addr().Is4In6() })
}

// EnsureWorkloadVeth converges the workload's veth pair to spec: it creates
// the pair if missing (the workload end directly inside the workload's
// namespace, so no half-moved state can be left behind by a crash), then
// sets MTU, MAC, addresses, the default route and the sysctls where they
// differ. A host end whose peer is not the workload's IfName is replaced.
// If the namespace is gone, the host end is deleted and ErrNetnsGone is
// returned.
func EnsureWorkloadVeth(spec WorkloadSpec) (Result, error) {
	spec, err := spec.normalize()
	if err != nil {
		return Result{}, fmt.Errorf("veth %s: %w", spec.HostName, err)
	}
	host, err := netlink.NewHandle()
	if err != nil {
		return Result{}, fmt.Errorf("netlink handle: %w", err)
	}
	defer host.Close()

	ns, err := openNetns(spec.NetnsPath)
	if errors.Is(err, ErrNetnsGone) {
		if derr := deleteLinkOfType(host, spec.HostName, "veth"); derr != nil {
			return Result{}, errors.Join(fmt.Errorf("veth %s: %w", spec.HostName, err), derr)
		}
		return Result{}, fmt.Errorf("veth %s: %w", spec.HostName, err)
	}
	if err != nil {
		return Result{}, fmt.Errorf("veth %s: %w", spec.HostName, err)
	}
	defer ns.Close()
	wl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Result{}, fmt.Errorf("netlink handle in %s: %w", spec.NetnsPath, err)
	}
	defer wl.Close()

	var res Result
	hostLink, peer, err := findPair(host, wl, spec)
	if err != nil {
		return res, fmt.Errorf("veth %s: %w", spec.HostName, err)
	}
	if peer == nil {
		if hostLink != nil {
			// The pair is broken (its peer was renamed or moved away):
			// replacing it is the only way back to a known state.
			if err := host.LinkDel(hostLink); err != nil {
				return res, fmt.Errorf("delete stale veth %s: %w", spec.HostName, err)
			}
			res.Changes = append(res.Changes, spec.HostName+": replaced, its peer was not "+spec.IfName+" in "+spec.NetnsPath)
		}
		if hostLink, peer, err = createPair(host, wl, ns, spec); err != nil {
			return res, err
		}
		res.Created = true
	}
	res.Index = hostLink.Attrs().Index

	if err := convergeWorkloadEnd(wl, ns, peer, spec, &res.Changes); err != nil {
		return res, fmt.Errorf("veth %s: workload end: %w", spec.HostName, err)
	}
	hostRes, err := convergeHostDevice(host, hostLink, spec.MTU)
	res.Changes = append(res.Changes, hostRes.Changes...)
	if err != nil {
		return res, fmt.Errorf("veth %s: host end: %w", spec.HostName, err)
	}
	return res, nil
}

// openNetns opens a namespace by path and checks that it still is one: a
// namespace file that was unmounted but not removed is a plain file.
func openNetns(path string) (netns.NsHandle, error) {
	ns, err := netns.GetFromPath(path)
	if errors.Is(err, unix.ENOENT) {
		return netns.None(), fmt.Errorf("%s: %w", path, ErrNetnsGone)
	}
	if err != nil {
		return netns.None(), fmt.Errorf("open netns %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(ns), &st); err != nil {
		ns.Close()
		return netns.None(), fmt.Errorf("statfs netns %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		ns.Close()
		return netns.None(), fmt.Errorf("%s is not a namespace: %w", path, ErrNetnsGone)
	}
	return ns, nil
}

// findPair returns the host end and its peer inside the workload namespace;
// either is nil when missing. Each end's IFLA_LINK names the other's
// ifindex, which is how the two are known to belong together.
func findPair(host, wl *netlink.Handle, spec WorkloadSpec) (netlink.Link, netlink.Link, error) {
	hostLink, err := lookupLink(host, spec.HostName)
	if err != nil || hostLink == nil {
		if err == nil {
			err = checkNameFree(wl, spec)
		}
		return nil, nil, err
	}
	if hostLink.Type() != "veth" {
		return nil, nil, fmt.Errorf("%s exists and is a %s, not a veth", spec.HostName, hostLink.Type())
	}
	peer, err := lookupLink(wl, spec.IfName)
	if err != nil || peer == nil {
		return hostLink, nil, err
	}
	if peer.Type() == "veth" && peer.Attrs().ParentIndex == hostLink.Attrs().Index &&
		hostLink.Attrs().ParentIndex == peer.Attrs().Index {
		return hostLink, peer, nil
	}
	return nil, nil, fmt.Errorf("%s already has a %s %s that is not the peer of %s", spec.NetnsPath, peer.Type(), spec.IfName, spec.HostName)
}

// checkNameFree fails early, with a clear message, when the workload
// namespace already uses IfName for something that is not ours.
func checkNameFree(wl *netlink.Handle, spec WorkloadSpec) error {
	l, err := lookupLink(wl, spec.IfName)
	if err != nil || l == nil {
		return err
	}
	return fmt.Errorf("%s already has a %s %s", spec.NetnsPath, l.Type(), spec.IfName)
}

func createPair(host, wl *netlink.Handle, ns netns.NsHandle, spec WorkloadSpec) (netlink.Link, netlink.Link, error) {
	la := netlink.NewLinkAttrs()
	la.Name = spec.HostName
	la.MTU = spec.MTU
	v := &netlink.Veth{
		LinkAttrs:        la,
		PeerName:         spec.IfName,
		PeerHardwareAddr: spec.MAC,
		PeerMTU:          uint32(spec.MTU),
		PeerNamespace:    netlink.NsFd(int(ns)),
	}
	if err := host.LinkAdd(v); err != nil {
		return nil, nil, fmt.Errorf("create veth %s with peer %s in %s: %w", spec.HostName, spec.IfName, spec.NetnsPath, err)
	}
	hostLink, peer, err := findPair(host, wl, spec)
	if err == nil && (hostLink == nil || peer == nil) {
		err = errors.New("not found right after creation")
	}
	if err != nil {
		return nil, nil, fmt.Errorf("veth %s: %w", spec.HostName, err)
	}
	return hostLink, peer, nil
}

func convergeWorkloadEnd(wl *netlink.Handle, ns netns.NsHandle, peer netlink.Link, spec WorkloadSpec, changes *[]string) error {
	// Sysctls first, so the interface never comes up with a link-local
	// address and never sends a router solicitation.
	err := inNetns(ns, func() error {
		c, err := ensureSysctls(workloadSysctls(spec.IfName, spec.hasIPv6()))
		*changes = append(*changes, prefixAll(spec.IfName+": ", c)...)
		return err
	})
	if err != nil {
		return err
	}
	if err := convergeLink(wl, peer, linkWant{mtu: spec.MTU, mac: spec.MAC}, changes); err != nil {
		return err
	}
	if err := convergeAddrs(wl, peer, spec.Addrs, changes); err != nil {
		return err
	}
	if lo, err := lookupLink(wl, "lo"); err != nil {
		return err
	} else if lo != nil && lo.Attrs().Flags&net.FlagUp == 0 {
		if err := wl.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		*changes = append(*changes, "lo: up")
	}
	if spec.Gateway.IsValid() {
		return convergeDefaultRoute(wl, peer, spec.Gateway, changes)
	}
	return nil
}

func prefixAll(prefix string, ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = prefix + s
	}
	return out
}

// convergeAddrs makes the link's global addresses exactly want. IPv6
// link-local addresses are the kernel's, not the port's, and stay.
func convergeAddrs(h *netlink.Handle, l netlink.Link, want []netip.Prefix, changes *[]string) error {
	have, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	present := make(map[netip.Prefix]bool, len(have))
	for _, a := range have {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if slices.Contains(want, p) {
			present[p] = true
			continue
		}
		if err := h.AddrDel(l, &a); err != nil {
			return fmt.Errorf("remove address %s from %s: %w", p, l.Attrs().Name, err)
		}
		*changes = append(*changes, fmt.Sprintf("%s: address %s removed", l.Attrs().Name, p))
	}
	for _, p := range want {
		if present[p] {
			continue
		}
		addr := &netlink.Addr{IPNet: ipNet(p)}
		if p.Addr().Is6() {
			// Duplicate detection would hold the address back for a second;
			// the controller's IPAM already guarantees uniqueness.
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, l.Attrs().Name, err)
		}
		*changes = append(*changes, fmt.Sprintf("%s: address %s added", l.Attrs().Name, p))
	}
	return nil
}

// convergeDefaultRoute points the default route of gw's family at gw over l,
// on-link so it does not depend on the subnet route.
func convergeDefaultRoute(h *netlink.Handle, l netlink.Link, gw netip.Addr, changes *[]string) error {
	family, bits := netlink.FAMILY_V4, 32
	if gw.Is6() && !gw.Is4In6() {
		family, bits = netlink.FAMILY_V6, 128
	}
	routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if !isDefault(r.Dst) {
			continue
		}
		if g, ok := netip.AddrFromSlice(r.Gw); ok && g.Unmap() == gw.Unmap() && r.LinkIndex == l.Attrs().Index && r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			return nil
		}
	}
	route := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       &net.IPNet{IP: make(net.IP, bits/8), Mask: net.CIDRMask(0, bits)},
		Gw:        gw.AsSlice(),
		Flags:     int(netlink.FLAG_ONLINK),
		Table:     unix.RT_TABLE_MAIN,
	}
	if err := h.RouteReplace(route); err != nil {
		return fmt.Errorf("set default route via %s dev %s: %w", gw, l.Attrs().Name, err)
	}
	*changes = append(*changes, fmt.Sprintf("%s: default route via %s", l.Attrs().Name, gw))
	return nil
}

func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// DeleteWorkloadVeth removes a workload's veth pair by its host end; a
// missing pair is not an error.
func DeleteWorkloadVeth(hostName string) error {
	if err := validIfName(hostName); err != nil {
		return err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	return deleteLinkOfType(h, hostName, "veth")
}

// HostVeth is a host end found by ListWorkloadVeths.
type HostVeth struct {
	Name      string
	Index     int
	MTU       int
	Up        bool
	PeerIndex int // ifindex of the peer in its own namespace
	// PeerNetnsID is the peer namespace's ID as seen from here; -1 means the
	// peer is in this namespace, i.e. the pair was never moved.
	PeerNetnsID int
}

// ListWorkloadVeths returns the veths in the caller's namespace whose name
// starts with prefix, for an agent to match against its ports on restart.
func ListWorkloadVeths(prefix string) ([]HostVeth, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []HostVeth
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || !strings.HasPrefix(a.Name, prefix) {
			continue
		}
		nsid := a.NetNsID
		if nsid < 0 {
			nsid = -1
		}
		out = append(out, HostVeth{Name: a.Name, Index: a.Index, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, PeerIndex: a.ParentIndex, PeerNetnsID: nsid})
	}
	return out, nil
}
