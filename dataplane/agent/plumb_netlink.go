package agent

import (
	"errors"
	"net/netip"
)

// netlinkPlumber is the agent's real Plumber, on package plumbing.
type netlinkPlumber struct{}

func (netlinkPlumber) EnsureWorkload(s WorkloadSpec) error { return errors.New("not yet") }
func (netlinkPlumber) DeleteWorkload(string) error         { return errors.New("not yet") }
func (netlinkPlumber) EnsureOverlay(string, netip.Addr, int) (int, error) {
	return 0, errors.New("not yet")
}
