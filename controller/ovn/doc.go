// Package ovn owns Meridian's OVN realization: it renders the logical model
// (api/agent/v1 objects, as package model compiles them) into OVN
// northbound rows and keeps the northbound database equal to that
// rendering with libovsdb.
//
// Render is a pure function from objects to desired rows. The Reconciler
// diffs those rows against its libovsdb cache of the NB database and writes
// only the difference, in batched transactions; it finds its rows, and only
// its rows, by their external_ids (meridian:id, meridian:owner,
// meridian:kind), puts back rows edited or deleted by hand, deletes its own
// orphans and leaves every row without those keys alone.
//
// The package must not validate or change intent (the API server and
// package model do), must not write to the store, and must not touch NB
// rows it does not own. Chassis, bridges and port binding on hypervisors
// belong to the node agents.
//
// Row mapping (names are stable and derived from numeric IDs):
//
//	VPC V            Logical_Router "mer-vpc-V"
//	subnet S         Logical_Switch "mer-subnet-S"; Logical_Router_Port "mer-lrp-S" on the VPC's
//	                 router; switch port "mer-rtr-S" of type router; DHCP_Options for its IPv4 CIDR
//	port P           Logical_Switch_Port "mer-port-P" (addresses and port_security "MAC IP...")
//	security group G Port_Group "mer_sg_G" with one allow-related ACL per rule; Address_Sets
//	                 "mer_sgaddr_G_ip4"/"_ip6" of member IPs when some rule names G as remote
//	network ACL N    drop ACLs on each switch whose subnet uses N (see nacl.go)
//	route table T    Logical_Router_Static_Route rows with route_table "mer-rt-T"; the router
//	                 ports of subnets using T carry options:route_table
//	(global)         Port_Group "mer_ports" of every Meridian port: default deny, ARP and DHCP allowed
package ovn
