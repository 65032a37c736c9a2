/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Live trace (issue [6], part 2): real packets matching a filter report the
 * path the data plane actually took, stage by stage, on a ring buffer of
 * their own (lt_events), at the decision points the model trace
 * (controller/trace) reports.
 *
 * Cost when no trace runs: lt_active is a global variable (a load from the
 * .bss map's value, no helper call), tested at the entry of each program
 * and at each hook. Only when it is non-zero does a program look up its
 * per-CPU scratch (lt_cur) and, after parsing, compare the packet with the
 * first lt_active slots of lt_filters.
 *
 * A matching packet is marked in this CPU's lt_cur for the rest of the
 * program run (tc programs run to completion on one CPU); every hook then
 * writes an lt_event with the same {id, pkt}. The drop hook in drop_frame
 * names the reason and the rule, as the drop counters and drop events do.
 * A per-CPU token bucket per filter slot bounds the packets traced (all
 * stages of a packet or none), so a busy flow cannot flood the ring:
 * packets over the budget are counted in lt_buckets, not traced.
 *
 * Across nodes the agent installs the same filter on every node asked; a
 * packet sent over VXLAN matches again in meridian_from_overlay on the
 * receiving node (filters with port 0 only: there the packet comes from no
 * port of this node).
 *
 * Gateways and services (gateway.h, service.h). On a gateway, a packet a
 * workload sends out of its VPC matches in meridian_from_overlay as any
 * overlay packet, before translation; a packet from the fabric matches at
 * the entry of meridian_from_uplink (LT_PROG_UPLINK, port-0 filters), as
 * it arrived, in the VPC of the elastic IP, port mapping or NAT flow it is
 * for (gw_trace_match: parsed again there, beside gw_inbound, not on
 * from_overlay's chain). Their stages: LT_GW_IN (what the public address
 * is to this gateway, or nothing: left to the host), LT_NAT (each rewrite,
 * before -> after, and whose: elastic IP, NAT gateway flow, new or known,
 * port mapping, a north-south VIP's reply left as is), LT_TUNNEL to the
 * port's node, LT_GW_OUT (out of which interface to which next hop); a
 * VIP's translation is LT_SERVICE (Maglev choice of a new flow, stored
 * backend of an established one, north-south by MAC, a reply's source
 * back to the VIP). Drops there go through drop_frame, as elsewhere.
 * These stages carry more than port/a/b: lt_stage_x passes a kind and two
 * address:port pairs in registers (no stack: gw_outbound and gw_inbound
 * are on from_overlay's deepest call chain, at the verifier's 512 bytes),
 * and nat_rewrite reports the translation from its xlate argument.
 */
#pragma once

#include "livetrace_core.h"

/* lt_fill_entry writes the packet into its LT_ENTRY event. A real
 * function so that struct lt_event is in the object's BTF, for the Go
 * mirror's layout test. */
static __noinline void lt_fill_entry(struct lt_event *ev, struct pkt *p, __u32 prog)
{
	ev->prog = prog;
	ev->proto = p->proto;
	ev->tcp_flags = p->tcp_flags;
	ev->vpc = p->vpc;
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	if (p->proto == IPPROTO_ICMP) { /* type and code, as drop events */
		ev->sport = 0;
		ev->dport = bpf_htons(((__u16)p->pport[0] << 8) | p->pport[1]);
	}
}

/* lt_match marks the packet if a filter takes it and writes its LT_ENTRY
 * event. port is the port it came from (0: the overlay). */
static __noinline void lt_match(struct pkt *p, __u32 prog, __u32 port)
{
	__u32 zero = 0, n = lt_active;
	struct lt_cur *c = bpf_map_lookup_elem(&lt_curs, &zero);
	struct lt_event *ev;

	if (!c)
		return;
#pragma unroll
	for (int i = 0; i < LT_MAX_FILTERS; i++) {
		struct lt_filter *f;
		__u32 key = i;

		if (key >= n)
			return;
		f = bpf_map_lookup_elem(&lt_filters, &key);
		if (!f || !f->id)
			continue;
		if (lt_skips(f, port, p->vpc, p->saddr, p->daddr, p->sport, p->dport, p->proto))
			continue;
		if (!lt_take(key, f))
			return;
		c->id = f->id;
		c->pkt = bpf_get_prandom_u32();
		c->seq = 0;
		ev = lt_emit(LT_ENTRY, port, 0, 0);
		if (!ev)
			return;
		lt_fill_entry(ev, p, prog);
		bpf_ringbuf_submit(ev, 0);
		return;
	}
}

#ifdef MERIDIAN_NO_LIVETRACE
/* A build without the hooks, the baseline of BenchmarkLiveTraceOff. */
#define LT_BEGIN(skb)                    do { } while (0)
#define LT_MATCH(p, prog, port)          do { } while (0)
#define LT_MATCH_UPLINK(skb)             do { } while (0)
#define LT(stage, port, a, b)            do { } while (0)
#define LT_X(stage, kind, from, to, a, b) do { } while (0)
#define LT_DROP(skb, port, reason, rule) do { } while (0)
#define lt_end(skb, verdict)             (verdict)
#else
/* The hooks. Each costs a load and a branch while no trace runs.
 *
 * LT_DROP, in drop_frame, only notes the drop in the skb's control block
 * (cb[2..4]: reason, rule, port; the test entries use cb[0..1]) and
 * lt_end writes it: drop_frame is the last frame of the deepest call
 * chains (gateway hairpin), with no stack left for another call. */
#define LT_BEGIN(skb)                  do { if (lt_active) { (skb)->cb[2] = 0; lt_reset(); } } while (0)
#define LT_MATCH(p, prog, port)        do { if (lt_active) lt_match(p, prog, port); } while (0)
/* gateway.h: gw_trace_match parses the uplink's packet itself */
#define LT_MATCH_UPLINK(skb)           do { if (lt_active) gw_trace_match(skb); } while (0)
#define LT(stage, port, a, b)          do { if (lt_active) lt_stage(stage, port, a, b); } while (0)
#define LT_X(stage, kind, from, to, a, b) \
	do { if (lt_active) lt_stage_x((stage) | (kind) << 8, from, to, a, b); } while (0)
#define LT_DROP(skb, port, reason, rule) \
	do { if (lt_active) { (skb)->cb[2] = reason; (skb)->cb[3] = rule; (skb)->cb[4] = port; } } while (0)

/* lt_end reports the drop, if the run ended in one, and the program's
 * verdict, and passes the verdict on. */
static __always_inline int lt_end(struct __sk_buff *skb, int verdict)
{
	if (lt_active) {
		if (skb->cb[2])
			lt_stage(LT_DROP, skb->cb[4], skb->cb[2], skb->cb[3]);
		lt_stage(LT_END, 0, verdict, 0);
	}
	return verdict;
}
#endif
