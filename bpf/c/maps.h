/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts of the Meridian VPC data path: the one place on the C side.
 * The Go mirror is dataplane/datapath/layout.go; layout_test.go checks that
 * both agree with the BTF of the compiled object, so change both together.
 *
 * Byte order: IPv4 addresses and L4 ports in keys are kept in network byte
 * order (as they appear on the wire), so that LPM keys compare bit by bit in
 * the order the trie expects. Values that are searched by comparison
 * (interval starts, port ranges) are in host order, as noted.
 */
#pragma once

#define MAX_PORTS        65536
#define MAX_PORT_IPS     262144
#define MAX_SUBNETS      16384
#define MAX_ROUTES       262144
#define MAX_CT           262144
#define MAX_VPCS         65536
#define MAX_SG_POLICY    1048576
#define MAX_SG_PORTS     262144
#define MAX_ACL_ENTRIES  262144
#define MAX_ACLS         16384
#define MAX_DROP_KEYS    65536
#define MAX_EGRESS       65536
#define MAX_GATEWAYS     16
#define MAX_EIPS         65536
#define MAX_NAT_GWS      4096
#define MAX_NAT_SRC      16384
#define MAX_PORT_MAPS    65536
/* NAT table: one entry per direction, so MAX_NAT / 2 flows. LRU maps are
 * preallocated: 262144 entries cost about 30 MiB. */
#define MAX_NAT          262144
#define NAT_MAX_ADDRS    8
/* Candidate source ports tried for a new NAT flow before giving up. */
#define NAT_PROBES       32

/* ACL rules per ACL and direction; bitmaps are ACL_WORDS 64-bit words. */
#define ACL_MAX_RULES 256
#define ACL_WORDS     (ACL_MAX_RULES / 64)

enum dir {
	DIR_EGRESS  = 0,
	DIR_INGRESS = 1,
};

/* Drop reasons; mirrored by datapath.DropReason. Never renumber. */
enum drop_reason {
	DROP_UNKNOWN_PORT   = 1,  /* ingress_ifindex is not a registered port */
	DROP_SPOOF_MAC      = 2,
	DROP_SPOOF_IP       = 3,
	DROP_NOT_IPV4       = 4,  /* ethertype other than IPv4/ARP (IPv6 too) */
	DROP_ARP            = 5,  /* ARP other than a request we answer */
	DROP_MALFORMED      = 6,  /* truncated header, bad IHL or total length */
	DROP_FRAGMENT       = 7,
	DROP_TTL_EXCEEDED   = 8,
	DROP_NO_ROUTE       = 9,
	DROP_SG_EGRESS      = 10,
	DROP_SG_INGRESS     = 11,
	DROP_ACL_EGRESS     = 12,
	DROP_ACL_INGRESS    = 13,
	DROP_NOT_LOCAL      = 14, /* overlay packet for a port not on this node */
	DROP_UNKNOWN_SUBNET = 15, /* port refers to a subnet not installed */
	/* outside world (issue [4]) */
	DROP_NO_GATEWAY     = 16, /* port has an elastic IP, no gateway is live */
	DROP_NAT_EXHAUSTED  = 17, /* NAT gateway: no free source port/id */
	DROP_NAT_NO_FLOW    = 18, /* to a NAT address: no flow, no port mapping */
	DROP_NAT_PROTO      = 19, /* protocol a NAT gateway cannot translate */
	DROP_EIP_UNBOUND    = 20, /* elastic IP whose port is on no node */
	DROP_NO_NAT         = 21, /* gateway: NAT gateway of the source not installed */
	DROP_FIB            = 22, /* gateway: no route toward the fabric */
	DROP_LB_NO_BACKEND  = 23, /* service VIP: no usable backend */
};

enum route_kind {
	ROUTE_LOCAL  = 1, /* destination port on this node */
	ROUTE_REMOTE = 2, /* destination behind a VXLAN tunnel to node_ip */
	ROUTE_DROP   = 3, /* VPC CIDR: inside the VPC but no port there; never
			   * sent to a gateway, never answered by proxy ARP */
};

enum ct_state {
	CT_SYN_SENT    = 1,
	CT_ESTABLISHED = 2,
	CT_FIN_WAIT    = 3,
	CT_CLOSED      = 4,
	CT_UDP         = 5,
	CT_OTHER       = 6, /* ICMP and other protocols */
};

enum ct_stat {
	CT_STAT_INSERT      = 0,
	CT_STAT_INSERT_FAIL = 1,
	CT_STAT_HIT         = 2,
	CT_STAT_MISS        = 3,
	CT_STAT_EXPIRED     = 4, /* entry found but timed out: replaced */
	CT_STAT_MAX         = 5,
};

struct port_info {
	__u32 ifindex;   /* host end of the workload veth */
	__u32 vpc;       /* VPC id, also the VXLAN VNI */
	__u32 subnet;
	__u32 sg_policy; /* compiled security-group policy id */
	__u8  mac[6];
	__u8  flowlog;   /* flow-log slot (flowlog.h); 0: no flow log */
	__u8  pad;
};

struct port_ip_key {
	__u32 port;
	__u32 ip;
};

struct subnet_info {
	__u32 gateway_ip;
	__u32 acl;       /* 0: no network ACL attached, everything allowed */
	__u8  router_mac[6];
	__u8  pad[2];
};

struct route_key {
	__u32 prefixlen; /* 32 (vpc) + IP prefix length */
	__u32 vpc;
	__u32 ip;
};

struct route_entry {
	__u32 kind;
	__u32 port;      /* ROUTE_LOCAL */
	__u32 subnet;    /* subnet of the destination, for the TTL rule */
	__u32 node_ip;   /* ROUTE_REMOTE: underlay address of the node */
};

struct ct_key {
	__u32 vpc;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  pad[3];
};

struct ct_entry {
	__u64 expires;   /* bpf_ktime_get_ns deadline */
	__u8  state;
	__u8  fin;       /* bit 0: FIN seen from originator, bit 1: from replier */
	__u8  pad[6];
	/* Flow logs (flowlog.h): counted only while fl_on, i.e. for flows a
	 * flow log sampled; [0] originator -> replier, [1] the replies. */
	__u32 fl_on;
	__u32 fl_pad;
	__u64 fl_packets[2];
	__u64 fl_bytes[2];
	/* Services (service.h): a flow whose destination was a service VIP
	 * and was translated here; its replies get source svc_vip:svc_port. */
	__u32 svc_vip;   /* 0: no reverse translation */
	__u16 svc_port;  /* network order */
	__u16 svc_pad;
};

/* Remote address -> security identity. The prefixes of a VPC are turned
 * into elementary intervals of the address space, each with the identity of
 * the longest prefix covering it, stored sorted in a slice of the global
 * ipcache_slots array; ipcache_vpcs says where a VPC's slice is. A lookup is
 * a fixed IPCACHE_STEPS-step binary search: its cost does not depend on how
 * many prefixes are installed (an LPM trie's does). */
#define IPCACHE_STEPS 20
#define IPCACHE_SLOTS (1 << IPCACHE_STEPS)

struct ipcache_slot {
	__u32 start;     /* host order */
	__u32 identity;  /* 0: no selector covers the interval */
};

struct ipcache_range {
	__u32 offset;    /* first slot */
	__u32 count;     /* slots used; slot[offset].start is 0 */
};

/* Security-group policy: exact match on everything but the port, whose
 * allowed set is a few inline ranges or, when it has more, an LPM set. */
#define SG_INLINE_RANGES 8

struct sg_key {
	__u32 policy;
	__u32 identity;
	__u8  dir;
	__u8  proto;     /* 0: any protocol, every port */
	__u8  pad[2];
};

struct sg_value {
	__u32 rule;
	__u32 port_set;  /* non-zero: ports are in sg_ports under this set */
	__u16 nranges;
	__u16 pad;
	__u16 lo[SG_INLINE_RANGES]; /* host byte order, inclusive */
	__u16 hi[SG_INLINE_RANGES];
};

struct sg_port_key {
	__u32 prefixlen; /* 64 + port prefix length */
	__u32 policy;
	__u32 set;
	__u8  port[2];   /* TCP/UDP dport, or ICMP type, code */
	__u8  pad[2];
};

/* A network ACL direction cuts the IPv4 space and the port space into
 * elementary intervals (at most 2 * ACL_MAX_RULES + 1 each) within which
 * every rule matches entirely or not at all; the data path finds the
 * packet's interval by binary search in acl_meta and reads its bitmap. */
#define ACL_MAX_BOUNDS (2 * ACL_MAX_RULES + 2)
/* Arrays are a power of two long so that the branch-free search can mask
 * its index instead of testing it (see acl_allows). */
#define ACL_BOUNDS_ARRAY 1024

struct acl_key {
	__u32 acl;
	__u32 dir;
};

struct acl_meta {
	__u32 n_ip;      /* entries used in ip_start, >= 1 */
	__u32 n_port;    /* entries used in port_start, >= 1 */
	__u32 ip_start[ACL_BOUNDS_ARRAY];   /* host order, ascending, [0] = 0 */
	__u16 port_start[ACL_BOUNDS_ARRAY]; /* ascending, [0] = 0 */
};

enum acl_field {
	ACL_FIELD_IP   = 0,
	ACL_FIELD_PORT = 1,
};

struct acl_interval_key {
	__u32 acl;
	__u32 dir;
	__u32 field;
	__u32 index;     /* interval number in acl_meta */
};

struct acl_proto_key {
	__u32 acl;
	__u32 dir;
	__u32 proto;     /* ACL_PROTO_OTHER: protocols no rule names */
};

#define ACL_PROTO_OTHER 0xffff

struct acl_bitmap {
	__u64 w[ACL_WORDS];
};

struct acl_rule_key {
	__u32 acl;
	__u32 dir;
	__u32 index;     /* position in rule-number order */
};

struct acl_rule {
	__u32 rule;      /* rule id given by the controller */
	__u32 allow;     /* 1 allow, 0 deny */
};

struct node_config {
	__u32 vxlan_ifindex;
	__u32 pad;
};

struct drop_key {
	__u32 port;
	__u32 reason;
};

#define DROP_SNAP 128 /* bytes of the dropped frame an event carries */

struct drop_event {
	__u32 reason;
	__u32 rule;      /* 0: default deny / no rule allows */
	__u32 port;
	__u32 vpc;
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  dir;
	__u8  pad[2];
	__u32 len;       /* the frame's length */
	__u32 cap_len;   /* bytes of it in data: min(len, DROP_SNAP) */
	__u8  data[DROP_SNAP]; /* the frame as dropped, from its Ethernet header */
};

/* ---- Outside world (issue [4]); see dataplane/datapath/doc.go ---- */

/* Workload node: where traffic leaving the VPC goes. LPM on {VPC, source}:
 * a /32 per address with an elastic IP (EGRESS_EIP: any live gateway, by
 * flow hash) and the CIDRs of subnets behind a NAT gateway (EGRESS_NAT: to
 * the NAT gateway's owner). The /32 wins over the subnet, as on AWS. */
enum egress_kind {
	EGRESS_EIP = 1,
	EGRESS_NAT = 2,
};

struct egress_key {
	__u32 prefixlen; /* 32 (vpc) + prefix length */
	__u32 vpc;
	__u32 ip;
};

struct egress_entry {
	__u32 kind;
	__u32 node_ip;   /* EGRESS_NAT: underlay address of the owner */
	__u32 natgw;
	__u32 pad;
};

/* Live gateways of this node (key 0), replaced in one update. */
struct gw_set {
	__u32 count;
	__u32 node_ip[MAX_GATEWAYS];
};

/* Gateway: elastic IP (public address, key) -> port. */
struct eip_entry {
	__u32 vpc;       /* VNI */
	__u32 private_ip;
	__u32 node_ip;   /* 0: port on no node, inbound dropped */
	__u8  mac[6];
	__u8  pad[2];
};

struct eip_rev_key {
	__u32 vpc;
	__u32 private_ip;
};

/* Gateway: a NAT gateway's addresses and port range. */
struct natgw_info {
	__u16 port_min;  /* host order, inclusive */
	__u16 port_max;
	__u32 n_addrs;
	__u32 addrs[NAT_MAX_ADDRS];
};

struct portmap_key {
	__u32 addr;      /* public */
	__u16 port;      /* public, network order */
	__u8  proto;
	__u8  pad;
};

struct portmap_entry {
	__u32 vpc;
	__u32 private_ip;
	__u16 private_port; /* network order */
	__u16 pad;
	__u32 node_ip;
	__u32 natgw;
	__u8  mac[6];
	__u8  pad2[2];
};

struct portmap_rev_key {
	__u32 vpc;
	__u32 private_ip;
	__u16 private_port;
	__u8  proto;
	__u8  pad;
};

/* NAT table (owner gateway of a NAT gateway). Each flow has two entries:
 * the forward one, keyed by the inside tuple {VPC, private address and
 * port, remote address and port}, holds the translation and the flow's
 * state and deadline; the reverse one, keyed by the outside tuple {0,
 * remote, public address and port}, says where replies go. The forward
 * entry is the truth: a reverse entry whose forward entry is gone or
 * expired is free. ICMP echo uses the identifier as the local port and 0
 * as the remote one. */
struct nat_key {
	__u32 vpc;       /* forward: VNI; reverse: 0 */
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8  proto;
	__u8  pad[3];
};

struct nat_entry {
	__u64 expires;   /* forward only: bpf_ktime_get_ns deadline */
	__u32 addr;      /* forward: public address; reverse: private */
	__u16 port;      /* forward: public port; reverse: private port */
	__u8  state;     /* forward only: enum ct_state */
	__u8  fin;
	__u32 vpc;       /* reverse: VNI */
	__u32 node_ip;   /* reverse: underlay address of the port's node */
	__u32 natgw;
	__u8  mac[6];    /* reverse: the port's MAC */
	__u8  pad[2];
};

/* NAT timeouts in ns (key 0); 0 fields take the built-in defaults. */
struct nat_config {
	__u64 tcp_established;
	__u64 tcp_transitory; /* SYN sent, FIN seen */
	__u64 tcp_closed;
	__u64 udp;
	__u64 icmp;
};

/* ---- Service load balancing (issue [5]); see bpf/c/service.h ---- */

#define MAX_SVCS        4096
#define MAX_LB_BACKENDS 65536
#define MAX_LB_FLOWS    262144

enum svc_flags {
	SVC_INTERNAL  = 1, /* east-west VIP: translated at the client's port */
	SVC_SOURCE_IP = 2, /* session persistence: the hash ignores ports */
};

/* A listener: {VNI, VIP, port, protocol}. */
struct svc_key {
	__u32 vpc;       /* VNI */
	__u32 vip;
	__u16 port;      /* network order */
	__u8  proto;
	__u8  pad;
};

struct svc_info {
	__u32 id;        /* LbService.id: key of lb_tables, lb_backends, lb_local */
	__u32 size;      /* entries of its Maglev table (prime) */
	__u32 flags;     /* enum svc_flags */
	__u32 pad;
	__u64 sig;       /* agent only: signature of the table's inputs */
};

/* A backend an established flow may stay on (healthy, draining or not). */
struct lb_backend_key {
	__u32 svc;
	__u32 backend;   /* LbBackend.id, as in the Maglev table's entries */
};

struct lb_backend {
	__u32 addr;
	__u16 port;      /* target port, network order */
	__u16 pad;
};

/* North-south, on the backend's node: {service, inner destination MAC}
 * -> the backend that port is. */
struct lb_local_key {
	__u32 svc;
	__u8  mac[6];
	__u8  pad[2];
};

/* East-west VIP address {VNI, VIP} -> listeners on it, for proxy ARP. */
struct svc_addr_key {
	__u32 vpc;
	__u32 vip;
};

/* East-west service entry, keyed by the client -> VIP tuple (ct_key):
 * the backend the flow went to. */
struct lb_flow {
	__u32 svc;       /* an entry of another (replaced) service is stale */
	__u32 backend;
};
