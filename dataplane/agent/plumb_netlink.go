package agent

import (
	"net/netip"

	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// netlinkPlumber is the agent's real Plumber, on package plumbing. It acts
// in the agent's network namespace, which is the node's.
type netlinkPlumber struct{}

func (netlinkPlumber) EnsureWorkload(s WorkloadSpec) error {
	_, err := plumbing.EnsureWorkloadVeth(s)
	return err
}

func (netlinkPlumber) DeleteWorkload(hostName string) error {
	return plumbing.DeleteWorkloadVeth(hostName)
}

func (netlinkPlumber) EnsureOverlay(name string, underlay netip.Addr, mtu int) (int, error) {
	r, err := plumbing.EnsureVXLAN(plumbing.VXLANSpec{Name: name, Underlay: underlay, MTU: mtu})
	return r.Index, err
}
