package ovn

import (
	"fmt"
	"strconv"
)

// external_ids keys on every row Meridian owns. KeyID identifies the row
// within its table (the reconciler diffs by it); KeyOwner names the model
// object that produced it ("vpc/7"); KeyKind says which part of the mapping
// it is, for people reading the NB.
const (
	KeyID    = "meridian:id"
	KeyOwner = "meridian:owner"
	KeyKind  = "meridian:kind"
)

// OwnerGlobal owns the rows that belong to no single object.
const OwnerGlobal = "meridian"

// Port groups and address sets are named in ACL matches ("@mer_ports",
// "$mer_sg_7_ip4"), so their names use only characters valid there.
const (
	// AllPortsGroup holds every Meridian logical switch port: its ACLs deny
	// what no security group allows.
	AllPortsGroup = "mer_ports"
	// UnloggedPortsGroup is the Port_Group of the Meridian ports whose
	// default deny no flow log logs (only while some flow log does).
	UnloggedPortsGroup = "mer_ports_unlogged"
)

// FlowLogPortGroupName is the Port_Group of the ports whose default deny
// flow log id logs.
func FlowLogPortGroupName(flowLog uint32) string { return "mer_fl_" + itoa(flowLog) }

func itoa(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

// RouterName is the Logical_Router of a VPC.
func RouterName(vpc uint32) string { return "mer-vpc-" + itoa(vpc) }

// SwitchName is the Logical_Switch of a subnet.
func SwitchName(subnet uint32) string { return "mer-subnet-" + itoa(subnet) }

// RouterPortName is the subnet's port on its VPC's router.
func RouterPortName(subnet uint32) string { return "mer-lrp-" + itoa(subnet) }

// SwitchRouterPortName is the subnet switch's port peering with the router.
func SwitchRouterPortName(subnet uint32) string { return "mer-rtr-" + itoa(subnet) }

// LogicalPortName is the Logical_Switch_Port of a Meridian port. Agents in
// OVN mode set it as the interface's external_ids:iface-id.
func LogicalPortName(port uint32) string { return "mer-port-" + itoa(port) }

// PortGroupName is the Port_Group of a security group.
func PortGroupName(sg uint32) string { return "mer_sg_" + itoa(sg) }

// AddressSetName is the Address_Set of a security group's member addresses
// of one family. It must not be "<port group>_ip4": northd derives SB
// address sets of that name from every port group, and two of one name
// make its SB transactions fail.
func AddressSetName(sg uint32, ipv6 bool) string {
	if ipv6 {
		return "mer_sgaddr_" + itoa(sg) + "_ip6"
	}
	return "mer_sgaddr_" + itoa(sg) + "_ip4"
}

// RouteTableName is the OVN route table of a Meridian route table.
func RouteTableName(rt uint32) string { return "mer-rt-" + itoa(rt) }

// routerMAC is the MAC of a subnet's router port: locally administered,
// unique per subnet, and stable, so a re-render never changes it.
func routerMAC(subnet uint32) string {
	return fmt.Sprintf("02:4d:%02x:%02x:%02x:%02x", byte(subnet>>24), byte(subnet>>16), byte(subnet>>8), byte(subnet))
}

// GatewayPortName is a VPC router's distributed gateway port onto the
// external switch.
func GatewayPortName(vpc uint32) string { return "mer-gw-" + itoa(vpc) }

// ExternalSwitchPortName is the external switch's port peering with a VPC
// router's gateway port.
func ExternalSwitchPortName(vpc uint32) string { return "mer-ext-" + itoa(vpc) }

// GatewayChassisName is the Gateway_Chassis row binding a VPC's gateway
// port to one gateway node (the OVN convention "<port>-<chassis>").
func GatewayChassisName(vpc uint32, node string) string { return GatewayPortName(vpc) + "-" + node }

// PortMappingsLBName is the Load_Balancer holding a NAT gateway's port
// mappings of one protocol ("tcp" or "udp").
func PortMappingsLBName(natgw uint32, proto string) string {
	return "mer-natgw-" + itoa(natgw) + "-" + proto
}

// gatewayMAC is the MAC of a VPC's gateway port: locally administered,
// distinct from every subnet router port's (02:4d:...), stable per VPC.
func gatewayMAC(vpc uint32) string {
	return fmt.Sprintf("02:4e:%02x:%02x:%02x:%02x", byte(vpc>>24), byte(vpc>>16), byte(vpc>>8), byte(vpc))
}

// LBName is the Load_Balancer of an LbService (one listener).
func LBName(svc uint32) string { return "mer-lb-" + itoa(svc) }

// RouterMAC is the MAC of a subnet's router port, which ports of the
// subnet send off-subnet traffic to (for tools building packets, like the
// controller's ovn-trace).
func RouterMAC(subnet uint32) string { return routerMAC(subnet) }

// GatewayMAC is the MAC of a VPC router's gateway port on the external
// network, which the fabric sends the VPC's public addresses' traffic to.
func GatewayMAC(vpc uint32) string { return gatewayMAC(vpc) }
