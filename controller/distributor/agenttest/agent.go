// Package agenttest is a small in-process node agent for tests of the
// controller side of the agent protocol. It registers, syncs, applies
// snapshots and deltas to an in-memory object map, acknowledges each
// version, and can disconnect and resume from the version it applied.
//
// It owns no data plane and must not be used outside tests. It is strict
// where a real agent would be forgiving: a delta whose from_version is not
// the version it holds ends the stream with an error, so protocol bugs in
// the controller surface in tests.
package agenttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// Stats counts what the agent received.
type Stats struct {
	Snapshots, Deltas int
	LastSnapshot      bool   // the last response was a snapshot
	LastFrom          uint64 // from_version of the last response
}

// Agent is a test agent for one node. Create it with New.
type Agent struct {
	node       string
	client     agentv1.AgentServiceClient
	mu         sync.Mutex
	errorFor   func(key string) string
	onResponse func(*agentv1.SyncResponse)
	objs       map[string]*agentv1.Object
	version    uint64
	stats      Stats
	applied    int // responses applied on the current stream
	errs       map[string]string
	changed    chan struct{} // closed and replaced on every applied version
	cancel     context.CancelFunc
	done       chan struct{}
	stream     agentv1.AgentService_SyncClient // open stream, nil while disconnected
	sendMu     sync.Mutex                      // gRPC streams allow one sender at a time
	err        error                           // why the last stream ended
}

// New returns an agent for node on the connection cc.
func New(cc grpc.ClientConnInterface, node string) *Agent {
	return &Agent{
		node: node, client: agentv1.NewAgentServiceClient(cc),
		objs: map[string]*agentv1.Object{}, errs: map[string]string{}, changed: make(chan struct{}),
	}
}

// SetErrorFor installs fn, asked for each upserted key from now on; a
// non-empty answer is reported in the ack as that object's error.
func (a *Agent) SetErrorFor(fn func(key string) string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.errorFor = fn
}

// SetOnResponse installs fn, which sees every response before it is applied.
func (a *Agent) SetOnResponse(fn func(*agentv1.SyncResponse)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.onResponse = fn
}

// Rebind points the agent at another connection (a restarted controller),
// keeping its objects and version. Call it while disconnected.
func (a *Agent) Rebind(cc grpc.ClientConnInterface) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.client = agentv1.NewAgentServiceClient(cc)
}

// Register registers the node with the controller.
func (a *Agent) Register(ctx context.Context, underlayIP string, roles ...string) error {
	_, err := a.client.Register(ctx, &agentv1.RegisterRequest{
		Node: a.node, Hostname: a.node + ".test", UnderlayIp: underlayIP, Roles: roles, AgentVersion: "agenttest",
	})
	if err != nil {
		return fmt.Errorf("agenttest %s: register: %w", a.node, err)
	}
	return nil
}

// Connect opens a Sync stream, says Hello with the version it holds and
// starts applying responses in the background.
func (a *Agent) Connect(ctx context.Context) error {
	a.mu.Lock()
	if a.done != nil {
		a.mu.Unlock()
		return fmt.Errorf("agenttest %s: already connected", a.node)
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := a.client.Sync(sctx)
	if err != nil {
		a.mu.Unlock()
		cancel()
		return fmt.Errorf("agenttest %s: open sync: %w", a.node, err)
	}
	hello := &agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{Node: a.node, AppliedVersion: a.version}}}
	if err := stream.Send(hello); err != nil {
		a.mu.Unlock()
		cancel()
		return fmt.Errorf("agenttest %s: send hello: %w", a.node, err)
	}
	a.cancel, a.done, a.err, a.applied, a.stream = cancel, make(chan struct{}), nil, 0, stream
	done := a.done
	a.mu.Unlock()
	go func() {
		err := a.run(stream)
		a.mu.Lock()
		a.err = err
		a.done, a.stream = nil, nil
		a.mu.Unlock()
		a.signal()
		close(done)
	}()
	return nil
}

// Disconnect closes the stream and waits for it to end. The agent keeps
// its objects and version, as a restarted agent keeps its pinned state.
func (a *Agent) Disconnect() {
	a.mu.Lock()
	cancel, done := a.cancel, a.done
	a.mu.Unlock()
	if cancel == nil || done == nil {
		return
	}
	cancel()
	<-done
}

// Report sends a NodeReport (BGP peer states, NAT statistics) on the open
// stream, as an agent does whenever what it observes changes.
func (a *Agent) Report(r *agentv1.NodeReport) error {
	a.mu.Lock()
	stream := a.stream
	a.mu.Unlock()
	if stream == nil {
		return fmt.Errorf("agenttest %s: report: not connected", a.node)
	}
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	if err := stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Report{Report: r}}); err != nil {
		return fmt.Errorf("agenttest %s: send report: %w", a.node, err)
	}
	return nil
}

// Connected reports whether a stream is open.
func (a *Agent) Connected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.done != nil
}

// Err returns why the last stream ended (nil while connected or after a
// clean Disconnect).
func (a *Agent) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

func (a *Agent) run(stream agentv1.AgentService_SyncClient) error {
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) || stream.Context().Err() != nil {
				return nil
			}
			return fmt.Errorf("agenttest %s: receive: %w", a.node, err)
		}
		a.mu.Lock()
		on := a.onResponse
		a.mu.Unlock()
		if on != nil {
			on(resp)
		}
		ack, err := a.apply(resp)
		if err != nil {
			return err
		}
		a.sendMu.Lock()
		err = stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Ack{Ack: ack}})
		a.sendMu.Unlock()
		if err != nil {
			if stream.Context().Err() != nil {
				return nil
			}
			return fmt.Errorf("agenttest %s: send ack %d: %w", a.node, ack.GetVersion(), err)
		}
	}
}

func (a *Agent) apply(resp *agentv1.SyncResponse) (*agentv1.Ack, error) {
	a.mu.Lock()
	defer a.signal()
	defer a.mu.Unlock()
	if resp.GetSnapshot() {
		a.objs = map[string]*agentv1.Object{}
		a.errs = map[string]string{}
		a.stats.Snapshots++
	} else {
		if resp.GetFromVersion() != a.version {
			return nil, fmt.Errorf("agenttest %s: delta from version %d, but the agent holds %d", a.node, resp.GetFromVersion(), a.version)
		}
		a.stats.Deltas++
	}
	a.stats.LastSnapshot, a.stats.LastFrom = resp.GetSnapshot(), resp.GetFromVersion()
	for _, k := range resp.GetDeletes() {
		delete(a.objs, k)
		delete(a.errs, k)
	}
	for _, o := range resp.GetUpserts() {
		// Received messages are freshly unmarshalled and owned by us: no
		// clone needed (which matters with hundreds of agents in one test).
		a.objs[o.GetKey()] = o
		delete(a.errs, o.GetKey())
		if a.errorFor != nil {
			if msg := a.errorFor(o.GetKey()); msg != "" {
				a.errs[o.GetKey()] = msg
			}
		}
	}
	a.version = resp.GetVersion()
	a.applied++
	ack := &agentv1.Ack{Version: a.version}
	for k, msg := range a.errs {
		ack.Errors = append(ack.Errors, &agentv1.ObjectError{Key: k, Message: msg})
	}
	return ack, nil
}

func (a *Agent) signal() {
	a.mu.Lock()
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// Version returns the version the agent applied.
func (a *Agent) Version() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.version
}

// State returns a copy of the objects the agent holds.
func (a *Agent) State() map[string]*agentv1.Object {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]*agentv1.Object, len(a.objs))
	for k, o := range a.objs {
		out[k] = o
	}
	return out
}

// Stats returns what the agent received so far.
func (a *Agent) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stats
}

// WaitSynced waits until the current stream's first response (the answer
// to Hello) has been applied, or the stream ended with an error.
func (a *Agent) WaitSynced(ctx context.Context) error {
	for {
		a.mu.Lock()
		n, ch, err := a.applied, a.changed, a.err
		a.mu.Unlock()
		if n > 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("agenttest %s: waiting for the first response: %w", a.node, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agenttest %s: waiting for the first response: %w", a.node, ctx.Err())
		case <-ch:
		}
	}
}

// WaitVersion waits until the agent applied version v or later, or its
// stream ended with an error.
func (a *Agent) WaitVersion(ctx context.Context, v uint64) error {
	for {
		a.mu.Lock()
		ver, ch, err := a.version, a.changed, a.err
		a.mu.Unlock()
		if ver >= v {
			return nil
		}
		if err != nil {
			return fmt.Errorf("agenttest %s: waiting for version %d: %w", a.node, v, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("agenttest %s: waiting for version %d (holds %d): %w", a.node, v, ver, ctx.Err())
		case <-ch:
		}
	}
}
