package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/meridian-sdn/meridian/bpf"
)

// Kernel-side values mirrored from bpf/c/maps.h.
const (
	routeLocal   = 1
	routeRemote  = 2
	aclFieldIP   = 0
	aclFieldPort = 1
)

// be32 returns the uint32 whose in-memory bytes are a's network-order bytes:
// the maps keep addresses exactly as they appear on the wire.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrOf(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// be16 is be32 for ports. It is its own inverse, so it also turns a port
// read from a map back into host order.
func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func mac6(m net.HardwareAddr) ([6]byte, error) {
	var out [6]byte
	if len(m) != 6 {
		return out, fmt.Errorf("MAC %v is not 6 bytes", m)
	}
	copy(out[:], m)
	return out, nil
}

func ipv4(a netip.Addr, what string) error {
	if !a.Is4() {
		return fmt.Errorf("%s %v is not IPv4", what, a)
	}
	return nil
}

// Port is a workload's interface on this node.
type Port struct {
	ID       uint32 // never 0
	Ifindex  int    // host end of the veth
	MAC      net.HardwareAddr
	IPs      []netip.Addr // primary and secondary; the only allowed sources
	VPC      uint32       // also the VXLAN VNI: < 2^24
	Subnet   uint32
	SGPolicy uint32 // compiled security-group policy (fw.SecurityGroupPolicy.ID)
}

// UpsertPort installs or updates a port. Addresses the port no longer has
// stop being accepted as sources.
func (d *Datapath) UpsertPort(p Port) error {
	if p.ID == 0 || p.Ifindex <= 0 {
		return fmt.Errorf("upsert port %d: id and ifindex (%d) must be positive", p.ID, p.Ifindex)
	}
	if p.VPC == 0 || p.VPC >= 1<<24 {
		return fmt.Errorf("upsert port %d: vpc %d is not a VNI in 1..2^24-1", p.ID, p.VPC)
	}
	mac, err := mac6(p.MAC)
	if err != nil {
		return fmt.Errorf("upsert port %d: %w", p.ID, err)
	}
	want := map[uint32]bool{}
	for _, ip := range p.IPs {
		if err := ipv4(ip, "address"); err != nil {
			return fmt.Errorf("upsert port %d: %w", p.ID, err)
		}
		want[be32(ip)] = true
	}
	m := &d.objs.MeridianMaps
	var old bpf.MeridianPortInfo
	hadOld := m.Ports.Lookup(p.ID, &old) == nil

	one := uint32(1)
	for ip := range want {
		if err := m.PortIps.Update(bpf.MeridianPortIpKey{Port: p.ID, Ip: ip}, one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("upsert port %d: add address %v: %w", p.ID, addrOf(ip), err)
		}
	}
	info := bpf.MeridianPortInfo{Ifindex: uint32(p.Ifindex), Vpc: p.VPC, Subnet: p.Subnet, SgPolicy: p.SGPolicy, Mac: mac}
	info.Flowlog = old.Flowlog // set apart by SetPortFlowLog (flowlog.go)
	if err := m.Ports.Update(p.ID, &info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert port %d: %w", p.ID, err)
	}
	if err := m.PortByIfindex.Update(uint32(p.Ifindex), p.ID, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert port %d: index by ifindex %d: %w", p.ID, p.Ifindex, err)
	}
	if hadOld && old.Ifindex != uint32(p.Ifindex) {
		if err := d.unindexIfindex(old.Ifindex, p.ID); err != nil {
			return fmt.Errorf("upsert port %d: %w", p.ID, err)
		}
	}
	if err := d.removePortIPs(p.ID, want); err != nil {
		return fmt.Errorf("upsert port %d: %w", p.ID, err)
	}
	return nil
}

// DeletePort removes a port. Deleting an absent port is not an error.
func (d *Datapath) DeletePort(id uint32) error {
	m := &d.objs.MeridianMaps
	var old bpf.MeridianPortInfo
	if err := m.Ports.Lookup(id, &old); err == nil {
		if err := d.unindexIfindex(old.Ifindex, id); err != nil {
			return fmt.Errorf("delete port %d: %w", id, err)
		}
		if err := deleteIgnoreMissing(m.Ports, id); err != nil {
			return fmt.Errorf("delete port %d: %w", id, err)
		}
	}
	if err := d.removePortIPs(id, nil); err != nil {
		return fmt.Errorf("delete port %d: %w", id, err)
	}
	return nil
}

func (d *Datapath) unindexIfindex(ifindex, id uint32) error {
	var cur uint32
	if err := d.objs.PortByIfindex.Lookup(ifindex, &cur); err != nil || cur != id {
		return nil // someone else's now
	}
	if err := deleteIgnoreMissing(d.objs.PortByIfindex, ifindex); err != nil {
		return fmt.Errorf("unindex ifindex %d: %w", ifindex, err)
	}
	return nil
}

// removePortIPs deletes the addresses of port that are not in keep. It
// walks the whole table: port updates are rare next to packets.
func (d *Datapath) removePortIPs(port uint32, keep map[uint32]bool) error {
	var stale []bpf.MeridianPortIpKey
	var k bpf.MeridianPortIpKey
	var v uint32
	it := d.objs.PortIps.Iterate()
	for it.Next(&k, &v) {
		if k.Port == port && !keep[k.Ip] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list addresses of port %d: %w", port, err)
	}
	for _, k := range stale {
		if err := deleteIgnoreMissing(d.objs.PortIps, k); err != nil {
			return fmt.Errorf("remove address %v of port %d: %w", addrOf(k.Ip), port, err)
		}
	}
	return nil
}

func deleteIgnoreMissing(m *ebpf.Map, key any) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// Subnet is the per-subnet state of the virtual router.
type Subnet struct {
	ID        uint32
	Gateway   netip.Addr       // answered by ARP
	RouterMAC net.HardwareAddr // the node's virtual router MAC
	ACL       uint32           // network ACL (fw.ACL.ID); 0: none, allow all
}

// UpsertSubnet installs or updates a subnet.
func (d *Datapath) UpsertSubnet(s Subnet) error {
	if err := ipv4(s.Gateway, "gateway"); err != nil {
		return fmt.Errorf("upsert subnet %d: %w", s.ID, err)
	}
	mac, err := mac6(s.RouterMAC)
	if err != nil {
		return fmt.Errorf("upsert subnet %d: router %w", s.ID, err)
	}
	info := bpf.MeridianSubnetInfo{GatewayIp: be32(s.Gateway), Acl: s.ACL, RouterMac: mac}
	if err := d.objs.Subnets.Update(s.ID, &info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert subnet %d: %w", s.ID, err)
	}
	return nil
}

// DeleteSubnet removes a subnet; its ports drop traffic until it returns.
func (d *Datapath) DeleteSubnet(id uint32) error {
	if err := deleteIgnoreMissing(d.objs.Subnets, id); err != nil {
		return fmt.Errorf("delete subnet %d: %w", id, err)
	}
	return nil
}

// Route sends a VPC prefix to a port on this node (LocalPort) or to another
// node over VXLAN (RemoteNode). The agent installs a /32 per port of the VPC.
type Route struct {
	VPC        uint32
	Prefix     netip.Prefix
	LocalPort  uint32     // set for a local destination
	RemoteNode netip.Addr // set for a remote one: the node's underlay IPv4
	// Subnet of a remote destination, so the sender can tell whether the
	// packet crosses subnets (TTL). Local ports carry their own.
	Subnet uint32
}

func routeKey(vpc uint32, p netip.Prefix) bpf.MeridianRouteKey {
	return bpf.MeridianRouteKey{Prefixlen: 32 + uint32(p.Bits()), Vpc: vpc, Ip: be32(p.Masked().Addr())}
}

// UpsertRoute installs or replaces a route.
func (d *Datapath) UpsertRoute(r Route) error {
	if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() {
		return fmt.Errorf("upsert route %v in vpc %d: not an IPv4 prefix", r.Prefix, r.VPC)
	}
	var e bpf.MeridianRouteEntry
	switch {
	case r.LocalPort != 0 && !r.RemoteNode.IsValid():
		e = bpf.MeridianRouteEntry{Kind: routeLocal, Port: r.LocalPort}
	case r.LocalPort == 0 && r.RemoteNode.Is4():
		e = bpf.MeridianRouteEntry{Kind: routeRemote, Subnet: r.Subnet, NodeIp: be32(r.RemoteNode)}
	default:
		return fmt.Errorf("upsert route %v in vpc %d: need exactly one of a local port and a remote IPv4 node", r.Prefix, r.VPC)
	}
	if err := d.objs.Routes.Update(routeKey(r.VPC, r.Prefix), &e, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("upsert route %v in vpc %d: %w", r.Prefix, r.VPC, err)
	}
	return nil
}

// DeleteRoute removes a route; absent routes are not an error.
func (d *Datapath) DeleteRoute(vpc uint32, prefix netip.Prefix) error {
	if !prefix.IsValid() || !prefix.Addr().Is4() {
		return fmt.Errorf("delete route %v in vpc %d: not an IPv4 prefix", prefix, vpc)
	}
	if err := deleteIgnoreMissing(d.objs.Routes, routeKey(vpc, prefix)); err != nil {
		return fmt.Errorf("delete route %v in vpc %d: %w", prefix, vpc, err)
	}
	return nil
}
