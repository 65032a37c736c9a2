/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Live trace's types, maps and event writers (livetrace.h has the design):
 * what every traced program shares, whatever it parses. The VPC data path
 * (meridian.c, through livetrace.h) and the north-south load balancer
 * (lb.c, a BPF object of its own, given these maps at load time by
 * dataplane/lb) both write to the same lt_events ring with the same
 * filters and budgets; each object has its own lt_active, set together by
 * the agent.
 */
#pragma once

#define LT_MAX_FILTERS 16

/* Where the traced packet entered (lt_event.prog). */
enum lt_prog {
	LT_PROG_PORT    = 1, /* meridian_from_port */
	LT_PROG_OVERLAY = 2, /* meridian_from_overlay */
	LT_PROG_UPLINK  = 3, /* meridian_from_uplink (a gateway, from the fabric) */
	LT_PROG_LB      = 4, /* lb_xdp (lb.c: a gateway's uplink, a VIP's packet) */
};

/* Stages; mirrored by datapath.TraceStage. Never renumber. */
enum lt_stage {
	LT_ENTRY       = 1,  /* matched: port, prog, the packet's tuple */
	LT_SPOOF       = 2,  /* anti-spoofing passed */
	LT_CT          = 3,  /* a: ct state (0: new flow), b: 1 reply */
	LT_ACL_EGRESS  = 4,  /* passed; a: rule id (0: no ACL), b: ACL id */
	LT_SG_EGRESS   = 5,  /* a: rule id that allowed, b: 1 established (skipped) */
	LT_ROUTE       = 6,  /* a: route kind (0: outside, to a gateway), b: port or node */
	LT_ACL_INGRESS = 7,  /* as LT_ACL_EGRESS, at the destination port */
	LT_SG_INGRESS  = 8,  /* as LT_SG_EGRESS, at the destination port */
	LT_TUNNEL      = 9,  /* a: remote node (network order), b: VNI */
	LT_DELIVER     = 10, /* port: the destination port */
	LT_DROP        = 11, /* port: counted at; a: reason, b: rule (0: none) */
	LT_END         = 12, /* a: the program's tc verdict */
	/* The gateway and the services (gateway.h, service.h). These carry a
	 * kind in lt_event.prog and two address:port pairs in saddr:sport
	 * ("from") and daddr:dport ("to"), network order: lt_stage_x. */
	LT_GW_IN       = 13, /* gw_inbound: kind enum lt_gw; from -> to the packet
			      * (to: the public address); a: the elastic IP's VNI
			      * or the NAT gateway id */
	LT_NAT         = 14, /* a translation: kind enum lt_nat (| LT_NAT_DST: the
			      * destination, else the source); from: before, to: after */
	LT_GW_OUT      = 15, /* to the fabric: kind 0 the next hop's MAC known, 1
			      * left to the kernel (bpf_redirect_neigh); a: ifindex,
			      * b: next hop; from -> to the packet as it leaves */
	LT_SERVICE     = 16, /* a VIP: kind enum lt_svc; from: vip:port, to: the
			      * backend's address:port (LT_SVC_REPLY: the other way);
			      * a: service id, b: backend id (LT_SVC_NEW, _STORED) */
};

/* LT_GW_IN: what the destination is to this gateway. */
enum lt_gw {
	LT_GW_NONE  = 0, /* no public address served here: left to the host */
	LT_GW_EIP   = 1, /* an elastic IP */
	LT_GW_NATGW = 2, /* an address of a NAT gateway */
};

/* LT_NAT: whose translation it was. */
enum lt_nat {
	LT_NAT_EIP       = 1, /* an elastic IP, 1:1 */
	LT_NAT_NATGW     = 2, /* a NAT gateway's flow, known */
	LT_NAT_NATGW_NEW = 3, /* a NAT gateway's new flow: a public port taken */
	LT_NAT_PORTMAP   = 4, /* a NAT gateway's port mapping */
	LT_NAT_DSR       = 5, /* source a north-south VIP: leaves as it is */
	LT_NAT_DST       = 0x80,
};

/* LT_SERVICE: how the backend was found. */
enum lt_svc {
	LT_SVC_NEW    = 1, /* east-west, new flow: the Maglev table's choice */
	LT_SVC_STORED = 2, /* east-west, established flow: its stored backend */
	LT_SVC_LOCAL  = 3, /* north-south, on the backend's node: by its MAC */
	LT_SVC_REPLY  = 4, /* a reply: source rewritten back to the VIP */
	LT_SVC_XDP    = 5, /* north-south, on a gateway (lb.c): b is the backend's
			    * slot in lb_backends (dataplane/lb knows whose), the
			    * packet leaves unchanged (DSR) */
};

struct lt_filter {
	__u32 id;        /* trace id; 0: slot unused */
	__u32 port;      /* from this port only; 0: any port, and the overlay */
	__u32 vpc;       /* 0: any */
	__u32 saddr;     /* network order, compared under smask */
	__u32 smask;
	__u32 daddr;
	__u32 dmask;
	__u16 sport;     /* network order; 0: any */
	__u16 dport;
	__u8  proto;     /* 0: any */
	__u8  pad[3];
	__u32 pad2;
	__u64 cost_ns;   /* token-bucket credit one traced packet costs per CPU */
	__u64 burst_ns;  /* most credit a CPU's bucket holds */
};

struct lt_bucket {
	__u64 credit;
	__u64 last;
	__u64 traced;    /* packets traced on this CPU */
	__u64 capped;    /* packets that matched but found the bucket empty */
};

/* The packet being traced on this CPU (id 0: none). */
struct lt_cur {
	__u32 id;
	__u32 pkt;
	__u32 seq;
	__u32 pad;
};

struct lt_event {
	__u64 ts;        /* bpf_ktime_get_ns */
	__u32 id;        /* the filter's trace id */
	__u32 pkt;       /* random per traced packet: groups its events */
	__u32 seq;       /* order of the event within the packet */
	__u8  stage;     /* enum lt_stage */
	__u8  prog;      /* LT_ENTRY: enum lt_prog; LT_GW_IN..: the kind */
	__u8  proto;     /* LT_ENTRY: the packet */
	__u8  tcp_flags;
	__u32 port;
	__u32 a;
	__u32 b;
	__u32 vpc;       /* LT_ENTRY: the packet, network order (LT_GW_IN..:
			  * saddr:sport and daddr:dport, see lt_stage_x) */
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u32 pad;
};

/* Non-zero while a trace runs: the number of filter slots to look at. */
volatile __u32 lt_active;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LT_MAX_FILTERS);
	__type(key, __u32);
	__type(value, struct lt_filter);
} lt_filters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LT_MAX_FILTERS);
	__type(key, __u32);
	__type(value, struct lt_bucket);
} lt_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lt_cur);
} lt_curs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} lt_events SEC(".maps");

/* lt_reset forgets the previous program run's packet on this CPU. */
static __noinline void lt_reset(void)
{
	__u32 zero = 0;
	struct lt_cur *c = bpf_map_lookup_elem(&lt_curs, &zero);

	if (c)
		c->id = 0;
}

/* lt_emit writes one event of the traced packet; the caller fills the
 * packet fields of LT_ENTRY. Returns NULL if no packet is traced here. */
static __always_inline struct lt_event *lt_emit(__u32 stage, __u32 port, __u32 a, __u32 b)
{
	__u32 zero = 0;
	struct lt_cur *c = bpf_map_lookup_elem(&lt_curs, &zero);
	struct lt_event *ev;

	if (!c || !c->id)
		return NULL;
	ev = bpf_ringbuf_reserve(&lt_events, sizeof(*ev), 0);
	if (!ev)
		return NULL;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts = bpf_ktime_get_ns();
	ev->id = c->id;
	ev->pkt = c->pkt;
	ev->seq = c->seq++;
	ev->stage = stage;
	ev->port = port;
	ev->a = a;
	ev->b = b;
	return ev;
}

/* lt_stage is a hook: one event for the packet traced on this CPU. */
static __noinline void lt_stage(__u32 stage, __u32 port, __u32 a, __u32 b)
{
	struct lt_event *ev = lt_emit(stage, port, a, b);

	if (ev)
		bpf_ringbuf_submit(ev, 0);
}

/* lt_stage_x is the hook of the gateway and service stages: stage_kind is
 * stage | kind << 8, from and to are addr << 32 | port (both network order).
 * Everything travels in registers: the callers (gw_outbound, gw_inbound)
 * are on from_overlay's deepest call chain, at the verifier's stack limit. */
static __noinline void lt_stage_x(__u32 stage_kind, __u64 from, __u64 to, __u32 a, __u32 b)
{
	struct lt_event *ev = lt_emit(stage_kind & 0xff, 0, a, b);

	if (!ev)
		return;
	ev->prog = stage_kind >> 8;
	ev->saddr = from >> 32;
	ev->sport = from;
	ev->daddr = to >> 32;
	ev->dport = to;
	bpf_ringbuf_submit(ev, 0);
}

/* LT_AP packs an address and a port (network order) for lt_stage_x. */
#define LT_AP(addr, port) ((__u64)(__u32)(addr) << 32 | (__u16)(port))

/* lt_skips is 1 when filter f does not take a packet with this tuple that
 * came from port (0: the overlay or an uplink): the one definition of what
 * a filter matches, for every traced program. */
static __always_inline int lt_skips(const struct lt_filter *f, __u32 port, __u32 vpc, __u32 saddr,
				    __u32 daddr, __u16 sport, __u16 dport, __u8 proto)
{
	return f->port != port || (f->vpc && f->vpc != vpc) ||
	       ((saddr ^ f->saddr) & f->smask) || ((daddr ^ f->daddr) & f->dmask) ||
	       (f->proto && f->proto != proto) ||
	       (f->sport && f->sport != sport) || (f->dport && f->dport != dport);
}

static __always_inline int lt_take(__u32 slot, struct lt_filter *f)
{
	struct lt_bucket *b = bpf_map_lookup_elem(&lt_buckets, &slot);
	__u64 now, credit;

	if (!b)
		return 0;
	if (f->cost_ns) {
		now = bpf_ktime_get_ns();
		credit = b->credit + (now - b->last);
		if (credit > f->burst_ns)
			credit = f->burst_ns;
		b->last = now;
		if (credit < f->cost_ns) {
			b->credit = credit;
			b->capped++;
			return 0;
		}
		b->credit = credit - f->cost_ns;
	}
	b->traced++;
	return 1;
}

