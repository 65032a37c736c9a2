// Package fw owns Meridian's packet-filtering rule model — stateful security
// groups and stateless, ordered network ACLs — its compilation into lookup
// tables for the eBPF data path, and a reference evaluator that decides the
// same questions by walking the rules.
//
// fw knows nothing about maps, file descriptors or the kernel: the compiler
// emits plain Go entries that dataplane/datapath writes into BPF maps, and the
// reference model (SecurityGroupPolicy.Evaluate, ACL.Evaluate) is the oracle
// the data-path tests compare against. It must stay obvious rather than fast.
//
// # Why this compilation
//
// Per-packet cost must not grow with the number of rules. LPM tries, the
// obvious tool, do not qualify: measured here, a kernel LPM lookup slows
// down as the trie fills (a deeper walk), and with 10,000 rules it doubled
// the cost of a new flow. Every lookup on the policy path is therefore a
// hash lookup or a binary search with a fixed number of steps.
//
// Security groups are allow-only, unordered and can be large (thousands of
// rules, remote groups with many members), so they compile Cilium-style into
// exact lookups on a remote identity:
//
//   - every remote selector of a VPC (rule CIDRs, and a /32 per member of each
//     referenced remote group) is a prefix; a prefix's identity is the set of
//     selectors containing it, so the longest prefix matching an address
//     carries exactly the selectors matching that address (overlapping CIDRs
//     are resolved here, at compile time). Identities are a hash of that
//     set, so they stay stable when unrelated rules change;
//   - the prefixes are then flattened into elementary intervals of the
//     address space, each with the identity of its longest covering prefix
//     (IPIntervals); the data path finds an address's interval by a
//     branch-free binary search of a fixed 20 steps;
//   - a hash keyed by {policy, identity, direction, protocol} says which
//     destination ports that identity may use: the port spans of every rule
//     whose selector the identity contains, merged per protocol. Up to
//     MaxInlineSpans spans live in the entry (checked in an unrolled loop);
//     longer lists go to a per-policy port set (an LPM trie over port
//     prefixes, only for identities with that many disjoint spans). A rule
//     for any protocol gives a single protocol-0 entry. ICMP uses the port
//     space as type<<8 | code.
//
// A new flow costs one identity search and at most two hash lookups per
// security group, whatever the rule count. The price is paid at compile time
// and in memory: a rule whose CIDR contains many other selectors (10.0.0.0/8
// among thousands of narrower CIDRs, or 0.0.0.0/0 in a VPC with many
// remote-group members) reaches every identity below it; merging spans per
// identity keeps that to the number of identities times their protocols.
//
// Network ACLs are ordered with first-match-wins and deny rules, which exact
// lookups cannot express without a combinatorial product. They compile to
// per-field bitmaps over the ACL's rules sorted by number. The address space
// and the port space are each cut into elementary intervals at every rule
// boundary (at most 2*MaxACLRules+1 per field), so that inside an interval
// each rule matches entirely or not at all; protocols are exact. The data
// path finds the packet's two intervals by binary search — a fixed ten
// steps within one map value — reads three bitmaps, ANDs them and takes the
// lowest set bit: the matching rule with the lowest number. The bitmap
// width bounds the work, so an ACL holds at most MaxACLRules rules per
// direction (AWS allows 20 by default, 40 at most).
//
// # Semantics
//
// Protocol 0 means any protocol. Ports apply to TCP and UDP only (zero range:
// all ports) and always name the destination port, in both directions, as
// in AWS. ICMP rules may name a type, or a type and code. A security-group
// rule's remote is a CIDR or a remote group (the addresses of the ports in
// it); for egress rules the remote is the destination, for ingress the
// source. An ACL with no matching rule denies (the "*" rule of AWS).
// IPv4 only for now.
package fw
