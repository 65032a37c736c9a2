package plumbing

import (
	"bytes"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// maxIfNameLen is IFNAMSIZ minus the terminating NUL.
const maxIfNameLen = 15

// Result says what an Ensure call did. The agent logs Changes and counts
// Unchanged results to show that a reconcile converged without touching
// the kernel.
type Result struct {
	// Index is the ifindex of the device in the caller's namespace (the host
	// end for a veth).
	Index int
	// Created is set when the device did not exist (or had to be replaced).
	Created bool
	// Changes lists what was changed, e.g. "mp42: mtu 1500 -> 1450".
	Changes []string
}

// Unchanged reports whether the call found everything as specified.
func (r Result) Unchanged() bool { return !r.Created && len(r.Changes) == 0 }

func validIfName(name string) error {
	if name == "" || len(name) > maxIfNameLen {
		return fmt.Errorf("interface name %q: want 1 to %d bytes", name, maxIfNameLen)
	}
	for _, c := range []byte(name) {
		if c == '/' || c == ':' || c <= ' ' || c >= 0x7f {
			return fmt.Errorf("interface name %q: character %q not allowed", name, c)
		}
	}
	return nil
}

// linkWant is the state common to every device this package manages.
type linkWant struct {
	mtu int
	mac net.HardwareAddr // nil: keep whatever the kernel chose
}

// convergeLink sets MTU, MAC and the up flag where they differ, in the
// namespace of h, and appends what it changed.
func convergeLink(h *netlink.Handle, l netlink.Link, want linkWant, changes *[]string) error {
	a := l.Attrs()
	if want.mtu != 0 && a.MTU != want.mtu {
		if err := h.LinkSetMTU(l, want.mtu); err != nil {
			return fmt.Errorf("set mtu of %s to %d: %w", a.Name, want.mtu, err)
		}
		*changes = append(*changes, fmt.Sprintf("%s: mtu %d -> %d", a.Name, a.MTU, want.mtu))
	}
	if want.mac != nil && !bytes.Equal(a.HardwareAddr, want.mac) {
		if err := h.LinkSetHardwareAddr(l, want.mac); err != nil {
			return fmt.Errorf("set mac of %s to %s: %w", a.Name, want.mac, err)
		}
		*changes = append(*changes, fmt.Sprintf("%s: mac %s -> %s", a.Name, a.HardwareAddr, want.mac))
	}
	if a.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", a.Name, err)
		}
		*changes = append(*changes, a.Name+": up")
	}
	return nil
}

// lookupLink returns the named link in h's namespace, or nil if there is none.
func lookupLink(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	return l, nil
}

// deleteLinkOfType removes the named link if it exists and has the given
// type; a link of another type under that name is not ours to delete.
func deleteLinkOfType(h *netlink.Handle, name, typ string) error {
	l, err := lookupLink(h, name)
	if err != nil || l == nil {
		return err
	}
	if l.Type() != typ {
		return fmt.Errorf("link %s is a %s, not a %s: not deleting it", name, l.Type(), typ)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s %s: %w", typ, name, err)
	}
	return nil
}

// ConfigureTap converges an existing tap device (a VM's, created by its
// hypervisor) for the data path: MTU, up, and the host-port sysctls. The tap
// must exist; this package does not create taps because their lifetime
// belongs to the VM.
func ConfigureTap(name string, mtu int) (Result, error) {
	if err := validIfName(name); err != nil {
		return Result{}, err
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return Result{}, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()
	l, err := lookupLink(h, name)
	if err != nil {
		return Result{}, err
	}
	if l == nil {
		return Result{}, fmt.Errorf("tap %s: %w", name, ErrNotFound)
	}
	if l.Type() != "tuntap" {
		return Result{}, fmt.Errorf("link %s is a %s, not a tap", name, l.Type())
	}
	return convergeHostDevice(h, l, mtu)
}

// convergeHostDevice applies the state every data-path device on the node
// shares: MTU, up, no rp_filter, no IPv6.
func convergeHostDevice(h *netlink.Handle, l netlink.Link, mtu int) (Result, error) {
	res := Result{Index: l.Attrs().Index}
	changes, err := ensureSysctls(hostPortSysctls(l.Attrs().Name))
	res.Changes = append(res.Changes, changes...)
	if err != nil {
		return res, err
	}
	if err := convergeLink(h, l, linkWant{mtu: mtu}, &res.Changes); err != nil {
		return res, err
	}
	return res, nil
}

// ErrNotFound is returned when a device that must already exist does not.
var ErrNotFound = errors.New("device not found")
