package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"google.golang.org/grpc/metadata"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

func withToken(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// syncLoop keeps a Sync stream open to the controller, reconnecting with
// backoff. While the controller is away nothing is torn down: the data path
// keeps what it has.
func (a *Agent) syncLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := a.syncOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond // it was up for a while: retry fast
		}
		a.log.Warn("controller stream ended; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (a *Agent) syncOnce(ctx context.Context) error {
	cli := agentv1.NewAgentServiceClient(a.conn)
	rctx, cancel := context.WithTimeout(a.tokenCtx(ctx), 10*time.Second)
	_, err := cli.Register(rctx, &agentv1.RegisterRequest{
		Node: a.cfg.Node, Hostname: hostname(), UnderlayIp: a.cfg.UnderlayIP.String(),
		Roles: a.cfg.Roles, Realization: string(a.cfg.Realization), AgentVersion: a.cfg.Version,
	})
	cancel()
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	sctx, cancel := context.WithCancel(a.tokenCtx(ctx))
	defer cancel()
	stream, err := cli.Sync(sctx)
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	a.mu.Lock()
	from := a.version
	a.mu.Unlock()
	if err := stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{Node: a.cfg.Node, AppliedVersion: from}}}); err != nil {
		return fmt.Errorf("sync hello: %w", err)
	}
	a.mu.Lock()
	a.stream = stream
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.stream = nil
		a.mu.Unlock()
	}()
	a.log.Info("connected to controller", "resume_from", from)
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("controller closed the stream")
		}
		if err != nil {
			return err
		}
		a.applyResponse(resp)
	}
}

// applyResponse folds a snapshot or delta into the desired state.
func (a *Agent) applyResponse(r *agentv1.SyncResponse) {
	a.mu.Lock()
	if r.Snapshot {
		a.desired = make(map[string]*agentv1.Object, len(r.Upserts))
	} else if r.FromVersion != a.version && a.version != 0 {
		// A gap would mean lost deltas; the controller never sends one, but
		// if it did, the next reconnect asks for a snapshot.
		a.log.Warn("delta does not follow the applied version", "have", a.version, "from", r.FromVersion)
	}
	for _, o := range r.Upserts {
		a.desired[o.Key] = o
	}
	for _, k := range r.Deletes {
		delete(a.desired, k)
	}
	a.version = r.Version
	a.synced = true
	a.syncm.receive()
	a.mu.Unlock()
	a.log.Debug("desired state", "version", r.Version, "snapshot", r.Snapshot, "upserts", len(r.Upserts), "deletes", len(r.Deletes))
	a.kick()
}

// sendAck acknowledges an applied version on the open stream, if any; a
// reconnect says the applied version in its Hello anyway.
func (a *Agent) sendAck(version uint64, errs map[string]string) {
	a.mu.Lock()
	s := a.stream
	a.mu.Unlock()
	if s == nil || version == 0 {
		return
	}
	ack := &agentv1.Ack{Version: version}
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ack.Errors = append(ack.Errors, &agentv1.ObjectError{Key: k, Message: errs[k]})
	}
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	if err := s.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Ack{Ack: ack}}); err != nil {
		a.log.Debug("ack not sent", "err", err)
	}
}
