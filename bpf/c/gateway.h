/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The outside world (issue [4]): included by meridian.c after the VPC
 * pipeline's helpers. Where NAT happens and why: dataplane/datapath/doc.go.
 *
 *   workload node: gateway_of picks the gateway of a packet that leaves
 *     the VPC (elastic IP: any live gateway by flow hash; NAT gateway: its
 *     owner); meridian_from_port tunnels it there like any remote packet.
 *   gateway node, overlay -> uplink (gw_outbound): source rewritten to the
 *     elastic IP, a port mapping's public side or a NAT gateway's address
 *     and port, then out of the interface bpf_fib_lookup names, or, for a
 *     public address this gateway serves itself, back in (hairpin).
 *   gateway node, uplink -> overlay (gw_inbound): destination rewritten to
 *     the port's private address (and port), VXLAN to the port's node.
 */
#pragma once

#define AF_INET 2

#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define IP_CSUM_OFF (ETH_HLEN + 10)
#define IP_SRC_OFF  (ETH_HLEN + 12)
#define IP_DST_OFF  (ETH_HLEN + 16)

#define NAT_DEFAULT_TCP_ESTABLISHED SEC_NS(7200)
#define NAT_DEFAULT_TCP_TRANSITORY  SEC_NS(60)
/* A closed TCP flow holds its public port as long as the remote may hold
 * the connection in TIME_WAIT (Linux: 60 s; conntrack keeps 120 s): a new
 * connection from another inside tuple on the same public port would meet
 * that TIME_WAIT with unrelated TCP timestamps and be refused (PAWS). */
#define NAT_DEFAULT_TCP_CLOSED      SEC_NS(120)
#define NAT_DEFAULT_UDP             SEC_NS(60)
#define NAT_DEFAULT_ICMP            SEC_NS(30)

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_EGRESS);
	__type(key, struct egress_key);
	__type(value, struct egress_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} egress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gw_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} gateways SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EIPS);
	__type(key, __u32);
	__type(value, struct eip_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent: no need to preallocate */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EIPS);
	__type(key, struct eip_rev_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent: no need to preallocate */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eip_by_private SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NAT_GWS);
	__type(key, __u32);
	__type(value, struct natgw_info);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent: no need to preallocate */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} natgws SEC(".maps");

/* {VPC, source} -> NAT gateway id: only on the NAT gateway's owner. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_NAT_SRC);
	__type(key, struct egress_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_src SEC(".maps");

/* public address of a NAT gateway -> its id */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_NAT_GWS * NAT_MAX_ADDRS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent: no need to preallocate */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORT_MAPS);
	__type(key, struct portmap_key);
	__type(value, struct portmap_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent: no need to preallocate */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_maps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORT_MAPS);
	__type(key, struct portmap_rev_key);
	__type(value, struct portmap_key);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent: no need to preallocate */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} port_maps_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_NAT);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat SEC(".maps");

/* New flows refused for want of a free port, per NAT gateway id. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_NAT_GWS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* written by the agent: no need to preallocate */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_exhausted SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_cfg SEC(".maps");

static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x7feb352d;
	h ^= h >> 15;
	h *= 0x846ca68b;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 tuple_hash(__u32 a, __u32 b, __u16 pa, __u16 pb, __u8 proto)
{
	return mix32(a ^ mix32(b ^ mix32(((__u32)pa << 16 | pb) ^ ((__u32)proto << 24))));
}

/* ---- workload node ---- */

static __noinline int svc_vip_source(struct pkt *p); /* service.h */

/* live_gateway picks any live gateway by the flow's hash (elastic IPs and
 * replies of north-south services, service.h), or returns 0. */
static __noinline __u32 live_gateway(struct pkt *p, __u32 *reason)
{
	struct gw_set *g;
	__u32 zero = 0, n;

	*reason = DROP_NO_GATEWAY;
	g = bpf_map_lookup_elem(&gateways, &zero);
	if (!g)
		return 0;
	n = g->count;
	if (n == 0)
		return 0;
	if (n > MAX_GATEWAYS)
		n = MAX_GATEWAYS;
	n = tuple_hash(p->saddr, p->daddr, p->sport, p->dport, p->proto) % n;
	asm volatile("%0 &= %1" : "+r"(n) : "i"(MAX_GATEWAYS - 1));
	return g->node_ip[n];
}

/* gateway_of returns the underlay address of the gateway a packet leaving
 * the VPC goes to, or 0 with the drop reason. Elastic IPs are stateless on
 * every gateway, so any live one will do; the flow hash keeps a flow on one
 * gateway (and its packets in order). NAT is stateful: its owner. */
static __noinline __u32 gateway_of(struct pkt *p, __u32 *reason)
{
	struct egress_key k = { .prefixlen = 64, .vpc = p->vpc, .ip = p->saddr };
	struct egress_entry *e;

	*reason = DROP_NO_ROUTE;
	e = bpf_map_lookup_elem(&egress, &k);
	if (!e)
		return 0;
	if (e->kind == EGRESS_NAT) {
		if (!e->node_ip)
			*reason = DROP_NO_GATEWAY;
		return e->node_ip;
	}
	return live_gateway(p, reason);
}

/* ---- gateway node: translation ---- */

static __always_inline __u32 l4_csum_off(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return 16;
	case IPPROTO_UDP:
		return 6;
	default:
		return 2; /* ICMP */
	}
}

/* nat_rewrite replaces the source (dst == 0) or destination address and
 * port of the IPv4 packet at ETH_HLEN whose L4 header is at l4off, fixing
 * the IPv4 and L4 checksums incrementally: the helpers handle packets with
 * partial checksums (locally sent, offloaded) as well as complete ones.
 * For ICMP echo the "port" is the identifier. Returns 0 or -1. */
struct xlate {
	__u32 l4off;
	__u32 old_ip;
	__u32 new_ip;
	__u16 old_port;
	__u16 new_port;
	__u8  proto;
	__u8  dst;
	__u8  kind;  /* live trace: enum lt_nat (| LT_NAT_DST); 0: the caller reports */
	__u8  pad;
};

static __noinline int nat_rewrite(struct __sk_buff *skb, struct xlate *x)
{
	/* live trace: reported before it is done (a failure drops the packet
	 * and says so), and before x is read into registers: nothing kept
	 * across the call */
	if (x->kind)
		LT_X(LT_NAT, x->kind, LT_AP(x->old_ip, x->old_port), LT_AP(x->new_ip, x->new_port), 0, 0);
	__u32 proto = x->proto, dst = x->dst, l4off = x->l4off;
	__u32 old_ip = x->old_ip, new_ip = x->new_ip;
	__u32 old_port = x->old_port, new_port = x->new_port;
	__u32 csum_off = l4off + l4_csum_off(proto);
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 port_off;
	__u16 np = new_port;

	if (old_ip != new_ip) {
		if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP) &&
		    bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip, BPF_F_PSEUDO_HDR | mangled | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, dst ? IP_DST_OFF : IP_SRC_OFF, &new_ip, 4, 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (proto == IPPROTO_ICMP)
			port_off = l4off + 4;
		else
			port_off = l4off + (dst ? 2 : 0);
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &np, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* nat_ports gives a packet's NAT tuple ports: the inside (local) one and the
 * remote one. ICMP echo: the identifier and 0. Returns 0 if the protocol
 * cannot be port-translated (ICMP other than echo, other protocols). */
static __always_inline int nat_ports(struct pkt *p, int outbound, __u16 *local, __u16 *remote)
{
	switch (p->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		*local = outbound ? p->sport : p->dport;
		*remote = outbound ? p->dport : p->sport;
		return 1;
	case IPPROTO_ICMP:
		/* parse_ipv4's echo keys: a request carries the id as sport,
		 * a reply as dport */
		if (outbound && p->pport[0] == ICMP_ECHO) {
			*local = p->sport;
			*remote = 0;
			return 1;
		}
		if (!outbound && p->pport[0] == ICMP_ECHOREPLY) {
			*local = p->dport;
			*remote = 0;
			return 1;
		}
		return 0;
	default:
		return 0;
	}
}

static __always_inline __u64 nat_timeout(__u8 state)
{
	__u32 zero = 0;
	struct nat_config *c = bpf_map_lookup_elem(&nat_cfg, &zero);
	__u64 t = 0;

	switch (state) {
	case CT_ESTABLISHED:
		t = c ? c->tcp_established : 0;
		return t ? t : NAT_DEFAULT_TCP_ESTABLISHED;
	case CT_CLOSED:
		t = c ? c->tcp_closed : 0;
		return t ? t : NAT_DEFAULT_TCP_CLOSED;
	case CT_UDP:
		t = c ? c->udp : 0;
		return t ? t : NAT_DEFAULT_UDP;
	case CT_OTHER:
		t = c ? c->icmp : 0;
		return t ? t : NAT_DEFAULT_ICMP;
	default:
		t = c ? c->tcp_transitory : 0;
		return t ? t : NAT_DEFAULT_TCP_TRANSITORY;
	}
}

/* nat_track moves a forward NAT entry's state with a packet of its flow
 * (reply: from the remote side) and pushes its deadline. */
static __always_inline void nat_track(struct nat_entry *e, struct pkt *p, int reply, __u64 now)
{
	__u8 f = p->tcp_flags;

	if (p->proto == IPPROTO_TCP) {
		if (f & TCP_RST) {
			e->state = CT_CLOSED;
		} else if (f & TCP_FIN) {
			e->fin |= reply ? 2 : 1;
			e->state = e->fin == 3 ? CT_CLOSED : CT_FIN_WAIT;
		} else if (e->state == CT_SYN_SENT && reply) {
			e->state = CT_ESTABLISHED;
		}
	}
	e->expires = now + nat_timeout(e->state);
}

static __always_inline void count_exhausted(__u32 natgw)
{
	__u64 one = 1, *c = bpf_map_lookup_elem(&nat_exhausted, &natgw);

	if (c)
		*c += 1; /* per-CPU value */
	else
		bpf_map_update_elem(&nat_exhausted, &natgw, &one, BPF_NOEXIST);
}

/* nat_outbound finds or creates the NAT flow of an outbound packet from a
 * NAT gateway's subnets and returns its public address and port, or a drop
 * reason. A new flow takes a source port by probing at most NAT_PROBES
 * candidates from a hash of its tuple; a candidate is free if no reverse
 * entry holds it or the one that does belongs to a flow that is gone. The
 * reverse entry is claimed with BPF_NOEXIST, so two CPUs never share one.
 * No candidate free: the flow is refused and counted, nothing else. */
struct nat_req {
	__u32 outer_src; /* in: underlay address of the port's node */
	__u16 local;     /* in: inside port */
	__u16 remote;    /* in: remote port */
	__u32 new_ip;    /* out */
	__u16 new_port;  /* out */
	__u16 fresh;     /* out: 1 a new flow took the port (live trace) */
};

static __noinline __u32 nat_outbound(struct __sk_buff *skb, struct pkt *p, struct nat_req *q)
{
	__u32 outer_src = q->outer_src;
	__u16 local = q->local, remote = q->remote;
	struct nat_key fk = { .vpc = p->vpc, .saddr = p->saddr, .daddr = p->daddr,
			      .sport = local, .dport = remote, .proto = p->proto };
	struct nat_key rk = { .saddr = p->daddr, .sport = remote, .proto = p->proto };
	struct nat_entry *f, n = {};
	struct natgw_info *g;
	struct egress_key sk = { .prefixlen = 64, .vpc = p->vpc, .ip = p->saddr };
	__u64 now = bpf_ktime_get_ns();
	__u32 *id, natgw, h, range, start, addr, na, idx;
	struct ethhdr *eth;
	void *data, *data_end;

	f = bpf_map_lookup_elem(&nat, &fk);
	if (f && f->expires >= now && !(f->state == CT_CLOSED && is_new_syn(p))) {
		nat_track(f, p, 0, now);
		q->new_ip = f->addr;
		q->new_port = f->port;
		/* The LRU may have evicted the reverse half alone: restore it,
		 * or replies are lost and its port looks free to others. */
		rk.daddr = f->addr;
		rk.dport = f->port;
		if (!bpf_map_lookup_elem(&nat, &rk)) {
			data = skb_data(skb);
			data_end = skb_data_end(skb);
			eth = data;
			if ((void *)(eth + 1) > data_end)
				return DROP_MALFORMED;
			n.addr = p->saddr;
			n.port = local;
			n.vpc = p->vpc;
			n.node_ip = outer_src;
			n.natgw = f->natgw;
			mac_copy(n.mac, eth->h_source);
			bpf_map_update_elem(&nat, &rk, &n, BPF_ANY);
		}
		return 0;
	}

	if (f && is_new_syn(p)) {
		/* The same inside tuple opens a connection again (its source
		 * port came round): it keeps its public side, as conntrack
		 * reopens a TIME_WAIT entry, so the remote sees the same
		 * tuple with timestamps that follow the last connection's. */
		struct nat_entry *r;

		rk.daddr = f->addr;
		rk.dport = f->port;
		r = bpf_map_lookup_elem(&nat, &rk);
		if (!r || (r->vpc == p->vpc && r->addr == p->saddr && r->port == local)) {
			data = skb_data(skb);
			data_end = skb_data_end(skb);
			eth = data;
			if ((void *)(eth + 1) > data_end)
				return DROP_MALFORMED;
			n.addr = p->saddr;
			n.port = local;
			n.vpc = p->vpc;
			n.node_ip = outer_src;
			n.natgw = f->natgw;
			mac_copy(n.mac, eth->h_source);
			if (bpf_map_update_elem(&nat, &rk, &n, BPF_ANY) == 0) {
				f->state = CT_SYN_SENT;
				f->fin = 0;
				nat_track(f, p, 0, now);
				q->new_ip = f->addr;
				q->new_port = f->port;
				return 0;
			}
		}
	}

	id = bpf_map_lookup_elem(&nat_src, &sk);
	if (!id) /* not a gateway for this source: as on any node */
		return DROP_NO_ROUTE;
	natgw = *id;
	g = bpf_map_lookup_elem(&natgws, &natgw);
	if (!g || g->n_addrs == 0)
		return DROP_NO_NAT;
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return DROP_MALFORMED;

	h = tuple_hash(p->saddr ^ p->vpc, p->daddr, local, remote, p->proto);
	na = g->n_addrs > NAT_MAX_ADDRS ? NAT_MAX_ADDRS : g->n_addrs;
	idx = h % na;
	/* mask in asm: clang would otherwise fold it into a signed offset */
	asm volatile("%0 &= %1" : "+r"(idx) : "i"(NAT_MAX_ADDRS - 1));
	addr = g->addrs[idx];
	if (g->port_max < g->port_min)
		goto exhausted;
	range = (__u32)g->port_max - g->port_min + 1;
	start = mix32(h) % range;
	rk.daddr = addr;

	for (__u32 i = 0; i < NAT_PROBES && i < range; i++) {
		__u16 port = bpf_htons(g->port_min + (start + i) % range);
		struct nat_entry *r, *o;

		rk.dport = port;
		r = bpf_map_lookup_elem(&nat, &rk);
		if (r) {
			struct nat_key ok = { .vpc = r->vpc, .saddr = r->addr, .daddr = p->daddr,
					      .sport = r->port, .dport = remote, .proto = p->proto };

			o = bpf_map_lookup_elem(&nat, &ok);
			/* A closed flow keeps its port until its (short) timeout,
			 * like TIME_WAIT: its last packets are still on the way,
			 * and the remote may still hold the old connection. */
			if (o && o->expires >= now && o->addr == addr && o->port == port)
				continue; /* in use */
			bpf_map_delete_elem(&nat, &rk); /* stale: free */
		}
		n.addr = p->saddr;
		n.port = local;
		n.vpc = p->vpc;
		n.node_ip = outer_src;
		n.natgw = natgw;
		mac_copy(n.mac, eth->h_source);
		if (bpf_map_update_elem(&nat, &rk, &n, BPF_NOEXIST))
			continue; /* another CPU took it first */

		__builtin_memset(&n, 0, sizeof(n));
		n.addr = addr;
		n.port = port;
		n.natgw = natgw;
		n.state = p->proto == IPPROTO_TCP ?
				  ((p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN ? CT_SYN_SENT : CT_ESTABLISHED) :
			  p->proto == IPPROTO_UDP ? CT_UDP : CT_OTHER;
		nat_track(&n, p, 0, now);
		if (bpf_map_update_elem(&nat, &fk, &n, BPF_ANY)) {
			bpf_map_delete_elem(&nat, &rk);
			goto exhausted;
		}
		q->new_ip = addr;
		q->new_port = port;
		q->fresh = 1;
		return 0;
	}
exhausted:
	count_exhausted(natgw);
	return DROP_NAT_EXHAUSTED;
}

/* fib_out sends a translated packet toward the fabric: the gateway's own
 * routing table (bpf_fib_lookup, as if forwarded from the device the packet
 * came in on) names the interface and next hop; with the neighbour known
 * the MACs are written here, else bpf_redirect_neigh resolves it. */
static __noinline int fib_out(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fl = {};
	struct bpf_redir_neigh nh = {};
	struct ethhdr *eth;
	struct iphdr *ip;
	void *data = skb_data(skb), *data_end = skb_data_end(skb);
	__u32 daddr;
	long rc;

	eth = data;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_SHOT;
	daddr = ip->daddr; /* the lookup writes the next hop over fl.ipv4_dst */
	fl.family = AF_INET;
	fl.l4_protocol = ip->protocol;
	fl.tos = ip->tos;
	fl.ifindex = skb->ingress_ifindex;
	fl.ipv4_src = ip->saddr;
	fl.ipv4_dst = ip->daddr;
	rc = bpf_fib_lookup(skb, &fl, sizeof(fl), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		LT_X(LT_GW_OUT, rc != BPF_FIB_LKUP_RET_SUCCESS, LT_AP(fl.ipv4_src, 0), LT_AP(daddr, 0),
		     fl.ifindex, fl.ipv4_dst);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		data = skb_data(skb);
		data_end = skb_data_end(skb);
		eth = data;
		if ((void *)(eth + 1) > data_end)
			return TC_ACT_SHOT;
		__builtin_memcpy(eth->h_source, fl.smac, 6);
		__builtin_memcpy(eth->h_dest, fl.dmac, 6);
		return bpf_redirect(fl.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fl.ipv4_dst; /* the lookup put the next hop there */
		return bpf_redirect_neigh(fl.ifindex, &nh, sizeof(nh), 0);
	}
	return drop(0, DROP_FIB, NULL, 0);
}

/* to_port sends a packet whose destination was translated to a port's
 * private address over the overlay to the port's node, routed: TTL
 * decremented, inner MACs router -> port (the receiving node's
 * meridian_from_overlay runs the port's ingress policy and delivers). */
static __always_inline int to_port(struct __sk_buff *skb, __u32 vpc, __u32 node_ip, __u8 *mac)
{
	__u32 zero = 0;
	struct node_config *cfg = bpf_map_lookup_elem(&node_cfg, &zero);
	struct bpf_tunnel_key tk = {};
	void *data = skb_data(skb), *data_end = skb_data_end(skb);
	struct ethhdr *eth = data;
	struct iphdr *ip = data + ETH_HLEN;
	__u8 router[8] __attribute__((aligned(8))) = { 0x0a, 0x4d, 0x52, 0x00, 0x00, 0x01 };

	if (!cfg || !cfg->vxlan_ifindex)
		return drop(0, DROP_NO_ROUTE, NULL, 0);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_SHOT;
	ttl_decrement(ip);
	mac_copy(eth->h_dest, mac);
	mac_copy(eth->h_source, router);
	tk.tunnel_id = vpc;
	tk.remote_ipv4 = bpf_ntohl(node_ip);
	tk.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &tk, sizeof(tk), BPF_F_ZERO_CSUM_TX) < 0)
		return drop(0, DROP_NO_ROUTE, NULL, 0);
	LT(LT_TUNNEL, 0, node_ip, vpc);
	return bpf_redirect(cfg->vxlan_ifindex, 0);
}

/* ---- ICMP errors about translated flows ----
 * An ICMP error (destination unreachable, fragmentation needed, time
 * exceeded, parameter problem) quotes the IPv4 header and the first 8 bytes
 * of the packet it is about. Crossing a gateway, both the outer header and
 * the quoted one are translated: inbound (from the fabric, about a packet
 * that left translated) the outer destination and the quoted source;
 * outbound (from a port, about a packet that came in translated) the outer
 * source and the quoted destination, with the quoted port or echo id for
 * NAT flows and port mappings. The outer IPv4 checksum, the quoted IPv4
 * checksum and the ICMP checksum are fixed; the quoted TCP/UDP checksum is
 * not (it may lie beyond the 8 quoted bytes and receivers do not check
 * it). Quoted headers with IP options are dropped as malformed. */

static __always_inline int is_icmp_error(struct pkt *p)
{
	return p->proto == IPPROTO_ICMP &&
	       (p->pport[0] == ICMP_DEST_UNREACH || p->pport[0] == ICMP_TIME_EXCEEDED ||
		p->pport[0] == ICMP_PARAMETERPROB);
}

/* The quoted packet: its header, and its ports (TCP/UDP) or the echo id as
 * the port on the side the error names (ICMP echo). */
struct quoted {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u16 check;     /* quoted IPv4 checksum */
	__u8  proto;
	__u8  echo;      /* 1: quoted ICMP echo, ports are the id */
};

static __always_inline int load_quoted(struct __sk_buff *skb, __u32 l4off, struct quoted *q)
{
	struct iphdr ih;
	__u8 l4[8];

	if (bpf_skb_load_bytes(skb, l4off + 8, &ih, sizeof(ih)) ||
	    bpf_skb_load_bytes(skb, l4off + 8 + sizeof(ih), l4, sizeof(l4)))
		return -1;
	if (ih.version != 4 || ih.ihl != 5)
		return -1;
	q->saddr = ih.saddr;
	q->daddr = ih.daddr;
	q->check = ih.check;
	q->proto = ih.protocol;
	q->echo = 0;
	switch (ih.protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		__builtin_memcpy(&q->sport, l4, 2);
		__builtin_memcpy(&q->dport, l4 + 2, 2);
		return 0;
	case IPPROTO_ICMP:
		if (l4[0] != ICMP_ECHO && l4[0] != ICMP_ECHOREPLY)
			return -1;
		__builtin_memcpy(&q->sport, l4 + 4, 2);
		q->dport = q->sport;
		q->echo = 1;
		return 0;
	default:
		return -1;
	}
}

struct icmp_xlate {
	__u32 l4off;
	__u32 old_ip;
	__u32 new_ip;
	__u16 old_port;
	__u16 new_port;
	__u16 old_check;  /* quoted IPv4 checksum before */
	__u8  inbound;
	__u8  echo;
};

/* icmp_error_rewrite rewrites the outer address (destination if inbound,
 * else source) and the quoted address and port on the same side. */
static __noinline int icmp_error_rewrite(struct __sk_buff *skb, struct icmp_xlate *x)
{
	__u32 l4off = x->l4off, old_ip = x->old_ip, new_ip = x->new_ip;
	__u32 icmp_csum = l4off + 2, quoted = l4off + 8;
	__u32 qaddr = quoted + (x->inbound ? 12 : 16);
	__u32 qport = quoted + 20 + (x->echo ? 4 : (x->inbound ? 0 : 2));
	__u16 new_check, np = x->new_port;

	/* outer header */
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, 4) ||
	    bpf_skb_store_bytes(skb, x->inbound ? IP_DST_OFF : IP_SRC_OFF, &new_ip, 4, 0))
		return -1;
	/* quoted header: address, its checksum, and the ICMP checksum over both */
	if (bpf_l3_csum_replace(skb, quoted + 10, old_ip, new_ip, 4) ||
	    bpf_skb_store_bytes(skb, qaddr, &new_ip, 4, 0) ||
	    bpf_skb_load_bytes(skb, quoted + 10, &new_check, 2) ||
	    bpf_l4_csum_replace(skb, icmp_csum, old_ip, new_ip, 4) ||
	    bpf_l4_csum_replace(skb, icmp_csum, x->old_check, new_check, 2))
		return -1;
	if (x->old_port != x->new_port &&
	    (bpf_l4_csum_replace(skb, icmp_csum, x->old_port, x->new_port, 2) ||
	     bpf_skb_store_bytes(skb, qport, &np, 2, 0)))
		return -1;
	return 0;
}

/* icmp_error_in translates an error from the fabric about a packet that
 * left translated: its quoted source is our public address. */
static __noinline int icmp_error_in(struct __sk_buff *skb, struct pkt *p)
{
	struct quoted q = {};
	struct icmp_xlate x = {};
	struct portmap_key pk = {};
	struct portmap_entry *pm;
	struct eip_entry *e;
	struct nat_entry *r;
	__u32 vpc, node_ip;
	__u8 mac[8] __attribute__((aligned(8)));

	x.l4off = ETH_HLEN + p->ihl * 4;
	if (load_quoted(skb, x.l4off, &q) || q.saddr != p->daddr)
		return drop(0, DROP_MALFORMED, p, 0);
	x.inbound = 1;
	x.echo = q.echo;
	x.old_ip = q.saddr;
	x.old_port = q.sport;
	x.new_port = q.sport;
	x.old_check = q.check;
	pk.addr = q.saddr;
	pk.port = q.sport;
	pk.proto = q.proto;
	if (!q.echo && (pm = bpf_map_lookup_elem(&port_maps, &pk))) {
		vpc = pm->vpc;
		node_ip = pm->node_ip;
		x.new_ip = pm->private_ip;
		x.new_port = pm->private_port;
		mac_copy(mac, pm->mac);
	} else if ((e = bpf_map_lookup_elem(&eips, &q.saddr))) {
		vpc = e->vpc;
		node_ip = e->node_ip;
		x.new_ip = e->private_ip;
		mac_copy(mac, e->mac);
	} else {
		struct nat_key rk = { .saddr = q.daddr, .daddr = q.saddr, .sport = q.echo ? 0 : q.dport,
				      .dport = q.sport, .proto = q.proto };

		r = bpf_map_lookup_elem(&nat, &rk);
		if (!r)
			return drop(0, DROP_NAT_NO_FLOW, p, 0);
		vpc = r->vpc;
		node_ip = r->node_ip;
		x.new_ip = r->addr;
		x.new_port = r->port;
		mac_copy(mac, r->mac);
	}
	if (!node_ip)
		return drop(0, DROP_EIP_UNBOUND, p, 0);
	if (p->ttl <= 1)
		return drop(0, DROP_TTL_EXCEEDED, p, 0);
	if (icmp_error_rewrite(skb, &x))
		return drop(0, DROP_MALFORMED, p, 0);
	return to_port(skb, vpc, node_ip, mac);
}

/* icmp_error_out translates an error from a port about a packet that came
 * in translated: its quoted destination is the port's address. Returns 0
 * or a drop reason. */
static __noinline __u32 icmp_error_out(struct __sk_buff *skb, struct pkt *p)
{
	struct quoted q = {};
	struct icmp_xlate x = {};
	struct portmap_rev_key prk = { .vpc = p->vpc };
	struct eip_rev_key ek = { .vpc = p->vpc };
	struct portmap_key *pm;
	struct nat_entry *f;
	__u32 *eip;

	x.l4off = ETH_HLEN + p->ihl * 4;
	/* nothing this gateway translated: as on any node */
	if (load_quoted(skb, x.l4off, &q) || q.daddr != p->saddr)
		return DROP_NO_ROUTE;
	x.echo = q.echo;
	x.old_ip = q.daddr;
	x.old_port = q.dport;
	x.new_port = q.dport;
	x.old_check = q.check;
	prk.private_ip = q.daddr;
	prk.private_port = q.dport;
	prk.proto = q.proto;
	ek.private_ip = q.daddr;
	if (!q.echo && (pm = bpf_map_lookup_elem(&port_maps_rev, &prk))) {
		x.new_ip = pm->addr;
		x.new_port = pm->port;
	} else if ((eip = bpf_map_lookup_elem(&eip_by_private, &ek))) {
		x.new_ip = *eip;
	} else {
		struct nat_key fk = { .vpc = p->vpc, .saddr = q.daddr, .daddr = q.saddr, .sport = q.dport,
				      .dport = q.echo ? 0 : q.sport, .proto = q.proto };

		f = bpf_map_lookup_elem(&nat, &fk);
		if (!f)
			return DROP_NO_ROUTE;
		x.new_ip = f->addr;
		x.new_port = f->port;
	}
	if (icmp_error_rewrite(skb, &x))
		return DROP_MALFORMED;
	return 0;
}

/* gw_trace_match: while a trace runs, whether a filter takes a packet
 * that arrived on the uplink (livetrace.h, LT_PROG_UPLINK). The filter sees
 * the packet as it arrived, in the VPC of the entry it is for (a port
 * mapping, an elastic IP, a NAT gateway's flow; 0: none), so that a filter
 * for a port's VPC follows a packet from the internet to the port. Parsed
 * again here rather than in gw_inbound, which is on from_overlay's deepest
 * call chain (hairpin): this one is called by meridian_from_uplink only. */
static __noinline void gw_trace_match(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct portmap_key pk = {};
	struct portmap_entry *pm;
	struct eip_entry *e;
	struct nat_entry *r;
	struct ethhdr *eth;
	void *data, *data_end;
	__u16 local = 0, remote = 0;

	pull_headers(skb);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return;
	if (parse_ipv4(skb, &p))
		return;
	if (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) {
		pk.addr = p.daddr;
		pk.port = p.dport;
		pk.proto = p.proto;
		pm = bpf_map_lookup_elem(&port_maps, &pk);
		if (pm) {
			p.vpc = pm->vpc;
			goto match;
		}
	}
	e = bpf_map_lookup_elem(&eips, &p.daddr);
	if (e) {
		p.vpc = e->vpc;
		goto match;
	}
	if (nat_ports(&p, 0, &local, &remote)) {
		struct nat_key rk = { .saddr = p.saddr, .daddr = p.daddr, .sport = remote,
				      .dport = local, .proto = p.proto };

		r = bpf_map_lookup_elem(&nat, &rk);
		if (r)
			p.vpc = r->vpc;
	}
match:
	lt_match(&p, LT_PROG_UPLINK, 0);
}

/* gw_inbound handles a packet arriving from the fabric (uplink) or turned
 * around by gw_outbound (hairpin). Packets not addressed to a public address
 * this gateway serves are not ours: TCX_NEXT, the host handles them (BGP,
 * ARP, the underlay). */
static __noinline int gw_inbound(struct __sk_buff *skb, __u32 from_uplink)
{
	struct pkt p = {};
	struct eip_entry *e;
	struct portmap_key pk = {};
	struct portmap_entry *pm;
	struct nat_entry *r, *f;
	struct iphdr *ip;
	struct ethhdr *eth;
	void *data, *data_end;
	__u32 daddr, *natgw = NULL, reason, l4off, vpc, node_ip, new_ip;
	__u16 local = 0, remote = 0, new_port;
	__u8 mac[8] __attribute__((aligned(8)));
	__u8 kind; /* live trace: enum lt_nat */

	pull_headers(skb);
	data = skb_data(skb);
	data_end = skb_data_end(skb);
	eth = data;
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return from_uplink ? TCX_NEXT : TC_ACT_SHOT;
	daddr = ip->daddr;
	e = bpf_map_lookup_elem(&eips, &daddr);
	if (!e) {
		natgw = bpf_map_lookup_elem(&nat_addrs, &daddr);
		if (!natgw) {
			if (!from_uplink)
				return drop(0, DROP_NO_ROUTE, NULL, 0);
			LT_X(LT_GW_IN, LT_GW_NONE, LT_AP(ip->saddr, 0), LT_AP(daddr, 0), 0, 0);
			return TCX_NEXT;
		}
	}
	reason = parse_ipv4(skb, &p);
	if (reason)
		return drop(0, reason, NULL, 0);
	LT_X(LT_GW_IN, e ? LT_GW_EIP : LT_GW_NATGW, LT_AP(p.saddr, p.sport), LT_AP(daddr, p.dport),
	     e ? e->vpc : *natgw, 0);
	if (is_icmp_error(&p))
		return icmp_error_in(skb, &p);
	l4off = ETH_HLEN + p.ihl * 4;
	new_port = 0;

	if (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) {
		pk.addr = daddr;
		pk.port = p.dport;
		pk.proto = p.proto;
		pm = bpf_map_lookup_elem(&port_maps, &pk);
		if (pm) {
			if (!pm->node_ip)
				return drop(0, DROP_EIP_UNBOUND, &p, 0);
			vpc = pm->vpc;
			node_ip = pm->node_ip;
			new_ip = pm->private_ip;
			local = p.dport;
			new_port = pm->private_port;
			mac_copy(mac, pm->mac);
			kind = LT_NAT_PORTMAP;
			goto translate;
		}
	}
	if (e) {
		if (!e->node_ip)
			return drop(0, DROP_EIP_UNBOUND, &p, 0);
		vpc = e->vpc;
		node_ip = e->node_ip;
		new_ip = e->private_ip;
		mac_copy(mac, e->mac);
		local = p.dport; /* unchanged: for the live trace's report */
		kind = LT_NAT_EIP;
		goto translate;
	}
	/* a NAT gateway address: replies of its flows only */
	if (!nat_ports(&p, 0, &local, &remote))
		return drop(0, p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP || p.proto == IPPROTO_ICMP ?
				       DROP_NAT_NO_FLOW : DROP_NAT_PROTO, &p, 0);
	{
		struct nat_key rk = { .saddr = p.saddr, .daddr = daddr, .sport = remote,
				      .dport = local, .proto = p.proto };
		__u64 now = bpf_ktime_get_ns();

		r = bpf_map_lookup_elem(&nat, &rk);
		if (!r)
			return drop(0, DROP_NAT_NO_FLOW, &p, 0);
		struct nat_key fk = { .vpc = r->vpc, .saddr = r->addr, .daddr = p.saddr,
				      .sport = r->port, .dport = remote, .proto = p.proto };
		f = bpf_map_lookup_elem(&nat, &fk);
		if (!f || f->expires < now || f->addr != daddr || f->port != local)
			return drop(0, DROP_NAT_NO_FLOW, &p, 0);
		nat_track(f, &p, 1, now);
		vpc = r->vpc;
		node_ip = r->node_ip;
		new_ip = r->addr;
		new_port = r->port;
		mac_copy(mac, r->mac);
		kind = LT_NAT_NATGW;
	}
translate:
	if (p.ttl <= 1)
		return drop(0, DROP_TTL_EXCEEDED, &p, 0);
	{
		struct xlate x = { .l4off = l4off, .old_ip = daddr, .new_ip = new_ip, .old_port = local,
				   .new_port = new_port ? new_port : local, .proto = p.proto, .dst = 1,
				   .kind = kind | LT_NAT_DST };

		if (nat_rewrite(skb, &x))
			return drop(0, DROP_MALFORMED, &p, 0);
	}
	return to_port(skb, vpc, node_ip, mac);
}

/* gw_outbound handles a packet from the overlay that no VPC route claims:
 * on a gateway, its source is translated (a port mapping's reply, the
 * port's elastic IP, or its NAT gateway's flow) and it leaves toward the
 * fabric, or turns around if its destination is served here (hairpin).
 * On other nodes nothing matches and it is dropped as before. */
static __noinline int gw_outbound(struct __sk_buff *skb, struct pkt *p, __u32 outer_src)
{
	struct portmap_rev_key prk = { .vpc = p->vpc, .private_ip = p->saddr, .proto = p->proto };
	struct eip_rev_key ek = { .vpc = p->vpc, .private_ip = p->saddr };
	struct portmap_key *pm;
	__u32 *eip, new_ip = 0, reason, daddr = p->daddr;
	__u16 local = 0, remote = 0, new_port;
	int ported = nat_ports(p, 1, &local, &remote);
	__u8 kind = LT_NAT_PORTMAP; /* live trace: enum lt_nat */

	if (is_icmp_error(p)) {
		reason = icmp_error_out(skb, p);
		if (reason)
			return drop(0, reason, p, 0);
		goto out;
	}
	if (svc_vip_source(p)) { /* a north-south service's reply (DSR): as is */
		LT_X(LT_NAT, LT_NAT_DSR, LT_AP(p->saddr, p->sport), LT_AP(p->saddr, p->sport), 0, 0);
		goto out;
	}
	new_port = local;
	if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
		prk.private_port = local;
		pm = bpf_map_lookup_elem(&port_maps_rev, &prk);
		if (pm) {
			new_ip = pm->addr;
			new_port = pm->port;
		}
	}
	if (!new_ip) {
		kind = LT_NAT_EIP;
		eip = bpf_map_lookup_elem(&eip_by_private, &ek);
		if (eip)
			new_ip = *eip;
	}
	if (!new_ip) {
		if (!ported) {
			struct egress_key sk = { .prefixlen = 64, .vpc = p->vpc, .ip = p->saddr };

			return drop(0, bpf_map_lookup_elem(&nat_src, &sk) ? DROP_NAT_PROTO : DROP_NO_ROUTE, p, 0);
		}
		struct nat_req q = { .outer_src = outer_src, .local = local, .remote = remote };

		reason = nat_outbound(skb, p, &q);
		if (reason)
			return drop(0, reason, p, 0);
		new_ip = q.new_ip;
		new_port = q.new_port;
		kind = q.fresh ? LT_NAT_NATGW_NEW : LT_NAT_NATGW;
	}
	{
		struct xlate x = { .l4off = ETH_HLEN + p->ihl * 4, .old_ip = p->saddr, .new_ip = new_ip,
				   .old_port = local, .new_port = new_port, .proto = p->proto, .kind = kind };

		if (nat_rewrite(skb, &x))
			return drop(0, DROP_MALFORMED, p, 0);
	}
out:
	if (bpf_map_lookup_elem(&eips, &daddr) || bpf_map_lookup_elem(&nat_addrs, &daddr))
		return gw_inbound(skb, 0); /* hairpin */
	return fib_out(skb);
}
