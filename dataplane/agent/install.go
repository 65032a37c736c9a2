package agent

import (
	"io"
	"log/slog"
	"strconv"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// Installer runs the agent's reconcile, and nothing else of the agent, on a
// data path: no controller, no local API, no plumbing. It exists so that
// tests comparing the eBPF data path with another realization of the same
// objects (the OVN differential test) install them through exactly the
// translation a running agent uses, rather than a copy of it.
type Installer struct {
	a      *Agent
	attach map[string]*attachment
	prev   applied
}

// NewInstaller returns an Installer acting as the agent of node. hostIfs
// names, by port ID, the host interface each local port's workload is
// plugged into; the interfaces must exist in the calling thread's network
// namespace, since reconcile looks them up and attaches the port program.
func NewInstaller(dp *datapath.Datapath, node string, hostIfs map[uint32]string) *Installer {
	at := make(map[string]*attachment, len(hostIfs))
	for id, ifname := range hostIfs {
		name := strconv.FormatUint(uint64(id), 10)
		at[name] = &attachment{Port: name, PortID: id, HostIf: ifname}
	}
	a := &Agent{cfg: Config{Node: node}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp}
	return &Installer{a: a, attach: at, prev: newApplied()}
}

// Install reconciles desired (all objects of the node's desired state, by
// object key) into the data path, removing what an earlier Install put
// there and desired no longer has, and returns the per-object errors the
// agent would acknowledge.
func (i *Installer) Install(desired map[string]*agentv1.Object) map[string]string {
	next, errs := i.a.reconcile(desired, i.attach, i.prev)
	i.prev = next
	return errs
}
