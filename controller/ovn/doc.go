// Package ovn owns Meridian's OVN realization: it renders the logical model
// (api/agent/v1 objects, as package model compiles them) into OVN
// northbound rows and keeps the northbound database equal to that
// rendering with libovsdb.
//
// Render (or a Renderer, which reuses work between renders) is a pure
// function from objects to desired rows. The Reconciler diffs those rows
// against its libovsdb cache of the NB database and writes only the
// difference, in batched transactions; it finds its rows, and only its
// rows, by their external_ids (meridian:id, meridian:owner, meridian:kind),
// puts back rows edited or deleted by hand, deletes its own orphans and
// leaves every row without those keys alone. NewReconciler(cfg) and Run
// drive it from the store through package model (StoreSource), the way the
// distributor does; Status reports the sync state.
//
// Passes are incremental. The first pass on a connection, the pass after
// a failure and the periodic resync compare every row (a full pass).
// Every other pass compares the new rendering with the one the last pass
// made true and reconciles only the rows that differ plus the rows NB
// events named since (drift: someone else's edit, which it reverts). It
// reads those rows through a libovsdb client index on
// external_ids:meridian:id, so its cost follows the change, not the size
// of the database: at 62,000 rows, a one-rule change renders, diffs and
// commits one row. A scoped pass that meets something only a full pass
// can settle (a row of ours hanging from a parent outside its scope)
// becomes one.
//
// The package must not validate or change intent (the API server and
// package model do), must not write to the store, and must not touch NB
// rows it does not own. Chassis, bridges and port binding on hypervisors
// belong to the node agents; the contract with them is the logical port
// name (LogicalPortName, set as iface-id) and the chassis name (the node
// ID, which ports carry as options:requested-chassis).
//
// Row mapping (names are stable and derived from numeric IDs):
//
//	VPC V            Logical_Router "mer-vpc-V"
//	subnet S         Logical_Switch "mer-subnet-S"; Logical_Router_Port "mer-lrp-S" on the VPC's
//	                 router; switch port "mer-rtr-S" of type router; DHCP_Options for its IPv4 CIDR
//	port P           Logical_Switch_Port "mer-port-P": addresses "MAC IP...", port_security the
//	                 same (only the MAC when source/destination checking is off), DHCPv4 options
//	security group G Port_Group "mer_sg_G" of its ports, one allow-related ACL per rule; Address_Sets
//	                 "mer_sgaddr_G_ip4"/"_ip6" of member IPs when some rule names G as remote group
//	network ACL N    drop ACLs on each switch whose subnet uses N (see nacl.go)
//	route table T    Logical_Router_Static_Route rows with route_table "mer-rt-T" ("discard" for
//	                 blackholes); the router ports of subnets using T carry options:route_table
//	(global)         Port_Group "mer_ports" of every Meridian port: default deny, ARP and DHCP allowed
//	elastic IP, NAT  with an ExternalNetwork (NewRendererFor): a gateway port per VPC onto an external
//	gateway, gateway switch with a localnet port, Gateway_Chassis per gateway node, NAT dnat_and_snat and
//	node             snat rows, port mappings as Load_Balancers; see renderOutside (gateway.go) for the
//	                 mapping and the differences from the eBPF realization
//	flow log F       log, name ("sg:G:R", "acl:N:K", "acl:N:default", "deny:sg"), severity and meter
//	                 on the ACLs deciding the fate of the ports F covers (allows as "ct.new" copies
//	                 at 1002); Port_Group "mer_fl_F" with their logged default deny (the others'
//	                 on "mer_ports_unlogged"); Meter "mer-fl-F" with F's rate limit; see flowlog.go
//	LbService L      Load_Balancer "mer-lb-L" (+ Load_Balancer_Health_Check, ip_port_mappings for
//	                 Service_Monitor) on the VPC's switches and router (internal) or on the
//	                 router with its gateway port (north-south); see lb.go
//
// ACL priorities form the tiers OVN 23.03 lacks: infrastructure allows
// (32000), network ACL drops (29999 down to 20000), security-group allows
// (1001), default deny (1000). A port with no security group is in
// "mer_ports" only, so all its IP traffic is dropped, as in the eBPF data
// path.
//
// Known semantic differences from the eBPF data path: OVN lets replies of
// an established, allowed connection bypass ACLs, so a network ACL does
// not filter them (eBPF applies it to every packet); OVN answers ARP and
// DHCP after the ACL stage, so those are allowed explicitly.
//
// Network ACLs are rendered as drops that negate only addresses and ports
// (OVN cannot negate ip4, a protocol or an ICMP type or code: such an ACL
// never matches), split by the protocols, ICMP types and codes the allow
// rules name; see renderNetworkACL. The differential test,
// TestOVNDifferential in dataplane/datapath/ovndiff_test.go, finds OVN
// and the eBPF data path agreeing on every first packet it sends.
package ovn
