// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Meridian VPC data path: tc (tcx) programs for
 *   - meridian_from_port:    ingress of the host end of a workload veth,
 *   - meridian_from_overlay: ingress of the VXLAN device (external mode),
 *   - meridian_from_uplink:  ingress of a gateway's interface toward the
 *     fabric (elastic IPs and NAT gateways: gateway.h).
 *
 * Pipeline (see fw/doc.go and dataplane/datapath/doc.go for the why):
 *   from a port: anti-spoofing -> ARP answers -> IPv4 validation ->
 *   conntrack lookup -> ACL egress (source subnet, every packet) ->
 *   SG egress (new flows) -> VPC route -> TTL -> [local destination:
 *   ACL ingress, SG ingress (new flows)] -> conntrack commit ->
 *   deliver (bpf_redirect_peer) or encapsulate (tunnel key + redirect).
 *   from the overlay: VNI = VPC -> route to a local port -> ACL ingress ->
 *   SG ingress (new flows) -> conntrack commit -> deliver.
 *   No VPC route: from a port, to a gateway (gateway_of); from the
 *   overlay, on a gateway, source NAT and out to the fabric (gw_outbound).
 */
#include "include/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"

#define TC_ACT_OK       0
#define TC_ACT_SHOT     2
#define TC_ACT_REDIRECT 7

#define ETH_P_IP  0x0800
#define ETH_P_ARP 0x0806
#define ETH_HLEN  14

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Source ports of the health checks at a gateway address: 0xfc00-0xffff
 * (dataplane/health.ProbePortMin/Max). */
#define PROBE_PORT_MASK 0xfc00

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO      8

#define SEC_NS(s) ((__u64)(s) * 1000000000ULL)
#define CT_TIMEOUT_ESTABLISHED SEC_NS(6 * 3600)
#define CT_TIMEOUT_OTHER       SEC_NS(120)
#define CT_TIMEOUT_CLOSED      SEC_NS(30)

/* Bytes of headers we want in the linear area before parsing. */
#define PULL_LEN 128

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, struct port_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* port id */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_by_ifindex SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORT_IPS);
	__type(key, struct port_ip_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SUBNETS);
	__type(key, __u32);
	__type(value, struct subnet_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} subnets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct route_key);
	__type(value, struct route_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CT);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IPCACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct ipcache_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VPCS);
	__type(key, __u32);
	__type(value, struct ipcache_range);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache_vpcs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SG_POLICY);
	__type(key, struct sg_key);
	__type(value, struct sg_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_SG_PORTS);
	__type(key, struct sg_port_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sg_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ACLS * 2);
	__type(key, struct acl_key);
	__type(value, struct acl_meta);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} acl_metas SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ACL_ENTRIES);
	__type(key, struct acl_interval_key);
	__type(value, struct acl_bitmap);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} acl_intervals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ACL_ENTRIES);
	__type(key, struct acl_proto_key);
	__type(value, struct acl_bitmap);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} acl_proto SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ACL_ENTRIES);
	__type(key, struct acl_rule_key);
	__type(value, struct acl_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} acl_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} node_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_DROP_KEYS);
	__type(key, struct drop_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} drop_events SEC(".maps");

/* Drops of every reason go to drop_events only while a `meridianctl capture
 * --drops` runs on the node: the agent sets drop_capture to the number of
 * such captures and clears it when it starts (a crashed agent's captures
 * are gone). With none, drop_frame pays one load of this global (no helper
 * call, no map lookup) for a drop that is not a policy drop. Its own
 * section, so that .bss keeps the layout the live-trace code relies on. */
volatile __u32 drop_capture SEC(".data.drop_capture");

/* The non-policy drop events' budget: a token bucket per CPU (no atomics,
 * no shared cache line), so that a flood of malformed or spoofed frames
 * costs at most DROP_EV_RATE events per second per CPU and leaves the ring
 * to the policy drops the flow logs need. suppressed counts what it held
 * back. */
#define DROP_EV_COST_NS  (1000 * 1000ULL)    /* 1,000 events/s per CPU */
#define DROP_EV_BURST_NS (64 * DROP_EV_COST_NS)
/* ...and never while the ring is over half full: the reader is behind. */
#define DROP_EV_HEADROOM (1 << 17)

struct drop_budget {
	__u64 credit;     /* ns of credit */
	__u64 last;       /* bpf_ktime_get_ns of the last refill */
	__u64 suppressed; /* non-policy drop events held back */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct drop_budget);
} drop_budgets SEC(".maps");

/* Parsed IPv4 packet; addresses and ports in network byte order. */
struct pkt {
	__u32 vpc;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;   /* conntrack ports; ICMP echo: from the identifier */
	__u16 dport;
	__u8  pport[2]; /* policy port: TCP/UDP dport, ICMP {type, code} */
	__u8  proto;
	__u8  tcp_flags;
	__u8  ttl;
	__u8  ihl;     /* IPv4 header length in 32-bit words */
	__u16 len;     /* IPv4 total length: bytes for flow-log counters */
};

struct arp_eth {
	__be16 htype;
	__be16 ptype;
	__u8   hlen;
	__u8   plen;
	__be16 op;
	__u8   sha[6];
	__u8   spa[4];
	__u8   tha[6];
	__u8   tpa[4];
} __attribute__((packed));

#include "livetrace.h"

/* Read skb->data / data_end with a single load each: left to itself clang
 * may compute &skb->data_end as a pointer and dereference it later, which
 * the verifier rejects ("dereference of modified ctx ptr"). */
static __always_inline void *skb_data(struct __sk_buff *skb)
{
	void *p;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p)
		     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data)));
	return p;
}

static __always_inline void *skb_data_end(struct __sk_buff *skb)
{
	void *p;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(p)
		     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return p;
}

static __always_inline int is_policy_drop(__u32 reason)
{
	return reason >= DROP_SG_EGRESS && reason <= DROP_ACL_INGRESS;
}

/* fill_event is a real function (not inlined) so that struct drop_event
 * appears in the object's BTF, from which bpf2go generates its Go twin. */
static __noinline void fill_event(struct drop_event *ev, __u32 port, __u32 reason,
				  struct pkt *p, __u32 rule)
{
	ev->reason = reason;
	ev->rule = rule;
	ev->port = port;
	ev->pad[0] = 0;
	ev->pad[1] = 0;
	if (!p) {
		/* dropped before the packet was parsed: the frame says it all */
		ev->vpc = 0;
		ev->saddr = 0;
		ev->daddr = 0;
		ev->sport = 0;
		ev->dport = 0;
		ev->proto = 0;
		ev->dir = port ? DIR_EGRESS : DIR_INGRESS;
		return;
	}
	ev->vpc = p->vpc;
	ev->saddr = p->saddr;
	ev->daddr = p->daddr;
	ev->sport = p->sport;
	ev->dport = p->dport;
	ev->proto = p->proto;
	/* Policy drops: the side whose policy dropped. Others: counted at a
	 * port they are (but for a destination's unknown subnet) frames the
	 * port sent; at no port, they came from the overlay or an uplink. */
	if (is_policy_drop(reason))
		ev->dir = (reason == DROP_SG_EGRESS || reason == DROP_ACL_EGRESS) ?
				  DIR_EGRESS : DIR_INGRESS;
	else
		ev->dir = port ? DIR_EGRESS : DIR_INGRESS;
	if (p->proto == IPPROTO_ICMP) {
		/* type and code say more than the echo id */
		ev->sport = 0;
		ev->dport = bpf_htons(((__u16)p->pport[0] << 8) | p->pport[1]);
	}
}

/* drop_budget_take takes one non-policy drop event's credit from this
 * CPU's budget. key points at a __u32 0 of the caller's (no stack here:
 * drop_frame ends the deepest call chains). */
static __always_inline int drop_budget_take(__u32 *key)
{
	struct drop_budget *b = bpf_map_lookup_elem(&drop_budgets, key);
	__u64 now, credit;

	if (!b)
		return 0;
	if (bpf_ringbuf_query(&drop_events, BPF_RB_AVAIL_DATA) > DROP_EV_HEADROOM)
		goto hold;
	now = bpf_ktime_get_ns();
	credit = b->credit + (now - b->last);
	if (credit > DROP_EV_BURST_NS)
		credit = DROP_EV_BURST_NS;
	b->last = now;
	if (credit < DROP_EV_COST_NS) {
		b->credit = credit;
		goto hold;
	}
	b->credit = credit - DROP_EV_COST_NS;
	return 1;
hold:
	b->suppressed++;
	return 0;
}

/* drop counts the drop for (port, reason) and tells userspace, with the
 * first DROP_SNAP bytes of the frame (meridianctl capture --drops): always
 * for policy drops, which rule (0: none allowed) and which flow it was
 * (the agent's policy-drop log and flow logs read them); for the other
 * reasons only while a drop capture runs (drop_capture), within the
 * budget, with a zero tuple when the packet was not parsed yet.
 * Its stack must not grow: it is the last frame of the deepest call chains
 * (from_overlay's is at the verifier's 512-byte limit). */
static __noinline int drop_frame(struct __sk_buff *skb, __u32 port, __u32 reason,
				 struct pkt *p, __u32 rule)
{
	struct drop_key k = { .port = port, .reason = reason };
	__u64 one = 1, *cnt;
	struct drop_event *ev;
	__u32 len;

	LT_DROP(skb, port, reason, rule); /* livetrace.h */
	cnt = bpf_map_lookup_elem(&drops, &k);
	if (cnt)
		*cnt += 1; /* per-CPU value: no atomics needed */
	else
		bpf_map_update_elem(&drops, &k, &one, BPF_NOEXIST);

	if (!(p && is_policy_drop(reason))) {
#ifdef MERIDIAN_NO_DROP_CAPTURE
		/* the baseline of BenchmarkDropCaptureOff: policy drops only */
		return TC_ACT_SHOT;
#else
		if (!drop_capture)
			return TC_ACT_SHOT;
		k.port = 0; /* k is done with: its first word is the budget's key */
		if (!drop_budget_take(&k.port))
			return TC_ACT_SHOT;
#endif
	}
	ev = bpf_ringbuf_reserve(&drop_events, sizeof(*ev), 0);
	if (!ev)
		return TC_ACT_SHOT; /* reader too slow: the counter still counts */
	fill_event(ev, port, reason, p, rule);
	len = skb->len;
	ev->len = len;
	ev->cap_len = 0;
	if (len > DROP_SNAP)
		len = DROP_SNAP;
	if (len >= ETH_HLEN && bpf_skb_load_bytes(skb, 0, ev->data, len) == 0)
		ev->cap_len = len;
	bpf_ringbuf_submit(ev, 0);
	return TC_ACT_SHOT;
}

/* Every caller of drop has its packet in scope as skb: the macro hands it
 * to drop_frame, for the frame's bytes, without changing the call sites. */
#define drop(port, reason, p, rule) drop_frame(skb, port, reason, p, rule)

static __always_inline void ct_stat(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&ct_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return *(const __u32 *)a == *(const __u32 *)b &&
	       *(const __u16 *)(a + 4) == *(const __u16 *)(b + 4);
}

static __always_inline void mac_copy(__u8 *dst, const __u8 *src)
{
	*(__u32 *)dst = *(const __u32 *)src;
	*(__u16 *)(dst + 4) = *(const __u16 *)(src + 4);
}

static __always_inline void pull_headers(struct __sk_buff *skb)
{
	__u32 linear = skb_data_end(skb) - skb_data(skb);

	if (linear < PULL_LEN && skb->len > linear)
		bpf_skb_pull_data(skb, skb->len < PULL_LEN ? skb->len : PULL_LEN);
}

/* parse_ipv4 validates the IPv4 header at ETH_HLEN and the L4 header the
 * policy needs. Returns 0 or a drop reason. IP options are skipped (IHL is
 * honoured); fragments are dropped because non-first fragments carry no
 * ports and we keep no reassembly state (see dataplane/datapath/doc.go). */
static __always_inline __u32 parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct iphdr *ip = data + ETH_HLEN;
	__u32 ihl, tot, avail;
	void *l4;

	if ((void *)(ip + 1) > data_end)
		return DROP_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return DROP_MALFORMED;
	ihl = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	avail = skb->len - ETH_HLEN;
	if (tot < ihl || tot > avail)
		return DROP_MALFORMED;
	if (ip->frag_off & bpf_htons(0x3fff))
		return DROP_FRAGMENT;

	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ttl = ip->ttl;
	p->ihl = ip->ihl;
	p->len = tot;
	l4 = (void *)ip + ihl;
	tot -= ihl; /* L4 bytes the IP header claims */

	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end || tot < sizeof(*tcp))
			return DROP_MALFORMED;
		if (tcp->doff < 5)
			return DROP_MALFORMED;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		__builtin_memcpy(p->pport, &tcp->dest, 2);
		p->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end || tot < sizeof(*udp))
			return DROP_MALFORMED;
		p->sport = udp->source;
		p->dport = udp->dest;
		__builtin_memcpy(p->pport, &udp->dest, 2);
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;

		if ((void *)(icmp + 1) > data_end || tot < sizeof(*icmp))
			return DROP_MALFORMED;
		p->pport[0] = icmp->type;
		p->pport[1] = icmp->code;
		if (icmp->type == ICMP_ECHO || icmp->type == ICMP_ECHOREPLY) {
			/* A request keys as {id, id+1} and a reply as {id+1, id}:
			 * the reply's reversed key is its request's, but an echo
			 * request going the other way never is (that would need
			 * id+2 == id), so it cannot pass as a reply. */
			__u16 id = bpf_ntohs(icmp->un.echo.id);
			__u16 next = id + 1;

			p->sport = bpf_htons(icmp->type == ICMP_ECHO ? id : next);
			p->dport = bpf_htons(icmp->type == ICMP_ECHO ? next : id);
		}
		break;
	}
	default:
		break;
	}
	return 0;
}

/* ---- connection tracking ---- */

struct ct_result {
	struct ct_entry *e; /* NULL: new flow */
	__u8 reply;         /* packet travels replier -> originator */
	__u8 fl;            /* new flow: a flow log took it (flowlog.h) */
	__u16 svc_port;     /* service.h: the flow was translated from */
	__u32 svc_vip;      /* svc_vip:svc_port (0: it was not) */
};

#include "flowlog.h"

static __always_inline void ct_fill_key(struct ct_key *k, struct pkt *p, int reverse)
{
	k->vpc = p->vpc;
	k->proto = p->proto;
	if (!reverse) {
		k->saddr = p->saddr;
		k->daddr = p->daddr;
		k->sport = p->sport;
		k->dport = p->dport;
	} else {
		k->saddr = p->daddr;
		k->daddr = p->saddr;
		k->sport = p->dport;
		k->dport = p->sport;
	}
}

static __always_inline int is_new_syn(struct pkt *p)
{
	return p->proto == IPPROTO_TCP &&
	       (p->tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
}

/* ct_lookup finds the flow of p in either direction. An expired entry, or a
 * closed one that sees a new SYN from its originator, counts as no entry:
 * the packet is a new flow and goes through policy again. */
static __noinline void ct_lookup(struct pkt *p, struct ct_result *r)
{
	struct ct_key k = {};
	struct ct_entry *e;

	r->e = NULL;
	r->reply = 0;
	r->fl = 0;
	ct_fill_key(&k, p, 0);
	e = bpf_map_lookup_elem(&conntrack, &k);
	if (!e) {
		ct_fill_key(&k, p, 1);
		e = bpf_map_lookup_elem(&conntrack, &k);
		if (!e) {
			ct_stat(CT_STAT_MISS);
			return;
		}
		r->reply = 1;
	}
	if (e->expires < bpf_ktime_get_ns()) {
		ct_stat(CT_STAT_EXPIRED);
		return;
	}
	if (e->state == CT_CLOSED && !r->reply && is_new_syn(p)) {
		ct_stat(CT_STAT_MISS);
		return;
	}
	ct_stat(CT_STAT_HIT);
	r->e = e;
}

static __always_inline __u64 ct_timeout(__u8 state)
{
	switch (state) {
	case CT_ESTABLISHED:
		return CT_TIMEOUT_ESTABLISHED;
	case CT_CLOSED:
		return CT_TIMEOUT_CLOSED;
	default:
		return CT_TIMEOUT_OTHER;
	}
}

/* ct_next is the TCP state machine, shared by new and existing entries. */
static __always_inline void ct_next(struct ct_entry *e, struct pkt *p, int reply)
{
	__u8 f = p->tcp_flags;

	if (p->proto != IPPROTO_TCP)
		return;
	if (f & TCP_RST) {
		e->state = CT_CLOSED;
		return;
	}
	if (f & TCP_FIN) {
		e->fin |= reply ? 2 : 1;
		e->state = e->fin == 3 ? CT_CLOSED : CT_FIN_WAIT;
		return;
	}
	if (e->state == CT_SYN_SENT && reply)
		e->state = CT_ESTABLISHED;
}

/* ct_commit records a packet that is about to be forwarded. */
static __noinline void ct_commit(struct pkt *p, struct ct_result *r)
{
	__u64 now = bpf_ktime_get_ns();
	struct ct_entry *e = r->e;

	if (e) {
		ct_next(e, p, r->reply);
		e->expires = now + ct_timeout(e->state);
		if (e->fl_on)
			flowlog_count(e, p, r->reply);
		if (r->svc_vip && !r->reply) { /* service.h: reverse translation */
			e->svc_vip = r->svc_vip;
			e->svc_port = r->svc_port;
		}
		return;
	}

	struct ct_entry n = {};
	struct ct_key k = {};

	switch (p->proto) {
	case IPPROTO_TCP:
		/* Mid-stream pickup (no SYN) is trusted as established: the
		 * packet passed policy, as the SYN would have. */
		n.state = (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN ?
				  CT_SYN_SENT : CT_ESTABLISHED;
		ct_next(&n, p, 0);
		break;
	case IPPROTO_UDP:
		n.state = CT_UDP;
		break;
	default:
		n.state = CT_OTHER;
		break;
	}
	n.expires = now + ct_timeout(n.state);
	if (r->fl) {
		n.fl_on = 1;
		n.fl_packets[0] = 1;
		n.fl_bytes[0] = p->len;
	}
	n.svc_vip = r->svc_vip; /* service.h: reverse translation */
	n.svc_port = r->svc_port;
	ct_fill_key(&k, p, 0);
	if (bpf_map_update_elem(&conntrack, &k, &n, BPF_ANY) == 0)
		ct_stat(CT_STAT_INSERT);
	else
		ct_stat(CT_STAT_INSERT_FAIL);
}

/* ---- policy ---- */

/* lt is 1 if a < b, else 0, for values below 2^32, without a branch. In
 * asm because clang turns the plain C back into a conditional jump. */
static __always_inline __u64 lt(__u64 a, __u64 b)
{
	asm volatile("%0 -= %1; %0 >>= 63" : "+r"(a) : "r"(b));
	return a;
}

/* identity_of returns the security identity of remote address ip in vpc:
 * binary lifting over the VPC's slice of ipcache_slots, branch-free like
 * the ACL searches so that the verifier sees a single path. */
static __noinline __u32 identity_of(__u32 vpc, __u32 ip)
{
	struct ipcache_range *r = bpf_map_lookup_elem(&ipcache_vpcs, &vpc);
	struct ipcache_slot *s;
	__u64 pos = 0, n, x = bpf_ntohl(ip);
	__u32 idx;

	if (!r || r->count == 0)
		return 0;
	n = r->count;
#pragma unroll
	for (int k = IPCACHE_STEPS - 1; k >= 0; k--) {
		__u64 cand = pos + (1ULL << k);
		__u64 over = lt(n - 1, cand);
		/* past the slice, read its last slot: stays in cache */
		__u64 c = cand - ((cand - (n - 1)) & -over);

		idx = (r->offset + c) & (IPCACHE_SLOTS - 1);
		s = bpf_map_lookup_elem(&ipcache_slots, &idx);
		if (!s)
			return 0;
		pos += (1ULL << k) & -((over ^ 1) & (lt(x, s->start) ^ 1));
	}
	idx = (r->offset + pos) & (IPCACHE_SLOTS - 1);
	s = bpf_map_lookup_elem(&ipcache_slots, &idx);
	return s ? s->identity : 0;
}

static __always_inline int sg_port_ok(struct sg_value *v, __u32 policy, struct pkt *p)
{
	__u16 port = ((__u16)p->pport[0] << 8) | p->pport[1];

	if (v->port_set) {
		struct sg_port_key k = { .prefixlen = 80, .policy = policy, .set = v->port_set };

		k.port[0] = p->pport[0];
		k.port[1] = p->pport[1];
		return bpf_map_lookup_elem(&sg_ports, &k) != NULL;
	}
#pragma unroll
	for (int i = 0; i < SG_INLINE_RANGES; i++) {
		if (i >= v->nranges)
			break;
		if (port >= v->lo[i] && port <= v->hi[i])
			return 1;
	}
	return 0;
}

/* sg_allows returns the id of a rule of policy that allows the packet in
 * direction dir with the given remote address, or 0. A fixed-step search
 * for the remote identity and at most two hash lookups, whatever the number
 * of rules (fw/doc.go). */
static __noinline __u32 sg_allows(__u32 policy, __u32 dir, __u32 remote, struct pkt *p)
{
	struct sg_key k = {};
	struct sg_value *v;

	k.policy = policy;
	k.identity = identity_of(p->vpc, remote);
	k.dir = dir;
	k.proto = p->proto;
	v = bpf_map_lookup_elem(&sg_policy, &k);
	if (v && sg_port_ok(v, policy, p))
		return v->rule;
	k.proto = 0; /* rules for any protocol ignore the port */
	v = bpf_map_lookup_elem(&sg_policy, &k);
	return v ? v->rule : 0;
}

static __always_inline __u32 ctz64(__u64 x)
{
	__u32 n = 0;

	if (!(x & 0xffffffffULL)) { n += 32; x >>= 32; }
	if (!(x & 0xffffULL))     { n += 16; x >>= 16; }
	if (!(x & 0xffULL))       { n += 8;  x >>= 8; }
	if (!(x & 0xfULL))        { n += 4;  x >>= 4; }
	if (!(x & 0x3ULL))        { n += 2;  x >>= 2; }
	if (!(x & 0x1ULL))        { n += 1; }
	return n;
}

/* The interval searches find the largest i < n with start[i] <= x by
 * binary lifting, one step per bit of ACL_BOUNDS_ARRAY. They are branch-free
 * on purpose: with branches the verifier walks every path of the search
 * (2^10 per search) and gives up; with arithmetic it sees one. */
#define ACL_SEARCH_STEPS 10
_Static_assert((1 << ACL_SEARCH_STEPS) == ACL_BOUNDS_ARRAY, "search steps");
_Static_assert(ACL_MAX_BOUNDS <= ACL_BOUNDS_ARRAY, "bounds array");

static __always_inline __u32 ip_interval(struct acl_meta *m, __u32 x)
{
	__u64 pos = 0, n = m->n_ip;

#pragma unroll
	for (int k = ACL_SEARCH_STEPS - 1; k >= 0; k--) {
		__u64 cand = pos + (1ULL << k);
		__u64 v = m->ip_start[cand & (ACL_BOUNDS_ARRAY - 1)];

		/* take the step if cand < n and start[cand] <= x */
		pos += (1ULL << k) & -(lt(cand, n) & (lt(x, v) ^ 1));
	}
	return pos;
}

static __always_inline __u32 port_interval(struct acl_meta *m, __u16 x)
{
	__u64 pos = 0, n = m->n_port;

#pragma unroll
	for (int k = ACL_SEARCH_STEPS - 1; k >= 0; k--) {
		__u64 cand = pos + (1ULL << k);
		__u64 v = m->port_start[cand & (ACL_BOUNDS_ARRAY - 1)];

		pos += (1ULL << k) & -(lt(cand, n) & (lt(x, v) ^ 1));
	}
	return pos;
}

/* acl_allows evaluates network ACL acl (0: none attached, allow) for the
 * packet: the bitmaps of the rules matching the remote address's interval,
 * the protocol and the port's interval are ANDed; the lowest set bit is the
 * matching rule with the lowest number. No bit: the default deny. The cost
 * is fixed by ACL_MAX_RULES, not by the rules installed. */
static __noinline int acl_allows(__u32 acl, __u32 dir, __u32 remote, struct pkt *p, __u32 *rule)
{
	struct acl_key mk = { .acl = acl, .dir = dir };
	struct acl_interval_key ik = { .acl = acl, .dir = dir };
	struct acl_proto_key pk = { .acl = acl, .dir = dir, .proto = p->proto };
	struct acl_bitmap *c, *pr, *q;
	struct acl_rule_key rk = { .acl = acl, .dir = dir };
	struct acl_meta *m;
	struct acl_rule *r;
	__u16 port = ((__u16)p->pport[0] << 8) | p->pport[1];

	*rule = 0;
	if (acl == 0)
		return 1;
	m = bpf_map_lookup_elem(&acl_metas, &mk);
	if (!m)
		return 0;
	ik.field = ACL_FIELD_IP;
	ik.index = ip_interval(m, bpf_ntohl(remote));
	c = bpf_map_lookup_elem(&acl_intervals, &ik);
	if (!c)
		return 0;
	ik.field = ACL_FIELD_PORT;
	ik.index = port_interval(m, port);
	q = bpf_map_lookup_elem(&acl_intervals, &ik);
	if (!q)
		return 0;
	pr = bpf_map_lookup_elem(&acl_proto, &pk);
	if (!pr) {
		pk.proto = ACL_PROTO_OTHER;
		pr = bpf_map_lookup_elem(&acl_proto, &pk);
		if (!pr)
			return 0;
	}

#pragma unroll
	for (int i = 0; i < ACL_WORDS; i++) {
		__u64 w = c->w[i] & pr->w[i] & q->w[i];

		if (!w)
			continue;
		rk.index = i * 64 + ctz64(w);
		r = bpf_map_lookup_elem(&acl_rules, &rk);
		if (!r)
			return 0;
		*rule = r->rule;
		return r->allow;
	}
	return 0;
}

/* ---- forwarding ---- */

static __always_inline void ttl_decrement(struct iphdr *ip)
{
	__u32 check = ip->check;

	check += bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
}

/* deliver rewrites the frame as routed by the virtual router and hands it to
 * the destination workload's namespace. */
static __always_inline int deliver(struct __sk_buff *skb, struct port_info *dst,
				   struct subnet_info *dsub, int decrement_ttl)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end)
		return TC_ACT_SHOT;
	if (decrement_ttl)
		ttl_decrement(ip);
	mac_copy(eth->h_source, dsub->router_mac);
	mac_copy(eth->h_dest, dst->mac);
	return bpf_redirect_peer(dst->ifindex, 0);
}

static __always_inline int port_has_ip(__u32 port, __u32 ip)
{
	struct port_ip_key k = { .port = port, .ip = ip };

	return bpf_map_lookup_elem(&port_ips, &k) != NULL;
}

static __always_inline int svc_is_vip(__u32 vpc, __u32 addr); /* service.h */

/* handle_arp answers ARP requests from a port for its gateway and, as a
 * proxy, for any address routed in the VPC and any east-west service VIP:
 * the data path is L3 only, so every neighbour resolves to the router MAC. */
static __always_inline int handle_arp(struct __sk_buff *skb, __u32 port_id, struct port_info *port)
{
	void *data = skb_data(skb);
	void *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct arp_eth *arp = data + ETH_HLEN;
	struct subnet_info *sub;
	struct route_key rk = { .prefixlen = 64, .vpc = port->vpc };
	__u32 spa, tpa;

	if ((void *)(arp + 1) > data_end)
		return drop(port_id, DROP_MALFORMED, NULL, 0);
	if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != 6 || arp->plen != 4 || arp->op != bpf_htons(1))
		return drop(port_id, DROP_ARP, NULL, 0);
	if (!mac_eq(arp->sha, port->mac))
		return drop(port_id, DROP_SPOOF_MAC, NULL, 0);
	__builtin_memcpy(&spa, arp->spa, 4);
	__builtin_memcpy(&tpa, arp->tpa, 4);
	/* 0.0.0.0 is an address probe (RFC 5227) */
	if (spa != 0 && !port_has_ip(port_id, spa))
		return drop(port_id, DROP_SPOOF_IP, NULL, 0);
	sub = bpf_map_lookup_elem(&subnets, &port->subnet);
	if (!sub)
		return drop(port_id, DROP_UNKNOWN_SUBNET, NULL, 0);
	/* Never claim the asker's own address: that would be a conflict. */
	if (tpa == spa || port_has_ip(port_id, tpa))
		return drop(port_id, DROP_ARP, NULL, 0);
	if (tpa != sub->gateway_ip && !svc_is_vip(port->vpc, tpa)) {
		struct route_entry *rt;

		rk.ip = tpa;
		rt = bpf_map_lookup_elem(&routes, &rk);
		if (!rt || rt->kind == ROUTE_DROP)
			return drop(port_id, DROP_ARP, NULL, 0);
	}

	arp->op = bpf_htons(2);
	mac_copy(arp->tha, arp->sha);
	__builtin_memcpy(arp->tpa, &spa, 4);
	mac_copy(arp->sha, sub->router_mac);
	__builtin_memcpy(arp->spa, &tpa, 4);
	mac_copy(eth->h_dest, eth->h_source);
	mac_copy(eth->h_source, sub->router_mac);
	/* out of the host end of the veth, i.e. back to the workload */
	return bpf_redirect(skb->ingress_ifindex, 0);
}

#include "gateway.h"
#include "service.h"

/* REPLAY_RULES: in the test entries only (replay is a constant 1 there,
 * 0 in the attached programs, where it compiles to nothing), the rules
 * that allowed a packet, for `meridianctl replay`: a test run returns the
 * context. Egress in mark and priority, ingress in cb[3] and cb[4] (cb[2]
 * is the live trace's drop reason, cb[0..1] the tunnel key). Written where
 * the flow log takes them, so that nothing stays live longer. */
#define REPLAY_RULES(replay, acl_out, sg_out, acl_in, sg_in)			\
	do {									\
		if (replay) {							\
			skb->mark = (acl_out);					\
			skb->priority = (sg_out);				\
			skb->cb[3] = (acl_in);					\
			skb->cb[4] = (sg_in);					\
		}								\
	} while (0)

static __always_inline int from_port(struct __sk_buff *skb, const int replay)
{
	__u32 ifindex = skb->ingress_ifindex;
	struct port_info *port, *dst = NULL;
	struct subnet_info *sub, *dsub = NULL;
	struct route_entry *rt;
	struct route_key rk = { .prefixlen = 64 };
	struct ct_result ct = {};
	struct pkt p = {};
	__u32 *pid, port_id, reason, rule, dst_id = 0, node_ip = 0;
	__u32 fl_acl_out = 0, fl_sg_out = 0, fl_acl_in = 0, fl_sg_in = 0; /* flowlog.h */
	struct ethhdr *eth;
	void *data, *data_end;
	int cross, svc;

	LT_BEGIN(skb); /* livetrace.h */
	pid = bpf_map_lookup_elem(&port_by_ifindex, &ifindex);
	if (!pid)
		return drop(0, DROP_UNKNOWN_PORT, NULL, 0);
	port_id = *pid;
	port = bpf_map_lookup_elem(&ports, &port_id);
	if (!port)
		return drop(port_id, DROP_UNKNOWN_PORT, NULL, 0);

	pull_headers(skb);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(port_id, DROP_MALFORMED, NULL, 0);
	if (!mac_eq(eth->h_source, port->mac))
		return drop(port_id, DROP_SPOOF_MAC, NULL, 0);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return handle_arp(skb, port_id, port);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return drop(port_id, DROP_NOT_IPV4, NULL, 0);

	p.vpc = port->vpc;
	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(port_id, reason, NULL, 0);
	LT_MATCH(&p, LT_PROG_PORT, port_id);
	if (!port_has_ip(port_id, p.saddr))
		return drop(port_id, DROP_SPOOF_IP, NULL, 0);
	LT(LT_SPOOF, port_id, 0, 0);
	sub = bpf_map_lookup_elem(&subnets, &port->subnet);
	if (!sub)
		return drop(port_id, DROP_UNKNOWN_SUBNET, NULL, 0);
	/* Health-check replies (dataplane/health): a backend's TCP segments
	 * to its subnet gateway's address on a probe port. The checker's
	 * AF_PACKET tap on this interface read them before this hook ran and
	 * nothing else is addressed there, so they end here: no drop count. */
	if (p.proto == IPPROTO_TCP && p.daddr == sub->gateway_ip &&
	    (bpf_ntohs(p.dport) & PROBE_PORT_MASK) == PROBE_PORT_MASK)
		return TC_ACT_SHOT;

	/* east-west service VIP: backend chosen and DNAT (service.h) */
	svc = svc_from_port(skb, &p, &ct, &reason);
	if (svc < 0)
		return drop(port_id, reason, &p, 0);
	if (!svc)
		ct_lookup(&p, &ct);
	LT(LT_CT, port_id, ct.e ? ct.e->state : 0, ct.reply);
	if (!acl_allows(sub->acl, DIR_EGRESS, p.daddr, &p, &rule))
		return drop(port_id, DROP_ACL_EGRESS, &p, rule);
	LT(LT_ACL_EGRESS, port_id, rule, sub->acl);
	fl_acl_out = rule;
	if (!ct.e) {
		rule = sg_allows(port->sg_policy, DIR_EGRESS, p.daddr, &p);
		if (!rule)
			return drop(port_id, DROP_SG_EGRESS, &p, 0);
		fl_sg_out = rule;
	}
	LT(LT_SG_EGRESS, port_id, fl_sg_out, ct.e != NULL);

	rk.vpc = p.vpc;
	rk.ip = p.daddr;
	rt = bpf_map_lookup_elem(&routes, &rk);
	if (!rt) {
		/* Outside every VPC route: to a gateway, if the source has
		 * an elastic IP or sits behind a NAT gateway. */
		node_ip = svc_is_reply(&ct) ? live_gateway(&p, &reason) :
					      gateway_of(&p, &reason);
		if (!node_ip)
			return drop(port_id, reason, &p, 0);
		cross = 1;
	} else if (rt->kind == ROUTE_LOCAL) {
		dst_id = rt->port;
		dst = bpf_map_lookup_elem(&ports, &dst_id);
		if (!dst || dst->vpc != p.vpc)
			return drop(port_id, DROP_NO_ROUTE, &p, 0);
		cross = dst->subnet != port->subnet;
	} else if (rt->kind == ROUTE_REMOTE) {
		node_ip = rt->node_ip;
		cross = rt->subnet != port->subnet;
	} else {
		return drop(port_id, DROP_NO_ROUTE, &p, 0);
	}
	LT(LT_ROUTE, port_id, rt ? rt->kind : 0, dst ? dst_id : node_ip);
	if (cross && p.ttl <= 1)
		return drop(port_id, DROP_TTL_EXCEEDED, &p, 0);

	if (dst) {
		dsub = bpf_map_lookup_elem(&subnets, &dst->subnet);
		if (!dsub)
			return drop(dst_id, DROP_UNKNOWN_SUBNET, &p, 0);
		if (!acl_allows(dsub->acl, DIR_INGRESS, p.saddr, &p, &rule))
			return drop(dst_id, DROP_ACL_INGRESS, &p, rule);
		fl_acl_in = rule;
		LT(LT_ACL_INGRESS, dst_id, rule, dsub->acl);
		if (!ct.e && !(fl_sg_in = sg_allows(dst->sg_policy, DIR_INGRESS, p.saddr, &p)))
			return drop(dst_id, DROP_SG_INGRESS, &p, 0);
		LT(LT_SG_INGRESS, dst_id, fl_sg_in, ct.e != NULL);
		flowlog_new(&p, &ct, port_id, port, dst_id, dst, fl_acl_out, fl_sg_out, fl_acl_in, fl_sg_in);
		REPLAY_RULES(replay, fl_acl_out, fl_sg_out, fl_acl_in, fl_sg_in);
		ct_commit(&p, &ct);
		if (svc_reply(skb, &p, &ct))
			return drop(port_id, DROP_MALFORMED, &p, 0);
		LT(LT_DELIVER, dst_id, 0, 0);
		return deliver(skb, dst, dsub, cross);
	}

	/* remote node: the receiving node runs the ingress policy */
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&node_cfg, &zero);
	struct bpf_tunnel_key tk = {};

	if (!cfg || !cfg->vxlan_ifindex)
		return drop(port_id, DROP_NO_ROUTE, &p, 0);
	flowlog_new(&p, &ct, port_id, port, 0, NULL, fl_acl_out, fl_sg_out, 0, 0);
	REPLAY_RULES(replay, fl_acl_out, fl_sg_out, 0, 0);
	ct_commit(&p, &ct);
	if (svc_reply(skb, &p, &ct)) /* a north-south reply: source VIP */
		return drop(port_id, DROP_MALFORMED, &p, 0);
	if (cross) {
		data = skb_data(skb);
		data_end = skb_data_end(skb);
		struct iphdr *ip = data + ETH_HLEN;

		if ((void *)(ip + 1) > data_end)
			return TC_ACT_SHOT;
		ttl_decrement(ip);
	}
	tk.tunnel_id = p.vpc;
	tk.remote_ipv4 = bpf_ntohl(node_ip);
	tk.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(port_id, DROP_NO_ROUTE, &p, 0);
	LT(LT_TUNNEL, port_id, node_ip, p.vpc);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/* from_overlay runs the receiving half of the pipeline for a decapsulated
 * frame of VPC vpc. Packets of VXLAN are trusted to come from Meridian
 * nodes: the sender ran anti-spoofing, egress policy and the TTL rule. */
static __always_inline int from_overlay(struct __sk_buff *skb, __u32 vpc, __u32 outer_src,
					const int replay)
{
	struct route_key rk = { .prefixlen = 64, .vpc = vpc };
	struct port_info *dst;
	struct subnet_info *dsub;
	struct route_entry *rt;
	struct ct_result ct = {};
	struct pkt p = {};
	struct ethhdr *eth;
	__u32 reason, rule, dst_id, fl_sg_in = 0; /* fl_sg_in: flowlog.h */
	void *data, *data_end;

	LT_BEGIN(skb); /* livetrace.h */
	pull_headers(skb);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return drop(0, DROP_MALFORMED, NULL, 0);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return drop(0, DROP_NOT_IPV4, NULL, 0);
	p.vpc = vpc;
	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(0, reason, NULL, 0);
	LT_MATCH(&p, LT_PROG_OVERLAY, 0);
	rk.ip = p.daddr;
	rt = bpf_map_lookup_elem(&routes, &rk);
	if (!rt) {
		/* a north-south service VIP for a backend port here (service.h) */
		reason = svc_from_overlay(skb, &p, &ct);
		if (reason)
			return drop(0, reason, &p, 0);
		/* else leaving the VPC: this node is a gateway, or it drops */
		if (!ct.svc_vip)
			return gw_outbound(skb, &p, outer_src);
		rk.ip = p.daddr;
		rt = bpf_map_lookup_elem(&routes, &rk);
		if (!rt)
			return drop(0, DROP_NO_ROUTE, &p, 0);
	}
	if (rt->kind == ROUTE_DROP)
		return drop(0, DROP_NO_ROUTE, &p, 0);
	if (rt->kind != ROUTE_LOCAL)
		return drop(0, DROP_NOT_LOCAL, &p, 0);
	dst_id = rt->port;
	dst = bpf_map_lookup_elem(&ports, &dst_id);
	if (!dst || dst->vpc != vpc)
		return drop(0, DROP_NOT_LOCAL, &p, 0);
	LT(LT_ROUTE, 0, ROUTE_LOCAL, dst_id);
	dsub = bpf_map_lookup_elem(&subnets, &dst->subnet);
	if (!dsub)
		return drop(dst_id, DROP_UNKNOWN_SUBNET, &p, 0);

	ct_lookup(&p, &ct);
	LT(LT_CT, dst_id, ct.e ? ct.e->state : 0, ct.reply);
	if (!acl_allows(dsub->acl, DIR_INGRESS, p.saddr, &p, &rule))
		return drop(dst_id, DROP_ACL_INGRESS, &p, rule);
	LT(LT_ACL_INGRESS, dst_id, rule, dsub->acl);
	if (!ct.e && !(fl_sg_in = sg_allows(dst->sg_policy, DIR_INGRESS, p.saddr, &p)))
		return drop(dst_id, DROP_SG_INGRESS, &p, 0);
	LT(LT_SG_INGRESS, dst_id, fl_sg_in, ct.e != NULL);
	flowlog_new(&p, &ct, 0, NULL, dst_id, dst, 0, 0, rule, fl_sg_in);
	REPLAY_RULES(replay, 0, 0, rule, fl_sg_in);
	ct_commit(&p, &ct);
	LT(LT_DELIVER, dst_id, 0, 0);
	return svc_deliver(skb, &p, &ct, dst); /* a service reply: source VIP */
}

SEC("tc")
int meridian_from_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key tk = {};

	/* Without tunnel metadata the frame is not VXLAN-external traffic:
	 * leave it to whatever is chained after us. */
	if (bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0) < 0)
		return TCX_NEXT;
	return lt_end(skb, from_overlay(skb, tk.tunnel_id, bpf_htonl(tk.remote_ipv4), 0));
}

SEC("tc")
int meridian_from_port(struct __sk_buff *skb)
{
	return lt_end(skb, from_port(skb, 0));
}

/* from_uplink: a gateway's packet from the fabric (gateway.h). */
static __always_inline int from_uplink(struct __sk_buff *skb)
{
	LT_BEGIN(skb);            /* livetrace.h */
	LT_MATCH_UPLINK(skb);
	return gw_inbound(skb, 1);
}

SEC("tc")
int meridian_from_uplink(struct __sk_buff *skb)
{
	return lt_end(skb, from_uplink(skb));
}

/* ---- test entries: never attached by the Go loader ----
 * BPF_PROG_TEST_RUN can neither attach tunnel metadata to a packet nor
 * return the metadata a program set, but it does return skb->cb. So the
 * test entries take the overlay's VNI from skb->mark and its outer source
 * from cb[0], and report the tunnel key of a redirected packet in cb[0]
 * (remote, network order) and cb[1] (VNI). */
static __always_inline int export_tunnel(struct __sk_buff *skb, int verdict)
{
	struct bpf_tunnel_key tk = {};

	skb->cb[0] = 0;
	skb->cb[1] = 0;
	/* Read back, transmit metadata reports the destination set by
	 * bpf_skb_set_tunnel_key as local_ipv4 (the kernel maps key.u.ipv4
	 * src/dst to remote/local as for received packets). */
	if (verdict == TC_ACT_REDIRECT &&
	    bpf_skb_get_tunnel_key(skb, &tk, sizeof(tk), 0) == 0) {
		skb->cb[0] = bpf_htonl(tk.local_ipv4);
		skb->cb[1] = tk.tunnel_id;
	}
	return verdict;
}

SEC("tc")
int meridian_from_overlay_mark(struct __sk_buff *skb)
{
	return export_tunnel(skb, lt_end(skb, from_overlay(skb, skb->mark, skb->cb[0], 1)));
}

SEC("tc")
int meridian_from_port_test(struct __sk_buff *skb)
{
	return export_tunnel(skb, lt_end(skb, from_port(skb, 1)));
}

SEC("tc")
int meridian_from_uplink_test(struct __sk_buff *skb)
{
	return export_tunnel(skb, lt_end(skb, from_uplink(skb)));
}
