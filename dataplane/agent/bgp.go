package agent

// BGP on gateway nodes (issue [4]): the agent runs a bgp.Speaker configured
// from the BgpPeer objects of its own node and announces, on every
// reconcile, exactly the public addresses this node serves:
//
//   - elastic IPs associated with a port, as /32 or /128, with the
//     communities and MED of their PublicPool (pools with announce=false
//     are routed by other means and skipped). Every gateway announces them:
//     elastic-IP NAT is stateless, so the fabric spreads flows over all
//     gateways with ECMP;
//   - NAT-gateway addresses: the owner_node with the pool's MED, every
//     other gateway with MED+100, a backup the fabric uses only when the
//     owner's route is gone;
//   - VPC CIDRs, when a peer says announce_vpc_prefixes (for routed VPCs),
//     of the VPCs whose objects this node holds;
//   - the VIPs of north-south load-balancer listeners (LbService,
//     internal = false) that this gateway's XDP load balancer serves, with
//     their pool's communities and MED, from every gateway (lb.go).
//
// Only what the data path installed is announced: an elastic IP or NAT
// gateway the reconcile failed on (a per-object error) is withdrawn, since
// attracting traffic this node cannot translate would black-hole it.
// Withdrawals are never explicit: they follow from the declarative diff of
// bgp.Speaker.SetRoutes when an address is released, disassociated, or no
// longer sent to this node.
//
// Graceful restart: the agent never stops the speaker when it exits (a
// planned restart or a crash look the same to the router): the sessions
// close without a NOTIFICATION and a router with graceful restart keeps
// the routes while the agent is away. The restarted agent reconciles once
// it has the controller's snapshot, calling SetRoutes with everything
// before SetPeers, so the new sessions carry every route before End-of-RIB
// and the router's forwarding table does not change. A gateway leaves the
// fabric for good by losing its role or its BgpPeers: SetPeers then closes
// the sessions with a Cease and the router withdraws at once.

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/bgp"
)

// backupMED is added to a pool's MED on gateways that announce a NAT
// gateway's addresses without owning its SNAT state.
const backupMED = 100

// reportInterval is how often the agent looks for a changed NodeReport
// (peer states, NAT statistics); only changes are sent.
const reportInterval = time.Second

// bgpAgent is the agent's speaker and what it was configured with.
type bgpAgent struct {
	mu       sync.Mutex
	speaker  *bgp.Speaker // nil until the node has a BGP peer
	asn      uint32
	routerID netip.Addr
	peerIDs  map[netip.Addr]uint32 // peer address -> BgpPeer ID, for reports

	// lastReport and lastStream: what was last sent, on which stream; a
	// new stream gets the report again (the controller forgets reports
	// when a node's stream ends).
	lastReport *agentv1.NodeReport
	lastStream agentv1.AgentService_SyncClient
}

// bgpPlan is what a node should announce and to whom: the pure result of
// its desired state, computed by planBGP.
type bgpPlan struct {
	ASN      uint32
	RouterID netip.Addr
	Peers    []bgp.Peer
	PeerIDs  map[netip.Addr]uint32
	Routes   []bgp.Route
	Errs     map[string]string // per-object errors (object key -> message)
}

// planBGP computes node's BGP configuration and routes from its desired
// state. failed holds the data path's per-object errors: objects in it are
// not announced. underlay is the default router ID. ipv6 says whether the
// realization translates IPv6 elastic IPs (the eBPF data path does not
// yet): an address it cannot translate is not announced either.
func planBGP(node string, underlay netip.Addr, desired map[string]*agentv1.Object, failed map[string]string, ipv6 bool) bgpPlan {
	p := bgpPlan{PeerIDs: map[netip.Addr]uint32{}, Errs: map[string]string{}}
	var peers []*agentv1.BgpPeer
	pools := map[uint32]*agentv1.PublicPool{}
	ngws := map[uint32]*agentv1.NatGateway{}
	var eips []*agentv1.ElasticIp
	var vpcs []*agentv1.Vpc
	var vips []*agentv1.LbService // north-south load-balancer listeners (lb.go)
	for _, o := range desired {
		switch b := o.GetBody().(type) {
		case *agentv1.Object_BgpPeer:
			if b.BgpPeer.GetNode() == node {
				peers = append(peers, b.BgpPeer)
			}
		case *agentv1.Object_PublicPool:
			pools[b.PublicPool.GetId()] = b.PublicPool
		case *agentv1.Object_NatGateway:
			ngws[b.NatGateway.GetId()] = b.NatGateway
		case *agentv1.Object_ElasticIp:
			eips = append(eips, b.ElasticIp)
		case *agentv1.Object_Vpc:
			vpcs = append(vpcs, b.Vpc)
		case *agentv1.Object_LbService:
			if !b.LbService.GetInternal() {
				vips = append(vips, b.LbService)
			}
		}
	}
	// A node announces nothing unless it is a gateway with a session.
	if _, gw := desired["gateway/"+node]; !gw || len(peers) == 0 {
		return p
	}
	// A gateway whose uplink is not set up translates nothing: it keeps
	// its sessions but announces no address, so the fabric sends the
	// traffic to the other gateways.
	uplinkDown := failed["gateway/"+node] != ""
	slices.SortFunc(peers, func(a, b *agentv1.BgpPeer) int { return cmp.Compare(a.GetId(), b.GetId()) })
	slices.SortFunc(eips, func(a, b *agentv1.ElasticIp) int { return cmp.Compare(a.GetId(), b.GetId()) })
	slices.SortFunc(vpcs, func(a, b *agentv1.Vpc) int { return cmp.Compare(a.GetId(), b.GetId()) })

	// One speaker per node, so one local ASN and router ID: the peer with
	// the lowest ID sets them and a peer disagreeing is an error of its own.
	announceVPCs := false
	for _, bp := range peers {
		key := fmt.Sprintf("bgp/%d", bp.GetId())
		rid := underlay
		if bp.GetRouterId() != "" {
			a, err := netip.ParseAddr(bp.GetRouterId())
			if err != nil || !a.Is4() {
				p.Errs[key] = fmt.Sprintf("router ID %q is not an IPv4 address", bp.GetRouterId())
				continue
			}
			rid = a
		}
		if p.ASN == 0 {
			p.ASN, p.RouterID = bp.GetLocalAsn(), rid
		} else if bp.GetLocalAsn() != p.ASN || rid != p.RouterID {
			p.Errs[key] = fmt.Sprintf("local ASN %d / router ID %v differ from the node's other BGP peers' (%d / %v): one speaker per node",
				bp.GetLocalAsn(), rid, p.ASN, p.RouterID)
			continue
		}
		addr, err := netip.ParseAddr(bp.GetPeerAddress())
		if err != nil {
			p.Errs[key] = fmt.Sprintf("peer address %q: %v", bp.GetPeerAddress(), err)
			continue
		}
		if _, dup := p.PeerIDs[addr]; dup {
			p.Errs[key] = fmt.Sprintf("peer address %v is already bgp/%d's", addr, p.PeerIDs[addr])
			continue
		}
		p.PeerIDs[addr] = bp.GetId()
		p.Peers = append(p.Peers, bgp.Peer{
			Address: addr, ASN: bp.GetPeerAsn(), Password: bp.GetPassword(),
			HoldTime:        time.Duration(bp.GetHoldTime()) * time.Second,
			GracefulRestart: bp.GetGracefulRestart(), RestartTime: time.Duration(bp.GetRestartTime()) * time.Second,
		})
		announceVPCs = announceVPCs || bp.GetAnnounceVpcPrefixes()
	}
	if len(p.Peers) == 0 {
		return p
	}

	seen := map[netip.Prefix]string{}
	add := func(key string, r bgp.Route) {
		if _, err := bgp.BuildPath(r); err != nil {
			p.Errs[key] = fmt.Sprintf("BGP route %v: %v", r.Prefix, err)
			return
		}
		if _, dup := seen[r.Prefix]; dup {
			return // the first (lowest ID) wins; the model keeps addresses unique
		}
		seen[r.Prefix] = key
		p.Routes = append(p.Routes, r)
	}
	for _, e := range eips {
		key := fmt.Sprintf("eip/%d", e.GetId())
		if failed[key] != "" || uplinkDown {
			continue
		}
		pool := pools[e.GetPoolId()]
		if pool == nil || !pool.GetAnnounce() {
			continue
		}
		addr, err := netip.ParseAddr(e.GetAddress())
		if err != nil {
			p.Errs[key] = fmt.Sprintf("address %q: %v", e.GetAddress(), err)
			continue
		}
		if addr.Is6() && !ipv6 {
			continue
		}
		med := pool.GetMed()
		switch {
		case e.GetPortId() != 0:
		case e.GetNatGatewayId() != 0:
			g := ngws[e.GetNatGatewayId()]
			ngwKey := fmt.Sprintf("ngw/%d", e.GetNatGatewayId())
			if g == nil || failed[ngwKey] != "" || !slices.Contains(g.GetAddresses(), addr.String()) {
				continue
			}
			if g.GetOwnerNode() != node {
				med += backupMED
			}
		default:
			continue // allocated, not associated: nothing to reach there
		}
		add(key, bgp.Route{Prefix: netip.PrefixFrom(addr, addr.BitLen()), Communities: pool.GetCommunities(), MED: med})
	}
	// Load-balancer VIPs, like elastic IPs from every gateway: the XDP
	// load balancer of each serves them with the same Maglev tables.
	slices.SortFunc(vips, func(a, b *agentv1.LbService) int { return cmp.Compare(a.GetId(), b.GetId()) })
	for _, s := range vips {
		key := fmt.Sprintf("lb/%d", s.GetId())
		pool := pools[s.GetPoolId()]
		if failed[key] != "" || uplinkDown || pool == nil || !pool.GetAnnounce() {
			continue
		}
		addr, err := netip.ParseAddr(s.GetVip())
		if err != nil {
			p.Errs[key] = fmt.Sprintf("VIP %q: %v", s.GetVip(), err)
			continue
		}
		if addr.Is6() && !ipv6 {
			continue
		}
		add(key, bgp.Route{Prefix: netip.PrefixFrom(addr, addr.BitLen()), Communities: pool.GetCommunities(), MED: pool.GetMed()})
	}
	if announceVPCs {
		for _, v := range vpcs {
			for _, c := range v.GetCidrs() {
				pfx, err := netip.ParsePrefix(c)
				if err != nil {
					p.Errs[fmt.Sprintf("vpc/%d", v.GetId())] = fmt.Sprintf("CIDR %q: %v", c, err)
					continue
				}
				add(fmt.Sprintf("vpc/%d", v.GetId()), bgp.Route{Prefix: pfx.Masked()})
			}
		}
	}
	return p
}

// reconcileBGP makes the speaker announce what the desired state says,
// adding its per-object errors to errs (which the agent acknowledges).
// failed are the data path's errors of the same reconcile.
func (a *Agent) reconcileBGP(desired map[string]*agentv1.Object, errs map[string]string) {
	// The eBPF data path translates IPv4 only; OVN does both families.
	plan := planBGP(a.cfg.Node, a.cfg.UnderlayIP, desired, errs, a.dp == nil)
	for k, v := range plan.Errs {
		errs[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := &a.bgp
	b.mu.Lock()
	defer b.mu.Unlock()
	peerErr := func(err error) {
		for _, id := range plan.PeerIDs {
			errs[fmt.Sprintf("bgp/%d", id)] = err.Error()
		}
		a.log.Error("bgp", "err", err)
	}
	if len(plan.Peers) == 0 {
		if b.speaker != nil {
			// No peers any more: close the sessions with a Cease so the
			// routers withdraw at once, and stop.
			if err := b.speaker.Stop(ctx); err != nil {
				a.log.Warn("bgp: stopping the speaker", "err", err)
			}
			b.speaker = nil
			a.log.Info("bgp speaker stopped: no peers")
		}
		b.peerIDs = nil
		return
	}
	if b.speaker != nil && (b.asn != plan.ASN || b.routerID != plan.RouterID) {
		// ASN and router ID are fixed for a GoBGP server's life.
		if err := b.speaker.Stop(ctx); err != nil {
			a.log.Warn("bgp: stopping the speaker", "err", err)
		}
		b.speaker = nil
	}
	if b.speaker == nil {
		s, err := bgp.New(bgp.Config{ASN: plan.ASN, RouterID: plan.RouterID, ListenPort: -1, Logger: a.log})
		if err == nil {
			err = s.Start(ctx)
		}
		if err != nil {
			peerErr(fmt.Errorf("bgp speaker (AS %d, router ID %v): %w", plan.ASN, plan.RouterID, err))
			return
		}
		b.speaker, b.asn, b.routerID = s, plan.ASN, plan.RouterID
		a.log.Info("bgp speaker started", "asn", plan.ASN, "router_id", plan.RouterID)
	}
	// Routes before peers: a session that comes up (first start, or a
	// restart under graceful restart) then sends every route before
	// End-of-RIB, and the router keeps its forwarding table as it was.
	if err := b.speaker.SetRoutes(ctx, plan.Routes); err != nil {
		peerErr(err)
		return
	}
	if err := b.speaker.SetPeers(ctx, plan.Peers); err != nil {
		peerErr(err)
		return
	}
	b.peerIDs = plan.PeerIDs
}

// nodeReport is what the agent observes for the API: its BGP sessions and
// the NAT gateways' counters on this node. nil: nothing to report.
func (a *Agent) nodeReport(ctx context.Context) *agentv1.NodeReport {
	r := &agentv1.NodeReport{}
	a.bgp.mu.Lock()
	s, ids := a.bgp.speaker, a.bgp.peerIDs
	a.bgp.mu.Unlock()
	if s != nil {
		states, err := s.PeerStates(ctx)
		if err != nil {
			a.log.Debug("bgp peer states", "err", err)
		}
		for _, st := range states {
			if id, ok := ids[st.Address]; ok {
				r.BgpPeers = append(r.BgpPeers, st.Proto(id))
			}
		}
	}
	if a.dp != nil {
		stats, err := a.dp.NATStats()
		if err != nil {
			a.log.Debug("nat stats", "err", err)
		}
		for _, n := range stats {
			r.Nat = append(r.Nat, &agentv1.NatStats{NatGatewayId: n.ID, ActiveFlows: n.ActiveFlows, PortExhausted: n.PortExhausted})
		}
	}
	r.BackendHealth = a.backendHealth() // lb.go
	return r
}

// reportLoop sends a NodeReport on the Sync stream whenever it changes,
// and again on every new stream.
func (a *Agent) reportLoop(ctx context.Context) {
	tick := time.NewTicker(reportInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-a.reportNow: // a backend's health changed (lb.go): no need to wait
		}
		a.mu.Lock()
		stream := a.stream
		a.mu.Unlock()
		if stream == nil {
			continue
		}
		r := a.nodeReport(ctx)
		a.bgp.mu.Lock()
		same := a.bgp.lastStream == stream && proto.Equal(a.bgp.lastReport, r)
		a.bgp.mu.Unlock()
		if same {
			continue
		}
		a.sendMu.Lock()
		err := stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Report{Report: r}})
		a.sendMu.Unlock()
		if err != nil {
			a.log.Debug("report not sent", "err", err)
			continue
		}
		a.bgp.mu.Lock()
		a.bgp.lastReport, a.bgp.lastStream = r, stream
		a.bgp.mu.Unlock()
	}
}

// BGPRoutes returns what this node's speaker announces (nil without one).
func (a *Agent) BGPRoutes() []netip.Prefix {
	a.bgp.mu.Lock()
	defer a.bgp.mu.Unlock()
	if a.bgp.speaker == nil {
		return nil
	}
	return a.bgp.speaker.Routes()
}
