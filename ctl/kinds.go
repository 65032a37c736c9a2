// Package ctl implements meridianctl, the command-line client of the
// Meridian controller: per-kind CRUD commands, declarative apply of YAML
// topologies, whoami, audit and watch.
//
// The per-kind code is one generic implementation driven by a table: the
// five standard methods of every kind are found by name in the service
// descriptors and called through grpc.ClientConnInterface.Invoke, so adding
// a kind to the API means adding one row to kindTable, not another 100 lines
// of near-identical client calls.
package ctl

import (
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/meridian-sdn/meridian/controller/resource"
)

// kindInfo is what the CLI knows about a kind beyond resource.Kind.
type kindInfo struct {
	*resource.Kind
	Command string                // the subcommand: "network-acl"
	Aliases []string              // short names: "acl"
	Service protoreflect.FullName // the service serving the kind's standard methods
	Flags   []convFlag            // convenience flags of create and update
	Columns []column              // table columns after NAME
	// Detail, if set, prints more of one resource below its table row
	// (get and create in table format): a load balancer's backend health.
	Detail func(w io.Writer, m proto.Message) error
}

// convFlag is a convenience flag that sets one top-level field, so the
// common cases need no YAML file.
type convFlag struct {
	Name  string
	Field protoreflect.Name
	Usage string
}

// column is one table column: a dotted field path into the resource.
type column struct {
	Header string
	Path   string
	Count  bool // print the number of elements of a list, not the elements
}

// kindTable lists the kinds in resource.Kinds() order (dependency order).
func kindTable() []*kindInfo {
	return []*kindInfo{
		{
			Kind: resource.KindProject, Command: "project", Aliases: []string{"projects", "proj"},
			Service: "meridian.v1.ProjectService",
			Flags:   []convFlag{{"org", "organization", "organization the project belongs to (required, immutable)"}},
			Columns: []column{{Header: "ORGANIZATION", Path: "organization"}, {Header: "DESCRIPTION", Path: "description"}},
		},
		{
			Kind: resource.KindNode, Command: "node", Aliases: []string{"nodes"},
			Service: "meridian.v1.NodeService",
			Flags:   []convFlag{{"underlay-ip", "underlay_ip", "tunnel endpoint address of the node"}, {"hostname", "hostname", "host name of the node"}},
			Columns: []column{{Header: "HOSTNAME", Path: "hostname"}, {Header: "UNDERLAY IP", Path: "underlay_ip"}, {Header: "CONNECTED", Path: "status.connected"}, {Header: "APPLIED", Path: "status.applied_version"}},
		},
		{
			Kind: resource.KindPublicAddressPool, Command: "public-address-pool", Aliases: []string{"pool", "pools", "publicaddresspool", "publicaddresspools"},
			Service: "meridian.v1.EdgeService",
			Flags:   []convFlag{{"cidr", "cidrs", "public CIDR of the pool (repeatable)"}, {"community", "communities", "BGP community asn:value or a:b:c (repeatable)"}},
			Columns: []column{{Header: "CIDRS", Path: "cidrs"}, {Header: "ALLOCATED", Path: "status.allocated"}, {Header: "TOTAL", Path: "status.total"}, {Header: "ANNOUNCE", Path: "announce"}},
		},
		{
			Kind: resource.KindBgpPeer, Command: "bgp-peer", Aliases: []string{"peer", "peers", "bgppeer", "bgppeers"},
			Service: "meridian.v1.EdgeService",
			Flags:   []convFlag{{"node", "node", "gateway node holding the session (nodes/NAME)"}, {"peer-address", "peer_address", "address of the router"}},
			Columns: []column{{Header: "NODE", Path: "node"}, {Header: "PEER", Path: "peer_address"}, {Header: "PEER ASN", Path: "peer_asn"}, {Header: "STATE", Path: "status.state"}},
		},
		{
			Kind: resource.KindVpc, Command: "vpc", Aliases: []string{"vpcs"},
			Service: "meridian.v1.NetworkService",
			Flags:   []convFlag{{"cidr", "cidr_blocks", "IPv4 CIDR block (repeatable)"}},
			Columns: []column{{Header: "CIDR", Path: "cidr_blocks"}, {Header: "IPV6", Path: "ipv6_cidr_block"}, {Header: "VNI", Path: "vni"}},
		},
		{
			Kind: resource.KindNetworkAcl, Command: "network-acl", Aliases: []string{"acl", "acls", "nacl", "networkacl", "networkacls"},
			Service: "meridian.v1.SecurityService",
			Flags:   []convFlag{{"vpc", "vpc", "VPC of the ACL (required, immutable)"}},
			Columns: []column{{Header: "VPC", Path: "vpc"}, {Header: "RULES", Path: "rules", Count: true}, {Header: "SUBNETS", Path: "subnets"}},
		},
		{
			Kind: resource.KindRouteTable, Command: "route-table", Aliases: []string{"rt", "rts", "routetable", "routetables"},
			Service: "meridian.v1.NetworkService",
			Flags:   []convFlag{{"vpc", "vpc", "VPC of the route table (required, immutable)"}},
			Columns: []column{{Header: "VPC", Path: "vpc"}, {Header: "ROUTES", Path: "routes", Count: true}},
		},
		{
			Kind: resource.KindSubnet, Command: "subnet", Aliases: []string{"subnets", "sn"},
			Service: "meridian.v1.NetworkService",
			Flags: []convFlag{
				{"cidr", "cidr_block", "IPv4 CIDR block inside the VPC (immutable)"},
				{"gateway", "gateway_ip", "gateway address (default: first address of the block)"},
				{"network-acl", "network_acl", "network ACL of the subnet"},
				{"route-table", "route_table", "route table of the subnet"},
			},
			Columns: []column{{Header: "CIDR", Path: "cidr_block"}, {Header: "GATEWAY", Path: "gateway_ip"}, {Header: "AVAILABLE", Path: "available_ips"}, {Header: "ACL", Path: "network_acl"}},
		},
		{
			Kind: resource.KindSecurityGroup, Command: "security-group", Aliases: []string{"sg", "sgs", "securitygroup", "securitygroups"},
			Service: "meridian.v1.SecurityService",
			Flags:   []convFlag{{"vpc", "vpc", "VPC of the security group (required, immutable)"}},
			Columns: []column{{Header: "VPC", Path: "vpc"}, {Header: "RULES", Path: "rules", Count: true}},
		},
		{
			Kind: resource.KindPort, Command: "port", Aliases: []string{"ports"},
			Service: "meridian.v1.NetworkService",
			Flags: []convFlag{
				{"subnet", "subnet", "subnet of the port (required, immutable)"},
				{"ip", "fixed_ips", "fixed IP address (repeatable; default: one allocated)"},
				{"sg", "security_groups", "security group (repeatable)"},
				{"node", "node", "node the port is bound to (nodes/NAME)"},
			},
			Columns: []column{{Header: "SUBNET", Path: "subnet"}, {Header: "IPS", Path: "fixed_ips"}, {Header: "MAC", Path: "mac_address"}, {Header: "NODE", Path: "node"}, {Header: "STATE", Path: "status.state"}},
		},
		{
			Kind: resource.KindElasticIp, Command: "elastic-ip", Aliases: []string{"eip", "eips", "elasticip", "elasticips"},
			Service: "meridian.v1.EdgeService",
			Flags: []convFlag{
				{"pool", "pool", "public address pool to allocate from (required, immutable)"},
				{"address", "address", "address to take from the pool (default: the next free one)"},
				{"port", "port", "port to associate with"},
				{"nat-gateway", "nat_gateway", "NAT gateway to associate with"},
			},
			Columns: []column{{Header: "ADDRESS", Path: "address"}, {Header: "PORT", Path: "port"}, {Header: "PRIVATE IP", Path: "private_ip"}, {Header: "NAT GATEWAY", Path: "nat_gateway"}},
		},
		{
			Kind: resource.KindNatGateway, Command: "nat-gateway", Aliases: []string{"ngw", "ngws", "natgateway", "natgateways"},
			Service: "meridian.v1.EdgeService",
			Flags: []convFlag{
				{"vpc", "vpc", "VPC of the NAT gateway (required, immutable)"},
				{"eip", "elastic_ips", "elastic IP (repeatable)"},
				{"subnet", "subnets", "subnet whose outbound traffic it translates (repeatable)"},
			},
			Columns: []column{{Header: "VPC", Path: "vpc"}, {Header: "ELASTIC IPS", Path: "elastic_ips"}, {Header: "MAPPINGS", Path: "port_mappings", Count: true}, {Header: "OWNER", Path: "status.owner_node"}},
		},
		{
			Kind: resource.KindLoadBalancer, Command: "load-balancer", Aliases: []string{"lb", "lbs", "loadbalancer", "loadbalancers"},
			Service: "meridian.v1.LoadBalancerService",
			Flags: []convFlag{
				{"vpc", "vpc", "VPC of the load balancer (required, immutable)"},
				{"scheme", "scheme", "internet-facing (default) or internal (immutable)"},
				{"pool", "pool", "internet-facing: public address pool of the VIP (immutable)"},
				{"subnet", "subnet", "internal: subnet of the VIP (immutable)"},
				{"vip", "vip", "VIP to take (default: allocated; immutable)"},
			},
			Columns: []column{{Header: "SCHEME", Path: "scheme"}, {Header: "VIP", Path: "vip"}, {Header: "VPC", Path: "vpc"}, {Header: "LISTENERS", Path: "listeners", Count: true}},
			Detail:  lbDetail,
		},
		flowLogKind, // flowlogs_cmd.go
	}
}

// kinds is the looked-up table; built once per root command so that tests
// and embedders never share mutable state.
type kinds []*kindInfo

// lookup finds a kind by command name, alias, message name or collection.
func (ks kinds) lookup(s string) (*kindInfo, error) {
	ls := strings.ToLower(s)
	for _, k := range ks {
		if ls == k.Command {
			return k, nil
		}
		for _, a := range k.Aliases {
			if ls == a {
				return k, nil
			}
		}
	}
	if rk, ok := resource.ByName(s); ok {
		for _, k := range ks {
			if k.Kind == rk {
				return k, nil
			}
		}
	}
	return nil, fmt.Errorf("unknown kind %q (want one of %s)", s, ks.names())
}

func (ks kinds) names() string {
	var n []string
	for _, k := range ks {
		n = append(n, k.Name)
	}
	return strings.Join(n, ", ")
}

// order is the position of a kind in resource.Kinds(), the dependency
// order: creating in it and deleting in reverse never dangles a reference.
func order(k *kindInfo) int {
	for i, rk := range resource.Kinds() {
		if rk == k.Kind {
			return i
		}
	}
	return len(resource.Kinds())
}
