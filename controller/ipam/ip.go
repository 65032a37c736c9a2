package ipam

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/meridian-sdn/meridian/controller/store"
)

// Subnet identifies an address pool. ID is the subnet's stable resource name
// and keys all of its state, so the CIDR of a subnet must never change while
// it has allocations (API validation makes CIDR immutable). A dual-stack
// subnet uses the same ID for its IPv4 and its IPv6 Subnet: state is kept per
// address family.
//
// Reserved, never handed out and refused by ReserveIP:
//   - the network address (offset 0; for IPv6 the subnet-router anycast),
//   - Gateway, if valid,
//   - for IPv4, the broadcast address (the last one).
//
// Nothing else is reserved. So a /30 has 1 usable address, a /29 5, a /24 253.
// /31 and /32 (and IPv6 /128) have none: API validation refuses them, but if
// one gets here AllocateIP reports ErrExhausted rather than misbehaving.
type Subnet struct {
	ID      string
	CIDR    netip.Prefix
	Gateway netip.Addr // optional; the zero Addr means no gateway
}

// blockBits is the number of addresses covered by one occupancy bitmap key:
// 256 bits = 32 bytes, small enough to rewrite on every allocation, large
// enough that skipping a full block skips 256 probes.
const blockBits = 256

// pool is a validated Subnet with address arithmetic done in offsets from the
// network address. Offsets fit in uint64 because pools have ≤ 64 host bits.
type pool struct {
	s     Subnet
	id    string // path-escaped subnet ID used in keys
	cidr  netip.Prefix
	v4    bool
	base  uint64 // low 64 bits of the network address
	last  uint64 // highest offset in the subnet (2^hostbits - 1)
	gw    uint64
	hasGW bool
}

func newPool(s Subnet) (*pool, error) {
	if s.ID == "" {
		return nil, fmt.Errorf("empty subnet ID: %w", ErrInvalid)
	}
	if !s.CIDR.IsValid() {
		return nil, fmt.Errorf("invalid CIDR %v: %w", s.CIDR, ErrInvalid)
	}
	cidr := s.CIDR.Masked()
	host := cidr.Addr().BitLen() - cidr.Bits()
	if host > 64 {
		// A >/64 VM subnet is a configuration error; refusing keeps all
		// arithmetic in uint64.
		return nil, fmt.Errorf("CIDR %s has %d host bits, at most 64 supported: %w", cidr, host, ErrInvalid)
	}
	p := &pool{s: s, id: url.PathEscape(s.ID), cidr: cidr, v4: cidr.Addr().Is4(), base: low64(cidr.Addr())}
	if host == 64 {
		p.last = ^uint64(0)
	} else {
		p.last = 1<<host - 1
	}
	if s.Gateway.IsValid() {
		if !cidr.Contains(s.Gateway) {
			return nil, fmt.Errorf("gateway %s not in %s: %w", s.Gateway, cidr, ErrInvalid)
		}
		p.gw, p.hasGW = p.offset(s.Gateway), true
	}
	return p, nil
}

func low64(a netip.Addr) uint64 {
	if a.Is4() {
		b := a.As4()
		return uint64(binary.BigEndian.Uint32(b[:]))
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[8:])
}

// offset of an address known to be inside the CIDR.
func (p *pool) offset(a netip.Addr) uint64 { return low64(a) - p.base }

func (p *pool) addr(off uint64) netip.Addr {
	if p.v4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(p.base+off))
		return netip.AddrFrom4(b)
	}
	b := p.cidr.Addr().As16()
	binary.BigEndian.PutUint64(b[8:], p.base+off) // no carry: the prefix covers the high bits
	return netip.AddrFrom16(b)
}

func (p *pool) reserved(off uint64) bool {
	return off == 0 || (p.v4 && off == p.last) || (p.hasGW && off == p.gw)
}

func (p *pool) String() string { return fmt.Sprintf("subnet %q (%s)", p.s.ID, p.cidr) }

// family is a key segment, so one subnet ID can carry an IPv4 and an IPv6
// CIDR (dual stack) without their cursors and indexes colliding.
func (p *pool) family() string {
	if p.v4 {
		return "v4"
	}
	return "v6"
}

func (p *pool) ipPrefix() string { return prefix + "ip/" + p.id + "/" + p.family() + "/" }

func (p *pool) ipKey(off uint64) string { return p.ipPrefix() + p.addr(off).String() }

func (p *pool) idxKey(block uint64) string {
	return prefix + "ipidx/" + p.id + "/" + p.family() + "/" + strconv.FormatUint(block, 16)
}

func (p *pool) cursorKey() string { return prefix + "ipcursor/" + p.id + "/" + p.family() }

// check validates an address given by a caller.
func (p *pool) check(a netip.Addr) (uint64, error) {
	if !p.cidr.Contains(a) {
		return 0, fmt.Errorf("%s not in %s: %w", a, p, ErrOutside)
	}
	off := p.offset(a)
	if p.reserved(off) {
		return 0, fmt.Errorf("%s in %s: %w", a, p, ErrReserved)
	}
	return off, nil
}

// bitmap is the occupancy of one block of 256 addresses; a missing key means
// all free, so sparse IPv6 subnets store only the blocks they use.
type bitmap [blockBits / 64]uint64

func (p *pool) loadBlock(tx store.Tx, block uint64) (bitmap, error) {
	var bm bitmap
	kv, ok, err := tx.Get(p.idxKey(block))
	if err != nil || !ok {
		return bm, err
	}
	if len(kv.Value) != 8*len(bm) {
		// The index is derived data; a corrupt block is treated as empty
		// and every candidate is still verified against the owner key.
		return bm, nil
	}
	for i := range bm {
		bm[i] = binary.LittleEndian.Uint64(kv.Value[8*i:])
	}
	return bm, nil
}

func (p *pool) saveBlock(tx store.Tx, block uint64, bm bitmap) error {
	if bm == (bitmap{}) {
		return tx.Delete(p.idxKey(block))
	}
	v := make([]byte, 8*len(bm))
	for i, w := range bm {
		binary.LittleEndian.PutUint64(v[8*i:], w)
	}
	return tx.Put(p.idxKey(block), v)
}

func (p *pool) setBit(tx store.Tx, off uint64, used bool) error {
	block, bit := off/blockBits, off%blockBits
	bm, err := p.loadBlock(tx, block)
	if err != nil {
		return err
	}
	old := bm
	if used {
		bm[bit/64] |= 1 << (bit % 64)
	} else {
		bm[bit/64] &^= 1 << (bit % 64)
	}
	if bm == old { // e.g. releasing a free address: write nothing
		return nil
	}
	return p.saveBlock(tx, block, bm)
}

// findFree returns the lowest free, unreserved offset in lo..hi. It reads one
// bitmap per 256 addresses, so full regions are skipped 256 at a time, and an
// absent bitmap (a never-used block, e.g. almost all of an IPv6 /64) ends the
// search at once: the whole space is never iterated. Candidates are confirmed
// with a Get on the owner key, which is authoritative; a stale index bit is
// repaired instead of handing out a held address.
func (p *pool) findFree(tx store.Tx, lo, hi uint64) (uint64, bool, error) {
	for block := lo / blockBits; ; block++ {
		bm, err := p.loadBlock(tx, block)
		if err != nil {
			return 0, false, err
		}
		first, lastOff := block*blockBits, block*blockBits+blockBits-1
		from, to := max(lo, first)-first, min(hi, lastOff)-first
		for w := from / 64; w <= to/64; w++ {
			free := ^bm[w]
			if w == from/64 {
				free &= ^uint64(0) << (from % 64)
			}
			if w == to/64 {
				free &= ^uint64(0) >> (63 - to%64)
			}
			for free != 0 {
				off := first + w*64 + uint64(bits.TrailingZeros64(free))
				free &= free - 1
				if p.reserved(off) {
					continue
				}
				_, held, err := tx.Get(p.ipKey(off))
				if err != nil {
					return 0, false, err
				}
				if !held {
					return off, true, nil
				}
				if err := p.setBit(tx, off, true); err != nil {
					return 0, false, err
				}
			}
		}
		if lastOff >= hi {
			return 0, false, nil
		}
	}
}

func (p *pool) take(tx store.Tx, off uint64, owner string) error {
	if err := tx.Put(p.ipKey(off), []byte(owner)); err != nil {
		return err
	}
	return p.setBit(tx, off, true)
}

// AllocateIP hands out the next free address of s to owner.
//
// It searches forward from the address it handed out last (a persisted
// cursor) and wraps around once, so a released address is not reused until
// the rest of the subnet has been offered: ARP/ND caches and conntrack entries
// of a deleted port then can not capture its successor's traffic. Cost is
// amortized O(1) regardless of fill: sequential allocation finds the next
// address at once, and after a wrap full stretches are skipped 256 addresses
// per Get. If no address is free the error wraps ErrExhausted.
func AllocateIP(tx store.Tx, s Subnet, owner string) (netip.Addr, error) {
	p, err := newPool(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate IP: %w", err)
	}
	if err := requireOwner(owner); err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate IP in %s: %w", p, err)
	}
	start := uint64(0)
	kv, ok, err := tx.Get(p.cursorKey())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate IP in %s: %w", p, err)
	}
	if ok {
		// An unparsable or foreign cursor just restarts the search at the
		// beginning; correctness never depends on it.
		if c, err := netip.ParseAddr(string(kv.Value)); err == nil && p.cidr.Contains(c) && p.offset(c) < p.last {
			start = p.offset(c) + 1
		}
	}
	off, found, err := p.findFree(tx, start, p.last)
	if err == nil && !found && start > 0 {
		off, found, err = p.findFree(tx, 0, start-1)
	}
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate IP in %s: %w", p, err)
	}
	if !found {
		return netip.Addr{}, fmt.Errorf("ipam: allocate IP in %s: no free address: %w", p, ErrExhausted)
	}
	if err := p.take(tx, off, owner); err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate IP in %s: %w", p, err)
	}
	a := p.addr(off)
	if err := tx.Put(p.cursorKey(), []byte(a.String())); err != nil {
		return netip.Addr{}, fmt.Errorf("ipam: allocate IP in %s: %w", p, err)
	}
	return a, nil
}

// ReserveIP records the caller-chosen addr of s as held by owner. It fails
// with ErrOutside if addr is not in s.CIDR, ErrReserved for the network,
// gateway and broadcast addresses, and ErrInUse (naming the holder) if another
// owner holds it. Reserving an address the same owner already holds succeeds,
// so retried API calls are idempotent. The allocation cursor does not move.
func ReserveIP(tx store.Tx, s Subnet, addr netip.Addr, owner string) error {
	p, err := newPool(s)
	if err != nil {
		return fmt.Errorf("ipam: reserve IP %s: %w", addr, err)
	}
	if err := requireOwner(owner); err != nil {
		return fmt.Errorf("ipam: reserve IP %s in %s: %w", addr, p, err)
	}
	off, err := p.check(addr)
	if err != nil {
		return fmt.Errorf("ipam: reserve IP: %w", err)
	}
	kv, held, err := tx.Get(p.ipKey(off))
	if err != nil {
		return fmt.Errorf("ipam: reserve IP %s in %s: %w", addr, p, err)
	}
	if held {
		if string(kv.Value) == owner {
			return nil
		}
		return fmt.Errorf("ipam: reserve IP %s in %s: held by %q: %w", addr, p, kv.Value, ErrInUse)
	}
	if err := p.take(tx, off, owner); err != nil {
		return fmt.Errorf("ipam: reserve IP %s in %s: %w", addr, p, err)
	}
	return nil
}

// ReleaseIP frees addr of s. Releasing a free address is not an error, so
// deletes can be retried; ErrOutside and ErrReserved still flag caller bugs.
func ReleaseIP(tx store.Tx, s Subnet, addr netip.Addr) error {
	p, err := newPool(s)
	if err != nil {
		return fmt.Errorf("ipam: release IP %s: %w", addr, err)
	}
	off, err := p.check(addr)
	if err != nil {
		return fmt.Errorf("ipam: release IP: %w", err)
	}
	if err := tx.Delete(p.ipKey(off)); err != nil {
		return fmt.Errorf("ipam: release IP %s in %s: %w", addr, p, err)
	}
	if err := p.setBit(tx, off, false); err != nil {
		return fmt.Errorf("ipam: release IP %s in %s: %w", addr, p, err)
	}
	return nil
}

// Owner reports who holds addr of s; ok is false if nobody does (including
// reserved addresses, which are never held).
func Owner(tx store.ReadTx, s Subnet, addr netip.Addr) (owner string, ok bool, err error) {
	p, err := newPool(s)
	if err != nil {
		return "", false, fmt.Errorf("ipam: owner of %s: %w", addr, err)
	}
	if !p.cidr.Contains(addr) {
		return "", false, fmt.Errorf("ipam: owner: %s not in %s: %w", addr, p, ErrOutside)
	}
	kv, ok, err := tx.Get(p.ipKey(p.offset(addr)))
	if err != nil {
		return "", false, fmt.Errorf("ipam: owner of %s in %s: %w", addr, p, err)
	}
	return string(kv.Value), ok, nil
}

// Usage reports how many addresses of s are held and how many could be
// (the subnet size minus network, gateway and IPv4 broadcast). For an IPv6
// /64 usable is 2^64-2, which still fits.
func Usage(tx store.ReadTx, s Subnet) (used, usable uint64, err error) {
	p, err := newPool(s)
	if err != nil {
		return 0, 0, fmt.Errorf("ipam: usage: %w", err)
	}
	n, err := tx.Count(p.ipPrefix())
	if err != nil {
		return 0, 0, fmt.Errorf("ipam: usage of %s: %w", p, err)
	}
	reserved := map[uint64]bool{0: true}
	if p.v4 {
		reserved[p.last] = true
	}
	if p.hasGW {
		reserved[p.gw] = true
	}
	// Modular arithmetic: last+1 wraps to 0 for a /64, the difference does not.
	return uint64(n), p.last + 1 - uint64(len(reserved)), nil
}

// DeleteSubnet removes all ipam state of the subnet ID (both address
// families) when the subnet is deleted, so a new subnet reusing the ID starts
// clean. It fails with ErrInUse while any address is still held: the caller
// must release them (or delete their ports) in the same transaction first.
func DeleteSubnet(tx store.Tx, subnetID string) error {
	id := url.PathEscape(subnetID)
	n, err := tx.Count(prefix + "ip/" + id + "/")
	if err != nil {
		return fmt.Errorf("ipam: delete subnet %q: %w", subnetID, err)
	}
	if n > 0 {
		return fmt.Errorf("ipam: delete subnet %q: %d addresses still held: %w", subnetID, n, ErrInUse)
	}
	// Index blocks are deleted as they empty, so normally none remain;
	// clear any stale ones anyway.
	for _, pfx := range []string{prefix + "ipidx/" + id + "/", prefix + "ipcursor/" + id + "/"} {
		kvs, err := tx.List(pfx, "", 0)
		if err != nil {
			return fmt.Errorf("ipam: delete subnet %q: %w", subnetID, err)
		}
		for _, kv := range kvs {
			if err := tx.Delete(kv.Key); err != nil {
				return fmt.Errorf("ipam: delete subnet %q: %w", subnetID, err)
			}
		}
	}
	return nil
}
