// Package datapath owns the node's eBPF VPC data path from user space: it
// loads the programs of package bpf, pins their maps under a bpffs directory
// so that a restarted agent finds and reuses them (the data path keeps
// forwarding while the agent is down), attaches the programs with tcx links
// (also pinned), and offers typed, idempotent writes of the tables the
// programs read: ports, subnets, VPC routes, compiled security groups and
// network ACLs (from package fw); and reads of drop counters, conntrack
// statistics and the drop-event ring buffer.
//
// It must not decide policy (fw does), create interfaces or talk to the
// controller (the agent does).
//
// # Programs
//
// meridian_from_port runs on tcx ingress of the host end of each workload
// veth, i.e. on every packet a workload sends:
//
//  1. port lookup by ingress ifindex; source MAC must be the port's;
//  2. ARP: requests for the subnet gateway, and for any address routed in the
//     VPC, are answered from the program with the router MAC (proxy ARP: the
//     data path is L3 only, neighbours never talk L2 to each other). Requests
//     for the asker's own address (duplicate address detection) and all other
//     ARP get no answer. Every other non-IPv4 frame (IPv6 included, not yet
//     supported) is dropped;
//  3. IPv4 validation: IHL >= 5 (options are skipped, not rejected), total
//     length within the frame, complete TCP/UDP/ICMP header. Fragments are
//     dropped: non-first fragments carry no ports, and the data path keeps
//     no reassembly state. Workloads get an MTU that avoids fragmentation
//     (below) and TCP uses PMTU discovery; large UDP datagrams do not pass;
//  4. source IP must be one of the port's addresses (primary or secondary);
//  5. conntrack lookup in the VPC's zone, both directions;
//  6. ACL egress of the source subnet — on every packet, ACLs are stateless;
//  7. security-group egress of the source port, new flows only;
//  8. VPC route (LPM on destination): a local port, or a remote node;
//  9. TTL: decremented when source and destination subnets differ; a packet
//     that would leave with TTL 0 is dropped (no ICMP time-exceeded yet);
//  10. local destination: ACL ingress of its subnet, SG ingress of the port
//     (new flows), conntrack commit, MACs rewritten (source: router MAC,
//     destination: port MAC), bpf_redirect_peer into the workload;
//     remote destination: conntrack commit, tunnel key {VNI = VPC id,
//     remote = node underlay IP}, redirect to the VXLAN device.
//
// meridian_from_overlay runs on tcx ingress of the VXLAN device (external /
// collect-metadata mode): VNI -> VPC, route to a local port (anything else
// is dropped), ACL ingress, SG ingress (new flows), conntrack commit,
// delivery as above. Frames without tunnel metadata return TCX_NEXT so that
// programs chained after it see them. Overlay traffic is trusted to come
// from Meridian nodes, which already enforced anti-spoofing and egress.
//
// ACLs apply to same-subnet traffic too, as they do in the OVN rendering of
// the same model (ACLs on the logical switch); AWS only filters at subnet
// boundaries. A subnet with ACL id 0 has no ACL and allows everything; a
// port's security-group policy with no rules allows nothing.
//
// # Conntrack
//
// LRU hash keyed by {VPC, protocol, source, destination, ports}, one entry
// per flow in the originator's direction, found by a second lookup with the
// tuple reversed for replies. ICMP echo keys a request as ports {id, id+1}
// and a reply as {id+1, id}: a reply finds its request's entry reversed, but
// an echo request in the other direction with the same identifier is a new
// flow and sees policy.
// An entry exists only for a flow whose first packet passed policy, so any
// live entry lets a packet skip the security groups (never the ACLs). TCP:
// SYN -> SYN_SENT, a reply -> ESTABLISHED, FIN -> FIN_WAIT, FIN both ways or
// RST -> CLOSED; a new SYN on a CLOSED entry is a new flow and sees policy
// again. Timeouts: ESTABLISHED 6 h, CLOSED 30 s, everything else (SYN_SENT,
// FIN_WAIT, UDP, ICMP, other) 2 min. Counters: inserts, insert failures,
// hits, misses, expired entries met. LRU evictions are not visible to BPF;
// inserts minus the table's live entries estimates them.
//
// # MTU
//
// VXLAN over IPv4 adds 50 bytes (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8),
// so the workload MTU must be the underlay MTU - 50: 1450 on a 1500 underlay,
// 8950 on jumbo frames.
//
// # Pinning
//
// Maps are pinned by name in the directory given to Open, links under
// <dir>/links. The directory must be on bpffs. Note that `ip netns exec`
// remounts /sys: open the data path from the host's mount namespace (for
// instance entering only the network namespace, as nsenter --net does).
package datapath
