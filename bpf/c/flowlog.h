/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flow logs (issue [6], part 5): the data path's half.
 *
 * A port with a flow log has a slot number in port_info.flowlog (0: none,
 * so a port without flow logs pays one byte test per new flow and nothing
 * per packet). The slot's flowlog_cfg says which traffic is logged, the
 * sampling rate (1 in N new flows) and the rate limit. For each new flow
 * that passes policy at such a port the data path decides, in this order:
 *   - sampling: bpf_get_prandom_u32() % sample != 0 -> not logged,
 *   - rate limit: a per-CPU token bucket per slot (no atomics, no shared
 *     cache line between CPUs); an empty bucket -> not logged,
 *   - otherwise a flow_event goes to the flow_events ring buffer and the
 *     conntrack entry is created with fl_on set, so that its packets and
 *     bytes are counted in both directions from then on.
 * Every outcome is counted in flowlog_stats (per CPU), so a flood of new
 * flows costs the node at most rate + burst events per second per slot,
 * and the agent can say how many flows it did not see and why.
 *
 * Rejected flows are not handled here: drop() already sends every policy
 * drop with its reason and rule to drop_events, and the agent's flow-log
 * writer reads them from there (dataplane/agent/flowlog.go), sampled and
 * rate-limited in the agent.
 *
 * The agent reads the counters of the flows it was told about from the
 * conntrack entry at each aggregation interval and when the flow ends.
 */
#pragma once

#define FLOWLOG_SLOTS 256
/* Events are submitted without waking the reader (it polls every 100 ms)
 * until this much is waiting: a wakeup per new flow would cost a context
 * switch per connection. */
#define FLOWLOG_WAKEUP_BYTES (64 << 10)

/* flowlog_cfg.traffic bits */
#define FLOWLOG_ACCEPT 1
#define FLOWLOG_REJECT 2

enum flowlog_stat {
	FL_STAT_EMITTED      = 0, /* event written to the ring */
	FL_STAT_SAMPLED_OUT  = 1, /* new flow not chosen by sampling */
	FL_STAT_RATE_LIMITED = 2, /* chosen, but the slot's bucket was empty */
	FL_STAT_RING_FULL    = 3, /* chosen, but the reader is behind */
	FL_STAT_MAX          = 4,
};

struct flowlog_cfg {
	__u32 traffic;   /* FLOWLOG_ACCEPT | FLOWLOG_REJECT */
	__u32 sample;    /* log 1 in sample new flows; 0 or 1: all */
	__u64 cost_ns;   /* token-bucket credit one event costs on a CPU; 0: no limit */
	__u64 burst_ns;  /* most credit a CPU's bucket holds */
};

struct flowlog_bucket {
	__u64 credit;    /* ns of credit */
	__u64 last;      /* bpf_ktime_get_ns of the last refill */
	__u64 skipped;   /* new flows chosen by sampling but not logged
			  * (bucket empty, ring full): the agent's SKIPDATA */
};

/* One new flow seen by a port with a flow log. Addresses and ports in
 * network order, as in ct_key: {vpc, saddr, daddr, sport, dport, proto}
 * is the conntrack key whose counters the agent reads. */
struct flow_event {
	__u64 ts;        /* bpf_ktime_get_ns at the first packet */
	__u32 port;      /* the port whose flow log this is */
	__u32 vpc;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  dir;       /* DIR_EGRESS: the port opened it; DIR_INGRESS: to the port */
	__u8  slot;
	__u8  pad;
	__u32 acl_rule;  /* network-ACL rule id that allowed it (0: no ACL) */
	__u32 sg_rule;   /* security-group rule id that allowed it */
	__u32 len;       /* bytes of the first packet (IPv4 total length) */
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FLOWLOG_SLOTS);
	__type(key, __u32);
	__type(value, struct flowlog_cfg);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flowlog_cfgs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOWLOG_SLOTS);
	__type(key, __u32);
	__type(value, struct flowlog_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flowlog_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flowlog_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flow_events SEC(".maps");

static __always_inline void fl_stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&flowlog_stats, &idx);

	if (v)
		*v += 1;
}

/* fl_take takes one event's credit from b, this CPU's bucket of the slot. */
static __always_inline int fl_take(struct flowlog_bucket *b, struct flowlog_cfg *cfg)
{
	__u64 now, credit;

	if (!cfg->cost_ns)
		return 1;
	now = bpf_ktime_get_ns();
	credit = b->credit + (now - b->last);
	if (credit > cfg->burst_ns)
		credit = cfg->burst_ns;
	b->last = now;
	if (credit < cfg->cost_ns) {
		b->credit = credit;
		return 0;
	}
	b->credit = credit - cfg->cost_ns;
	return 1;
}

/* fl_fill writes a flow event's flow fields. A real function (not inlined)
 * so that struct flow_event is in the object's BTF, for bpf2go. */
static __noinline void fl_fill(struct flow_event *ev, struct pkt *p, __u32 dir)
{
	ev->ts = bpf_ktime_get_ns();
	ev->vpc = p->vpc;
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->proto = p->proto;
	ev->dir = dir;
	ev->pad = 0;
	ev->len = p->len;
	ev->pad2 = 0;
}

/* fl_emit decides whether the new flow p at port (slot) is logged and, if
 * so, writes its event. Returns 1 if logged. Not inlined: the verifier
 * checks it once for every call site. slot_dir is slot | dir << 8 (five
 * arguments at most), the rules are those that allowed the flow. */
static __noinline int fl_emit(__u32 port, __u32 slot_dir, struct pkt *p,
			      __u32 acl_rule, __u32 sg_rule)
{
	__u32 slot = slot_dir & 0xff, dir = slot_dir >> 8;
	struct flowlog_bucket *b;
	struct flowlog_cfg *cfg;
	struct flow_event *ev;

	cfg = bpf_map_lookup_elem(&flowlog_cfgs, &slot);
	if (!cfg || !(cfg->traffic & FLOWLOG_ACCEPT))
		return 0;
	if (cfg->sample > 1 && bpf_get_prandom_u32() % cfg->sample != 0) {
		fl_stat(FL_STAT_SAMPLED_OUT);
		return 0;
	}
	/* Chosen: from here on a flow not logged is counted in the slot's
	 * bucket too, so the agent can say per flow log what it missed. */
	b = bpf_map_lookup_elem(&flowlog_buckets, &slot);
	if (!b)
		return 0;
	if (!fl_take(b, cfg)) {
		b->skipped++; /* per-CPU value: no atomics needed */
		fl_stat(FL_STAT_RATE_LIMITED);
		return 0;
	}
	ev = bpf_ringbuf_reserve(&flow_events, sizeof(*ev), 0);
	if (!ev) {
		b->skipped++;
		fl_stat(FL_STAT_RING_FULL);
		return 0;
	}
	fl_fill(ev, p, dir);
	ev->port = port;
	ev->slot = slot;
	ev->acl_rule = acl_rule;
	ev->sg_rule = sg_rule;
	bpf_ringbuf_submit(ev, bpf_ringbuf_query(&flow_events, BPF_RB_AVAIL_DATA) > FLOWLOG_WAKEUP_BYTES ?
				       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	fl_stat(FL_STAT_EMITTED);
	return 1;
}

/* flowlog_new is the pipeline's hook, called just before ct_commit with
 * the source port (from a port; NULL from the overlay) and the local
 * destination port (NULL when the flow leaves the node) and the rules
 * that allowed the flow on each side. Established packets return at once.
 * The rules are scalars, not a struct: a struct would sit on the stack of
 * the calling program, whose call chains are near the 512-byte limit. */
static __always_inline void flowlog_new(struct pkt *p, struct ct_result *ct,
					__u32 src_id, struct port_info *src,
					__u32 dst_id, struct port_info *dst,
					__u32 acl_out, __u32 sg_out, __u32 acl_in, __u32 sg_in)
{
	if (ct->e)
		return;
	if (src && src->flowlog &&
	    fl_emit(src_id, src->flowlog | DIR_EGRESS << 8, p, acl_out, sg_out))
		ct->fl = 1;
	if (dst && dst->flowlog &&
	    fl_emit(dst_id, dst->flowlog | DIR_INGRESS << 8, p, acl_in, sg_in))
		ct->fl = 1;
}

/* flowlog_count adds a packet of a logged flow to its counters. Atomic:
 * the two directions of a flow are usually handled on different CPUs. */
static __always_inline void flowlog_count(struct ct_entry *e, struct pkt *p, int reply)
{
	int i = reply ? 1 : 0;

	__sync_fetch_and_add(&e->fl_packets[i], 1);
	__sync_fetch_and_add(&e->fl_bytes[i], p->len);
}
