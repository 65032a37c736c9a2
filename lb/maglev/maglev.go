// Package maglev builds Maglev lookup tables (Eisenbud et al., NSDI 2016)
// with weights, and the flow hash that indexes them.
//
// Every node that load-balances a service — each XDP load balancer and
// each node's tc pipeline — computes its table here from the same backend
// list, so the tables are identical everywhere: ECMP may send a flow to any
// load-balancer node, and a node may restart, without the flow changing
// backend. Tables depend only on the backends' keys and weights, never on
// their order or on anything local to a node.
package maglev

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
)

// DefaultSize is the table size used unless a service asks otherwise: a
// prime well above 100 × the backends a service may have, so each backend's
// share is within 1% of its weight.
const DefaultSize = 65537

// MaxWeight bounds a backend's weight.
const MaxWeight = 256

// Empty marks a table slot when there are no backends.
const Empty = -1

// Backend is one entry of a service's backend set.
type Backend struct {
	// Key identifies the backend identically on every node (for example
	// "10.0.1.5:8080"); it decides the backend's permutation.
	Key    string
	Weight uint32
}

// Table returns a lookup table of size entries; entry i is the index in
// backends of the backend that flows hashing to i go to, or Empty when
// backends is empty. size must be prime. The result does not depend on the
// order of backends (only on keys and weights). Keys must be unique;
// weights must be 1..MaxWeight.
func Table(backends []Backend, size uint32) ([]int32, error) {
	if !isPrime(size) {
		return nil, fmt.Errorf("maglev: table size %d is not prime", size)
	}
	table := make([]int32, size)
	for i := range table {
		table[i] = Empty
	}
	if len(backends) == 0 {
		return table, nil
	}
	if uint64(len(backends)) > uint64(size) {
		return nil, fmt.Errorf("maglev: %d backends do not fit a table of %d", len(backends), size)
	}
	// Fill in key order so that the result does not depend on the order
	// the caller listed the backends in.
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(backends[a].Key, backends[b].Key) })
	var maxW uint32
	for i, o := range order {
		b := backends[o]
		if b.Weight == 0 || b.Weight > MaxWeight {
			return nil, fmt.Errorf("maglev: backend %q: weight %d not in 1..%d", b.Key, b.Weight, MaxWeight)
		}
		if i > 0 && backends[order[i-1]].Key == b.Key {
			return nil, fmt.Errorf("maglev: backend key %q appears twice", b.Key)
		}
		maxW = max(maxW, b.Weight)
	}

	n := len(order)
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	credit := make([]uint64, n)
	for i, o := range order {
		h1, h2 := keyHashes(backends[o].Key)
		offset[i] = h1 % uint64(size)
		skip[i] = h2%uint64(size-1) + 1
	}
	// Weighted population: each round every backend earns its weight in
	// credit and places one entry per maxW of credit, so over the whole
	// table backend shares are proportional to weights; within a round
	// the classic Maglev preference order (offset + j*skip) applies.
	filled := uint32(0)
	for {
		for i, o := range order {
			credit[i] += uint64(backends[o].Weight)
			for credit[i] >= uint64(maxW) {
				credit[i] -= uint64(maxW)
				c := (offset[i] + next[i]*skip[i]) % uint64(size)
				for table[c] != Empty {
					next[i]++
					c = (offset[i] + next[i]*skip[i]) % uint64(size)
				}
				table[c] = int32(o)
				next[i]++
				filled++
				if filled == size {
					return table, nil
				}
			}
		}
	}
}

// keyHashes returns the two independent hashes of a backend key that
// give its offset and skip.
func keyHashes(key string) (uint64, uint64) {
	h := fnv.New64a()
	h.Write([]byte(key))
	a := h.Sum64()
	h.Write([]byte{0x5b}) // a second, different hash of the same key
	b := h.Sum64()
	return a, b
}

func isPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); uint64(d)*uint64(d) <= uint64(n); d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Words returns an IPv4 address as the BPF programs load it: the four
// bytes in network order read as a little-endian uint32.
func Words(a netip.Addr) (uint32, error) {
	if !a.Is4() {
		return 0, errors.New("maglev: the flow hash takes IPv4 addresses")
	}
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:]), nil
}

// portWord returns a port as the BPF programs load it (network order read
// as a little-endian uint16).
func portWord(p uint16) uint16 { return p<<8 | p>>8 }

const hashSeed = 0x9747b28c

func mix(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// RawFlowHash is lb_flow_hash of bpf/c/lbhash.h on the raw words.
func RawFlowHash(saddr, daddr uint32, sport, dport uint16, proto uint8) uint32 {
	h := mix(saddr ^ hashSeed)
	h = mix(h ^ daddr)
	h = mix(h ^ (uint32(sport)<<16 | uint32(dport)))
	return mix(h ^ uint32(proto))
}

// FlowHash hashes a flow exactly as the data path does. With source-IP
// persistence the data path hashes (src, dst, 0, 0, 0).
func FlowHash(src, dst netip.Addr, sport, dport uint16, proto uint8) (uint32, error) {
	s, err := Words(src)
	if err != nil {
		return 0, err
	}
	d, err := Words(dst)
	if err != nil {
		return 0, err
	}
	return RawFlowHash(s, d, portWord(sport), portWord(dport), proto), nil
}

// Lookup returns the backend index a flow hash selects in table.
func Lookup(table []int32, hash uint32) int32 {
	if len(table) == 0 {
		return Empty
	}
	return table[hash%uint32(len(table))]
}
