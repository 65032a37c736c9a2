package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// natBackupMED is added to a NAT gateway's MED on the gateways that do not
// own it: its SNAT state lives on the owner, so the fabric should send
// replies there while the owner is up, and elsewhere only when it is not.
const natBackupMED = 100

// Objects is what a gateway node's routes are derived from: the agent's
// desired state of the outside-world kinds.
type Objects struct {
	Node        string // this gateway's node ID
	Pools       []*agentv1.PublicPool
	ElasticIPs  []*agentv1.ElasticIp
	NATGateways []*agentv1.NatGateway
	VPCs        []*agentv1.Vpc
	// AnnounceVPCPrefixes is BgpPeer.announce_vpc_prefixes of this node's
	// peers: the VPCs' CIDRs are routed, not hidden behind NAT.
	AnnounceVPCPrefixes bool
}

// RoutesFor computes the routes a gateway announces, sorted by prefix:
//   - an elastic IP associated with a bound port, as a /32 or /128, with its
//     pool's communities and MED, when the pool is announced;
//   - a NAT gateway's addresses likewise, with the MED raised by 100 on
//     gateways other than its owner_node;
//   - the VPCs' CIDRs, when asked.
//
// Unassociated elastic IPs are not announced: nothing would forward them.
// It is pure. An object that cannot be announced (an address that does not
// parse, a pool that is missing, a prefix claimed twice) is left out and
// reported in err; the routes returned are still the right ones for every
// other object, so the caller can announce them and report err.
func RoutesFor(o Objects) ([]Route, error) {
	pools := make(map[uint32]*agentv1.PublicPool, len(o.Pools))
	for _, p := range o.Pools {
		pools[p.GetId()] = p
	}
	eipByAddr := map[string]*agentv1.ElasticIp{}
	for _, e := range o.ElasticIPs {
		eipByAddr[e.GetAddress()] = e
	}
	var errs []error
	byPrefix := map[netip.Prefix]Route{}
	owner := map[netip.Prefix]string{} // what claimed each prefix, for errors
	add := func(what string, r Route) {
		if prev, ok := owner[r.Prefix]; ok {
			errs = append(errs, fmt.Errorf("%s: %v already announced for %s", what, r.Prefix, prev))
			return
		}
		if err := validateRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
			return
		}
		owner[r.Prefix] = what
		byPrefix[r.Prefix] = r
	}
	hostRoute := func(what, addr string, pool *agentv1.PublicPool, extraMED uint32) {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: address %q: %w", what, addr, err))
			return
		}
		add(what, Route{
			Prefix:      netip.PrefixFrom(a, a.BitLen()),
			Communities: slices.Clone(pool.GetCommunities()),
			MED:         pool.GetMed() + extraMED,
		})
	}

	for _, e := range o.ElasticIPs {
		what := fmt.Sprintf("elastic IP %d (%s)", e.GetId(), e.GetAddress())
		if e.GetPortId() == 0 || e.GetPortNode() == "" {
			continue // not associated with a port, or the port is unbound
		}
		pool, ok := pools[e.GetPoolId()]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: pool %d unknown", what, e.GetPoolId()))
			continue
		}
		if pool.GetAnnounce() {
			hostRoute(what, e.GetAddress(), pool, 0)
		}
	}
	for _, n := range o.NATGateways {
		var extra uint32
		if n.GetOwnerNode() != o.Node {
			extra = natBackupMED
		}
		for _, addr := range n.GetAddresses() {
			what := fmt.Sprintf("NAT gateway %d (%s)", n.GetId(), addr)
			e, ok := eipByAddr[addr]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: no elastic IP has this address", what))
				continue
			}
			pool, ok := pools[e.GetPoolId()]
			if !ok {
				errs = append(errs, fmt.Errorf("%s: pool %d unknown", what, e.GetPoolId()))
				continue
			}
			if pool.GetAnnounce() {
				hostRoute(what, addr, pool, extra)
			}
		}
	}
	if o.AnnounceVPCPrefixes {
		for _, v := range o.VPCs {
			for _, c := range v.GetCidrs() {
				what := fmt.Sprintf("VPC %d (%s)", v.GetId(), c)
				p, err := netip.ParsePrefix(c)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", what, err))
					continue
				}
				add(what, Route{Prefix: p})
			}
		}
	}
	out := make([]Route, 0, len(byPrefix))
	for _, p := range sortedPrefixes(byPrefix) {
		out = append(out, byPrefix[p])
	}
	return out, errors.Join(errs...)
}

// PeerFromProto converts a BgpPeer object into the speaker's Peer, applying
// the defaults its comments document (hold time 90 s, restart time 120 s).
func PeerFromProto(p *agentv1.BgpPeer) (Peer, error) {
	addr, err := netip.ParseAddr(p.GetPeerAddress())
	if err != nil {
		return Peer{}, fmt.Errorf("BGP peer %d: address %q: %w", p.GetId(), p.GetPeerAddress(), err)
	}
	out := Peer{
		Address:         addr,
		ASN:             p.GetPeerAsn(),
		HoldTime:        time.Duration(p.GetHoldTime()) * time.Second,
		Password:        p.GetPassword(),
		GracefulRestart: p.GetGracefulRestart(),
		RestartTime:     time.Duration(p.GetRestartTime()) * time.Second,
	}
	if err := validatePeer(out); err != nil {
		return Peer{}, fmt.Errorf("BGP peer %d: %w", p.GetId(), err)
	}
	return out, nil
}
