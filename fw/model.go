package fw

import (
	"errors"
	"fmt"
	"net/netip"
)

// IP protocol numbers the rules treat specially.
const (
	ProtoAny  uint8 = 0
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
)

// MaxACLRules bounds the rules of one ACL in one direction: the data path
// ANDs bitmaps of this many bits.
const MaxACLRules = 256

// Direction is seen from the port (security groups) or the subnet (ACLs).
type Direction uint8

const (
	Egress  Direction = 0
	Ingress Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Egress:
		return "egress"
	case Ingress:
		return "ingress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// PortRange is an inclusive range of destination ports. The zero value
// means every port.
type PortRange struct {
	From, To uint16
}

// All reports whether the range covers every port.
func (r PortRange) All() bool {
	return (r.From == 0 && r.To == 0) || (r.From == 0 && r.To == 0xffff)
}

func (r PortRange) contains(p uint16) bool {
	return r.All() || (p >= r.From && p <= r.To)
}

// ICMPMatch selects ICMP messages. Code is only meaningful with Type.
type ICMPMatch struct {
	Type uint8
	// AnyCode: every code of Type.
	AnyCode bool
	Code    uint8
}

// SGRule is one security-group rule: traffic it matches is allowed.
type SGRule struct {
	ID        uint32 // given by the controller, never 0
	Direction Direction
	Protocol  uint8      // ProtoAny or an IP protocol number
	Ports     PortRange  // TCP and UDP only
	ICMP      *ICMPMatch // ICMP only; nil matches every type
	// Exactly one of RemoteCIDR and RemoteGroup is set.
	RemoteCIDR  netip.Prefix
	RemoteGroup uint32
}

// SecurityGroupPolicy is the union of the rules of the security groups a
// port belongs to; ports with the same set of groups share one policy.
type SecurityGroupPolicy struct {
	ID    uint32 // never 0
	Rules []SGRule
}

// GroupMembers maps a remote security group to the IPv4 addresses of the
// ports in it (primary and secondary).
type GroupMembers map[uint32][]netip.Addr

// ACLAction is what a matching ACL rule does.
type ACLAction uint8

const (
	Deny  ACLAction = 0
	Allow ACLAction = 1
)

// ACLRule is one numbered network-ACL rule.
type ACLRule struct {
	ID        uint32 // given by the controller, never 0
	Number    uint32 // evaluation order, lowest first, unique per direction
	Direction Direction
	Action    ACLAction
	Protocol  uint8
	Ports     PortRange
	ICMP      *ICMPMatch
	CIDR      netip.Prefix // remote: source for ingress, destination for egress
}

// ACL is a network ACL attached to subnets.
type ACL struct {
	ID    uint32 // never 0: a subnet with ACL 0 has no ACL
	Rules []ACLRule
}

// Packet is what the rules look at.
type Packet struct {
	Src, Dst         netip.Addr
	Protocol         uint8
	SrcPort, DstPort uint16 // TCP and UDP
	ICMPType         uint8
	ICMPCode         uint8
}

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid rule")

func validateMatch(proto uint8, ports PortRange, icmp *ICMPMatch) error {
	if ports.From > ports.To && !ports.All() {
		return fmt.Errorf("%w: port range %d-%d is reversed", ErrInvalid, ports.From, ports.To)
	}
	if !ports.All() && proto != ProtoTCP && proto != ProtoUDP {
		return fmt.Errorf("%w: ports need protocol tcp or udp, not %d", ErrInvalid, proto)
	}
	if icmp != nil && proto != ProtoICMP {
		return fmt.Errorf("%w: icmp type needs protocol icmp, not %d", ErrInvalid, proto)
	}
	return nil
}

func validateDirection(d Direction) error {
	if d != Egress && d != Ingress {
		return fmt.Errorf("%w: %v", ErrInvalid, d)
	}
	return nil
}

// Validate checks the rule's fields.
func (r *SGRule) Validate() error {
	if r.ID == 0 {
		return fmt.Errorf("%w: rule id 0", ErrInvalid)
	}
	if err := validateDirection(r.Direction); err != nil {
		return fmt.Errorf("rule %d: %w", r.ID, err)
	}
	if err := validateMatch(r.Protocol, r.Ports, r.ICMP); err != nil {
		return fmt.Errorf("rule %d: %w", r.ID, err)
	}
	switch {
	case r.RemoteGroup != 0 && r.RemoteCIDR.IsValid():
		return fmt.Errorf("%w: rule %d has both a remote CIDR and a remote group", ErrInvalid, r.ID)
	case r.RemoteGroup == 0 && !r.RemoteCIDR.IsValid():
		return fmt.Errorf("%w: rule %d has neither a remote CIDR nor a remote group", ErrInvalid, r.ID)
	case r.RemoteCIDR.IsValid() && !r.RemoteCIDR.Addr().Is4():
		return fmt.Errorf("%w: rule %d: remote %v is not IPv4", ErrInvalid, r.ID, r.RemoteCIDR)
	}
	return nil
}

// Validate checks the policy and its rules.
func (p *SecurityGroupPolicy) Validate() error {
	if p.ID == 0 {
		return fmt.Errorf("%w: policy id 0", ErrInvalid)
	}
	for i := range p.Rules {
		if err := p.Rules[i].Validate(); err != nil {
			return fmt.Errorf("policy %d: %w", p.ID, err)
		}
	}
	return nil
}

// Validate checks the rule's fields.
func (r *ACLRule) Validate() error {
	if r.ID == 0 {
		return fmt.Errorf("%w: acl rule id 0", ErrInvalid)
	}
	if err := validateDirection(r.Direction); err != nil {
		return fmt.Errorf("acl rule %d: %w", r.ID, err)
	}
	if r.Action != Allow && r.Action != Deny {
		return fmt.Errorf("%w: acl rule %d: action %d", ErrInvalid, r.ID, r.Action)
	}
	if err := validateMatch(r.Protocol, r.Ports, r.ICMP); err != nil {
		return fmt.Errorf("acl rule %d: %w", r.ID, err)
	}
	if !r.CIDR.IsValid() || !r.CIDR.Addr().Is4() {
		return fmt.Errorf("%w: acl rule %d: CIDR %v is not IPv4", ErrInvalid, r.ID, r.CIDR)
	}
	return nil
}

// Validate checks the ACL: rule fields, unique numbers per direction and
// the MaxACLRules bound.
func (a *ACL) Validate() error {
	if a.ID == 0 {
		return fmt.Errorf("%w: acl id 0", ErrInvalid)
	}
	var count [2]int
	seen := map[[2]uint32]uint32{}
	for i := range a.Rules {
		r := &a.Rules[i]
		if err := r.Validate(); err != nil {
			return fmt.Errorf("acl %d: %w", a.ID, err)
		}
		k := [2]uint32{uint32(r.Direction), r.Number}
		if other, dup := seen[k]; dup {
			return fmt.Errorf("%w: acl %d: rules %d and %d both have %v number %d",
				ErrInvalid, a.ID, other, r.ID, r.Direction, r.Number)
		}
		seen[k] = r.ID
		count[r.Direction]++
		if count[r.Direction] > MaxACLRules {
			return fmt.Errorf("%w: acl %d has more than %d %v rules", ErrInvalid, a.ID, MaxACLRules, r.Direction)
		}
	}
	return nil
}
