// Package resource describes the API's resource kinds: their names, where
// they live in the store, and generic access to the fields every resource
// shares (name, etag, timestamps, labels). It owns naming and encoding; it
// does not validate semantics or touch the store itself.
package resource

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// Kind describes one resource kind.
type Kind struct {
	Name       string // "Vpc": the message name, used in store keys and apply documents
	Collection string // "vpcs": the name segment before the ID
	Parent     *Kind  // nil: top-level ("projects/p", "nodes/n")
	new        func() proto.Message
}

// New returns an empty message of the kind.
func (k *Kind) New() proto.Message { return k.new() }

// Prefix is the store prefix under which all resources of the kind live.
func (k *Kind) Prefix() string { return "res/" + k.Name + "/" }

// Key is the store key of the resource with the given name.
func (k *Kind) Key(name string) string { return k.Prefix() + name }

// NameOf joins a parent name and an ID into a resource name.
func (k *Kind) NameOf(parent, id string) string {
	if k.Parent == nil {
		return k.Collection + "/" + id
	}
	return parent + "/" + k.Collection + "/" + id
}

// The kinds of the API, in dependency order: a kind only references kinds
// before it, so creating in this order and deleting in reverse always works.
var (
	KindProject       = &Kind{Name: "Project", Collection: "projects", new: func() proto.Message { return &v1.Project{} }}
	KindNode          = &Kind{Name: "Node", Collection: "nodes", new: func() proto.Message { return &v1.Node{} }}
	KindVpc           = &Kind{Name: "Vpc", Collection: "vpcs", Parent: KindProject, new: func() proto.Message { return &v1.Vpc{} }}
	KindNetworkAcl    = &Kind{Name: "NetworkAcl", Collection: "networkAcls", Parent: KindProject, new: func() proto.Message { return &v1.NetworkAcl{} }}
	KindRouteTable    = &Kind{Name: "RouteTable", Collection: "routeTables", Parent: KindProject, new: func() proto.Message { return &v1.RouteTable{} }}
	KindSubnet        = &Kind{Name: "Subnet", Collection: "subnets", Parent: KindVpc, new: func() proto.Message { return &v1.Subnet{} }}
	KindSecurityGroup = &Kind{Name: "SecurityGroup", Collection: "securityGroups", Parent: KindProject, new: func() proto.Message { return &v1.SecurityGroup{} }}
	KindPort          = &Kind{Name: "Port", Collection: "ports", Parent: KindProject, new: func() proto.Message { return &v1.Port{} }}

	// The outside world (issue [4]).
	KindPublicAddressPool = &Kind{Name: "PublicAddressPool", Collection: "publicAddressPools", new: func() proto.Message { return &v1.PublicAddressPool{} }}
	KindBgpPeer           = &Kind{Name: "BgpPeer", Collection: "bgpPeers", new: func() proto.Message { return &v1.BgpPeer{} }}
	KindElasticIp         = &Kind{Name: "ElasticIp", Collection: "elasticIps", Parent: KindProject, new: func() proto.Message { return &v1.ElasticIp{} }}
	KindNatGateway        = &Kind{Name: "NatGateway", Collection: "natGateways", Parent: KindProject, new: func() proto.Message { return &v1.NatGateway{} }}

	// Load balancing (issue [5]).
	KindLoadBalancer = &Kind{Name: "LoadBalancer", Collection: "loadBalancers", Parent: KindProject, new: func() proto.Message { return &v1.LoadBalancer{} }}
)

// KindFlowLog: flow logs (issue [6]), after what they name.
var KindFlowLog = &Kind{Name: "FlowLog", Collection: "flowLogs", Parent: KindProject, new: func() proto.Message { return &v1.FlowLog{} }}

// Kinds lists every kind in dependency order. An elastic IP and a NAT
// gateway name each other (kept in step by the API server); the elastic IP
// comes first because the NAT gateway's port mappings depend on it.
func Kinds() []*Kind {
	return []*Kind{KindProject, KindNode, KindPublicAddressPool, KindBgpPeer, KindVpc, KindNetworkAcl, KindRouteTable,
		KindSubnet, KindSecurityGroup, KindPort, KindElasticIp, KindNatGateway, KindLoadBalancer, KindFlowLog}
}

// ByName finds a kind by its message name, case-insensitively, also
// accepting the collection name ("vpcs") and its singular ("vpc").
func ByName(s string) (*Kind, bool) {
	ls := strings.ToLower(s)
	for _, k := range Kinds() {
		coll := strings.ToLower(k.Collection)
		if ls == strings.ToLower(k.Name) || ls == coll || ls == strings.TrimSuffix(coll, "s") {
			return k, true
		}
	}
	return nil, false
}

// ParseName checks that name is a well-formed name of kind k and returns its
// parent name ("" for top-level kinds) and its ID.
func (k *Kind) ParseName(name string) (parent, id string, err error) {
	i := strings.LastIndex(name, "/"+k.Collection+"/")
	switch {
	case k.Parent == nil && strings.HasPrefix(name, k.Collection+"/"):
		id = strings.TrimPrefix(name, k.Collection+"/")
	case k.Parent != nil && i > 0:
		parent, id = name[:i], name[i+len(k.Collection)+2:]
		if _, _, err := k.Parent.ParseName(parent); err != nil {
			return "", "", fmt.Errorf("%q is not a %s name: %w", name, k.Name, err)
		}
	default:
		return "", "", fmt.Errorf("%q is not a %s name (want %s)", name, k.Name, k.Pattern())
	}
	if err := ValidID(id); err != nil {
		return "", "", fmt.Errorf("%q is not a %s name: %w", name, k.Name, err)
	}
	return parent, id, nil
}

// Pattern is the name pattern of the kind, for error messages.
func (k *Kind) Pattern() string {
	if k.Parent == nil {
		return k.Collection + "/{id}"
	}
	return strings.ReplaceAll(k.Parent.Pattern(), "{id}", "{"+strings.ToLower(k.Parent.Name)+"}") + "/" + k.Collection + "/{id}"
}

// ValidID checks a resource ID: 1-63 characters of lowercase letters, digits
// and '-', starting with a letter and not ending with '-' (RFC 1123 labels,
// so IDs can name interfaces, namespaces and DNS records).
func ValidID(id string) error {
	if len(id) == 0 || len(id) > 63 {
		return fmt.Errorf("ID %q must be 1-63 characters", id)
	}
	for i, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' && i > 0 || c == '-' && i > 0 && i < len(id)-1
		if !ok {
			return fmt.Errorf("ID %q: lowercase letters, digits and '-' only, starting with a letter, not ending with '-'", id)
		}
	}
	return nil
}

// ProjectOf returns the project name ("projects/p") that a resource name
// belongs to, or "" for resources outside projects (nodes).
func ProjectOf(name string) string {
	if !strings.HasPrefix(name, "projects/") {
		return ""
	}
	rest := strings.TrimPrefix(name, "projects/")
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		rest = rest[:i]
	}
	return "projects/" + rest
}

// KindOf returns the kind of a resource message.
func KindOf(m proto.Message) (*Kind, bool) {
	return ByName(string(m.ProtoReflect().Descriptor().Name()))
}

// field returns a message's field by name; every resource has the common ones.
func field(m proto.Message, name protoreflect.Name) protoreflect.FieldDescriptor {
	return m.ProtoReflect().Descriptor().Fields().ByName(name)
}

// Name returns the resource's name.
func Name(m proto.Message) string { return m.ProtoReflect().Get(field(m, "name")).String() }

// SetName sets the resource's name.
func SetName(m proto.Message, s string) {
	m.ProtoReflect().Set(field(m, "name"), protoreflect.ValueOfString(s))
}

// Etag returns the resource's etag.
func Etag(m proto.Message) string { return m.ProtoReflect().Get(field(m, "etag")).String() }

// SetEtag sets the resource's etag.
func SetEtag(m proto.Message, s string) {
	m.ProtoReflect().Set(field(m, "etag"), protoreflect.ValueOfString(s))
}
