package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/bpf"
)

// Kernel-side values mirrored from bpf/c/maps.h.
const (
	routeDrop   = 3
	egressEIP   = 1
	egressNAT   = 2
	maxGateways = 16
	natMaxAddrs = 8
)

// ---- workload node ----

// SetGateways sets the live gateways of this node: the underlay addresses
// traffic of ports with an elastic IP is spread over, by flow hash. The set
// is replaced in one map update; an empty set makes such traffic drop with
// DropNoGateway.
func (d *Datapath) SetGateways(nodes []netip.Addr) error {
	if len(nodes) > maxGateways {
		return fmt.Errorf("set gateways: %d given, the data path holds %d", len(nodes), maxGateways)
	}
	var g bpf.MeridianGwSet
	for i, n := range nodes {
		if err := ipv4(n, "gateway"); err != nil {
			return fmt.Errorf("set gateways: %w", err)
		}
		g.NodeIp[i] = be32(n)
	}
	g.Count = uint32(len(nodes))
	if err := d.objs.Gateways.Update(uint32(0), &g, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set gateways: %w", err)
	}
	return nil
}

// Egress says where packets from a VPC source leave for the outside world
// when no VPC route matches their destination: a port address with an
// elastic IP (a /32, NATOwner unset) goes to any live gateway; a subnet
// behind a NAT gateway goes to the NAT gateway's owner. The longest prefix
// wins, so a port's elastic IP beats its subnet's NAT gateway.
type Egress struct {
	VPC        uint32
	Prefix     netip.Prefix
	NATOwner   netip.Addr // underlay address of the NAT gateway's owner; invalid: elastic IP
	NATGateway uint32
}

func egressKey(vpc uint32, p netip.Prefix) bpf.MeridianEgressKey {
	return bpf.MeridianEgressKey{Prefixlen: 32 + uint32(p.Bits()), Vpc: vpc, Ip: be32(p.Masked().Addr())}
}

// UpsertEgress installs or replaces an egress entry.
func (d *Datapath) UpsertEgress(e Egress) error {
	if !e.Prefix.IsValid() || !e.Prefix.Addr().Is4() {
		return fmt.Errorf("upsert egress %v in vpc %d: not an IPv4 prefix", e.Prefix, e.VPC)
	}
	v := bpf.MeridianEgressEntry{Kind: egressEIP}
	if e.NATOwner.IsValid() {
		if err := ipv4(e.NATOwner, "NAT gateway owner"); err != nil {
			return fmt.Errorf("upsert egress %v in vpc %d: %w", e.Prefix, e.VPC, err)
		}
		v = bpf.MeridianEgressEntry{Kind: egressNAT, NodeIp: be32(e.NATOwner), Natgw: e.NATGateway}
	}
	if err := d.objs.Egress.Update(egressKey(e.VPC, e.Prefix), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert egress %v in vpc %d: %w", e.Prefix, e.VPC, err)
	}
	return nil
}

// DeleteEgress removes an egress entry; an absent one is not an error.
func (d *Datapath) DeleteEgress(vpc uint32, p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("delete egress %v in vpc %d: not an IPv4 prefix", p, vpc)
	}
	if err := deleteIgnoreMissing(d.objs.Egress, egressKey(vpc, p)); err != nil {
		return fmt.Errorf("delete egress %v in vpc %d: %w", p, vpc, err)
	}
	return nil
}

// UpsertVPCPrefix marks a VPC CIDR: destinations inside it that no port
// route covers are dropped (DropNoRoute) rather than sent to a gateway, and
// proxy ARP does not answer for them.
func (d *Datapath) UpsertVPCPrefix(vpc uint32, p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("upsert vpc prefix %v in vpc %d: not an IPv4 prefix", p, vpc)
	}
	e := bpf.MeridianRouteEntry{Kind: routeDrop}
	if err := d.objs.Routes.Update(routeKey(vpc, p), &e, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert vpc prefix %v in vpc %d: %w", p, vpc, err)
	}
	return nil
}

// ---- gateway node ----

// ElasticIP is an elastic IP associated with a port, as a gateway serves
// it: inbound Address -> PrivateIP over VXLAN to Node (VNI VPC, inner
// destination MAC PortMAC); outbound from PrivateIP in VPC -> Address.
type ElasticIP struct {
	Address   netip.Addr
	VPC       uint32 // VNI
	PrivateIP netip.Addr
	PortMAC   net.HardwareAddr
	Node      netip.Addr // underlay address of the port's node; invalid: unbound, inbound dropped
}

// UpsertElasticIP installs or replaces an elastic IP. If it moved to
// another private address, the old one stops being translated.
func (d *Datapath) UpsertElasticIP(e ElasticIP) error {
	if err := ipv4(e.Address, "elastic IP"); err != nil {
		return fmt.Errorf("upsert elastic IP: %w", err)
	}
	if err := ipv4(e.PrivateIP, "private address"); err != nil {
		return fmt.Errorf("upsert elastic IP %v: %w", e.Address, err)
	}
	if e.VPC == 0 || e.VPC >= 1<<24 {
		return fmt.Errorf("upsert elastic IP %v: vpc %d is not a VNI in 1..2^24-1", e.Address, e.VPC)
	}
	mac, err := mac6(e.PortMAC)
	if err != nil {
		return fmt.Errorf("upsert elastic IP %v: port %w", e.Address, err)
	}
	v := bpf.MeridianEipEntry{Vpc: e.VPC, PrivateIp: be32(e.PrivateIP), Mac: mac}
	if e.Node.IsValid() {
		if err := ipv4(e.Node, "port node"); err != nil {
			return fmt.Errorf("upsert elastic IP %v: %w", e.Address, err)
		}
		v.NodeIp = be32(e.Node)
	}
	m := &d.objs.MeridianMaps
	var old bpf.MeridianEipEntry
	hadOld := m.Eips.Lookup(be32(e.Address), &old) == nil
	rev := bpf.MeridianEipRevKey{Vpc: v.Vpc, PrivateIp: v.PrivateIp}
	if err := m.EipByPrivate.Update(rev, be32(e.Address), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert elastic IP %v: outbound: %w", e.Address, err)
	}
	if err := m.Eips.Update(be32(e.Address), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert elastic IP %v: inbound: %w", e.Address, err)
	}
	if hadOld && (old.Vpc != v.Vpc || old.PrivateIp != v.PrivateIp) {
		if err := d.deleteEIPRev(bpf.MeridianEipRevKey{Vpc: old.Vpc, PrivateIp: old.PrivateIp}, be32(e.Address)); err != nil {
			return fmt.Errorf("upsert elastic IP %v: %w", e.Address, err)
		}
	}
	return nil
}

// deleteEIPRev removes the outbound entry k if it still maps to addr.
func (d *Datapath) deleteEIPRev(k bpf.MeridianEipRevKey, addr uint32) error {
	var cur uint32
	if err := d.objs.EipByPrivate.Lookup(k, &cur); err != nil || cur != addr {
		return nil
	}
	if err := deleteIgnoreMissing(d.objs.EipByPrivate, k); err != nil {
		return fmt.Errorf("remove outbound translation of %v: %w", addrOf(k.PrivateIp), err)
	}
	return nil
}

// DeleteElasticIP stops serving an elastic IP; an absent one is not an error.
func (d *Datapath) DeleteElasticIP(addr netip.Addr) error {
	if err := ipv4(addr, "elastic IP"); err != nil {
		return fmt.Errorf("delete elastic IP: %w", err)
	}
	var old bpf.MeridianEipEntry
	if err := d.objs.Eips.Lookup(be32(addr), &old); err != nil {
		return nil
	}
	if err := deleteIgnoreMissing(d.objs.Eips, be32(addr)); err != nil {
		return fmt.Errorf("delete elastic IP %v: %w", addr, err)
	}
	if err := d.deleteEIPRev(bpf.MeridianEipRevKey{Vpc: old.Vpc, PrivateIp: old.PrivateIp}, be32(addr)); err != nil {
		return fmt.Errorf("delete elastic IP %v: %w", addr, err)
	}
	return nil
}

// PortMapping is a NAT gateway's DNAT rule: Address:PublicPort/Protocol ->
// PrivateIP:PrivatePort of a port on Node; its replies leave from
// Address:PublicPort. Stateless, like elastic IPs.
type PortMapping struct {
	Protocol    uint8 // 6 or 17
	Address     netip.Addr
	PublicPort  uint16
	PrivateIP   netip.Addr
	PrivatePort uint16
	PortMAC     net.HardwareAddr
	Node        netip.Addr // invalid: unbound, inbound dropped
}

// NATGateway is a NAT gateway as a gateway node serves it. SNAT lists the
// source prefixes it translates; only the owner gets them (an empty list:
// this gateway serves the addresses and port mappings, not new flows).
type NATGateway struct {
	ID        uint32 // never 0
	VPC       uint32 // VNI
	Addresses []netip.Addr
	SNAT      []netip.Prefix
	PortMin   uint16 // inclusive; 0 and 0: 1024-65535
	PortMax   uint16
	Mappings  []PortMapping
}

// UpsertNATGateway makes the installed state of NAT gateway g.ID equal to
// g. Its flows survive unless their address went away.
func (d *Datapath) UpsertNATGateway(g NATGateway) error {
	if g.ID == 0 {
		return errors.New("upsert NAT gateway: id must not be 0")
	}
	if g.VPC == 0 || g.VPC >= 1<<24 {
		return fmt.Errorf("upsert NAT gateway %d: vpc %d is not a VNI in 1..2^24-1", g.ID, g.VPC)
	}
	if g.PortMin == 0 && g.PortMax == 0 {
		g.PortMin, g.PortMax = 1024, 65535
	}
	if g.PortMin == 0 || g.PortMin > g.PortMax {
		return fmt.Errorf("upsert NAT gateway %d: port range %d-%d is empty or starts at 0", g.ID, g.PortMin, g.PortMax)
	}
	if len(g.Addresses) == 0 || len(g.Addresses) > natMaxAddrs {
		return fmt.Errorf("upsert NAT gateway %d: %d addresses, want 1..%d", g.ID, len(g.Addresses), natMaxAddrs)
	}
	info := bpf.MeridianNatgwInfo{PortMin: g.PortMin, PortMax: g.PortMax, N_addrs: uint32(len(g.Addresses))}
	wantAddr := map[uint32]bool{}
	for i, a := range g.Addresses {
		if err := ipv4(a, "address"); err != nil {
			return fmt.Errorf("upsert NAT gateway %d: %w", g.ID, err)
		}
		info.Addrs[i] = be32(a)
		wantAddr[be32(a)] = true
	}
	wantSrc := map[bpf.MeridianEgressKey]bool{}
	for _, p := range g.SNAT {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("upsert NAT gateway %d: SNAT prefix %v is not IPv4", g.ID, p)
		}
		wantSrc[egressKey(g.VPC, p)] = true
	}
	wantMap := map[bpf.MeridianPortmapKey]bpf.MeridianPortmapEntry{}
	wantRev := map[bpf.MeridianPortmapRevKey]bpf.MeridianPortmapKey{}
	for _, pm := range g.Mappings {
		k, v, err := portMapping(g, pm)
		if err != nil {
			return fmt.Errorf("upsert NAT gateway %d: %w", g.ID, err)
		}
		if _, dup := wantMap[k]; dup {
			return fmt.Errorf("upsert NAT gateway %d: port mapping %v:%d/%d given twice", g.ID, pm.Address, pm.PublicPort, pm.Protocol)
		}
		wantMap[k] = v
		wantRev[bpf.MeridianPortmapRevKey{Vpc: g.VPC, PrivateIp: v.PrivateIp, PrivatePort: v.PrivatePort, Proto: k.Proto}] = k
	}

	m := &d.objs.MeridianMaps
	// The exhaustion counter exists before any flow can need it.
	if err := m.NatExhausted.Update(g.ID, make([]uint64, ebpf.MustPossibleCPU()), ebpf.UpdateNoExist); err != nil &&
		!errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("upsert NAT gateway %d: counter: %w", g.ID, err)
	}
	if err := m.Natgws.Update(g.ID, &info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert NAT gateway %d: %w", g.ID, err)
	}
	for k, v := range wantMap {
		if err := m.PortMaps.Update(k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("upsert NAT gateway %d: port mapping: %w", g.ID, err)
		}
	}
	for k, v := range wantRev {
		if err := m.PortMapsRev.Update(k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("upsert NAT gateway %d: port mapping replies: %w", g.ID, err)
		}
	}
	for a := range wantAddr {
		if err := m.NatAddrs.Update(a, g.ID, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("upsert NAT gateway %d: address %v: %w", g.ID, addrOf(a), err)
		}
	}
	for k := range wantSrc {
		if err := m.NatSrc.Update(k, g.ID, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("upsert NAT gateway %d: SNAT prefix: %w", g.ID, err)
		}
	}
	return d.pruneNATGateway(g.ID, wantAddr, wantSrc, wantMap, wantRev)
}

func portMapping(g NATGateway, pm PortMapping) (bpf.MeridianPortmapKey, bpf.MeridianPortmapEntry, error) {
	var k bpf.MeridianPortmapKey
	var v bpf.MeridianPortmapEntry
	if pm.Protocol != 6 && pm.Protocol != 17 {
		return k, v, fmt.Errorf("port mapping %v:%d: protocol %d is not TCP (6) or UDP (17)", pm.Address, pm.PublicPort, pm.Protocol)
	}
	if !slices.Contains(g.Addresses, pm.Address) {
		return k, v, fmt.Errorf("port mapping %v:%d: not one of the NAT gateway's addresses", pm.Address, pm.PublicPort)
	}
	if pm.PublicPort == 0 || pm.PrivatePort == 0 {
		return k, v, fmt.Errorf("port mapping %v:%d -> %v:%d: ports must not be 0", pm.Address, pm.PublicPort, pm.PrivateIP, pm.PrivatePort)
	}
	if err := ipv4(pm.PrivateIP, "private address"); err != nil {
		return k, v, fmt.Errorf("port mapping %v:%d: %w", pm.Address, pm.PublicPort, err)
	}
	mac, err := mac6(pm.PortMAC)
	if err != nil {
		return k, v, fmt.Errorf("port mapping %v:%d: port %w", pm.Address, pm.PublicPort, err)
	}
	k = bpf.MeridianPortmapKey{Addr: be32(pm.Address), Port: be16(pm.PublicPort), Proto: pm.Protocol}
	v = bpf.MeridianPortmapEntry{Vpc: g.VPC, PrivateIp: be32(pm.PrivateIP), PrivatePort: be16(pm.PrivatePort), Natgw: g.ID, Mac: mac}
	if pm.Node.IsValid() {
		if err := ipv4(pm.Node, "port node"); err != nil {
			return k, v, fmt.Errorf("port mapping %v:%d: %w", pm.Address, pm.PublicPort, err)
		}
		v.NodeIp = be32(pm.Node)
	}
	return k, v, nil
}

// pruneNATGateway deletes what NAT gateway id has installed beyond the
// wanted sets (nil sets: everything), and its flows on addresses it lost.
func (d *Datapath) pruneNATGateway(id uint32, addrs map[uint32]bool, srcs map[bpf.MeridianEgressKey]bool,
	maps map[bpf.MeridianPortmapKey]bpf.MeridianPortmapEntry, revs map[bpf.MeridianPortmapRevKey]bpf.MeridianPortmapKey) error {
	m := &d.objs.MeridianMaps
	if err := deleteWhereValue(m.NatSrc, func(k bpf.MeridianEgressKey, v uint32) bool { return v == id && !srcs[k] }); err != nil {
		return fmt.Errorf("prune NAT gateway %d SNAT prefixes: %w", id, err)
	}
	if err := deleteWhereValue(m.PortMapsRev, func(k bpf.MeridianPortmapRevKey, v bpf.MeridianPortmapKey) bool {
		var e bpf.MeridianPortmapEntry
		if m.PortMaps.Lookup(v, &e) != nil || e.Natgw != id {
			return false
		}
		_, keep := revs[k]
		return !keep
	}); err != nil {
		return fmt.Errorf("prune NAT gateway %d port mapping replies: %w", id, err)
	}
	if err := deleteWhereValue(m.PortMaps, func(k bpf.MeridianPortmapKey, v bpf.MeridianPortmapEntry) bool {
		_, keep := maps[k]
		return v.Natgw == id && !keep
	}); err != nil {
		return fmt.Errorf("prune NAT gateway %d port mappings: %w", id, err)
	}
	if err := deleteWhereValue(m.NatAddrs, func(k uint32, v uint32) bool { return v == id && !addrs[k] }); err != nil {
		return fmt.Errorf("prune NAT gateway %d addresses: %w", id, err)
	}
	if err := deleteWhereValue(m.Nat, func(k bpf.MeridianNatKey, v bpf.MeridianNatEntry) bool {
		if v.Natgw != id {
			return false
		}
		public := v.Addr // forward entry
		if k.Vpc == 0 {
			public = k.Daddr // reverse entry
		}
		return !addrs[public]
	}); err != nil {
		return fmt.Errorf("prune NAT gateway %d flows: %w", id, err)
	}
	return nil
}

// DeleteNATGateway removes a NAT gateway and its flows; an absent one is
// not an error.
func (d *Datapath) DeleteNATGateway(id uint32) error {
	if err := d.pruneNATGateway(id, nil, nil, nil, nil); err != nil {
		return fmt.Errorf("delete NAT gateway %d: %w", id, err)
	}
	if err := deleteIgnoreMissing(d.objs.Natgws, id); err != nil {
		return fmt.Errorf("delete NAT gateway %d: %w", id, err)
	}
	if err := deleteIgnoreMissing(d.objs.NatExhausted, id); err != nil {
		return fmt.Errorf("delete NAT gateway %d counter: %w", id, err)
	}
	return nil
}

// deleteWhereValue is deleteWhere for selections that need the value.
func deleteWhereValue[K comparable, V any](m *ebpf.Map, stale func(K, V) bool) error {
	var keys []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		if stale(k, v) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %v: %w", m, err)
	}
	for _, k := range keys {
		if err := deleteIgnoreMissing(m, k); err != nil {
			return fmt.Errorf("delete from %v: %w", m, err)
		}
	}
	return nil
}

// NATTimeouts are the idle timeouts of NAT flows; zero fields keep the
// built-in defaults (TCP established 2 h, SYN/FIN 60 s, closed 120 s, UDP
// 60 s, ICMP 30 s). A closed TCP flow holds its public port as long as the
// remote may hold the connection in TIME_WAIT.
type NATTimeouts struct {
	TCPEstablished, TCPTransitory, TCPClosed, UDP, ICMP time.Duration
}

// SetNATTimeouts sets the NAT flow timeouts of this node.
func (d *Datapath) SetNATTimeouts(t NATTimeouts) error {
	for _, v := range []time.Duration{t.TCPEstablished, t.TCPTransitory, t.TCPClosed, t.UDP, t.ICMP} {
		if v < 0 {
			return fmt.Errorf("set NAT timeouts: negative timeout %v", v)
		}
	}
	c := bpf.MeridianNatConfig{TcpEstablished: uint64(t.TCPEstablished), TcpTransitory: uint64(t.TCPTransitory),
		TcpClosed: uint64(t.TCPClosed), Udp: uint64(t.UDP), Icmp: uint64(t.ICMP)}
	if err := d.objs.NatCfg.Update(uint32(0), &c, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set NAT timeouts: %w", err)
	}
	return nil
}

// NATStats are a NAT gateway's counters on this node.
type NATStats struct {
	ID            uint32
	ActiveFlows   uint64 // flows whose timeout has not passed
	PortExhausted uint64 // new flows refused: no free source port
}

// monotonicNow is bpf_ktime_get_ns's clock.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read the monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// NATStats reads the counters of every NAT gateway installed on this node,
// sorted by ID. Active flows are counted by walking the NAT table: cheap
// enough for a report every few seconds, not for every packet.
func (d *Datapath) NATStats() ([]NATStats, error) {
	now, err := monotonicNow()
	if err != nil {
		return nil, err
	}
	byID := map[uint32]*NATStats{}
	var id uint32
	var info bpf.MeridianNatgwInfo
	it := d.objs.Natgws.Iterate()
	for it.Next(&id, &info) {
		byID[id] = &NATStats{ID: id}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read NAT gateways: %w", err)
	}
	err = walkBatched(d.objs.Nat, func(k *bpf.MeridianNatKey, v *bpf.MeridianNatEntry) {
		if s := byID[v.Natgw]; s != nil && k.Vpc != 0 && v.Expires >= now && v.State != natStateClosed {
			s.ActiveFlows++
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read NAT table: %w", err)
	}
	var perCPU []uint64
	eit := d.objs.NatExhausted.Iterate()
	for eit.Next(&id, &perCPU) {
		if s := byID[id]; s != nil {
			for _, c := range perCPU {
				s.PortExhausted += c
			}
		}
	}
	if err := eit.Err(); err != nil {
		return nil, fmt.Errorf("read NAT exhaustion counters: %w", err)
	}
	out := make([]NATStats, 0, len(byID))
	for _, s := range byID {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b NATStats) int { return int(a.ID) - int(b.ID) })
	return out, nil
}

// natStateClosed is enum ct_state's CT_CLOSED: a closed flow holds its
// port only until its short timeout, and is not counted as active.
const natStateClosed = 4

// ---- read back (diagnostics, tests) ----

// Gateways returns the live gateways set by SetGateways.
func (d *Datapath) Gateways() ([]netip.Addr, error) {
	var g bpf.MeridianGwSet
	if err := d.objs.Gateways.Lookup(uint32(0), &g); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read gateways: %w", err)
	}
	out := make([]netip.Addr, 0, g.Count)
	for i := 0; i < int(g.Count) && i < maxGateways; i++ {
		out = append(out, addrOf(g.NodeIp[i]))
	}
	return out, nil
}

// Egresses returns the installed egress entries, sorted by VPC and prefix.
func (d *Datapath) Egresses() ([]Egress, error) {
	var out []Egress
	var k bpf.MeridianEgressKey
	var v bpf.MeridianEgressEntry
	it := d.objs.Egress.Iterate()
	for it.Next(&k, &v) {
		e := Egress{VPC: k.Vpc, Prefix: netip.PrefixFrom(addrOf(k.Ip), int(k.Prefixlen)-32)}
		if v.Kind == egressNAT {
			e.NATOwner, e.NATGateway = addrOf(v.NodeIp), v.Natgw
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read egress: %w", err)
	}
	slices.SortFunc(out, func(a, b Egress) int {
		if a.VPC != b.VPC {
			return int(a.VPC) - int(b.VPC)
		}
		return a.Prefix.Addr().Compare(b.Prefix.Addr())*64 + a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out, nil
}

// ElasticIPs returns the elastic IPs this gateway serves, sorted by address.
func (d *Datapath) ElasticIPs() ([]ElasticIP, error) {
	var out []ElasticIP
	var k uint32
	var v bpf.MeridianEipEntry
	it := d.objs.Eips.Iterate()
	for it.Next(&k, &v) {
		e := ElasticIP{Address: addrOf(k), VPC: v.Vpc, PrivateIP: addrOf(v.PrivateIp), PortMAC: append(net.HardwareAddr(nil), v.Mac[:]...)}
		if v.NodeIp != 0 {
			e.Node = addrOf(v.NodeIp)
		}
		out = append(out, e)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read elastic IPs: %w", err)
	}
	slices.SortFunc(out, func(a, b ElasticIP) int { return a.Address.Compare(b.Address) })
	return out, nil
}

// NATSourcePrefixes returns, by NAT gateway ID, the SNAT prefixes this
// gateway translates new flows of (the NAT gateways it owns).
func (d *Datapath) NATSourcePrefixes() (map[uint32][]netip.Prefix, error) {
	out := map[uint32][]netip.Prefix{}
	var k bpf.MeridianEgressKey
	var id uint32
	it := d.objs.NatSrc.Iterate()
	for it.Next(&k, &id) {
		out[id] = append(out[id], netip.PrefixFrom(addrOf(k.Ip), int(k.Prefixlen)-32))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read SNAT prefixes: %w", err)
	}
	return out, nil
}
