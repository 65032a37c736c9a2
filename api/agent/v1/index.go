package agentv1

// Index is a node's desired state (or any set of model objects) sorted by
// kind and ID, as both realizations of the model need it: the eBPF agent
// and the OVN renderer. Hand-written, beside the generated code.
type Index struct {
	VPCs           map[uint32]*Vpc
	Subnets        map[uint32]*Subnet
	Ports          map[uint32]*Port
	SecurityGroups map[uint32]*SecurityGroup
	NetworkACLs    map[uint32]*NetworkAcl
	RouteTables    map[uint32]*RouteTable
	Peers          map[string]*PeerNode // by node ID
}

// IndexObjects sorts objects by kind and ID.
func IndexObjects(objs map[string]*Object) *Index {
	x := &Index{
		VPCs: map[uint32]*Vpc{}, Subnets: map[uint32]*Subnet{}, Ports: map[uint32]*Port{},
		SecurityGroups: map[uint32]*SecurityGroup{}, NetworkACLs: map[uint32]*NetworkAcl{},
		RouteTables: map[uint32]*RouteTable{}, Peers: map[string]*PeerNode{},
	}
	for _, o := range objs {
		switch b := o.GetBody().(type) {
		case *Object_Vpc:
			x.VPCs[b.Vpc.GetId()] = b.Vpc
		case *Object_Subnet:
			x.Subnets[b.Subnet.GetId()] = b.Subnet
		case *Object_Port:
			x.Ports[b.Port.GetId()] = b.Port
		case *Object_SecurityGroup:
			x.SecurityGroups[b.SecurityGroup.GetId()] = b.SecurityGroup
		case *Object_NetworkAcl:
			x.NetworkACLs[b.NetworkAcl.GetId()] = b.NetworkAcl
		case *Object_RouteTable:
			x.RouteTables[b.RouteTable.GetId()] = b.RouteTable
		case *Object_PeerNode:
			x.Peers[b.PeerNode.GetNode()] = b.PeerNode
		}
	}
	return x
}
