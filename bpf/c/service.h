/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Service load balancing in the tc pipeline (issue [5]); included by
 * meridian.c after gateway.h. Where each part runs is fixed by the
 * LbService comment of api/agent/v1/agent.proto; the why is in
 * dataplane/datapath/doc.go ("Services").
 *
 *   east-west (SVC_INTERNAL), at the client's port (svc_from_port): a
 *     packet to {VPC, VIP, port, protocol} of a service goes to a backend:
 *     the service entry of its client -> VIP tuple (lb_flows) if the flow
 *     is alive on a backend still in the service, else the Maglev table
 *     (computed in Go by lb/maglev.Table, indexed with lb_flow_hash), then
 *     DNAT to backend address:target port. Policy then sees the
 *     translated packet, as with Cilium and kube-proxy.
 *   north-south, on the backend's node (svc_from_overlay): the gateway's
 *     XDP load balancer encapsulated the packet unchanged (destination
 *     vip:port, inner destination MAC the backend port's): lb_local names
 *     the backend by that MAC, DNAT to it.
 *   both: the conntrack entry of the translated flow carries svc_vip and
 *     svc_port; its replies get their source rewritten back (svc_reply)
 *     just before they are delivered to the client, or, north-south,
 *     before they are tunnelled to any live gateway (direct server
 *     return), which lets a VIP source out unchanged (svc_vip_source).
 */
#pragma once

#include "lbhash.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SVCS);
	__type(key, struct svc_key);
	__type(value, struct svc_info);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} services SEC(".maps");

/* A service's Maglev table: entry i is the LbBackend.id of the flows
 * hashing to i. BPF_F_INNER_MAP lets tables of different sizes share the
 * outer map; the agent builds a new table aside and swaps it in with one
 * update of lb_tables, so no packet sees a half-written table. */
struct lb_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, MAX_SVCS);
	__type(key, __u32); /* svc_info.id */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct lb_table); /* must be the last member */
} lb_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LB_BACKENDS);
	__type(key, struct lb_backend_key);
	__type(value, struct lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LB_BACKENDS);
	__type(key, struct lb_local_key);
	__type(value, struct lb_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_local SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_LB_FLOWS);
	__type(key, struct ct_key);
	__type(value, struct lb_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_flows SEC(".maps");

/* Addresses of east-west listeners, so that proxy ARP answers for a VIP
 * inside a client's subnet (the agent keeps the count). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SVCS);
	__type(key, struct svc_addr_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} svc_addrs SEC(".maps");

static __always_inline int svc_is_vip(__u32 vpc, __u32 addr)
{
	struct svc_addr_key k = { .vpc = vpc, .vip = addr };

	return bpf_map_lookup_elem(&svc_addrs, &k) != NULL;
}

static __always_inline struct svc_info *svc_lookup(__u32 vpc, __u32 addr, __u16 port, __u8 proto)
{
	struct svc_key k = { .vpc = vpc, .vip = addr, .port = port, .proto = proto };

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return NULL;
	return bpf_map_lookup_elem(&services, &k);
}

/* svc_choose is the Maglev choice: the hash of the original tuple (the
 * addresses only with source-IP persistence) indexes the service's table,
 * exactly as lb/maglev.FlowHash and maglev.Lookup do in Go. */
static __always_inline int svc_choose(struct pkt *p, struct svc_info *s, struct lb_backend_key *bk)
{
	__u32 h, idx, *id;
	void *table;

	if (s->flags & SVC_SOURCE_IP)
		h = lb_flow_hash(p->saddr, p->daddr, 0, 0, 0);
	else
		h = lb_flow_hash(p->saddr, p->daddr, p->sport, p->dport, p->proto);
	if (!s->size)
		return -1;
	table = bpf_map_lookup_elem(&lb_tables, &s->id);
	if (!table)
		return -1;
	idx = h % s->size;
	id = bpf_map_lookup_elem(table, &idx);
	if (!id)
		return -1;
	bk->svc = s->id;
	bk->backend = *id;
	return 0;
}

/* svc_dnat rewrites the destination of the packet from vip:vport to
 * p->daddr:p->dport (already set) and notes the reverse translation for
 * the flow's conntrack entry. */
static __always_inline int svc_dnat(struct __sk_buff *skb, struct pkt *p, struct ct_result *ct,
				    __u32 vip, __u16 vport)
{
	struct xlate x = { .l4off = ETH_HLEN + p->ihl * 4, .old_ip = vip, .new_ip = p->daddr,
			   .old_port = vport, .new_port = p->dport, .proto = p->proto, .dst = 1 };

	if (nat_rewrite(skb, &x))
		return -1;
	__builtin_memcpy(p->pport, &p->dport, 2); /* policy sees the target port */
	ct->svc_vip = vip;
	ct->svc_port = vport;
	return 0;
}

/* svc_from_port translates a packet from a client port to an east-west
 * VIP. Returns 0 if it is not one (conntrack not looked up yet), 1 if it
 * was translated (p is the translated packet and ct its conntrack
 * lookup), -1 to drop it with *reason. */
static __noinline int svc_from_port(struct __sk_buff *skb, struct pkt *p, struct ct_result *ct,
				    __u32 *reason)
{
	struct lb_backend_key bk = {};
	struct lb_backend *b;
	struct lb_flow *f, nf = {};
	struct svc_info *s;
	struct ct_key fk = {};
	__u32 vip = p->daddr, how = LT_SVC_NEW; /* how: live trace, enum lt_svc */
	__u16 vport = p->dport;

	s = svc_lookup(p->vpc, p->daddr, p->dport, p->proto);
	if (!s || !(s->flags & SVC_INTERNAL))
		return 0;
	*reason = DROP_LB_NO_BACKEND;
	ct_fill_key(&fk, p, 0);
	f = bpf_map_lookup_elem(&lb_flows, &fk);
	if (f && f->svc == s->id) {
		/* An established flow stays on its backend while the backend
		 * is still in the service (draining ones included); a flow
		 * whose conntrack entry is gone or closed is chosen afresh. */
		bk.svc = s->id;
		bk.backend = f->backend;
		b = bpf_map_lookup_elem(&lb_backends, &bk);
		if (b) {
			p->daddr = b->addr;
			p->dport = b->port;
			ct_lookup(p, ct);
			how = LT_SVC_STORED;
			if (ct->e)
				goto translate;
			how = LT_SVC_NEW;
			p->daddr = vip;
			p->dport = vport;
		}
	}
	if (svc_choose(p, s, &bk))
		return -1;
	b = bpf_map_lookup_elem(&lb_backends, &bk);
	if (!b)
		return -1;
	p->daddr = b->addr;
	p->dport = b->port;
	ct_lookup(p, ct);
	nf.svc = bk.svc;
	nf.backend = bk.backend;
	bpf_map_update_elem(&lb_flows, &fk, &nf, BPF_ANY);
translate:
	LT_X(LT_SERVICE, how, LT_AP(vip, vport), LT_AP(p->daddr, p->dport), bk.svc, bk.backend);
	if (svc_dnat(skb, p, ct, vip, vport)) {
		*reason = DROP_MALFORMED;
		return -1;
	}
	return 1;
}

/* svc_from_overlay translates a north-south packet on the backend's node:
 * destination vip:port of a (not internal) service, inner destination MAC
 * a local backend port's. Returns 0 (translated, or not a service packet)
 * or a drop reason: DROP_NOT_LOCAL for a VIP packet to a MAC that is no
 * backend of the service here (the load balancer's view is stale). The
 * reason is returned, not written through a pointer: from_overlay's stack
 * is at the verifier's limit on its deepest call chain. */
static __noinline __u32 svc_from_overlay(struct __sk_buff *skb, struct pkt *p, struct ct_result *ct)
{
	void *data = skb_data(skb), *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct lb_local_key lk = {};
	struct lb_backend *b;
	struct svc_info *s;
	__u32 vip = p->daddr;
	__u16 vport = p->dport;

	s = svc_lookup(p->vpc, p->daddr, p->dport, p->proto);
	if (!s || (s->flags & SVC_INTERNAL))
		return 0;
	if ((void *)(eth + 1) > data_end)
		return DROP_MALFORMED;
	lk.svc = s->id;
	mac_copy(lk.mac, eth->h_dest);
	b = bpf_map_lookup_elem(&lb_local, &lk);
	if (!b)
		return DROP_NOT_LOCAL;
	p->daddr = b->addr;
	p->dport = b->port;
	LT_X(LT_SERVICE, LT_SVC_LOCAL, LT_AP(vip, vport), LT_AP(b->addr, b->port), s->id, 0);
	if (svc_dnat(skb, p, ct, vip, vport))
		return DROP_MALFORMED;
	return 0;
}

/* svc_is_reply: the packet is a reply of a translated flow. */
static __always_inline int svc_is_reply(struct ct_result *ct)
{
	return ct->e && ct->reply && ct->e->svc_vip;
}

/* svc_reply gives a reply of a translated flow its service source back.
 * Called after policy (which saw the backend's address, as the request's
 * policy did) and conntrack; p is left as it was. Returns 0 or -1. */
static __noinline int svc_reply(struct __sk_buff *skb, struct pkt *p, struct ct_result *ct)
{
	struct ct_entry *e = ct->e;
	struct xlate x = {};

	if (!e || !ct->reply || !e->svc_vip)
		return 0;
	if (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP)
		return 0;
	LT_X(LT_SERVICE, LT_SVC_REPLY, LT_AP(p->saddr, p->sport), LT_AP(e->svc_vip, e->svc_port), 0, 0);
	x.l4off = ETH_HLEN + p->ihl * 4;
	x.old_ip = p->saddr;
	x.new_ip = e->svc_vip;
	x.old_port = p->sport;
	x.new_port = e->svc_port;
	x.proto = p->proto;
	return nat_rewrite(skb, &x);
}

/* svc_deliver is deliver (no TTL change) for from_overlay, after svc_reply:
 * a function of its own so that from_overlay keeps no more values across
 * calls than before (its stack is at the verifier's limit on its deepest
 * call chain, through the gateway's hairpin). */
static __noinline int svc_deliver(struct __sk_buff *skb, struct pkt *p, struct ct_result *ct,
				  struct port_info *dst)
{
	struct subnet_info *dsub = bpf_map_lookup_elem(&subnets, &dst->subnet);

	if (!dsub || svc_reply(skb, p, ct))
		return drop(0, DROP_MALFORMED, p, 0);
	return deliver(skb, dst, dsub, 0);
}

/* svc_vip_source: on a gateway, the packet from the overlay is a reply of
 * a north-south service (source a VIP:port of one): it leaves as it is. */
static __noinline int svc_vip_source(struct pkt *p)
{
	struct svc_info *s = svc_lookup(p->vpc, p->saddr, p->sport, p->proto);

	return s && !(s->flags & SVC_INTERNAL);
}
