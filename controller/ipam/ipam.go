// Package ipam allocates the controller's numbered resources: IP addresses in
// subnets, MAC addresses, VXLAN VNIs and stable numeric IDs.
//
// All state lives in the store under keys prefixed "ipam/", and every function
// takes the caller's store.Tx. The API server calls ipam inside the same
// transaction that creates or deletes the resource, so an allocation commits
// or vanishes atomically with the mutation that needed it, survives restarts,
// and two concurrent API calls can never be handed the same address (the
// store's transactions are serializable). The package has no in-memory state:
// a Tx is the only thing it reads.
//
// Key layout (subnet IDs and ID kinds are path-escaped, so a "/" in a resource
// name can not make two subnets' keys collide):
//
//	ipam/ip/<subnetID>/<fam>/<addr>      owner of an allocated address (authoritative)
//	ipam/ipidx/<subnetID>/<fam>/<block>  256-bit occupancy bitmap of offsets block*256..block*256+255
//	ipam/ipcursor/<subnetID>/<fam>       last address handed out by AllocateIP
//	  (<fam> is "v4" or "v6", <block> hex, <addr> in netip.Addr.String form)
//	ipam/mac/<mac>                  owner of a MAC address
//	ipam/maccursor                  last MAC suffix handed out by AllocateMAC
//	ipam/vni/<vni>                  owner of a VNI
//	ipam/vnicursor                  last VNI handed out by AllocateVNI
//	ipam/id/<kind>                  last ID issued by NextID for kind
package ipam

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"

	"github.com/meridian-sdn/meridian/controller/store"
)

// Errors returned by this package, always wrapped with context; test them
// with errors.Is.
var (
	// ErrExhausted: no free value is left in the pool (subnet, MAC range,
	// VNI range, ID space).
	ErrExhausted = errors.New("ipam: pool exhausted")
	// ErrInUse: the requested value is held by another owner; the wrapping
	// error names the owner.
	ErrInUse = errors.New("ipam: already in use")
	// ErrReserved: the address is the network, gateway or (IPv4) broadcast
	// address of its subnet and is never handed out.
	ErrReserved = errors.New("ipam: address is reserved")
	// ErrOutside: the value is outside its pool (address not in the subnet's
	// CIDR, VNI not in 1..16777215).
	ErrOutside = errors.New("ipam: outside of pool")
	// ErrInvalidMAC: the MAC is not a usable unicast EUI-48 address
	// (multicast, broadcast, all-zero or wrong length).
	ErrInvalidMAC = errors.New("ipam: invalid MAC address")
	// ErrInvalid: a malformed argument (empty owner, empty subnet ID, invalid
	// CIDR, gateway outside the CIDR, IPv6 prefix with more than 64 host bits).
	// API validation should have refused these before ipam sees them.
	ErrInvalid = errors.New("ipam: invalid argument")
)

const (
	prefix = "ipam/"

	// VNIMin and VNIMax bound the VXLAN network identifiers AllocateVNI hands
	// out. 0 is never used: many VXLAN stacks treat it as "no VNI".
	VNIMin = 1
	VNIMax = 1<<24 - 1
)

// MACPrefix is the fixed, OUI-like prefix of every MAC AllocateMAC hands out:
// 02:4d:52 ("MR"). 0x02 sets the locally-administered bit and clears the
// multicast bit, so generated MACs can never clash with vendor-assigned NICs
// and are always unicast. The remaining 24 bits give 16,777,216 MACs.
var MACPrefix = [3]byte{0x02, 0x4d, 0x52}

// requireOwner rejects empty owners: Owner's ok result and ErrInUse messages
// are only useful if every allocation says who holds it.
func requireOwner(owner string) error {
	if owner == "" {
		return fmt.Errorf("empty owner: %w", ErrInvalid)
	}
	return nil
}

// ---- MAC addresses ----

func macKey(mac net.HardwareAddr) string { return prefix + "mac/" + mac.String() }

func macFromSuffix(n uint64) net.HardwareAddr {
	return net.HardwareAddr{MACPrefix[0], MACPrefix[1], MACPrefix[2], byte(n >> 16), byte(n >> 8), byte(n)}
}

// validMAC accepts any unicast, non-zero EUI-48 address. Reserved MACs need not
// be locally administered: a user may bring a vendor MAC for licensing reasons.
func validMAC(mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("MAC %q has %d bytes, want 6: %w", mac.String(), len(mac), ErrInvalidMAC)
	}
	if mac[0]&1 != 0 { // multicast bit; also covers broadcast ff:ff:ff:ff:ff:ff
		return fmt.Errorf("MAC %s is multicast: %w", mac, ErrInvalidMAC)
	}
	if mac[0]|mac[1]|mac[2]|mac[3]|mac[4]|mac[5] == 0 {
		return fmt.Errorf("MAC %s is all-zero: %w", mac, ErrInvalidMAC)
	}
	return nil
}

// AllocateMAC hands out the next free MAC under MACPrefix to owner. Like
// AllocateIP it walks forward from a persisted cursor, so a released MAC is
// not reused until the 2^24 space wraps: stale neighbour/FDB entries on hosts
// then never point a fresh port at an old one's MAC.
func AllocateMAC(tx store.Tx, owner string) (net.HardwareAddr, error) {
	if err := requireOwner(owner); err != nil {
		return nil, fmt.Errorf("ipam: allocate MAC: %w", err)
	}
	n, err := allocSeq(tx, prefix+"maccursor", 0, 1<<24-1, func(n uint64) string {
		return macKey(macFromSuffix(n))
	}, owner)
	if err != nil {
		return nil, fmt.Errorf("ipam: allocate MAC with prefix %s: %w", net.HardwareAddr(MACPrefix[:]), err)
	}
	return macFromSuffix(n), nil
}

// ReserveMAC records mac as held by owner. Reserving a MAC the same owner
// already holds succeeds (so retried API calls are idempotent).
func ReserveMAC(tx store.Tx, mac net.HardwareAddr, owner string) error {
	if err := requireOwner(owner); err != nil {
		return fmt.Errorf("ipam: reserve MAC: %w", err)
	}
	if err := validMAC(mac); err != nil {
		return fmt.Errorf("ipam: reserve MAC: %w", err)
	}
	if err := claim(tx, macKey(mac), owner); err != nil {
		return fmt.Errorf("ipam: reserve MAC %s: %w", mac, err)
	}
	return nil
}

// ReleaseMAC frees mac. Releasing a MAC nobody holds is not an error, so
// deletes can be retried.
func ReleaseMAC(tx store.Tx, mac net.HardwareAddr) error {
	if err := validMAC(mac); err != nil {
		return fmt.Errorf("ipam: release MAC: %w", err)
	}
	if err := tx.Delete(macKey(mac)); err != nil {
		return fmt.Errorf("ipam: release MAC %s: %w", mac, err)
	}
	return nil
}

// ---- VNIs ----

func vniKey(v uint64) string { return prefix + "vni/" + strconv.FormatUint(v, 10) }

// AllocateVNI hands out a free VNI in VNIMin..VNIMax to owner (one per VPC).
// A released VNI is reused only after the cursor wraps the whole 2^24 range,
// so traffic still in flight for a deleted VPC can not land in a new one.
func AllocateVNI(tx store.Tx, owner string) (uint32, error) {
	if err := requireOwner(owner); err != nil {
		return 0, fmt.Errorf("ipam: allocate VNI: %w", err)
	}
	v, err := allocSeq(tx, prefix+"vnicursor", VNIMin, VNIMax, vniKey, owner)
	if err != nil {
		return 0, fmt.Errorf("ipam: allocate VNI: %w", err)
	}
	return uint32(v), nil
}

// ReleaseVNI frees vni. Releasing a free VNI is not an error.
func ReleaseVNI(tx store.Tx, vni uint32) error {
	if vni < VNIMin || vni > VNIMax {
		return fmt.Errorf("ipam: release VNI %d: not in %d..%d: %w", vni, VNIMin, VNIMax, ErrOutside)
	}
	if err := tx.Delete(vniKey(uint64(vni))); err != nil {
		return fmt.Errorf("ipam: release VNI %d: %w", vni, err)
	}
	return nil
}

// ---- stable numeric IDs ----

// NextID returns the next ID of kind ("port", "sg", "rule", ...), starting at
// 1. IDs are never reused, not even after the resource is deleted: they become
// eBPF map keys and rule IDs in drop events, and a reused ID would make events
// recorded before the reuse blame the wrong rule. When all 2^32-1 IDs of a
// kind are spent it returns ErrExhausted.
func NextID(tx store.Tx, kind string) (uint32, error) {
	if kind == "" {
		return 0, fmt.Errorf("ipam: next ID: empty kind: %w", ErrInvalid)
	}
	key := prefix + "id/" + url.PathEscape(kind)
	kv, ok, err := tx.Get(key)
	if err != nil {
		return 0, fmt.Errorf("ipam: next %s ID: %w", kind, err)
	}
	var last uint64
	if ok {
		last, err = strconv.ParseUint(string(kv.Value), 10, 32)
		if err != nil {
			return 0, fmt.Errorf("ipam: next %s ID: corrupt counter %q: %w", kind, kv.Value, err)
		}
	}
	if last == 1<<32-1 {
		return 0, fmt.Errorf("ipam: next %s ID: all %d IDs used: %w", kind, last, ErrExhausted)
	}
	next := last + 1
	if err := tx.Put(key, []byte(strconv.FormatUint(next, 10))); err != nil {
		return 0, fmt.Errorf("ipam: next %s ID: %w", kind, err)
	}
	return uint32(next), nil
}

// ---- shared helpers ----

// claim records owner at key unless someone else holds it.
func claim(tx store.Tx, key, owner string) error {
	kv, ok, err := tx.Get(key)
	if err != nil {
		return err
	}
	if ok {
		if string(kv.Value) == owner {
			return nil
		}
		return fmt.Errorf("held by %q: %w", kv.Value, ErrInUse)
	}
	return tx.Put(key, []byte(owner))
}

// allocSeq finds the first free value after the persisted cursor in lo..hi,
// wrapping around once, claims it for owner and moves the cursor to it. One
// Get per probe: the MAC and VNI spaces are 2^24 and their populations are
// orders of magnitude smaller, so the expected probe count is ~1. (Subnets
// can be nearly full, which is why AllocateIP keeps an occupancy index
// instead.)
func allocSeq(tx store.Tx, cursorKey string, lo, hi uint64, key func(uint64) string, owner string) (uint64, error) {
	start := lo
	kv, ok, err := tx.Get(cursorKey)
	if err != nil {
		return 0, err
	}
	if ok {
		c, err := strconv.ParseUint(string(kv.Value), 10, 64)
		if err == nil && c >= lo && c < hi {
			start = c + 1
		}
	}
	probe := func(from, to uint64) (uint64, bool, error) {
		for n := from; ; n++ {
			_, taken, err := tx.Get(key(n))
			if err != nil {
				return 0, false, err
			}
			if !taken {
				return n, true, nil
			}
			if n == to {
				return 0, false, nil
			}
		}
	}
	n, found, err := probe(start, hi)
	if err == nil && !found && start > lo {
		n, found, err = probe(lo, start-1)
	}
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("all %d values in use: %w", hi-lo+1, ErrExhausted)
	}
	if err := tx.Put(key(n), []byte(owner)); err != nil {
		return 0, err
	}
	if err := tx.Put(cursorKey, []byte(strconv.FormatUint(n, 10))); err != nil {
		return 0, err
	}
	return n, nil
}
