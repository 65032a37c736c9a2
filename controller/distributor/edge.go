package distributor

// What agents report about the outside world (issue [4]), and gateway
// liveness.
//
// Reports (BGP peer states, NAT statistics) are status, not intent: they
// are kept in memory, replaced by each report, dropped when the node's
// last stream ends, and served to the API through EdgeStatusProvider. An
// identical report costs a comparison and nothing else; a changed one a
// pointer swap. Nothing is written to the store for them, so a busy NAT
// gateway neither churns the store nor changes resources' etags.
//
// Liveness is different: when a gateway's agent has been gone for
// GatewayGrace, the distributor writes model.GatewayDownKey so the NAT
// gateways it owned move to another gateway, and deletes the key when the
// agent is back. Through the store the change is ordered with every other
// one, keeps versions equal to store revisions and survives restarts.

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/store"
)

// DefaultGatewayGrace is how long a gateway's agent may be away before its
// NAT gateways move: longer than an agent restart (which graceful restart
// bridges for BGP), short enough that outbound connections recover soon.
const DefaultGatewayGrace = 5 * time.Second

// report records node's latest report and stores the backend health
// changes it carries (lb.go). Called from its Sync stream, so one node's
// health writes happen in the order of its reports.
func (d *Distributor) report(node string, r *agentv1.NodeReport) {
	d.mu.Lock()
	ns := d.node(node)
	if proto.Equal(ns.report, r) {
		d.mu.Unlock()
		return
	}
	ns.report = r // freshly unmarshalled: ours
	ws := d.healthChanges(node, r.GetBackendHealth())
	d.mu.Unlock()
	if len(ws) > 0 && !d.writeHealth(node, ws) {
		// Forget the report, so the agent's next one (even an identical
		// one) is folded again instead of being skipped as known.
		d.mu.Lock()
		if ns.report == r {
			ns.report = nil
		}
		d.mu.Unlock()
	}
}

// NatGatewayStatus implements apiserver.EdgeStatusProvider: the owner the
// model chose and the statistics the gateways report for it.
func (d *Distributor) NatGatewayStatus(n *mv1.NatGateway) *mv1.NatGatewayStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &mv1.NatGatewayStatus{}
	if o := d.model.Object(d.model.KeyOf(n.GetName())); o != nil {
		st.OwnerNode = o.GetNatGateway().GetOwnerNode()
	}
	// Summed over gateways: after a failover the previous owner may still
	// report flows that are draining.
	for _, ns := range d.nodes {
		for _, s := range ns.report.GetNat() {
			if s.GetNatGatewayId() == n.GetId() {
				st.ActiveFlows += s.GetActiveFlows()
				st.PortExhausted += s.GetPortExhausted()
			}
		}
	}
	return st
}

// BgpPeerStatus implements apiserver.EdgeStatusProvider: the session state
// the peer's node last reported.
func (d *Distributor) BgpPeerStatus(p *mv1.BgpPeer) *mv1.BgpPeerStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	ns := d.nodes[nodeID(p.GetNode())]
	if ns == nil || len(ns.subs) == 0 {
		return &mv1.BgpPeerStatus{LastError: "the node's agent is not connected"}
	}
	for _, s := range ns.report.GetBgpPeers() {
		if s.GetPeerId() != p.GetId() {
			continue
		}
		out := &mv1.BgpPeerStatus{State: s.GetState(), Advertised: s.GetAdvertised(), Received: s.GetReceived(), LastError: s.GetLastError()}
		if s.GetSinceUnix() > 0 {
			out.Since = timestamppb.New(time.Unix(s.GetSinceUnix(), 0))
		}
		return out
	}
	return &mv1.BgpPeerStatus{}
}

func nodeID(name string) string {
	if len(name) > len("nodes/") && name[:len("nodes/")] == "nodes/" {
		return name[len("nodes/"):]
	}
	return name
}

// streamEnded is called with d.mu held when a Sync stream of node ends.
func (d *Distributor) streamEnded(node string, ns *nodeState) {
	if len(ns.subs) > 0 {
		return
	}
	ns.report = nil // stale once nobody reports
	if d.cfg.GatewayGrace >= 0 && d.model.IsGateway(node) {
		go d.markAway(node)
	}
	// Gateways and nodes hosting load-balancer backends are marked down
	// after the grace period: NAT gateways move, backends stop serving.
	d.watchGateway(node, ns, d.cfg.GatewayGrace)
}

// markAway writes node's away marker, if its agent is still away: the
// gateway drains at once (workload nodes stop hashing elastic-IP flows to
// it), long before the grace period moves its NAT gateways. Its agent's
// stream ending is all there is to know: when the process or the node
// dies, the connection closes. The check runs inside the store
// transaction, serialised with markUp's.
func (d *Distributor) markAway(node string) {
	select {
	case <-d.stopping:
		return // streams end because the controller stops: nothing is away
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := d.st.Update(ctx, func(tx store.Tx) error {
		if !d.away(node) {
			return nil
		}
		if _, ok, err := tx.Get(model.GatewayAwayKey(node)); err != nil || ok {
			return err
		}
		return tx.Put(model.GatewayAwayKey(node), nil)
	})
	if err != nil {
		d.log.Error("marking gateway away failed", "node", node, "err", err)
	}
}

// watchGateway arms the timer that marks node down if it is a gateway and
// stays away. Called with d.mu held.
func (d *Distributor) watchGateway(node string, ns *nodeState, grace time.Duration) {
	if d.cfg.GatewayGrace < 0 || !d.watched(node) || ns.awayTimer != nil {
		return
	}
	ns.awayTimer = time.AfterFunc(grace, func() { d.markDown(node) })
}

// streamStarted is called with d.mu held when a Sync stream of node begins.
func (d *Distributor) streamStarted(ns *nodeState) {
	if ns.awayTimer != nil {
		ns.awayTimer.Stop()
		ns.awayTimer = nil
	}
}

// watched: node's agent being gone matters to other nodes (it is a
// gateway, or hosts load-balancer backends). Called with d.mu held.
func (d *Distributor) watched(node string) bool {
	return d.model.IsGateway(node) || d.model.HostsBackends(node)
}

func (d *Distributor) away(node string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	ns := d.nodes[node]
	return ns == nil || len(ns.subs) == 0
}

// markDown writes the down marker of node if its agent is still away. The
// check runs inside the store transaction, which serialises it with
// markUp's: whichever commits first, a connected agent ends up unmarked.
func (d *Distributor) markDown(node string) {
	d.mu.Lock()
	if ns := d.nodes[node]; ns != nil {
		ns.awayTimer = nil
	}
	d.mu.Unlock()
	select {
	case <-d.stopping:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wrote := false
	_, err := d.st.Update(ctx, func(tx store.Tx) error {
		wrote = false
		if !d.away(node) {
			return nil
		}
		if _, ok, err := tx.Get(model.GatewayDownKey(node)); err != nil || ok {
			return err
		}
		wrote = true
		return tx.Put(model.GatewayDownKey(node), nil)
	})
	switch {
	case err != nil:
		d.log.Error("marking gateway down failed", "node", node, "err", err)
	case wrote:
		d.log.Warn("node agent away past the grace period: its NAT gateways move to other gateways, its load-balancer backends stop serving", "node", node, "grace", d.cfg.GatewayGrace)
	}
}

// markUp deletes node's down and away markers, if any, once its agent is
// connected.
func (d *Distributor) markUp(ctx context.Context, node string) error {
	// A write transaction even when there is nothing to delete: it is
	// serialised with markAway's and markDown's, whose check of the stream
	// must not race a read that misses their uncommitted marker. Group
	// commit makes an empty one cheap.
	removed := false
	_, err := d.st.Update(ctx, func(tx store.Tx) error {
		removed = false
		if _, ok, err := tx.Get(model.GatewayAwayKey(node)); err != nil {
			return err
		} else if ok {
			if err := tx.Delete(model.GatewayAwayKey(node)); err != nil {
				return err
			}
		}
		if _, ok, err := tx.Get(model.GatewayDownKey(node)); err != nil || !ok {
			return err
		}
		removed = true
		return tx.Delete(model.GatewayDownKey(node))
	})
	if err != nil {
		return fmt.Errorf("unmark gateway %s: %w", node, err)
	}
	if removed {
		d.log.Info("node agent back: it may own NAT gateways and serve load-balancer backends again", "node", node)
	}
	return nil
}

// watchGateways arms the away timers of gateways without an agent, once
// at start: one that died while no controller ran is noticed too. Agents
// reconnecting to a restarted controller get three grace periods, so a
// controller restart alone moves nothing.
func (d *Distributor) watchGateways() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, g := range d.model.Nodes() {
		if ns := d.node(g); len(ns.subs) == 0 && d.watched(g) {
			d.watchGateway(g, ns, 3*d.cfg.GatewayGrace)
		}
	}
}
