package agent

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
)

// This file turns the logical model the controller sends into the inputs of
// package fw (the rule conversions themselves are fw.SGRulesOf and
// fw.ACLOf, shared with the model trace). It is pure: no kernel, no I/O, so
// it is tested on its own.

// policyID names the security-group policy of a set of groups. Ports with
// the same groups share it. It is a hash of the sorted set, so it is the
// same after an agent restart without any saved state; taken records
// collisions, resolved by probing in a deterministic order.
func policyID(groups []uint32, taken map[uint32]string) uint32 {
	g := slices.Clone(groups)
	slices.Sort(g)
	key := fmt.Sprint(g)
	h := fnv.New32a()
	h.Write([]byte(key))
	id := h.Sum32()
	for {
		if id == 0 {
			id = 1
		}
		if owner, ok := taken[id]; !ok || owner == key {
			taken[id] = key
			return id
		}
		id++
	}
}

// ipv4s parses a port's addresses, keeping the IPv4 ones.
func ipv4s(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}
