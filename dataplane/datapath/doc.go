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
// meridian_from_overlay_mark is meridian_from_overlay with the VNI taken
// from skb->mark and the outer source from cb[0]: test runs
// (BPF_PROG_TEST_RUN) cannot carry tunnel metadata. It and the other test
// entries (meridian_from_port_test, meridian_from_uplink_test) report the
// tunnel key they set in cb[0] and cb[1]. They are never attached.
//
// meridian_from_uplink runs on tcx ingress of a gateway node's interface
// toward the fabric: elastic IPs, port mappings and NAT-gateway replies
// (see "The outside world" below); everything else returns TCX_NEXT.
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
// # Tables (bpf/c/maps.h; Go twins generated by bpf2go in package bpf)
//
//   - ports (id -> ifindex, MAC, VPC, subnet, SG policy), port_by_ifindex,
//     port_ips {port, address} (anti-spoofing), subnets (gateway, router
//     MAC, ACL id), routes (LPM {VPC, prefix} -> local port | remote node);
//   - conntrack (LRU {VPC, proto, addresses, ports}), ct_stats;
//   - security groups: ipcache_vpcs + ipcache_slots (address -> identity),
//     sg_policy (hash {policy, identity, direction, protocol} -> port
//     ranges), sg_ports (port sets too long to inline);
//   - network ACLs: acl_metas (interval starts per ACL direction),
//     acl_intervals and acl_proto (bitmaps), acl_rules (bit -> rule, action);
//   - node_cfg (VXLAN ifindex), drops (per-CPU {port, reason} counters),
//     drop_events (ring buffer of policy drops);
//   - the outside world: egress (LPM {VPC, source} -> elastic IP | NAT
//     gateway owner), gateways (the live gateway set); on gateways eips and
//     eip_by_private, natgws, nat_src (LPM, owner only), nat_addrs,
//     port_maps and port_maps_rev, nat (LRU), nat_exhausted, nat_cfg.
//
// Writes are ordered so that a packet never sees a half-applied change for
// a key present before and after: new entries first, then the tables that
// point to them, then stale entries are deleted. One writer (the agent) is
// assumed.
//
// # The outside world: elastic IPs and NAT gateways (issue [4])
//
// Where NAT happens, and why: on gateway nodes, never on a workload's node.
// Only gateways have an interface toward the fabric (the uplink) and BGP
// sessions, so public addresses live there; a workload node would need a
// public address, a route in the fabric and a BGP speaker of its own for
// every elastic IP it hosts, and moving a port would move all of it. The
// workload's node keeps everything stateful about the port (security
// groups, network ACLs, conntrack) and sees the outside host's real
// address, because translation happens on the far side of the overlay.
//
// Workload node (meridian_from_port): a packet no VPC route claims leaves
// through the overlay, after egress policy, to a gateway: for a source with
// an elastic IP (egress LPM {VPC, /32}) any live gateway (gateways, set by
// SetGateways) chosen by a hash of the flow's 5-tuple, so a flow stays on
// one gateway; for a source in a subnet behind a NAT gateway ({VPC,
// subnet}) the NAT gateway's owner. The /32 beats the subnet. Neither, or
// a destination inside a VPC CIDR (UpsertVPCPrefix: a drop route) with no
// port: DropNoRoute, as before; an elastic IP with no live gateway:
// DropNoGateway. The TTL is decremented (a router hop). Replies come back
// over the overlay with the outside host's address and go through
// meridian_from_overlay's ingress path like any remote packet.
//
// Gateway node, fabric -> VPC (meridian_from_uplink, tcx ingress of the
// uplink): a packet to an elastic IP gets its destination rewritten to the
// port's private address, one to a NAT gateway address:port of a port
// mapping to the mapping's private address and port, one to a NAT gateway
// address otherwise is a reply of a NAT flow (reverse NAT entry) or is
// dropped (DropNATNoFlow); then TTL - 1, inner MACs router MAC -> port MAC,
// VXLAN (VNI = VPC) to the port's node. Anything not addressed to a public
// address this gateway serves (BGP, ARP, the underlay) returns TCX_NEXT to
// the host. Elastic IPs and port mappings are stateless: any gateway can
// serve them and the fabric may spread flows over several with ECMP.
//
// Gateway node, VPC -> fabric (meridian_from_overlay, when no VPC route
// claims the destination): the source is rewritten, first match wins, by a
// port mapping (the private address:port is a mapping's target: its
// replies leave from the mapping's public side), the port's elastic IP, or
// the NAT gateway owning the source's subnet (on its owner only). The
// packet leaves by the gateway's own routing table: bpf_fib_lookup as if
// forwarded from the overlay device (which must have forwarding=1; the
// agent sets it on gateways) gives the interface and, with the neighbour
// resolved, both MACs (then bpf_redirect); an unresolved next hop goes
// through bpf_redirect_neigh. No next hop is configured anywhere: the
// gateway's routes (static or learnt) are the truth. If the destination
// is itself a public address this gateway serves (a workload reaching an
// elastic IP of its own VPC), the packet turns around inside the gateway
// (hairpin): source translated as above, then the fabric -> VPC path. So
// A -> B's elastic IP reaches B from A's public address (its elastic IP or
// its NAT gateway's address and port), and B's reply to that address takes
// the same way back.
//
// Checksums are fixed incrementally (bpf_l3_csum_replace, and
// bpf_l4_csum_replace with BPF_F_PSEUDO_HDR for addresses), which is
// correct for packets with partial checksums from local senders too.
//
// NAT gateway SNAT (stateful, one owner gateway per NAT gateway): an LRU
// table (nat, 262,144 entries) holds two entries per flow. The forward one,
// keyed by the inside tuple {VPC, private address and port, remote address
// and port, protocol}, holds the public address and port, the TCP state
// and the deadline; the reverse one, keyed by the outside tuple, holds the
// private address and port, the VPC and where the port lives: the
// underlay address of the workload's node, taken from the outer source of
// the flow's first packet (tunnel metadata), and the port's MAC, from its
// inner source — so a gateway needs no table of every port of every VPC.
// The forward entry is the truth: a reverse entry whose forward entry is
// gone, expired or closed is free. A new flow's public address is one of
// the NAT gateway's addresses and its port is probed from a hash of the
// tuple: at most 32 candidates in [port_min, port_max], each claimed with
// BPF_NOEXIST so that two CPUs never share one. None free: the packet is
// dropped (DropNATExhausted) and counted per NAT gateway (nat_exhausted,
// per-CPU); nothing else happens, the host is not involved. Ports are
// per remote address and port (endpoint-dependent mapping, like Linux
// masquerade), so a NAT address serves up to (port range) flows per remote
// endpoint. ICMP echo uses the identifier as the port. Timeouts (SetNATTimeouts): TCP
// established 2 h, SYN sent and FIN seen 60 s, closed 120 s (the remote
// may hold the connection in TIME_WAIT: a new inside tuple on the same
// public port would meet it with unrelated TCP timestamps and be refused
// by PAWS; the same inside tuple opening again keeps its public port, as
// conntrack reopens TIME_WAIT), UDP 60 s, ICMP 30 s. If the LRU evicts a flow's reverse half alone, the next outbound
// packet restores it. NATStats counts active flows (walking the table) and
// port exhaustion per NAT gateway; the agent reports them in its
// NodeReport. Other protocols cannot pass a NAT gateway (DropNATProtocol);
// they can an elastic IP.
//
// ICMP errors about translated flows (destination unreachable including
// fragmentation needed, time exceeded, parameter problem) are translated
// both ways: outer address and the quoted header's address and port (or
// echo id), with the outer IPv4, quoted IPv4 and ICMP checksums fixed. The
// quoted TCP/UDP checksum is left alone (it may not be quoted at all, and
// receivers do not check it). On the workload's node such errors meet the
// port's policy as ICMP, as before (no "related" state yet).
//
// # Services: L4 load balancing (issue [5])
//
// Where each part runs is fixed by the LbService comment of
// api/agent/v1/agent.proto; the C side is bpf/c/service.h, the Go side
// service.go (Service, UpsertService, DeleteService, ApplyServices).
//
// East-west VIPs (Service.Internal) are translated at the client's port,
// in meridian_from_port, before conntrack and policy: a TCP/UDP packet to
// {VPC, VIP, port, protocol} of a service (services) goes to
//   - the backend its service entry names (lb_flows, LRU keyed by the
//     client -> VIP tuple), if that backend is still in the service
//     (lb_backends: healthy backends, draining ones included) and the
//     translated flow's conntrack entry is alive (not expired, not closed
//     and reopened by a SYN): established flows stay on their backend
//     while backends come, go or drain;
//   - else the Maglev choice: lb_flow_hash (bpf/c/lbhash.h) of the
//     original tuple — client and VIP addresses only with source-IP
//     persistence — modulo the table size indexes the service's table
//     (lb_tables, a hash of maps: one array per service), which holds
//     backend IDs. Tables are computed in Go by lb/maglev.Table over the
//     healthy, non-draining backends keyed "address:port", so every node
//     computes the same one; the trace (controller/trace) computes the
//     same choice. A table is rebuilt only when its inputs change (a
//     signature in svc_info), into a new inner map swapped in with one
//     update: packets see the old table or the new one, never a mix. No
//     backend for a new flow: DropLBNoBackend.
//
// Then the destination becomes backend address:target port (incremental
// checksums, BPF_F_PSEUDO_HDR: correct for locally sent packets with
// partial checksums, which tc sees and XDP would not). The ACLs and the
// security groups — the client's egress, the backend's ingress — see the
// translated packet, as with Cilium and kube-proxy: a client's egress
// rules must allow the backends' addresses and target ports, not only the
// VIP. The flow's conntrack entry (keyed by the translated tuple) carries
// svc_vip and svc_port; its replies get their source rewritten back to
// vip:port after policy (which saw the backend's address, as the
// request's did), just before delivery to the client — from the
// backend's port when both are on one node, in meridian_from_overlay on
// the client's node otherwise.
//
// North-south VIPs: the gateway's XDP load balancer (bpf/c/lb.c) chose
// the backend and sent the packet over VXLAN unchanged (destination
// vip:port, inner destination MAC the backend port's, VNI the VPC's). In
// meridian_from_overlay a destination no VPC route claims is looked up as
// a service listener; lb_local {service, MAC} -> backend (installed for
// backends whose port is on this node: Backend.Local) gives the
// translation, then the packet takes the normal ingress path: ACL and
// security group of the backend port on the translated packet, with the
// outside client's real address as the remote side (as for elastic IPs),
// conntrack with the reverse translation, delivery. A VIP packet for a
// MAC that is no local backend is dropped (DropNotLocal: the load
// balancer's view is stale). The reply from the backend's port matches
// that entry: its source becomes vip:port and, no VPC route claiming the
// client, it goes to any live gateway by flow hash (as for elastic IPs;
// DropNoGateway if none). On the gateway, gw_outbound lets a packet whose
// source is a north-south listener's vip:port out of the uplink
// unchanged (no NAT): replies never cross the XDP load balancer (direct
// server return).
//
// Proxy ARP answers for an east-west VIP (svc_addrs: {VPC, VIP} while a
// listener uses it), so a VIP may lie inside a client's subnet.
//
// Not done: ICMP errors about service flows are not translated; a
// client reaching a VIP whose backend is itself (hairpin: needs SNAT); a
// flow that reaches a backend directly with the same tuple as a
// translated one shares its conntrack entry.
//
// # Not done yet
//
// IPv6 and ND (elastic IPs and NAT gateways included); ICMP errors
// (time exceeded, fragmentation needed) generated by the router; fragments
// (dropped, see above); peering; routes to anything but
// ports (the agent installs a /32 per port); per-port forwarding counters.
//
// # Pinning
//
// Maps are pinned by name in the directory given to Open, links under
// <dir>/links. The directory must be on bpffs. Note that `ip netns exec`
// remounts /sys: open the data path from the host's mount namespace (for
// instance entering only the network namespace, as nsenter --net does).
package datapath
