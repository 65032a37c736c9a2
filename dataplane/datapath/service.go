package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/lb/maglev"
)

// Service load balancing (issue [5]) in the tc pipeline: see bpf/c/service.h
// and "Services" in doc.go.

// Kernel-side values mirrored from bpf/c/maps.h.
const (
	svcInternal = 1
	svcSourceIP = 2
)

// Service is one L4 listener as a node's tc pipeline serves it: east-west
// (Internal: translated at the client's port with the Maglev table) or
// north-south (translated on the node of the backend the gateway's XDP
// load balancer chose; on gateways it only lets the replies out).
type Service struct {
	ID       uint32 // LbService.id, never 0
	VPC      uint32 // VNI
	VIP      netip.Addr
	Port     uint16
	Protocol uint8 // 6 (TCP) or 17 (UDP)
	Internal bool
	// SourceIPPersistence hashes the client and VIP addresses only, so a
	// client's flows all go to one backend.
	SourceIPPersistence bool
	// TableSize is the Maglev table size, a prime; 0 is maglev.DefaultSize.
	TableSize uint32
	Backends  []Backend
}

// Backend is a service backend. New flows go to healthy, non-draining
// backends (the Maglev table); established flows stay on a backend while
// it is healthy, draining or not.
type Backend struct {
	ID       uint32 // LbBackend.id, never 0, unique in the service
	Address  netip.Addr
	Port     uint16 // target port
	Weight   uint32 // 1..maglev.MaxWeight
	Healthy  bool
	Draining bool
	// Local: the backend's port is on this node, with PortMAC; north-south
	// packets encapsulated to that MAC are translated to this backend.
	Local   bool
	PortMAC net.HardwareAddr
}

// Key is the backend's Maglev key, "address:port", identical on every
// node (lb/maglev).
func (b Backend) Key() string { return netip.AddrPortFrom(b.Address, b.Port).String() }

func (s Service) size() uint32 {
	if s.TableSize == 0 {
		return maglev.DefaultSize
	}
	return s.TableSize
}

func (s Service) validate() error {
	if s.ID == 0 {
		return errors.New("id must be positive")
	}
	if s.VPC == 0 || s.VPC >= 1<<24 {
		return fmt.Errorf("vpc %d is not a VNI in 1..2^24-1", s.VPC)
	}
	if err := ipv4(s.VIP, "VIP"); err != nil {
		return err
	}
	if s.Port == 0 {
		return errors.New("port 0")
	}
	if s.Protocol != 6 && s.Protocol != 17 {
		return fmt.Errorf("protocol %d is neither TCP (6) nor UDP (17)", s.Protocol)
	}
	ids := map[uint32]bool{}
	keys := map[string]bool{}
	for _, b := range s.Backends {
		if b.ID == 0 || ids[b.ID] {
			return fmt.Errorf("backend id %d is 0 or repeated", b.ID)
		}
		ids[b.ID] = true
		if err := ipv4(b.Address, "backend address"); err != nil {
			return fmt.Errorf("backend %d: %w", b.ID, err)
		}
		if b.Port == 0 {
			return fmt.Errorf("backend %d: port 0", b.ID)
		}
		if b.Weight == 0 || b.Weight > maglev.MaxWeight {
			return fmt.Errorf("backend %d: weight %d not in 1..%d", b.ID, b.Weight, maglev.MaxWeight)
		}
		if keys[b.Key()] {
			return fmt.Errorf("backend %d: %s appears twice", b.ID, b.Key())
		}
		keys[b.Key()] = true
		if b.Local {
			if _, err := mac6(b.PortMAC); err != nil {
				return fmt.Errorf("backend %d: port %w", b.ID, err)
			}
		}
	}
	return nil
}

// TableBackends are the backends new flows may go to: healthy and not
// draining, in the order of s.Backends. Their Maglev table is what every
// node computes (maglev.Table over their keys and weights).
func (s Service) TableBackends() []Backend {
	var out []Backend
	for _, b := range s.Backends {
		if b.Healthy && !b.Draining {
			out = append(out, b)
		}
	}
	return out
}

// Table is the service's Maglev table as the data path holds it: entry i
// is the ID of the backend flows hashing to i; nil if no backend may take
// new flows.
func (s Service) Table() ([]uint32, error) {
	tb := s.TableBackends()
	if len(tb) == 0 {
		return nil, nil
	}
	mb := make([]maglev.Backend, len(tb))
	for i, b := range tb {
		mb[i] = maglev.Backend{Key: b.Key(), Weight: b.Weight}
	}
	t, err := maglev.Table(mb, s.size())
	if err != nil {
		return nil, err
	}
	out := make([]uint32, len(t))
	for i, e := range t {
		out[i] = tb[e].ID
	}
	return out, nil
}

// signature identifies the inputs of the table: the table is rebuilt only
// when it changes (a health flap of another service, a draining flag
// elsewhere, or a re-apply of the same state leave it alone).
func (s Service) signature() uint64 {
	tb := s.TableBackends()
	slices.SortFunc(tb, func(a, b Backend) int { return int(int64(a.ID) - int64(b.ID)) })
	h := fnv.New64a()
	var w [4]byte
	binary.LittleEndian.PutUint32(w[:], s.size())
	h.Write(w[:])
	for _, b := range tb {
		binary.LittleEndian.PutUint32(w[:], b.ID)
		h.Write(w[:])
		binary.LittleEndian.PutUint32(w[:], b.Weight)
		h.Write(w[:])
		h.Write([]byte(b.Key()))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

func (s Service) key() bpf.MeridianSvcKey {
	return bpf.MeridianSvcKey{Vpc: s.VPC, Vip: be32(s.VIP), Port: be16(s.Port), Proto: s.Protocol}
}

// installedService finds the key and value of service id in the services
// map (a service may have changed its VIP: the key is not derived from id).
// hint is where it probably is: a re-apply finds it with one lookup.
func (d *Datapath) installedService(id uint32, hint bpf.MeridianSvcKey) (bpf.MeridianSvcKey, bpf.MeridianSvcInfo, bool, error) {
	var k bpf.MeridianSvcKey
	var v bpf.MeridianSvcInfo
	if d.objs.Services.Lookup(hint, &v) == nil && v.Id == id {
		return hint, v, true, nil
	}
	it := d.objs.Services.Iterate()
	for it.Next(&k, &v) {
		if v.Id == id {
			return k, v, true, nil
		}
	}
	if err := it.Err(); err != nil {
		return k, v, false, fmt.Errorf("list services: %w", err)
	}
	return k, v, false, nil
}

// UpsertService installs or updates a service. Order, so that a packet
// never meets a half-applied service: backends new flows may go to are
// written first, then the Maglev table (built aside and swapped in with
// one update, only when its inputs changed), then the listener; backends
// that left are removed last. Invalid input changes nothing.
func (d *Datapath) UpsertService(s Service) error {
	if err := s.validate(); err != nil {
		return fmt.Errorf("upsert service %d: %w", s.ID, err)
	}
	// Only east-west services are chosen for here: north-south ones were
	// chosen by the gateway's XDP load balancer (lb_local says where).
	var table []uint32
	if s.Internal {
		t, err := s.Table()
		if err != nil {
			return fmt.Errorf("upsert service %d: %w", s.ID, err)
		}
		table = t
	}
	m := &d.objs.MeridianMaps
	oldKey, old, hadOld, err := d.installedService(s.ID, s.key())
	if err != nil {
		return fmt.Errorf("upsert service %d: %w", s.ID, err)
	}
	info := bpf.MeridianSvcInfo{Id: s.ID, Size: s.size(), Sig: s.signature()}
	if s.Internal {
		info.Flags |= svcInternal
	}
	if s.SourceIPPersistence {
		info.Flags |= svcSourceIP
	}
	if other, ok := d.serviceAt(s.key()); ok && other != s.ID {
		return fmt.Errorf("upsert service %d: %v:%d/%d in VNI %d is service %d's", s.ID, s.VIP, s.Port, s.Protocol, s.VPC, other)
	}

	keep := map[bpf.MeridianLbBackendKey]bool{}
	for _, b := range s.Backends {
		if !b.Healthy {
			continue // its flows are chosen afresh
		}
		k := bpf.MeridianLbBackendKey{Svc: s.ID, Backend: b.ID}
		v := bpf.MeridianLbBackend{Addr: be32(b.Address), Port: be16(b.Port)}
		if err := m.LbBackends.Update(k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("upsert service %d: backend %d: %w", s.ID, b.ID, err)
		}
		keep[k] = true
	}
	var probe uint32
	hasTable := m.LbTables.Lookup(s.ID, &probe) == nil
	switch {
	case table == nil:
		if err := deleteIgnoreMissing(m.LbTables, s.ID); err != nil {
			return fmt.Errorf("upsert service %d: remove table: %w", s.ID, err)
		}
	case !hadOld || old.Sig != info.Sig || !hasTable:
		if err := d.swapTable(s.ID, table); err != nil {
			return fmt.Errorf("upsert service %d: %w", s.ID, err)
		}
	}
	local := map[bpf.MeridianLbLocalKey]bool{}
	for _, b := range s.Backends {
		if !b.Local {
			continue
		}
		mac, _ := mac6(b.PortMAC) // validated
		k := bpf.MeridianLbLocalKey{Svc: s.ID, Mac: mac}
		v := bpf.MeridianLbBackend{Addr: be32(b.Address), Port: be16(b.Port)}
		if err := m.LbLocal.Update(k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("upsert service %d: local backend %d: %w", s.ID, b.ID, err)
		}
		local[k] = true
	}
	if err := m.Services.Update(s.key(), &info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert service %d: %w", s.ID, err)
	}
	if hadOld && oldKey != s.key() {
		if err := deleteIgnoreMissing(m.Services, oldKey); err != nil {
			return fmt.Errorf("upsert service %d: remove old listener: %w", s.ID, err)
		}
	}
	if !hadOld || oldKey != s.key() || old.Flags&svcInternal != info.Flags&svcInternal {
		if err := d.syncServiceAddrs(s.key(), oldKey); err != nil {
			return fmt.Errorf("upsert service %d: %w", s.ID, err)
		}
	}
	if err := pruneBatched(m.LbBackends, func(k *bpf.MeridianLbBackendKey, _ *bpf.MeridianLbBackend) bool { return k.Svc == s.ID && !keep[*k] }); err != nil {
		return fmt.Errorf("upsert service %d: prune backends: %w", s.ID, err)
	}
	if err := pruneBatched(m.LbLocal, func(k *bpf.MeridianLbLocalKey, _ *bpf.MeridianLbBackend) bool { return k.Svc == s.ID && !local[*k] }); err != nil {
		return fmt.Errorf("upsert service %d: prune local backends: %w", s.ID, err)
	}
	return nil
}

// pruneBatched deletes the entries of m that stale selects, reading the
// table in batches: the agent upserts every service on each reconcile,
// and a walk of lb_backends per service would otherwise cost a system
// call per backend of every service. The agent is the only writer, so
// the walk sees the whole table.
func pruneBatched[K comparable, V any](m *ebpf.Map, stale func(*K, *V) bool) error {
	var keys []K
	if err := walkBatched(m, func(k *K, v *V) {
		if stale(k, v) {
			keys = append(keys, *k)
		}
	}); err != nil {
		return fmt.Errorf("walk %v: %w", m, err)
	}
	for _, k := range keys {
		if err := deleteIgnoreMissing(m, k); err != nil {
			return fmt.Errorf("delete from %v: %w", m, err)
		}
	}
	return nil
}

func (d *Datapath) serviceAt(k bpf.MeridianSvcKey) (uint32, bool) {
	var v bpf.MeridianSvcInfo
	if err := d.objs.Services.Lookup(k, &v); err != nil {
		return 0, false
	}
	return v.Id, true
}

// swapTable writes table into a new inner map and puts it in place of the
// service's current one with one update of lb_tables: packets see the old
// table or the new one, never a mix.
func (d *Datapath) swapTable(id uint32, table []uint32) error {
	inner, err := ebpf.NewMap(&ebpf.MapSpec{Name: "lb_table", Type: ebpf.Array, KeySize: 4, ValueSize: 4,
		MaxEntries: uint32(len(table)), Flags: unix.BPF_F_INNER_MAP})
	if err != nil {
		return fmt.Errorf("create Maglev table of %d entries: %w", len(table), err)
	}
	defer inner.Close() // lb_tables holds its own reference
	keys := make([]uint32, len(table))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := inner.BatchUpdate(keys, table, nil); err != nil {
		return fmt.Errorf("fill Maglev table: %w", err)
	}
	if err := d.objs.LbTables.Update(id, uint32(inner.FD()), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("swap in Maglev table: %w", err)
	}
	return nil
}

// DeleteService removes a service: the listener first (packets to the VIP
// stop being translated), then its table and backends. Established flows
// lose their reverse translation's backend set but keep their conntrack
// entries until they expire. Deleting an absent service is not an error.
func (d *Datapath) DeleteService(id uint32) error {
	m := &d.objs.MeridianMaps
	key, _, had, err := d.installedService(id, bpf.MeridianSvcKey{})
	if err != nil {
		return fmt.Errorf("delete service %d: %w", id, err)
	}
	if err := deleteWhereValue(m.Services, func(_ bpf.MeridianSvcKey, v bpf.MeridianSvcInfo) bool { return v.Id == id }); err != nil {
		return fmt.Errorf("delete service %d: %w", id, err)
	}
	if had {
		if err := d.syncServiceAddrs(key); err != nil {
			return fmt.Errorf("delete service %d: %w", id, err)
		}
	}
	if err := deleteIgnoreMissing(m.LbTables, id); err != nil {
		return fmt.Errorf("delete service %d: table: %w", id, err)
	}
	if err := deleteWhere(m.LbBackends, func(k bpf.MeridianLbBackendKey) bool { return k.Svc == id }); err != nil {
		return fmt.Errorf("delete service %d: backends: %w", id, err)
	}
	if err := deleteWhere(m.LbLocal, func(k bpf.MeridianLbLocalKey) bool { return k.Svc == id }); err != nil {
		return fmt.Errorf("delete service %d: local backends: %w", id, err)
	}
	return nil
}

// syncServiceAddrs sets the proxy-ARP entry of the addresses of listeners
// keys: present while an east-west listener uses the address.
func (d *Datapath) syncServiceAddrs(keys ...bpf.MeridianSvcKey) error {
	count := map[bpf.MeridianSvcAddrKey]uint32{}
	for _, k := range keys {
		if k.Vip != 0 {
			count[bpf.MeridianSvcAddrKey{Vpc: k.Vpc, Vip: k.Vip}] = 0
		}
	}
	var k bpf.MeridianSvcKey
	var v bpf.MeridianSvcInfo
	it := d.objs.Services.Iterate()
	for it.Next(&k, &v) {
		ak := bpf.MeridianSvcAddrKey{Vpc: k.Vpc, Vip: k.Vip}
		if n, ok := count[ak]; ok && v.Flags&svcInternal != 0 {
			count[ak] = n + 1
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	for ak, n := range count {
		var err error
		if n == 0 {
			err = deleteIgnoreMissing(d.objs.SvcAddrs, ak)
		} else {
			err = d.objs.SvcAddrs.Update(ak, n, ebpf.UpdateAny)
		}
		if err != nil {
			return fmt.Errorf("proxy ARP for VIP %v: %w", addrOf(ak.Vip), err)
		}
	}
	return nil
}

// ServiceIDs lists the services installed.
func (d *Datapath) ServiceIDs() ([]uint32, error) {
	var ids []uint32
	var k bpf.MeridianSvcKey
	var v bpf.MeridianSvcInfo
	it := d.objs.Services.Iterate()
	for it.Next(&k, &v) {
		ids = append(ids, v.Id)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	slices.Sort(ids)
	return ids, nil
}

// ApplyServices makes the installed services exactly services: each is
// upserted (all are validated first: an invalid one changes nothing), then
// the others are deleted.
func (d *Datapath) ApplyServices(services []Service) error {
	want := map[uint32]bool{}
	listeners := map[bpf.MeridianSvcKey]uint32{}
	for _, s := range services {
		if err := s.validate(); err != nil {
			return fmt.Errorf("apply services: service %d: %w", s.ID, err)
		}
		if want[s.ID] {
			return fmt.Errorf("apply services: service %d appears twice", s.ID)
		}
		if other, ok := listeners[s.key()]; ok {
			return fmt.Errorf("apply services: services %d and %d share %v:%d/%d", other, s.ID, s.VIP, s.Port, s.Protocol)
		}
		want[s.ID] = true
		listeners[s.key()] = s.ID
	}
	have, err := d.ServiceIDs()
	if err != nil {
		return fmt.Errorf("apply services: %w", err)
	}
	// Deletions first when a listener moves between services: the new
	// owner's upsert would otherwise see it taken.
	var errs []error
	for _, id := range have {
		if !want[id] {
			if err := d.DeleteService(id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, s := range services {
		if err := d.UpsertService(s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ServiceTable reads back the Maglev table the data path holds for
// service id (nil: none, no backend takes new flows).
func (d *Datapath) ServiceTable(id uint32) ([]uint32, error) {
	var innerID uint32
	if err := d.objs.LbTables.Lookup(id, &innerID); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("service %d table: %w", id, err)
	}
	inner, err := ebpf.NewMapFromID(ebpf.MapID(innerID))
	if err != nil {
		return nil, fmt.Errorf("service %d table: open map %d: %w", id, innerID, err)
	}
	defer inner.Close()
	out := make([]uint32, inner.MaxEntries())
	for i := range out {
		if err := inner.Lookup(uint32(i), &out[i]); err != nil {
			return nil, fmt.Errorf("service %d table entry %d: %w", id, i, err)
		}
	}
	return out, nil
}
