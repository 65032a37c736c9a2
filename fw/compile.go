package fw

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// PortPrefix is a prefix of the 16-bit port space: the Bits high bits of
// Value. For ICMP the port space holds type<<8 | code.
type PortPrefix struct {
	Value uint16
	Bits  uint8
}

// Contains reports whether port v is inside the prefix.
func (pp PortPrefix) Contains(v uint16) bool {
	if pp.Bits == 0 {
		return true
	}
	shift := 16 - pp.Bits
	return v>>shift == pp.Value>>shift
}

// rangePrefixes decomposes the inclusive range [lo, hi] into the minimal
// list of prefixes (at most 30).
func rangePrefixes(lo, hi uint16) []PortPrefix {
	var out []PortPrefix
	cur, end := uint32(lo), uint32(hi)
	for cur <= end {
		// largest aligned block starting at cur that fits in [cur, end]
		size := uint32(1) << 16
		if cur != 0 {
			size = cur & -cur
		}
		for cur+size-1 > end {
			size >>= 1
		}
		out = append(out, PortPrefix{Value: uint16(cur), Bits: uint8(16 - bits.TrailingZeros32(size))})
		cur += size
	}
	return out
}

// portSpan is the interval of the port space a rule covers.
func portSpan(proto uint8, ports PortRange, icmp *ICMPMatch) (lo, hi uint16) {
	switch proto {
	case ProtoTCP, ProtoUDP:
		if ports.All() {
			return 0, 0xffff
		}
		return ports.From, ports.To
	case ProtoICMP:
		switch {
		case icmp == nil:
			return 0, 0xffff
		case icmp.AnyCode:
			t := uint16(icmp.Type) << 8
			return t, t | 0xff
		default:
			v := uint16(icmp.Type)<<8 | uint16(icmp.Code)
			return v, v
		}
	}
	return 0, 0xffff
}

// ---- security groups ----

// IPCacheEntry maps a remote prefix of a VPC to its identity.
type IPCacheEntry struct {
	Prefix   netip.Prefix
	Identity uint32
}

// MaxInlineSpans is how many port spans an SGEntry carries itself; an
// entry with more refers to a port set instead.
const MaxInlineSpans = 8

// Span is an inclusive interval of the port space (TCP/UDP destination
// port, or ICMP type<<8 | code).
type Span struct {
	Lo, Hi uint16
}

// SGEntry allows traffic of a policy to/from a remote identity for one
// protocol (ProtoAny: every protocol and port) on the ports in Spans, or,
// when there are more than MaxInlineSpans, in port set PortSet.
type SGEntry struct {
	Policy    uint32
	Identity  uint32
	Direction Direction
	Protocol  uint8
	Spans     []Span
	PortSet   uint32
	// Rule is the lowest id of the rules merged into the entry. Allow
	// decisions are not reported, so it serves debugging only.
	Rule uint32
}

// SGPortSetEntry puts the port prefix Port into set Set of a policy.
type SGPortSetEntry struct {
	Policy uint32
	Set    uint32
	Port   PortPrefix
}

// CompiledSG is the compiled form of the security-group policies of a VPC.
type CompiledSG struct {
	VPC      uint32
	Policies []uint32 // ids of the policies compiled, sorted
	IPCache  []IPCacheEntry
	Entries  []SGEntry
	PortSets []SGPortSetEntry
}

// IPInterval is an elementary interval of the IPv4 space (addresses as
// host-order numbers) starting at Start and ending before the next one, with
// the identity of the longest prefix covering it (0: none).
type IPInterval struct {
	Start    uint32
	Identity uint32
}

// IPIntervals turns the ipcache prefixes into sorted, non-overlapping
// intervals covering the whole address space, neighbours with the same
// identity merged: the form the data path searches with a fixed number of
// steps. The first interval starts at 0.
func (c *CompiledSG) IPIntervals() []IPInterval {
	ids := map[netip.Prefix]uint32{}
	cuts := map[uint32]bool{0: true}
	for _, e := range c.IPCache {
		p := e.Prefix.Masked()
		ids[p] = e.Identity
		lo := addrNum(p.Addr())
		hi := lo | uint32(uint64(1)<<(32-p.Bits())-1)
		cuts[lo] = true
		if hi != 0xffffffff {
			cuts[hi+1] = true
		}
	}
	var out []IPInterval
	for _, start := range slices.Sorted(maps.Keys(cuts)) {
		a := netip.AddrFrom4([4]byte{byte(start >> 24), byte(start >> 16), byte(start >> 8), byte(start)})
		var id uint32
		for b := 32; b >= 0; b-- {
			if v, ok := ids[netip.PrefixFrom(a, b).Masked()]; ok {
				id = v
				break
			}
		}
		if n := len(out); n > 0 && out[n-1].Identity == id {
			continue
		}
		out = append(out, IPInterval{Start: start, Identity: id})
	}
	return out
}

type selector struct {
	cidr  netip.Prefix // valid for CIDR selectors
	group uint32       // non-zero for remote-group selectors
}

func (s selector) String() string {
	if s.group != 0 {
		return "g" + strconv.FormatUint(uint64(s.group), 10)
	}
	return s.cidr.String()
}

func ruleSelector(r *SGRule) selector {
	if r.RemoteGroup != 0 {
		return selector{group: r.RemoteGroup}
	}
	return selector{cidr: r.RemoteCIDR.Masked()}
}

// CompileSecurityGroups compiles the policies of one VPC, given the members
// of the remote groups they reference.
func CompileSecurityGroups(vpc uint32, policies []SecurityGroupPolicy, groups GroupMembers) (*CompiledSG, error) {
	cidrs := map[netip.Prefix]bool{}
	referenced := map[uint32]bool{}
	ids := map[uint32]bool{}
	for i := range policies {
		p := &policies[i]
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("compile security groups of vpc %d: %w", vpc, err)
		}
		if ids[p.ID] {
			return nil, fmt.Errorf("compile security groups of vpc %d: %w: policy %d twice", vpc, ErrInvalid, p.ID)
		}
		ids[p.ID] = true
		for j := range p.Rules {
			s := ruleSelector(&p.Rules[j])
			if s.group != 0 {
				referenced[s.group] = true
			} else {
				cidrs[s.cidr] = true
			}
		}
	}

	// Every selector becomes a prefix; groups contribute their members.
	prefixes := map[netip.Prefix]bool{}
	for c := range cidrs {
		prefixes[c] = true
	}
	memberOf := map[netip.Addr][]uint32{}
	for g := range referenced {
		for _, a := range groups[g] {
			if !a.Is4() {
				return nil, fmt.Errorf("compile security groups of vpc %d: %w: group %d member %v is not IPv4", vpc, ErrInvalid, g, a)
			}
			if !slices.Contains(memberOf[a], g) {
				memberOf[a] = append(memberOf[a], g)
			}
			prefixes[netip.PrefixFrom(a, 32)] = true
		}
	}

	// A prefix's identity is the set of selectors containing it: the only
	// CIDR selectors that can contain an address are its prefix's ancestors
	// in the set, because the longest match is the most specific one.
	out := &CompiledSG{VPC: vpc}
	byKey := map[string]uint32{}
	used := map[uint32]string{}
	members := map[selector][]uint32{}     // selector -> identities containing it
	idSelectors := map[uint32][]selector{} // identity -> its selectors
	for _, p := range sortedPrefixes(prefixes) {
		var sels []selector
		for b := 0; b <= p.Bits(); b++ {
			if c := netip.PrefixFrom(p.Addr(), b).Masked(); cidrs[c] {
				sels = append(sels, selector{cidr: c})
			}
		}
		if p.Bits() == 32 {
			for _, g := range memberOf[p.Addr()] {
				sels = append(sels, selector{group: g})
			}
		}
		names := make([]string, len(sels))
		for i, s := range sels {
			names[i] = s.String()
		}
		slices.Sort(names)
		key := strings.Join(names, ",")
		id, ok := byKey[key]
		if !ok {
			id = identityOf(key, used)
			byKey[key] = id
			used[id] = key
			for _, s := range sels {
				members[s] = append(members[s], id)
			}
			idSelectors[id] = sels
		}
		out.IPCache = append(out.IPCache, IPCacheEntry{Prefix: p, Identity: id})
	}

	for i := range policies {
		p := &policies[i]
		out.Policies = append(out.Policies, p.ID)
		sets := map[string]uint32{}
		for _, d := range []Direction{Egress, Ingress} {
			out.Entries = append(out.Entries, policyEntries(p, d, members, idSelectors, sets)...)
		}
		for key, set := range sets {
			for _, sp := range parseSpans(key) {
				for _, pp := range rangePrefixes(sp.Lo, sp.Hi) {
					out.PortSets = append(out.PortSets, SGPortSetEntry{Policy: p.ID, Set: set, Port: pp})
				}
			}
		}
	}
	slices.Sort(out.Policies)
	slices.SortFunc(out.Entries, func(a, b SGEntry) int {
		return cmp.Or(cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Identity, b.Identity),
			cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Protocol, b.Protocol))
	})
	slices.SortFunc(out.PortSets, func(a, b SGPortSetEntry) int {
		return cmp.Or(cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Set, b.Set),
			cmp.Compare(a.Port.Value, b.Port.Value), cmp.Compare(a.Port.Bits, b.Port.Bits))
	})
	return out, nil
}

// l4span is the part of the (protocol, port) space one rule allows.
type l4span struct {
	proto  uint8 // ProtoAny: everything
	lo, hi uint16
	rule   uint32
}

func ruleSpan(r *SGRule) l4span {
	switch r.Protocol {
	case ProtoTCP, ProtoUDP, ProtoICMP:
		lo, hi := portSpan(r.Protocol, r.Ports, r.ICMP)
		return l4span{proto: r.Protocol, lo: lo, hi: hi, rule: r.ID}
	}
	return l4span{proto: r.Protocol, lo: 0, hi: 0xffff, rule: r.ID}
}

// policyEntries emits the entries of policy p in direction d. For each
// identity, the port spans of all rules whose selector it contains are
// merged per protocol: emitting per rule would multiply entries by the
// rules sharing an identity (nested CIDRs). An identity allowed any
// protocol gets the protocol-0 entry only, which the data path consults
// for every packet. Span lists too long to inline become port sets of the
// policy, shared by every entry with the same list.
func policyEntries(p *SecurityGroupPolicy, d Direction, members map[selector][]uint32,
	idSelectors map[uint32][]selector, sets map[string]uint32) []SGEntry {
	spans := map[selector][]l4span{}
	for j := range p.Rules {
		r := &p.Rules[j]
		if r.Direction == d {
			s := ruleSelector(r)
			spans[s] = append(spans[s], ruleSpan(r))
		}
	}
	identities := map[uint32]bool{}
	for s := range spans {
		for _, id := range members[s] {
			identities[id] = true
		}
	}
	var out []SGEntry
	for _, id := range slices.Sorted(maps.Keys(identities)) {
		byProto := map[uint8][]l4span{}
		for _, s := range idSelectors[id] {
			for _, sp := range spans[s] {
				byProto[sp.proto] = append(byProto[sp.proto], sp)
			}
		}
		if anyProto := byProto[ProtoAny]; len(anyProto) > 0 {
			out = append(out, SGEntry{Policy: p.ID, Identity: id, Direction: d, Protocol: ProtoAny,
				Spans: []Span{{0, 0xffff}}, Rule: lowestRule(anyProto)})
			continue
		}
		for _, proto := range slices.Sorted(maps.Keys(byProto)) {
			list := byProto[proto]
			e := SGEntry{Policy: p.ID, Identity: id, Direction: d, Protocol: proto, Rule: lowestRule(list)}
			for _, iv := range mergeSpans(list) {
				e.Spans = append(e.Spans, Span{iv.lo, iv.hi})
			}
			if len(e.Spans) > MaxInlineSpans {
				key := spansKey(e.Spans)
				set, ok := sets[key]
				if !ok {
					set = uint32(len(sets) + 1)
					sets[key] = set
				}
				e.Spans, e.PortSet = nil, set
			}
			out = append(out, e)
		}
	}
	return out
}

func spansKey(spans []Span) string {
	parts := make([]string, len(spans))
	for i, s := range spans {
		parts[i] = strconv.Itoa(int(s.Lo)) + "-" + strconv.Itoa(int(s.Hi))
	}
	return strings.Join(parts, ",")
}

func parseSpans(key string) []Span {
	var out []Span
	for _, part := range strings.Split(key, ",") {
		lo, hi, _ := strings.Cut(part, "-")
		l, _ := strconv.Atoi(lo)
		h, _ := strconv.Atoi(hi)
		out = append(out, Span{uint16(l), uint16(h)})
	}
	return out
}

func lowestRule(spans []l4span) uint32 {
	low := spans[0].rule
	for _, sp := range spans[1:] {
		low = min(low, sp.rule)
	}
	return low
}

// mergeSpans returns the union of the spans as sorted disjoint intervals,
// adjacent ones joined.
func mergeSpans(spans []l4span) []l4span {
	sorted := slices.Clone(spans)
	slices.SortFunc(sorted, func(a, b l4span) int { return cmp.Compare(a.lo, b.lo) })
	var out []l4span
	for _, sp := range sorted {
		if n := len(out); n > 0 && uint32(sp.lo) <= uint32(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, sp.hi)
			continue
		}
		out = append(out, sp)
	}
	return out
}

// identityOf derives an identity from the selector set so that it survives
// recompilation when unrelated rules change; collisions probe upwards.
// Identity 0 is reserved for "no selector matches".
func identityOf(key string, used map[uint32]string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(key))
	id := h.Sum32()
	for {
		if other, taken := used[id]; id != 0 && (!taken || other == key) {
			return id
		}
		id++
	}
}

func sortedPrefixes(set map[netip.Prefix]bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return out
}

// ---- network ACLs ----

// Bitmap has bit i set for the i-th rule of an ACL direction in number order.
type Bitmap [MaxACLRules / 64]uint64

func (b *Bitmap) set(i int) { b[i/64] |= 1 << (i % 64) }

// ACLProtoOther is the protocol key of the bitmap for protocols no rule names.
const ACLProtoOther uint16 = 0xffff

// ACLProtoEntry: the rules matching Protocol (or any protocol).
type ACLProtoEntry struct {
	Direction Direction
	Protocol  uint16
	Rules     Bitmap
}

// ACLIntervals cuts one field's space (IPv4 addresses as host-order
// numbers, or ports) into intervals: interval i starts at Starts[i] and
// ends before Starts[i+1]; Rules[i] are the rules matching all of it.
// Starts[0] is 0; there are at most 2*MaxACLRules+1 intervals.
type ACLIntervals struct {
	Starts []uint32
	Rules  []Bitmap
}

// find returns the interval holding x.
func (iv *ACLIntervals) find(x uint32) int {
	i, _ := slices.BinarySearch(iv.Starts, x+1)
	return i - 1
}

// Match returns the rules matching value x of the field.
func (iv *ACLIntervals) Match(x uint32) Bitmap { return iv.Rules[iv.find(x)] }

// ACLDirection holds the address and port intervals of one direction.
type ACLDirection struct {
	Direction Direction
	IPs       ACLIntervals // remote address
	Ports     ACLIntervals // destination port, or ICMP type<<8 | code
}

// ACLRuleEntry: what bit Index of Direction stands for.
type ACLRuleEntry struct {
	Direction Direction
	Index     uint32
	Rule      uint32
	Action    ACLAction
}

// CompiledACL is the bitmap form of one ACL.
type CompiledACL struct {
	ID         uint32
	Directions []ACLDirection // both, always
	Protocols  []ACLProtoEntry
	Rules      []ACLRuleEntry
}

// CompileACL compiles a network ACL into per-field bitmaps.
func CompileACL(a *ACL) (*CompiledACL, error) {
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("compile acl: %w", err)
	}
	out := &CompiledACL{ID: a.ID}
	for _, d := range []Direction{Egress, Ingress} {
		rules := a.sorted(d)
		for i, r := range rules {
			out.Rules = append(out.Rules, ACLRuleEntry{Direction: d, Index: uint32(i), Rule: r.ID, Action: r.Action})
		}
		out.Protocols = append(out.Protocols, aclProtocols(d, rules)...)
		ips := make([]span32, len(rules))
		ports := make([]span32, len(rules))
		for i, r := range rules {
			c := r.CIDR.Masked()
			lo := addrNum(c.Addr())
			ips[i] = span32{lo, lo | uint32(uint64(1)<<(32-c.Bits())-1)}
			plo, phi := portSpan(r.Protocol, r.Ports, r.ICMP)
			ports[i] = span32{uint32(plo), uint32(phi)}
		}
		out.Directions = append(out.Directions, ACLDirection{Direction: d,
			IPs: intervals(ips, 0xffffffff), Ports: intervals(ports, 0xffff)})
	}
	return out, nil
}

func aclProtocols(d Direction, rules []ACLRule) []ACLProtoEntry {
	var protos []uint16
	for _, r := range rules {
		if r.Protocol != ProtoAny && !slices.Contains(protos, uint16(r.Protocol)) {
			protos = append(protos, uint16(r.Protocol))
		}
	}
	slices.Sort(protos)
	protos = append(protos, ACLProtoOther)
	var out []ACLProtoEntry
	for _, p := range protos {
		e := ACLProtoEntry{Direction: d, Protocol: p}
		for i, r := range rules {
			if r.Protocol == ProtoAny || uint16(r.Protocol) == p {
				e.Rules.set(i)
			}
		}
		out = append(out, e)
	}
	return out
}

func addrNum(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

type span32 struct{ lo, hi uint32 }

// intervals cuts [0, max] at every span boundary, so that each interval is
// covered entirely or not at all by each span, gives each interval the
// bitmap of the spans covering it and merges neighbours with equal bitmaps.
func intervals(spans []span32, max uint32) ACLIntervals {
	cuts := map[uint32]bool{0: true}
	for _, s := range spans {
		cuts[s.lo] = true
		if s.hi < max {
			cuts[s.hi+1] = true
		}
	}
	starts := slices.Sorted(maps.Keys(cuts))
	var out ACLIntervals
	for _, lo := range starts {
		var b Bitmap
		for i, s := range spans {
			if s.lo <= lo && s.hi >= lo { // covers the whole interval
				b.set(i)
			}
		}
		if n := len(out.Rules); n > 0 && out.Rules[n-1] == b {
			continue
		}
		out.Starts = append(out.Starts, lo)
		out.Rules = append(out.Rules, b)
	}
	return out
}
