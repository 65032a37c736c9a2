package ovn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// renderedKinds are the resource kinds whose objects OVN renders. Nodes
// compile to PeerNode objects, which mean nothing to OVN.
var renderedKinds = []*resource.Kind{
	resource.KindVpc, resource.KindSubnet, resource.KindPort,
	resource.KindSecurityGroup, resource.KindNetworkAcl, resource.KindRouteTable,
	resource.KindElasticIp, resource.KindNatGateway,
	resource.KindFlowLog, // which ACLs are logged, and their meters
}

// StoreSource drives a logical model from the controller's store, the way
// the distributor does: a full load, then the store's watch, event by event.
type StoreSource struct {
	st  store.Store
	log *slog.Logger

	mu    sync.Mutex
	m     *model.Model
	names map[string]struct{} // names of resources of renderedKinds
	nodes map[string]struct{} // node IDs (gateways among them compile to Gateway objects)
	rev   int64
}

// NewStoreSource returns a source on st. A nil logger means slog.Default().
func NewStoreSource(st store.Store, log *slog.Logger) *StoreSource {
	if log == nil {
		log = slog.Default()
	}
	return &StoreSource{st: st, log: log.With("component", "ovn-source")}
}

// Run implements Source.
func (s *StoreSource) Run(ctx context.Context, changed func()) error {
	if err := s.load(ctx); err != nil {
		return err
	}
	changed()
	for {
		err := s.follow(ctx, changed)
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, store.ErrClosed):
			return err
		case errors.Is(err, store.ErrCompacted):
			// Our revision left the change log: rebuild from a listing.
			// The next pass diffs against NB, so nothing is replayed.
			s.log.Warn("store watch compacted, reloading the model", "err", err)
			if err := s.load(ctx); err != nil {
				return err
			}
			changed()
		default:
			s.log.Error("store watch failed, retrying", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
	}
}

func (s *StoreSource) load(ctx context.Context) error {
	m := model.New(s.log)
	names, nodes := map[string]struct{}{}, map[string]struct{}{}
	var rev int64
	err := s.st.View(ctx, func(tx store.ReadTx) error {
		rev = tx.Revision()
		if err := m.Load(tx); err != nil {
			return err
		}
		for _, k := range renderedKinds {
			kvs, err := tx.List(k.Prefix(), "", 0)
			if err != nil {
				return fmt.Errorf("list %s: %w", k.Prefix(), err)
			}
			for _, kv := range kvs {
				names[strings.TrimPrefix(kv.Key, k.Prefix())] = struct{}{}
			}
		}
		kvs, err := tx.List(resource.KindNode.Prefix(), "", 0)
		if err != nil {
			return fmt.Errorf("list %s: %w", resource.KindNode.Prefix(), err)
		}
		for _, kv := range kvs {
			nodes[nodeID(kv.Key)] = struct{}{}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ovn: load the model from the store: %w", err)
	}
	s.mu.Lock()
	s.m, s.names, s.nodes, s.rev = m, names, nodes, rev
	s.mu.Unlock()
	return nil
}

func (s *StoreSource) follow(ctx context.Context, changed func()) error {
	s.mu.Lock()
	from := s.rev
	s.mu.Unlock()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := s.st.Watch(wctx, "res/", from)
	if err != nil {
		return fmt.Errorf("watch res/ from revision %d: %w", from, err)
	}
	for resp := range ch {
		if resp.Err != nil {
			return resp.Err
		}
		s.mu.Lock()
		for _, ev := range resp.Events {
			s.m.Apply(ev)
			s.track(ev)
		}
		s.rev = resp.Revision
		s.mu.Unlock()
		changed()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("watch ended: %w", store.ErrClosed)
}

// track keeps the set of resource names current. Called with s.mu held.
func (s *StoreSource) track(ev store.Event) {
	if strings.HasPrefix(ev.KV.Key, resource.KindNode.Prefix()) {
		if ev.Type == store.EventDelete {
			delete(s.nodes, nodeID(ev.KV.Key))
		} else {
			s.nodes[nodeID(ev.KV.Key)] = struct{}{}
		}
		return
	}
	for _, k := range renderedKinds {
		if name, ok := strings.CutPrefix(ev.KV.Key, k.Prefix()); ok {
			if ev.Type == store.EventDelete {
				delete(s.names, name)
			} else {
				s.names[name] = struct{}{}
			}
			return
		}
	}
}

// nodeID is the ID of the node whose store key is key
// ("res/Node/nodes/n1" -> "n1").
func nodeID(key string) string {
	return strings.TrimPrefix(strings.TrimPrefix(key, resource.KindNode.Prefix()), resource.KindNode.Collection+"/")
}

// Objects implements Source.
func (s *StoreSource) Objects() (map[string]*agentv1.Object, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]*agentv1.Object, len(s.names))
	if s.m == nil {
		return out, 0
	}
	for name := range s.names {
		if o := s.m.Object(s.m.KeyOf(name)); o != nil {
			out[o.GetKey()] = o
		}
	}
	// Nodes with the gateway role compile to Gateway objects too: the
	// chassis of gateway router ports.
	for id := range s.nodes {
		if o := s.m.Object("gateway/" + id); o != nil {
			out[o.GetKey()] = o
		}
	}
	// Every listener of a LoadBalancer resource compiles to an LbService
	// object of its own ("lb/<listener id>"), with the backends' health
	// folded in from the health records and node markers (res/ too, so
	// the watch above sees them change).
	for _, svc := range s.m.LbServices() {
		if o := s.m.Object(model.LbServiceKey(svc.GetId())); o != nil {
			out[o.GetKey()] = o
		}
	}
	return out, s.rev
}
