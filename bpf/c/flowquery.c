// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Batched flow-counter reads for flow logs (issue [6], part 5).
 *
 * At each aggregation interval the agent reads the conntrack counters of
 * every flow a flow log follows. One BPF_MAP_LOOKUP_ELEM per flow cost
 * about 2 us of system call each on this kind of machine: with every new
 * connection logged that was the largest part of what flow logging cost a
 * node. A hash map cannot be batch-read by key (BPF_MAP_LOOKUP_BATCH walks
 * the whole table, 262,144 entries), so the agent instead
 *   1. writes the keys into fq_slots, an array it has mapped into its
 *      memory (BPF_F_MMAPABLE: no system call; a BPF_MAP_UPDATE_BATCH
 *      costs the kernel ~0.3 us per element),
 *   2. runs meridian_flow_query (one BPF_PROG_TEST_RUN), which looks each
 *      key up in conntrack and writes the counters beside it,
 *   3. reads the counters back from the same memory:
 * one system call per FQ_MAX flows instead of one per flow.
 *
 * A syscall program runs in the caller's process context, so its lookups
 * see what a BPF_MAP_LOOKUP_ELEM would. One difference: a lookup from BPF
 * marks an LRU entry as used, so a logged flow is read as "recent" by the
 * LRU at each interval; flow logs follow at most FQ_MAX-sized batches of
 * flows the data path already keeps, so this does not change which flows
 * survive a full table in any way that matters.
 *
 * conntrack here is the VPC data path's map (meridian.c), given to this
 * object at load time (dataplane/datapath, MapReplacements): the
 * definition must match it.
 */
#include "include/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "maps.h"

/* Keys per run. */
#define FQ_MAX 4096

/* enum ct_state's CT_CLOSED (meridian.c). */
#define FQ_CT_CLOSED 4

struct fq_slot {
	struct ct_key key;   /* in: the flow */
	__u64 packets[2];    /* out: [0] originator -> replier, [1] replies */
	__u64 bytes[2];
	__u8  found;         /* out: the conntrack entry exists */
	__u8  counting;      /* out: it is the flow log's (fl_on) */
	__u8  done;          /* out: closed, reset or expired */
	__u8  pad[5];
};

/* BPF_PROG_TEST_RUN's context for meridian_flow_query. */
struct fq_args {
	__u32 n;             /* in: slots 0..n-1 hold keys */
	__u32 found;         /* out: how many were found */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FQ_MAX);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct fq_slot);
} fq_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CT);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

struct fq_loop {
	__u64 now;
	__u32 found;
};

static long fq_one(__u32 i, void *data)
{
	struct fq_loop *l = data;
	struct fq_slot *s = bpf_map_lookup_elem(&fq_slots, &i);
	struct ct_entry *e;

	if (!s)
		return 1;
	e = bpf_map_lookup_elem(&conntrack, &s->key);
	if (!e) {
		s->found = 0;
		return 0;
	}
	s->found = 1;
	s->counting = e->fl_on != 0;
	s->done = e->expires < l->now || e->state == FQ_CT_CLOSED;
	s->packets[0] = e->fl_packets[0];
	s->packets[1] = e->fl_packets[1];
	s->bytes[0] = e->fl_bytes[0];
	s->bytes[1] = e->fl_bytes[1];
	l->found++;
	return 0;
}

SEC("syscall")
int meridian_flow_query(struct fq_args *a)
{
	struct fq_loop l = { .now = bpf_ktime_get_ns() };
	__u32 n = a->n;

	if (n > FQ_MAX)
		return -1;
	bpf_loop(n, fq_one, &l, 0);
	a->found = l.found;
	return 0;
}

char __license[] SEC("license") = "Dual BSD/GPL";
