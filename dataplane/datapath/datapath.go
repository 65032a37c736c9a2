package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/bpf"
)

// Datapath is the loaded data path of one node. Its maps live in bpffs, so
// closing it (or the agent dying) leaves forwarding untouched.
type Datapath struct {
	pinDir string
	objs   bpf.MeridianObjects

	// fq reads flow-log counters in batches (flowlog.go); loaded on first
	// use, so nodes without flow logs do not load it.
	fqMu sync.Mutex
	fq   *bpf.FlowqueryObjects
}

// Open loads the programs and opens the maps pinned in pinDir, creating and
// pinning them if absent. A restarted agent calling Open with the same
// directory gets the same maps, with their contents.
func Open(pinDir string) (*Datapath, error) {
	if err := os.MkdirAll(filepath.Join(pinDir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory %s: %w", pinDir, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(pinDir, &fs); err != nil {
		return nil, fmt.Errorf("stat pin directory %s: %w", pinDir, err)
	}
	if fs.Type != unix.BPF_FS_MAGIC {
		return nil, fmt.Errorf("pin directory %s is not on bpffs (mount -t bpf bpf /sys/fs/bpf; "+
			"`ip netns exec` hides it, enter only the network namespace)", pinDir)
	}
	spec, err := bpf.LoadMeridian()
	if err != nil {
		return nil, fmt.Errorf("load data path spec: %w", err)
	}
	d := &Datapath{pinDir: pinDir}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load data path programs: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("load data path into %s (maps pinned by an incompatible version must be removed): %w", pinDir, err)
	}
	return d, nil
}

// Close releases the file descriptors; pinned maps and links stay.
func (d *Datapath) Close() error {
	d.fqMu.Lock()
	if d.fq != nil {
		d.fq.Close()
		d.fq = nil
	}
	d.fqMu.Unlock()
	if err := d.objs.Close(); err != nil {
		return fmt.Errorf("close data path: %w", err)
	}
	return nil
}

// PinDir is the bpffs directory holding the maps.
func (d *Datapath) PinDir() string { return d.pinDir }

// Unpin removes every pin of the data path (maps and links): once the last
// file descriptor is closed, programs detach and maps disappear. It is for
// decommissioning a node and for tests.
func (d *Datapath) Unpin() error {
	links, err := filepath.Glob(filepath.Join(d.pinDir, "links", "*"))
	if err != nil {
		return fmt.Errorf("list pinned links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if err := os.Remove(l); err != nil {
			errs = append(errs, fmt.Errorf("unpin link %s: %w", l, err))
		}
	}
	for _, m := range d.maps() {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin map %v: %w", m, err))
		}
	}
	for _, p := range []string{filepath.Join(d.pinDir, "links"), d.pinDir} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Datapath) maps() []*ebpf.Map {
	m := &d.objs.MeridianMaps
	return []*ebpf.Map{m.AclMetas, m.AclIntervals, m.AclProto, m.AclRules, m.Conntrack, m.CtStats,
		m.DropEvents, m.Drops, m.NodeCfg, m.PortByIfindex, m.PortIps, m.Ports, m.Routes,
		m.IpcacheSlots, m.IpcacheVpcs, m.SgPolicy, m.SgPorts, m.Subnets,
		m.Egress, m.Gateways, m.Eips, m.EipByPrivate, m.Natgws, m.NatSrc, m.NatAddrs, m.PortMaps,
		m.PortMapsRev, m.Nat, m.NatExhausted, m.NatCfg,
		m.FlowlogCfgs, m.FlowlogBuckets, m.FlowlogStats, m.FlowEvents,
		m.Services, m.LbTables, m.LbBackends, m.LbLocal, m.LbFlows, m.SvcAddrs}
}

// Hook is where a program is attached.
type Hook string

const (
	// HookPort: tcx ingress of the host end of a workload veth.
	HookPort Hook = "port"
	// HookOverlay: tcx ingress of the VXLAN device (external mode).
	HookOverlay Hook = "overlay"
	// HookUplink: tcx ingress of a gateway's interface toward the fabric.
	HookUplink Hook = "uplink"
)

func (d *Datapath) linkPin(h Hook, ifindex int) string {
	return filepath.Join(d.pinDir, "links", fmt.Sprintf("%s-%d", h, ifindex))
}

// Attach attaches the program for hook h to ifindex with a pinned tcx link,
// appended after programs already there. If the link is pinned already it
// is updated in place to this version of the program, so re-attaching is
// idempotent and upgrades without a gap. Attaching the overlay hook also
// makes ifindex the device remote traffic is sent to.
func (d *Datapath) Attach(h Hook, ifindex int) error {
	var prog *ebpf.Program
	switch h {
	case HookPort:
		prog = d.objs.MeridianFromPort
	case HookOverlay:
		prog = d.objs.MeridianFromOverlay
	case HookUplink:
		prog = d.objs.MeridianFromUplink
	default:
		return fmt.Errorf("attach to ifindex %d: unknown hook %q", ifindex, h)
	}
	pin := d.linkPin(h, ifindex)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		uerr := l.Update(prog)
		if uerr == nil {
			l.Close()
			return d.afterAttach(h, ifindex)
		}
		// The device went away and the ifindex was reused: start afresh.
		if err := l.Unpin(); err != nil {
			l.Close()
			return fmt.Errorf("replace stale %s link on ifindex %d (update: %v): %w", h, ifindex, uerr, err)
		}
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load pinned %s link %s: %w", h, pin, err)
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("attach %s program to ifindex %d: %w", h, ifindex, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("pin %s link of ifindex %d: %w", h, ifindex, err)
	}
	return d.afterAttach(h, ifindex)
}

func (d *Datapath) afterAttach(h Hook, ifindex int) error {
	if h != HookOverlay {
		return nil
	}
	return d.SetOverlayDevice(ifindex)
}

// SetOverlayDevice names the VXLAN device remote traffic is redirected to.
func (d *Datapath) SetOverlayDevice(ifindex int) error {
	cfg := bpf.MeridianNodeConfig{VxlanIfindex: uint32(ifindex)}
	if err := d.objs.NodeCfg.Update(uint32(0), &cfg, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set overlay device %d: %w", ifindex, err)
	}
	return nil
}

// Detach removes the program of hook h from ifindex. Detaching what is not
// attached is not an error.
func (d *Datapath) Detach(h Hook, ifindex int) error {
	pin := d.linkPin(h, ifindex)
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned %s link %s: %w", h, pin, err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s link of ifindex %d: %w", h, ifindex, err)
	}
	// A link whose device is gone cannot be detached and needs not be.
	if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("detach %s program from ifindex %d: %w", h, ifindex, err)
	}
	return nil
}
