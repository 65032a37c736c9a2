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
// Known bug, not a semantic difference (found by the differential test,
// TestOVNDifferential in dataplane/datapath/ovndiff_test.go): network ACLs
// fail open in OVN. A deny rule, and the closing deny, exclude what earlier
// allow rules accept with "!(allow match)", and every allow match starts
// with "ip4" and usually names a protocol or ICMP type. OVN cannot negate
// fields OpenFlow cannot mask (eth.type, ip.proto, icmp4.type/code), and an
// ACL holding such a negation never matches. So of a direction's rules only
// the denies numbered before its first allow rule take effect; once there
// is an allow rule, whatever those denies miss passes the network ACL
// (security groups still apply). Measured: 4 of 132 crafted and 22 of 240
// random first packets delivered by OVN and dropped by eBPF, all of this
// kind. The fix renders the first-match decision without negating those
// fields: split by protocol (and ICMP type), naming the protocols no rule
// names as an explicit set, and negate only addresses and ports.
package ovn
