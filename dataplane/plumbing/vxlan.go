package plumbing

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// DefaultVXLANPort is the IANA VXLAN port.
const DefaultVXLANPort = 4789

// VXLANSpec describes the node's overlay device. It runs in external
// (collect-metadata) mode: one device for every VPC, the programs setting
// the VNI and remote endpoint per packet, so nothing in it names a VPC.
type VXLANSpec struct {
	Name     string
	Underlay netip.Addr // local tunnel endpoint
	Port     int        // UDP destination port; 0 means DefaultVXLANPort
	MTU      int        // 0 leaves the kernel's choice
}

// EnsureVXLAN converges the overlay device to spec. Attributes the kernel
// cannot change in place (mode, learning, port, local address) are fixed by
// replacing the device, which the caller must follow by re-attaching its
// programs, as Result.Created says.
func EnsureVXLAN(spec VXLANSpec) (Result, error) {
	if spec.Port == 0 {
		spec.Port = DefaultVXLANPort
	}
	if err := validIfName(spec.Name); err != nil {
		return Result{}, fmt.Errorf("vxlan: %w", err)
	}
	if !spec.Underlay.IsValid() {
		return Result{}, fmt.Errorf("vxlan %s: no underlay address", spec.Name)
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return Result{}, fmt.Errorf("netlink handle: %w", err)
	}
	defer h.Close()

	var res Result
	l, err := lookupLink(h, spec.Name)
	if err != nil {
		return res, err
	}
	if l != nil {
		if why := vxlanMismatch(l, spec); why != "" {
			if err := h.LinkDel(l); err != nil {
				return res, fmt.Errorf("delete vxlan %s to replace it: %w", spec.Name, err)
			}
			res.Changes = append(res.Changes, spec.Name+": replaced, "+why)
			l = nil
		}
	}
	if l == nil {
		la := netlink.NewLinkAttrs()
		la.Name = spec.Name
		la.MTU = spec.MTU
		v := &netlink.Vxlan{LinkAttrs: la, FlowBased: true, Learning: false, Port: spec.Port, SrcAddr: spec.Underlay.AsSlice()}
		if err := h.LinkAdd(v); err != nil {
			return res, fmt.Errorf("create vxlan %s: %w", spec.Name, err)
		}
		if l, err = h.LinkByName(spec.Name); err != nil {
			return res, fmt.Errorf("vxlan %s after creation: %w", spec.Name, err)
		}
		res.Created = true
	}
	dev, err := convergeHostDevice(h, l, spec.MTU)
	res.Index = dev.Index
	res.Changes = append(res.Changes, dev.Changes...)
	if err != nil {
		return res, fmt.Errorf("vxlan %s: %w", spec.Name, err)
	}
	return res, nil
}

// vxlanMismatch says why an existing link cannot serve as the overlay
// device, or "" if it can.
func vxlanMismatch(l netlink.Link, spec VXLANSpec) string {
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		return "it was a " + l.Type()
	}
	local, _ := netip.AddrFromSlice(v.SrcAddr)
	switch {
	case !v.FlowBased:
		return "it was not in external mode"
	case v.Learning:
		return "it had learning on"
	case v.Port != spec.Port:
		return fmt.Sprintf("its port was %d", v.Port)
	case local.Unmap() != spec.Underlay.Unmap():
		return fmt.Sprintf("its local address was %v", local)
	}
	return ""
}
