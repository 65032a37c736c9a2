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
// # Why two compilation schemes
//
// Per-packet cost must not grow with the number of rules.
//
// Security groups are allow-only, unordered and can be large (thousands of
// rules, remote groups with many members), so they compile Cilium-style into
// exact lookups:
//
//   - every remote selector of a VPC (rule CIDRs, and a /32 per member of each
//     referenced remote group) becomes a prefix in an LPM trie keyed by
//     {VPC, IP}. Overlapping CIDRs are resolved at compile time: a prefix's
//     identity is the set of selectors that contain it, so the longest match
//     for an address carries exactly the selectors that match that address.
//     Identities are a hash of that set, so they stay stable when unrelated
//     rules change;
//   - a second LPM trie keyed by {policy, identity, direction, protocol,
//     port} says what an identity may do: for each identity the port spans
//     of every rule whose selector it contains are merged per protocol and
//     the union is decomposed into prefixes of the 16-bit port (ICMP:
//     type<<8 | code). A rule for any protocol yields a single entry with
//     protocol 0.
//
// A packet costs one ipcache lookup and at most two policy lookups (its
// protocol, then "any protocol"), whatever the rule count. The price is
// paid at compile time and in memory: a rule whose CIDR contains many other
// selectors (10.0.0.0/8 among thousands of narrower CIDRs, or 0.0.0.0/0 in a
// VPC with many remote-group members) reaches every identity below it.
// Merging spans per identity keeps that to the number of identities times
// the complexity of their port sets: 10,000 random rules with heavily nested
// CIDRs and random port ranges give about 370,000 entries (2 s to compile),
// against 900,000 for only 1,000 rules when entries were emitted per rule.
//
// Network ACLs are ordered with first-match-wins and deny rules, which exact
// lookups cannot express without a combinatorial product. They compile to
// per-field bitmaps over the ACL's rules sorted by number. The address space
// and the port space are each cut into elementary intervals at every rule
// boundary (at most 2*MaxACLRules+1 per field), so that inside an interval
// each rule matches entirely or not at all; protocols are exact. The data
// path finds the packet's two intervals by binary search — a fixed number
// of steps set by MaxACLRules, within one map value — reads three bitmaps,
// ANDs them and takes the lowest set bit: the matching rule with the lowest
// number. No LPM trie is involved, whose cost grows with its size. The bitmap
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
