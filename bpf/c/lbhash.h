/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The flow hash that indexes a Maglev table (issue [5]). It must equal
 * lb/maglev.FlowHash bit for bit: the tables are computed in Go and every
 * node, the XDP load balancer and the tc pipeline alike, picks the same
 * backend for the same flow only if they hash the same way.
 *
 * Inputs are the raw header words as the program loads them (addresses
 * and ports in network byte order, read into host-order integers on a
 * little-endian machine). Each step is the murmur3 finalizer: cheap (two
 * multiplies) and good enough avalanche that hash % size spreads evenly.
 */
#pragma once

#define LB_HASH_SEED 0x9747b28cU

static __always_inline __u32 lb_mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bU;
	h ^= h >> 13;
	h *= 0xc2b2ae35U;
	h ^= h >> 16;
	return h;
}

/* lb_flow_hash hashes a 5-tuple; with source-IP persistence callers pass
 * zero ports and protocol, and the destination address stays in the hash. */
static __always_inline __u32 lb_flow_hash(__u32 saddr, __u32 daddr, __u16 sport,
					  __u16 dport, __u8 proto)
{
	__u32 h = lb_mix(saddr ^ LB_HASH_SEED);

	h = lb_mix(h ^ daddr);
	h = lb_mix(h ^ (((__u32)sport << 16) | dport));
	return lb_mix(h ^ proto);
}
