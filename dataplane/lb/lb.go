// Package lb loads and programs the north-south L4 load balancer of issue
// [5]: the XDP program of bpf/c/lb.c, attached to a gateway node's uplink.
//
// For each packet to a VIP (vip, port, protocol) it finds the backend —
// the connection table first, on a miss the service's Maglev table
// (lb/maglev, indexed with the flow hash of bpf/c/lbhash.h) — and sends the
// packet, unchanged but for its inner MACs (backend port MAC, VPC router
// MAC), VXLAN-encapsulated (VNI = LbService.vni) to the backend's node
// (LbBackend.node_ip). That node's tc pipeline translates vip:port to the
// backend and the reply goes straight back to the client (DSR). Packets
// not for a VIP pass on to the rest of the gateway (XDP_PASS).
//
// Use (the agent on a gateway node):
//
//	l, err := lb.Load(lb.Options{})                 // once
//	err = l.Configure(lb.Config{UnderlayIP: ..., RouterMAC: agent.RouterMAC, ...})
//	err = l.Attach(uplinkIfindex, lb.ModeDriver)
//	err = l.SetService(svc)                         // each LbService, on every change
//	err = l.DeleteService(id)                       // when one goes away
//	st, err := l.Stats()
//	l.Close()                                       // detaches, frees everything
//
// SetService takes the agent protocol's LbService as it comes (north-south
// listeners only: internal ones are refused): the table is built from the
// backends that are bound (node_ip set), healthy and not draining, keyed
// "address:port" with their weights (0 counts as 1), exactly as every
// other node builds it. Established connections stay on their backend
// while it is healthy (draining included) and move when it is removed,
// unbound or unhealthy. A TCP SYN always takes the current table.
//
// With Options.PinDir (a bpffs directory) the maps and the XDP links are
// pinned: Close leaves the program forwarding, and a restarted agent's
// Load reopens the same maps (connection table included) and picks its
// bookkeeping up from them, so re-sending every LbService changes nothing
// and no packet is lost across the restart; services the agent no longer
// has (ServiceIDs) are for it to delete. Without PinDir, Close detaches
// and a new Load starts empty (the identical Maglev tables still send
// established flows where the table does).
//
// Forwarding: Config names this node's underlay address and how to reach
// the backends' nodes: a static next hop (the uplink itself with XDP_TX,
// or another interface with bpf_redirect) or the kernel's FIB per packet.
// On a veth, frames sent with XDP_TX or a redirect arrive only if the
// peer has an XDP program. Counters (Stats) say what was forwarded,
// passed on and dropped, and why.
//
// An LB and its methods are safe for concurrent use. There is no package
// state.
package lb

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/lb/maglev"
)

// Options size the maps at load time. Zero values take the defaults.
type Options struct {
	MaxServices   uint32 // listeners (LbService) at once; default 1024
	MaxBackends   uint32 // backends over all services; default 65536
	ConnTableSize uint32 // connection table entries (LRU, preallocated: ~96 B each); default 262,144
	// PinDir, a directory on bpffs, pins the maps and links there (see
	// the package comment); "" pins nothing. Maps pinned with other
	// sizes must be removed first (Unpin).
	PinDir string
	// LiveTrace are the VPC data path's live-trace maps
	// (datapath.LiveTraceMaps): with them a VIP's packet is traced here
	// too (bpf/c/lb.c), on the same ring with the same filters, once
	// SetTraceActive says how many filter slots there are. Without them
	// the program has maps of its own that nothing reads.
	LiveTrace map[string]*ebpf.Map
}

// Mode is how Attach hooks the program.
type Mode int

const (
	// ModeDriver runs the program in the driver (native XDP): the fast one.
	ModeDriver Mode = iota
	// ModeGeneric runs it after the stack allocated the skb: any device.
	ModeGeneric
)

// Config is this node's side of forwarding.
type Config struct {
	// UnderlayIP is the outer source address (this node's underlay
	// address). Required: until configured, VIP packets are dropped.
	UnderlayIP netip.Addr
	// MTU of the uplink path, bounding the outer IPv4 packet; 0 = 1500.
	// Larger VIP packets with DF get ICMP "fragmentation needed" with
	// MTU-50.
	MTU uint32
	// RouterMAC is the inner source MAC: the VPC virtual router's, as on
	// all routed overlay traffic (agent.RouterMAC). Required.
	RouterMAC net.HardwareAddr
	// FIB takes the outer MACs and the egress interface from the
	// kernel's routing and neighbour tables toward each backend's node
	// (bpf_fib_lookup, as if forwarded from the uplink: the uplink needs
	// IPv4 forwarding on, as on any gateway; each CPU reuses an answer
	// for 100 ms, so route and neighbour changes apply within that).
	// When the lookup fails (no route; or the next hop's neighbour entry
	// not resolved: XDP cannot resolve it, so something else must — the
	// node's own overlay traffic usually does), the static next hop
	// below is used; with neither, the packet is dropped
	// (Stats.FIBFailed).
	FIB bool
	// NextHopMAC and SourceMAC are the static next hop: the outer
	// destination (the router toward all nodes) and source MACs.
	NextHopMAC net.HardwareAddr
	SourceMAC  net.HardwareAddr
	// OutIfindex is the static next hop's interface; 0 = the uplink
	// itself (XDP_TX). Another interface is reached with bpf_redirect;
	// on a veth its peer needs an XDP program to receive it.
	OutIfindex int
}

// LB is a loaded load balancer.
type LB struct {
	mu       sync.Mutex
	objs     bpf.LbObjects
	links    map[int]link.Link
	opts     Options
	services map[uint32]*service
	vips     map[bpf.LbLbVipKey]uint32 // -> service id
	svcSlots slots
	beSlots  slots
	gens     []uint32 // per backend slot: generation last given out
	// owners[slot] = (service id, backend id): only for recovering the
	// bookkeeping from pinned maps; the program never reads it.
	owners *ebpf.Map
}

// owner is a value of the owners map.
type owner struct {
	Service, Backend uint32
}

type service struct {
	slot     uint32
	key      bpf.LbLbVipKey
	backends map[uint32]backendSlot // by LbBackend.id
}

type backendSlot struct {
	slot  uint32
	value bpf.LbLbBackend
}

// Backend states, as lb_backend.state in bpf/c/lb.c.
const (
	stateFree     = 0
	stateActive   = 1
	stateDraining = 2
	stateDown     = 3
)

const (
	vipSrcPersist = 1
	cfgFIB        = 1
	noBackend     = 0xffffffff
)

// Load creates the maps and loads the programs; nothing is attached.
func Load(opts Options) (*LB, error) {
	if opts.MaxServices == 0 {
		opts.MaxServices = 1024
	}
	if opts.MaxBackends == 0 {
		opts.MaxBackends = 65536
	}
	if opts.ConnTableSize == 0 {
		opts.ConnTableSize = 1 << 18
	}
	if opts.PinDir != "" {
		if err := os.MkdirAll(filepath.Join(opts.PinDir, "links"), 0o700); err != nil {
			return nil, fmt.Errorf("lb: create pin directory %s: %w", opts.PinDir, err)
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(opts.PinDir, &fs); err != nil {
			return nil, fmt.Errorf("lb: stat pin directory %s: %w", opts.PinDir, err)
		}
		if fs.Type != unix.BPF_FS_MAGIC {
			return nil, fmt.Errorf("lb: pin directory %s is not on bpffs", opts.PinDir)
		}
	}
	spec, err := bpf.LoadLb()
	if err != nil {
		return nil, fmt.Errorf("lb: load spec: %w", err)
	}
	for name, n := range map[string]uint32{
		bpf.LbMapLbVips: opts.MaxServices, bpf.LbMapLbRings: opts.MaxServices,
		bpf.LbMapLbSvcStats: opts.MaxServices, bpf.LbMapLbBackends: opts.MaxBackends,
		bpf.LbMapLbNexthops: opts.MaxBackends,
		bpf.LbMapLbConns:    opts.ConnTableSize,
	} {
		m, ok := spec.Maps[name]
		if !ok {
			return nil, fmt.Errorf("lb: spec lacks map %s", name)
		}
		m.MaxEntries = n
	}
	var mapOpts ebpf.MapOptions
	if opts.PinDir != "" {
		for name, m := range spec.Maps {
			// Data sections (lt_active) and the live trace's maps are
			// per load: a trace ends with the agent that ran it.
			if !strings.HasPrefix(name, ".") && !strings.HasPrefix(name, "lt_") {
				m.Pinning = ebpf.PinByName
			}
		}
		mapOpts.PinPath = opts.PinDir
	}
	l := &LB{
		links:    map[int]link.Link{},
		opts:     opts,
		services: map[uint32]*service{},
		vips:     map[bpf.LbLbVipKey]uint32{},
		svcSlots: slots{max: opts.MaxServices},
		beSlots:  slots{max: opts.MaxBackends},
		gens:     make([]uint32, opts.MaxBackends),
	}
	if err := spec.LoadAndAssign(&l.objs, &ebpf.CollectionOptions{Maps: mapOpts, MapReplacements: opts.LiveTrace}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("lb: load programs: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("lb: load programs (maps pinned with other sizes must be removed): %w", err)
	}
	ospec := &ebpf.MapSpec{Name: "lb_owners", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: opts.MaxBackends}
	if opts.PinDir != "" {
		ospec.Pinning = ebpf.PinByName
	}
	if l.owners, err = ebpf.NewMapWithOptions(ospec, mapOpts); err != nil {
		l.objs.Close()
		return nil, fmt.Errorf("lb: create owners map: %w", err)
	}
	if err := l.recover(); err != nil {
		l.owners.Close()
		l.objs.Close()
		return nil, fmt.Errorf("lb: recover state from %s: %w", opts.PinDir, err)
	}
	return l, nil
}

// SetTraceActive tells the program how many live-trace filter slots to
// look at (0: no trace runs), as datapath.SetTraceFilters does for the VPC
// data path's programs.
func (l *LB) SetTraceActive(n uint32) error {
	if err := l.objs.LtActive.Set(n); err != nil {
		return fmt.Errorf("lb: set lt_active: %w", err)
	}
	return nil
}

// BackendOfSlot names the backend in slot of lb_backends (what the live
// trace's LT_SVC_XDP stage reports): its service's and its own LbBackend
// id.
func (l *LB) BackendOfSlot(slot uint32) (service, backend uint32, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, svc := range l.services {
		for bid, b := range svc.backends {
			if b.slot == slot {
				return id, bid, true
			}
		}
	}
	return 0, 0, false
}

// recover rebuilds the bookkeeping from the maps (non-empty only when they
// were pinned by an earlier LB): services from lb_vips, backend slots and
// generations from lb_backends and the owners map. Backend slots whose
// service is gone are freed.
func (l *LB) recover() error {
	var k bpf.LbLbVipKey
	var v bpf.LbLbVip
	svcUsed := map[uint32]bool{}
	it := l.objs.LbVips.Iterate()
	for it.Next(&k, &v) {
		l.services[v.SvcId] = &service{slot: v.Slot + 1, key: k, backends: map[uint32]backendSlot{}}
		l.vips[k] = v.SvcId
		svcUsed[v.Slot] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read VIPs: %w", err)
	}
	beUsed := map[uint32]bool{}
	var slot uint32
	var b bpf.LbLbBackend
	var highest uint32
	bit := l.objs.LbBackends.Iterate()
	for bit.Next(&slot, &b) {
		if b.Gen == 0 {
			continue
		}
		l.gens[slot] = b.Gen
		highest = max(highest, slot+1)
		if b.State == stateFree {
			continue
		}
		var o owner
		if err := l.owners.Lookup(slot, &o); err != nil {
			return fmt.Errorf("owner of backend slot %d: %w", slot, err)
		}
		svc, ok := l.services[o.Service]
		if !ok {
			if err := l.freeBackend(backendSlot{slot: slot, value: b}); err != nil {
				return err
			}
			continue
		}
		svc.backends[o.Backend] = backendSlot{slot: slot, value: b}
		beUsed[slot] = true
	}
	if err := bit.Err(); err != nil {
		return fmt.Errorf("read backends: %w", err)
	}
	l.beSlots = slots{max: l.opts.MaxBackends}
	l.beSlots.recover(highest, beUsed)
	var svcHighest uint32
	for s := range svcUsed {
		svcHighest = max(svcHighest, s+1)
	}
	l.svcSlots.recover(svcHighest, svcUsed)
	return nil
}

// Close releases the LB: without PinDir it detaches the program from every
// interface and frees the maps; with PinDir, pinned links and maps stay and
// forwarding goes on.
func (l *LB) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for ifindex, ln := range l.links {
		if err := ln.Close(); err != nil {
			errs = append(errs, fmt.Errorf("lb: detach from ifindex %d: %w", ifindex, err))
		}
		delete(l.links, ifindex)
	}
	if err := l.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("lb: close objects: %w", err))
	}
	if err := l.owners.Close(); err != nil {
		errs = append(errs, fmt.Errorf("lb: close owners map: %w", err))
	}
	return errors.Join(errs...)
}

func (l *LB) linkPin(ifindex int) string {
	return filepath.Join(l.opts.PinDir, "links", fmt.Sprintf("xdp-%d", ifindex))
}

// Attach attaches the program to an interface (the uplink). Attaching to
// an interface that already has it is a no-op. With PinDir, a link pinned
// by an earlier LB is taken over and updated to this LB's program in
// place (no gap); a new link is pinned.
func (l *LB) Attach(ifindex int, mode Mode) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.links[ifindex]; ok {
		return nil
	}
	flags := link.XDPDriverMode
	switch mode {
	case ModeDriver:
	case ModeGeneric:
		flags = link.XDPGenericMode
	default:
		return fmt.Errorf("lb: attach to ifindex %d: unknown mode %d", ifindex, mode)
	}
	if l.opts.PinDir != "" {
		ln, err := link.LoadPinnedLink(l.linkPin(ifindex), nil)
		switch {
		case err == nil:
			if uerr := ln.Update(l.objs.LbXdp); uerr == nil {
				l.links[ifindex] = ln
				return nil
			} else if err := ln.Unpin(); err != nil { // the device went away: start afresh
				ln.Close()
				return fmt.Errorf("lb: replace stale link of ifindex %d (update: %v): %w", ifindex, uerr, err)
			}
			ln.Close()
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("lb: load pinned link of ifindex %d: %w", ifindex, err)
		}
	}
	ln, err := link.AttachXDP(link.XDPOptions{Program: l.objs.LbXdp, Interface: ifindex, Flags: flags})
	if err != nil {
		return fmt.Errorf("lb: attach XDP to ifindex %d: %w", ifindex, err)
	}
	if l.opts.PinDir != "" {
		if err := ln.Pin(l.linkPin(ifindex)); err != nil {
			ln.Close()
			return fmt.Errorf("lb: pin link of ifindex %d: %w", ifindex, err)
		}
	}
	l.links[ifindex] = ln
	return nil
}

// Detach removes the program from an interface (pinned or not); absent is
// not an error.
func (l *LB) Detach(ifindex int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	ln, ok := l.links[ifindex]
	if !ok && l.opts.PinDir != "" {
		pinned, err := link.LoadPinnedLink(l.linkPin(ifindex), nil)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("lb: load pinned link of ifindex %d: %w", ifindex, err)
		}
		ln, ok = pinned, err == nil
	}
	if !ok {
		return nil
	}
	delete(l.links, ifindex)
	defer ln.Close()
	if l.opts.PinDir != "" {
		if err := ln.Unpin(); err != nil {
			return fmt.Errorf("lb: unpin link of ifindex %d: %w", ifindex, err)
		}
	}
	// A link whose device is gone cannot be detached and needs not be.
	if err := ln.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, unix.ENODEV) &&
		!errors.Is(err, link.ErrNotSupported) {
		return fmt.Errorf("lb: detach from ifindex %d: %w", ifindex, err)
	}
	return nil
}

// Unpin removes every pin (maps and links): once this LB is closed the
// program detaches and the maps are freed. For decommissioning a gateway
// and for tests; a no-op without PinDir.
func (l *LB) Unpin() error {
	if l.opts.PinDir == "" {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	pins, err := filepath.Glob(filepath.Join(l.opts.PinDir, "links", "xdp-*"))
	if err != nil {
		return fmt.Errorf("lb: list pinned links: %w", err)
	}
	for _, p := range pins {
		if err := os.Remove(p); err != nil {
			errs = append(errs, fmt.Errorf("lb: unpin link %s: %w", p, err))
		}
	}
	for _, m := range []*ebpf.Map{l.objs.LbVips, l.objs.LbRings, l.objs.LbBackends, l.objs.LbConns,
		l.objs.LbCfg, l.objs.LbStats, l.objs.LbSvcStats, l.objs.LbNexthops, l.owners} {
		if err := m.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("lb: unpin map: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Configure writes this node's forwarding configuration.
func (l *LB) Configure(c Config) error {
	if !c.UnderlayIP.Is4() {
		return fmt.Errorf("lb: configure: underlay address %v is not IPv4", c.UnderlayIP)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return fmt.Errorf("lb: configure: MTU %d not in 576..65535", c.MTU)
	}
	if c.OutIfindex < 0 {
		return fmt.Errorf("lb: configure: bad interface index %d", c.OutIfindex)
	}
	var v bpf.LbLbConfig
	var err error
	if v.RouterMac, err = mac6("router", c.RouterMAC, true); err != nil {
		return err
	}
	if v.DstMac, err = mac6("next hop", c.NextHopMAC, !c.FIB); err != nil {
		return err
	}
	if v.SrcMac, err = mac6("source", c.SourceMAC, !c.FIB); err != nil {
		return err
	}
	v.SrcIp, _ = maglev.Words(c.UnderlayIP)
	v.Mtu = c.MTU
	v.OutIfindex = uint32(c.OutIfindex)
	if c.FIB {
		v.Flags |= cfgFIB
	}
	if err := l.objs.LbCfg.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("lb: write config: %w", err)
	}
	return nil
}

func mac6(what string, m net.HardwareAddr, required bool) ([6]uint8, error) {
	var out [6]uint8
	if len(m) == 0 && !required {
		return out, nil
	}
	if len(m) != 6 {
		return out, fmt.Errorf("lb: configure: %s MAC %q is not a 6-byte MAC", what, m)
	}
	copy(out[:], m)
	return out, nil
}

// parsed is a validated LbService, ready to write.
type parsed struct {
	key      bpf.LbLbVipKey
	vip      bpf.LbLbVip // Slot filled in later
	size     uint32
	backends []parsedBackend
	table    []int32 // maglev.Table over the usable backends
	usable   []int   // table index -> index in backends
}

type parsedBackend struct {
	id    uint32
	value bpf.LbLbBackend // Gen filled in later
}

func parseService(s *agentv1.LbService) (*parsed, error) {
	if s == nil {
		return nil, errors.New("nil service")
	}
	vip, err := netip.ParseAddr(s.GetVip())
	if err != nil || !vip.Is4() {
		return nil, fmt.Errorf("VIP %q is not an IPv4 address", s.GetVip())
	}
	if s.GetPort() == 0 || s.GetPort() > 65535 {
		return nil, fmt.Errorf("port %d not in 1..65535", s.GetPort())
	}
	if p := s.GetProtocol(); p != unix.IPPROTO_TCP && p != unix.IPPROTO_UDP {
		return nil, fmt.Errorf("protocol %d is neither TCP (6) nor UDP (17)", p)
	}
	if s.GetInternal() {
		return nil, errors.New("an internal (east-west) listener is served by the tc pipeline, not the uplink")
	}
	if s.GetVni() == 0 || s.GetVni() >= 1<<24 {
		return nil, fmt.Errorf("VNI %d not in 1..16777215", s.GetVni())
	}
	p := &parsed{size: s.GetMaglevSize()}
	if p.size == 0 {
		p.size = maglev.DefaultSize
	}
	p.key.Vip, _ = maglev.Words(vip)
	p.key.Port = htons(uint16(s.GetPort()))
	p.key.Proto = uint8(s.GetProtocol())
	p.vip.Vni = s.GetVni()
	if s.GetSourceIpPersistence() {
		p.vip.Flags |= vipSrcPersist
	}
	seen := map[uint32]bool{}
	var mb []maglev.Backend
	for _, b := range s.GetBackends() {
		if seen[b.GetId()] {
			return nil, fmt.Errorf("backend id %d appears twice", b.GetId())
		}
		seen[b.GetId()] = true
		addr, err := netip.ParseAddr(b.GetAddress())
		if err != nil || !addr.Is4() {
			return nil, fmt.Errorf("backend %d: address %q is not IPv4", b.GetId(), b.GetAddress())
		}
		if b.GetPort() == 0 || b.GetPort() > 65535 {
			return nil, fmt.Errorf("backend %d: port %d not in 1..65535", b.GetId(), b.GetPort())
		}
		w := b.GetWeight()
		if w == 0 {
			w = 1 // unset in the message: the default weight
		}
		if w > maglev.MaxWeight {
			return nil, fmt.Errorf("backend %d: weight %d not in 1..%d", b.GetId(), w, maglev.MaxWeight)
		}
		pb := parsedBackend{id: b.GetId()}
		pb.value.State = stateDown
		if b.GetNodeIp() != "" { // else unbound (no node yet): not used
			nodeIP, err := netip.ParseAddr(b.GetNodeIp())
			if err != nil || !nodeIP.Is4() {
				return nil, fmt.Errorf("backend %d: node address %q is not IPv4", b.GetId(), b.GetNodeIp())
			}
			mac, err := net.ParseMAC(b.GetPortMac())
			if err != nil || len(mac) != 6 {
				return nil, fmt.Errorf("backend %d: port MAC %q is not a 6-byte MAC", b.GetId(), b.GetPortMac())
			}
			pb.value.NodeIp, _ = maglev.Words(nodeIP)
			copy(pb.value.Mac[:], mac)
			switch {
			case !b.GetHealthy():
				pb.value.State = stateDown
			case b.GetDraining():
				pb.value.State = stateDraining
			default:
				pb.value.State = stateActive
				p.usable = append(p.usable, len(p.backends))
				mb = append(mb, maglev.Backend{Key: netip.AddrPortFrom(addr, uint16(b.GetPort())).String(), Weight: w})
			}
		}
		p.backends = append(p.backends, pb)
	}
	p.table, err = maglev.Table(mb, p.size)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// SetService installs or updates a listener. Invalid input returns an
// error and changes nothing. A new table replaces the old one whole.
func (l *LB) SetService(s *agentv1.LbService) error {
	p, err := parseService(s)
	if err != nil {
		return fmt.Errorf("lb: service %d (%s): %w", s.GetId(), s.GetName(), err)
	}
	id := s.GetId()
	l.mu.Lock()
	defer l.mu.Unlock()
	if other, ok := l.vips[p.key]; ok && other != id {
		return fmt.Errorf("lb: service %d (%s): %s:%d/%d is already service %d", id, s.GetName(),
			s.GetVip(), s.GetPort(), s.GetProtocol(), other)
	}
	old := l.services[id]
	svc := &service{key: p.key, backends: map[uint32]backendSlot{}}
	fresh := []uint32{} // slots taken by this call: given back on failure
	fail := func(err error) error {
		for _, sl := range fresh {
			// Best effort: a slot left marked in use would be taken
			// for this service's backend by a later recovery.
			l.objs.LbBackends.Update(sl, &bpf.LbLbBackend{Gen: l.gens[sl], State: stateFree}, ebpf.UpdateAny)
			l.beSlots.put(sl)
		}
		if old == nil && svc.slot != 0 {
			l.svcSlots.put(svc.slot - 1)
		}
		return fmt.Errorf("lb: service %d (%s): %w", id, s.GetName(), err)
	}
	if old != nil {
		svc.slot = old.slot // stored +1: zero means none yet
	} else {
		sl, ok := l.svcSlots.get()
		if !ok {
			return fmt.Errorf("lb: service %d (%s): all %d service slots in use", id, s.GetName(), l.opts.MaxServices)
		}
		svc.slot = sl + 1
		if err := l.resetServiceStats(sl); err != nil {
			return fail(err)
		}
	}
	slot := svc.slot - 1

	// Backend slots first, so the table never names a slot not written.
	for _, b := range p.backends {
		if o, ok := old.backend(b.id); ok && o.value.NodeIp == b.value.NodeIp && o.value.Mac == b.value.Mac {
			v := o.value
			v.State = b.value.State
			if v != o.value {
				// Only the state byte changes: a packet reading
				// the slot meanwhile sees the old or new state.
				if err := l.objs.LbBackends.Update(o.slot, &v, ebpf.UpdateAny); err != nil {
					return fail(fmt.Errorf("update backend %d: %w", b.id, err))
				}
			}
			svc.backends[b.id] = backendSlot{slot: o.slot, value: v}
			continue
		}
		sl, ok := l.beSlots.get()
		if !ok {
			return fail(fmt.Errorf("all %d backend slots in use", l.opts.MaxBackends))
		}
		fresh = append(fresh, sl)
		l.gens[sl]++
		v := b.value
		v.Gen = l.gens[sl]
		if err := l.owners.Update(sl, owner{Service: id, Backend: b.id}, ebpf.UpdateAny); err != nil {
			return fail(fmt.Errorf("record owner of backend %d: %w", b.id, err))
		}
		if err := l.objs.LbBackends.Update(sl, &v, ebpf.UpdateAny); err != nil {
			return fail(fmt.Errorf("write backend %d: %w", b.id, err))
		}
		svc.backends[b.id] = backendSlot{slot: sl, value: v}
	}

	// The table, into a new inner map swapped in at once.
	vals := make([]uint32, len(p.table)+1)
	vals[0] = p.size
	for i, t := range p.table {
		if t == maglev.Empty {
			vals[i+1] = noBackend
		} else {
			vals[i+1] = svc.backends[p.backends[p.usable[t]].id].slot
		}
	}
	if err := l.swapTable(slot, vals); err != nil {
		return fail(err)
	}
	vip := p.vip
	vip.Slot = slot
	vip.SvcId = id
	if err := l.objs.LbVips.Update(&p.key, &vip, ebpf.UpdateAny); err != nil {
		return fail(fmt.Errorf("write VIP: %w", err))
	}
	l.vips[p.key] = id
	if old != nil && old.key != p.key {
		if err := l.objs.LbVips.Delete(&old.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("lb: service %d (%s): delete old VIP: %w", id, s.GetName(), err)
		}
		delete(l.vips, old.key)
	}
	l.services[id] = svc
	// Backends gone from the service, or moved to another slot: their
	// connections move on their next packet.
	if old != nil {
		for bid, o := range old.backends {
			if n, ok := svc.backends[bid]; ok && n.slot == o.slot {
				continue
			}
			if err := l.freeBackend(o); err != nil {
				return fmt.Errorf("lb: service %d (%s): %w", id, s.GetName(), err)
			}
		}
	}
	return nil
}

func (s *service) backend(id uint32) (backendSlot, bool) {
	if s == nil {
		return backendSlot{}, false
	}
	b, ok := s.backends[id]
	return b, ok
}

func (l *LB) freeBackend(b backendSlot) error {
	v := b.value
	v.State = stateFree
	if err := l.objs.LbBackends.Update(b.slot, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("free backend slot %d: %w", b.slot, err)
	}
	l.beSlots.put(b.slot)
	return nil
}

func (l *LB) swapTable(slot uint32, vals []uint32) error {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "lb_ring",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: uint32(len(vals)),
		Flags:      unix.BPF_F_INNER_MAP,
	})
	if err != nil {
		return fmt.Errorf("create Maglev table of %d entries: %w", len(vals)-1, err)
	}
	defer inner.Close() // the outer map holds its own reference
	keys := make([]uint32, len(vals))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := inner.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("fill Maglev table: %w", err)
	}
	if err := l.objs.LbRings.Update(slot, inner, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("install Maglev table: %w", err)
	}
	return nil
}

func (l *LB) resetServiceStats(slot uint32) error {
	zero := make([]bpf.LbLbSvcCounters, ebpf.MustPossibleCPU())
	if err := l.objs.LbSvcStats.Update(slot, zero, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	return nil
}

// DeleteService removes a listener: its VIP is no longer matched (packets
// to it pass on), its connections are forgotten as their backends' slots
// are freed. Unknown ids are not an error.
func (l *LB) DeleteService(id uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	svc, ok := l.services[id]
	if !ok {
		return nil
	}
	if err := l.objs.LbVips.Delete(&svc.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("lb: delete service %d: VIP: %w", id, err)
	}
	delete(l.vips, svc.key)
	delete(l.services, id)
	slot := svc.slot - 1
	var errs []error
	if err := l.objs.LbRings.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("lb: delete service %d: table: %w", id, err))
	}
	l.svcSlots.put(slot)
	for _, b := range svc.backends {
		if err := l.freeBackend(b); err != nil {
			errs = append(errs, fmt.Errorf("lb: delete service %d: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// ServiceIDs lists the services installed (after a restart with PinDir:
// the ones recovered from the maps).
func (l *LB) ServiceIDs() []uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	ids := make([]uint32, 0, len(l.services))
	for id := range l.services {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// ServiceStats are one listener's counters.
type ServiceStats struct {
	Packets     uint64 // forwarded to a backend
	Bytes       uint64 // of those packets (inner frames)
	NewFlows    uint64 // Maglev choices written to the connection table
	NoBackend   uint64 // dropped: no usable backend
	ICMPSent    uint64 // "fragmentation needed" sent to clients
	ICMPRelayed uint64 // ICMP errors about a flow relayed to its backend
}

// Stats are the load balancer's counters, summed over CPUs.
type Stats struct {
	ServiceStats                         // over all services
	Passed       uint64                  // not for a VIP: passed on
	NotIPv4      uint64                  // passed on (ARP, IPv6, ...)
	Malformed    uint64                  // truncated or inconsistent headers: passed on
	Fragments    uint64                  // IPv4 fragments: passed on, not inspected
	TooBig       uint64                  // VIP packets over the MTU without DF: dropped
	EncapFailed  uint64                  // no headroom: dropped
	FIBFailed    uint64                  // no next hop toward the backend's node: dropped
	Unconfigured uint64                  // VIP packets before Configure: dropped
	Services     map[uint32]ServiceStats // by LbService.id
}

// Stats reads the counters.
func (l *LB) Stats() (Stats, error) {
	var per []bpf.LbLbCounters
	if err := l.objs.LbStats.Lookup(uint32(0), &per); err != nil {
		return Stats{}, fmt.Errorf("lb: read counters: %w", err)
	}
	var c [14]uint64
	for _, p := range per {
		for i := range c {
			c[i] += p.C[i]
		}
	}
	st := Stats{
		ServiceStats: ServiceStats{Packets: c[0], Bytes: c[1], NewFlows: c[2], NoBackend: c[3], ICMPSent: c[4], ICMPRelayed: c[5]},
		Passed:       c[6], NotIPv4: c[7], Malformed: c[8], Fragments: c[9], TooBig: c[10],
		EncapFailed: c[11], FIBFailed: c[12], Unconfigured: c[13],
		Services: map[uint32]ServiceStats{},
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, svc := range l.services {
		var ps []bpf.LbLbSvcCounters
		if err := l.objs.LbSvcStats.Lookup(svc.slot-1, &ps); err != nil {
			return Stats{}, fmt.Errorf("lb: read counters of service %d: %w", id, err)
		}
		var s ServiceStats
		for _, p := range ps {
			s.Packets += p.Packets
			s.Bytes += p.Bytes
			s.NewFlows += p.NewFlows
			s.NoBackend += p.NoBackend
			s.ICMPSent += p.IcmpSent
			s.ICMPRelayed += p.IcmpRelayed
		}
		st.Services[id] = s
	}
	return st, nil
}

// slots hands out indices 0..max-1, reusing the longest-free first: a
// backend slot is rewritten for a new backend as late as possible, so a
// packet that raced the slot's release is long gone.
type slots struct {
	max  uint32
	next uint32   // never handed out from here up
	free []uint32 // FIFO
}

func (s *slots) get() (uint32, bool) {
	if s.next < s.max {
		s.next++
		return s.next - 1, true
	}
	if len(s.free) == 0 {
		return 0, false
	}
	v := s.free[0]
	s.free = s.free[1:]
	return v, true
}

func (s *slots) put(v uint32) { s.free = append(s.free, v) }

// recover sets the allocator to: next = highest, every slot below it not
// in used free (in index order).
func (s *slots) recover(highest uint32, used map[uint32]bool) {
	s.next = highest
	s.free = nil
	for i := uint32(0); i < highest; i++ {
		if !used[i] {
			s.free = append(s.free, i)
		}
	}
}
