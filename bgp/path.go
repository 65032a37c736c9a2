package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Route is one prefix the speaker announces to every peer.
type Route struct {
	// Prefix is what is announced: an elastic IP as a /32 or /128, or any
	// prefix (a VPC CIDR). It must be canonical (no host bits set).
	Prefix netip.Prefix
	// NextHop is left zero to let each session use its own local address
	// (next-hop-self), which is what a gateway wants: the router then sends
	// the traffic to the gateway that announced the route.
	NextHop netip.Addr
	// Communities holds standard communities "a:b" (16-bit each) and large
	// communities "a:b:c" (32-bit each), as PublicPool.communities does.
	Communities []string
	// MED is sent on every route; lower is preferred, so a backup gateway
	// announces a higher one.
	MED uint32
}

// String is for logs and errors.
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Prefix.String())
	if r.NextHop.IsValid() {
		b.WriteString(" via ")
		b.WriteString(r.NextHop.String())
	}
	fmt.Fprintf(&b, " med %d", r.MED)
	if len(r.Communities) > 0 {
		b.WriteString(" communities ")
		b.WriteString(strings.Join(r.Communities, ","))
	}
	return b.String()
}

// communities is the parsed form of Route.Communities.
type communities struct {
	standard []uint32
	large    []*api.LargeCommunity
}

// parseCommunities accepts "a:b" (a, b < 2^16) and "a:b:c" (each < 2^32).
// Duplicates are kept out so two spellings of the same set compare equal.
func parseCommunities(in []string) (communities, error) {
	var c communities
	seenStd := map[uint32]bool{}
	seenLarge := map[[3]uint32]bool{}
	for _, s := range in {
		parts := strings.Split(s, ":")
		switch len(parts) {
		case 2:
			hi, err1 := strconv.ParseUint(parts[0], 10, 16)
			lo, err2 := strconv.ParseUint(parts[1], 10, 16)
			if err1 != nil || err2 != nil {
				return communities{}, fmt.Errorf("community %q: want \"a:b\" with a and b in 0..65535", s)
			}
			v := uint32(hi)<<16 | uint32(lo)
			if !seenStd[v] {
				seenStd[v] = true
				c.standard = append(c.standard, v)
			}
		case 3:
			var v [3]uint32
			for i, p := range parts {
				n, err := strconv.ParseUint(p, 10, 32)
				if err != nil {
					return communities{}, fmt.Errorf("large community %q: want \"a:b:c\" with each part in 0..4294967295", s)
				}
				v[i] = uint32(n)
			}
			if !seenLarge[v] {
				seenLarge[v] = true
				c.large = append(c.large, &api.LargeCommunity{GlobalAdmin: v[0], LocalData1: v[1], LocalData2: v[2]})
			}
		default:
			return communities{}, fmt.Errorf("community %q: want \"a:b\" or large \"a:b:c\"", s)
		}
	}
	slices.Sort(c.standard)
	slices.SortFunc(c.large, func(a, b *api.LargeCommunity) int {
		if a.GlobalAdmin != b.GlobalAdmin {
			return cmpU32(a.GlobalAdmin, b.GlobalAdmin)
		}
		if a.LocalData1 != b.LocalData1 {
			return cmpU32(a.LocalData1, b.LocalData1)
		}
		return cmpU32(a.LocalData2, b.LocalData2)
	})
	return c, nil
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// validateRoute checks what GoBGP would otherwise accept silently or reject
// late: a prefix with host bits, a v4-mapped address, a next hop of the
// other family.
func validateRoute(r Route) error {
	if !r.Prefix.IsValid() {
		return fmt.Errorf("route %v: invalid prefix", r.Prefix)
	}
	if r.Prefix.Addr().Is4In6() {
		return fmt.Errorf("route %v: IPv4-mapped IPv6 prefix; write it as IPv4", r.Prefix)
	}
	if r.Prefix.Addr().Zone() != "" {
		return fmt.Errorf("route %v: prefix has a zone", r.Prefix)
	}
	if r.Prefix.Masked() != r.Prefix {
		return fmt.Errorf("route %v: host bits set (did you mean %v?)", r.Prefix, r.Prefix.Masked())
	}
	if r.NextHop.IsValid() {
		if r.NextHop.Is4() != r.Prefix.Addr().Is4() || r.NextHop.Is4In6() {
			return fmt.Errorf("route %v: next hop %v is not of the prefix's family", r.Prefix, r.NextHop)
		}
		if r.NextHop.IsUnspecified() {
			return fmt.Errorf("route %v: next hop %v: leave it empty for next-hop-self", r.Prefix, r.NextHop)
		}
	}
	if _, err := parseCommunities(r.Communities); err != nil {
		return fmt.Errorf("route %v: %w", r.Prefix, err)
	}
	return nil
}

// family returns the GoBGP address family of a prefix.
func family(p netip.Prefix) *api.Family {
	if p.Addr().Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

// BuildPath turns a route into the GoBGP path that announces it. It is pure:
// the same route always gives the same path, so the speaker can compare
// paths to decide what changed.
func BuildPath(r Route) (*api.Path, error) {
	if err := validateRoute(r); err != nil {
		return nil, err
	}
	comms, _ := parseCommunities(r.Communities) // validated above
	nlri, err := anypb.New(&api.IPAddressPrefix{
		PrefixLen: uint32(r.Prefix.Bits()),
		Prefix:    r.Prefix.Addr().String(),
	})
	if err != nil {
		return nil, fmt.Errorf("route %v: encoding NLRI: %w", r.Prefix, err)
	}
	fam := family(r.Prefix)
	// An unspecified next hop is GoBGP's way of saying "the session's local
	// address"; it rewrites it per peer when it sends the UPDATE.
	nh := "0.0.0.0"
	if !r.Prefix.Addr().Is4() {
		nh = "::"
	}
	if r.NextHop.IsValid() {
		nh = r.NextHop.String()
	}

	attrs := []proto.Message{
		&api.OriginAttribute{Origin: 0}, // IGP: these addresses are ours
	}
	if fam.Afi == api.Family_AFI_IP {
		attrs = append(attrs, &api.NextHopAttribute{NextHop: nh})
	} else {
		attrs = append(attrs, &api.MpReachNLRIAttribute{Family: fam, NextHops: []string{nh}, Nlris: []*anypb.Any{nlri}})
	}
	attrs = append(attrs, &api.MultiExitDiscAttribute{Med: r.MED})
	if len(comms.standard) > 0 {
		attrs = append(attrs, &api.CommunitiesAttribute{Communities: comms.standard})
	}
	if len(comms.large) > 0 {
		attrs = append(attrs, &api.LargeCommunitiesAttribute{Communities: comms.large})
	}
	pattrs := make([]*anypb.Any, 0, len(attrs))
	for _, a := range attrs {
		x, err := anypb.New(a)
		if err != nil {
			return nil, fmt.Errorf("route %v: encoding attribute %T: %w", r.Prefix, a, err)
		}
		pattrs = append(pattrs, x)
	}
	return &api.Path{Family: fam, Nlri: nlri, Pattrs: pattrs}, nil
}

// announcement is a route as announced, with the path that carries it.
type announcement struct {
	route Route
	path  *api.Path
}

// plan is what SetRoutes must do to go from the announced set to the desired
// one: each entry is one UPDATE on the wire, nothing more.
type plan struct {
	announce []announcement // new prefixes and prefixes whose attributes changed
	withdraw []announcement // prefixes no longer wanted (as announced before)
	// respelled are unchanged on the wire but written differently
	// (communities reordered): remembered so the next call compares cheaply.
	respelled []announcement
}

func sameRoute(a, b Route) bool {
	return a.Prefix == b.Prefix && a.NextHop == b.NextHop && a.MED == b.MED && slices.Equal(a.Communities, b.Communities)
}

// diffRoutes builds every new or changed path first, so one bad route fails
// the whole call before anything is sent. A route identical to the one
// announced costs a map lookup: a reconcile loop passes thousands of
// unchanged routes on every call, and an association must not wait for them.
func diffRoutes(announced map[netip.Prefix]announcement, desired []Route) (plan, error) {
	wanted := make(map[netip.Prefix]struct{}, len(desired))
	var p plan
	for _, r := range desired {
		if _, dup := wanted[r.Prefix]; dup {
			return plan{}, fmt.Errorf("route %v: prefix listed twice", r.Prefix)
		}
		wanted[r.Prefix] = struct{}{}
		old, had := announced[r.Prefix]
		if had && sameRoute(old.route, r) {
			continue
		}
		path, err := BuildPath(r)
		if err != nil {
			return plan{}, err
		}
		r.Communities = slices.Clone(r.Communities) // the caller may reuse its slice
		a := announcement{route: r, path: path}
		if had && proto.Equal(old.path, path) {
			p.respelled = append(p.respelled, a)
			continue
		}
		p.announce = append(p.announce, a)
	}
	if len(wanted) < len(announced) || len(p.announce) > 0 {
		for pfx, a := range announced {
			if _, ok := wanted[pfx]; !ok {
				p.withdraw = append(p.withdraw, a)
			}
		}
	}
	byPrefix := func(a, b announcement) int { return comparePrefixes(a.route.Prefix, b.route.Prefix) }
	slices.SortFunc(p.announce, byPrefix)
	slices.SortFunc(p.withdraw, byPrefix)
	return p, nil
}

func sortedPrefixes[V any](m map[netip.Prefix]V) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sortPrefixes(out)
	return out
}

func sortPrefixes(ps []netip.Prefix) { slices.SortFunc(ps, comparePrefixes) }

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
