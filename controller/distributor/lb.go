package distributor

// Backend health (issue [5]): the node hosting a backend checks it and
// reports BackendHealth; the distributor folds the reports into the store
// (resource.LbHealthKey), from where the model sets LbBackend.healthy for
// every node alike and the API shows the state.
//
// Unlike BGP and NAT statistics, health changes what nodes forward, so it
// goes through the store: ordered with every other change (versions stay
// store revisions), surviving controller restarts, seen by a full rebuild
// as by an incremental one. Reports repeat (an agent sends its whole
// report whenever anything in it changes), so only health *state* changes
// are written: healthy <-> unhealthy, or another node reporting (the port
// moved). A new reason or "since" for the same state writes nothing.
//
// A report is trusted only for backends its node hosts according to the
// model: an agent cannot mark other nodes' backends.

import (
	"context"
	"strings"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// watchNewBackendHosts arms the away timer of nodes that came to host a
// load-balancer backend while their agent is not connected (a backend
// added on a node whose agent is gone): otherwise only a stream's end arms
// it, and such a backend would count as healthy forever. Called with d.mu
// held.
func (d *Distributor) watchNewBackendHosts(changed map[nodeKey]uint64) {
	for nk := range changed {
		if !strings.HasPrefix(nk.key, "lb/") {
			continue
		}
		ns := d.nodes[nk.node]
		if ns != nil && len(ns.subs) == 0 && ns.awayTimer == nil && d.model.HostsBackends(nk.node) {
			d.watchGateway(nk.node, ns, d.cfg.GatewayGrace)
		}
	}
}

// healthWrite is one record to store.
type healthWrite struct {
	key string
	rec resource.LbHealth
}

// healthChanges returns the records of node's report that change a
// backend's stored health state. Called with d.mu held.
func (d *Distributor) healthChanges(node string, hs []*agentv1.BackendHealth) []healthWrite {
	var out []healthWrite
	for _, h := range hs {
		svc := d.model.Object(model.LbServiceKey(h.GetServiceId())).GetLbService()
		hosted := false
		for _, b := range svc.GetBackends() {
			if b.GetId() == h.GetBackendId() {
				hosted = b.GetNode() == node
				break
			}
		}
		if !hosted {
			continue // not (or no longer) this node's backend to judge
		}
		if cur, ok := d.model.LbHealth(h.GetServiceId(), h.GetBackendId()); ok && cur.Node == node && cur.Healthy == h.GetHealthy() {
			continue
		}
		out = append(out, healthWrite{
			key: resource.LbHealthKey(h.GetServiceId(), h.GetBackendId()),
			rec: resource.LbHealth{Node: node, Healthy: h.GetHealthy(), SinceUnix: h.GetSinceUnix(), Error: h.GetLastError()},
		})
	}
	return out
}

// writeHealth stores the changed records in one transaction. The model may
// not have seen a previous write yet when the next report comes, so the
// transaction compares with what is stored and writes only real changes.
// It reports whether the records are stored.
func (d *Distributor) writeHealth(node string, ws []healthWrite) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := d.st.Update(ctx, func(tx store.Tx) error {
		for _, w := range ws {
			kv, ok, err := tx.Get(w.key)
			if err != nil {
				return err
			}
			if ok {
				if cur, err := resource.DecodeLbHealth(kv.Value); err == nil && cur.Node == w.rec.Node && cur.Healthy == w.rec.Healthy {
					continue
				}
			}
			if err := tx.Put(w.key, w.rec.Encode()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		d.log.Error("storing backend health failed", "node", node, "records", len(ws), "err", err)
		return false
	}
	return true
}

// prime reports whether n is prime (trial division: table sizes are small).
func prime(n uint32) bool {
	if n < 2 {
		return false
	}
	for i := uint32(2); uint64(i)*uint64(i) <= uint64(n); i++ {
		if n%i == 0 {
			return false
		}
	}
	return true
}
