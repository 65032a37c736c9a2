package distributor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// largeResponse is the size above which a sync response is logged: gRPC's
// default receive limit.
const largeResponse = 4 << 20

// service implements agentv1.AgentService. It is a separate type because
// the RPC named Register would clash with Distributor.Register(*grpc.Server).
type service struct {
	agentv1.UnimplementedAgentServiceServer
	d *Distributor
}

// SystemAdminOnly is an Authorize hook for Config: agents use node
// credentials with the system-admin role (see package auth).
func SystemAdminOnly(ctx context.Context) error {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "agent service: no credentials")
	}
	if id.Role != auth.RoleSystemAdmin {
		return status.Errorf(codes.PermissionDenied, "agent service: %s has role %q, agents need %q", id.Subject, id.Role, auth.RoleSystemAdmin)
	}
	return nil
}

func (s *service) authorize(ctx context.Context) error { return s.d.cfg.Authorize(ctx) }

// roleOf maps the agent protocol's role names to the API's roles.
func roleOf(s string) (mv1.NodeRole, bool) {
	switch s {
	case "compute":
		return mv1.NodeRole_COMPUTE, true
	case "gateway":
		return mv1.NodeRole_GATEWAY, true
	case "load-balancer":
		return mv1.NodeRole_LOAD_BALANCER, true
	}
	return mv1.NodeRole_NODE_ROLE_UNSPECIFIED, false
}

// realizationOf maps the agent protocol's realization names; empty means
// the default, eBPF.
func realizationOf(s string) (mv1.Realization, bool) {
	switch s {
	case "", "ebpf":
		return mv1.Realization_EBPF, true
	case "ovn":
		return mv1.Realization_OVN, true
	}
	return mv1.Realization_REALIZATION_UNSPECIFIED, false
}

// invalid builds an InvalidArgument status naming the offending fields.
func invalid(vs []*errdetails.BadRequest_FieldViolation) error {
	msg := "invalid register request:"
	for _, v := range vs {
		msg += " " + v.GetField() + ": " + v.GetDescription() + ";"
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{FieldViolations: vs})
	if err != nil {
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}

// Register records the node: it creates or updates the Node resource with
// what the agent reports, keeping create_time and what administrators set
// (labels, description).
func (s *service) Register(ctx context.Context, req *agentv1.RegisterRequest) (*agentv1.RegisterResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	var vs []*errdetails.BadRequest_FieldViolation
	bad := func(field, format string, a ...any) {
		vs = append(vs, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, a...)})
	}
	if err := resource.ValidID(req.GetNode()); err != nil {
		bad("node", "%v", err)
	}
	if a, err := netip.ParseAddr(req.GetUnderlayIp()); err != nil || a.Zone() != "" {
		bad("underlay_ip", "%q is not an IP address", req.GetUnderlayIp())
	}
	var roles []mv1.NodeRole
	for i, r := range req.GetRoles() {
		role, ok := roleOf(r)
		if !ok {
			bad(fmt.Sprintf("roles[%d]", i), "unknown role %q (want compute, gateway or load-balancer)", r)
		}
		roles = append(roles, role)
	}
	if len(roles) == 0 {
		roles = []mv1.NodeRole{mv1.NodeRole_COMPUTE}
	}
	slices.Sort(roles)
	roles = slices.Compact(roles)
	realization, ok := realizationOf(req.GetRealization())
	if !ok {
		bad("realization", "unknown realization %q (want ebpf or ovn)", req.GetRealization())
	}
	if len(vs) > 0 {
		return nil, invalid(vs)
	}

	d := s.d
	name := resource.KindNode.NameOf("", req.GetNode())
	key := resource.KindNode.Key(name)
	_, err := d.st.Update(ctx, func(tx store.Tx) error {
		cur := &mv1.Node{}
		kv, exists, err := tx.Get(key)
		if err != nil {
			return fmt.Errorf("read %s: %w", key, err)
		}
		if exists {
			if err := proto.Unmarshal(kv.Value, cur); err != nil {
				return fmt.Errorf("decode %s: %w", key, err)
			}
		}
		next := proto.Clone(cur).(*mv1.Node)
		next.Name = name
		next.Hostname = req.GetHostname()
		next.UnderlayIp = netip.MustParseAddr(req.GetUnderlayIp()).String()
		next.Roles = roles
		next.Realization = realization
		next.Etag = ""    // the etag is the key's revision, not stored data
		next.Status = nil // output only, from the distributor
		if exists && proto.Equal(cur, next) {
			return nil // a reconnecting agent must not churn the store
		}
		now := timestamppb.New(d.cfg.Now())
		if !exists || next.CreateTime == nil {
			next.CreateTime = now
		}
		next.UpdateTime = now
		b, err := proto.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode %s: %w", key, err)
		}
		return tx.Put(key, b)
	})
	if err != nil {
		d.log.Error("register failed", "node", req.GetNode(), "err", err)
		return nil, status.Errorf(codes.Unavailable, "register node %s: %v", req.GetNode(), err)
	}
	d.mu.Lock()
	ns := d.node(req.GetNode())
	ns.agentVersion = req.GetAgentVersion()
	ns.lastSeen = d.cfg.Now()
	d.mu.Unlock()
	d.log.Info("node registered", "node", req.GetNode(), "hostname", req.GetHostname(), "underlay_ip", req.GetUnderlayIp(), "agent_version", req.GetAgentVersion())
	return &agentv1.RegisterResponse{Name: name}, nil
}

// Sync serves one agent stream: Hello, then a snapshot or deltas, then a
// delta whenever the node's desired state changes; acks come in between.
func (s *service) Sync(stream agentv1.AgentService_SyncServer) error {
	ctx := stream.Context()
	if err := s.authorize(ctx); err != nil {
		return err
	}
	d := s.d
	select {
	case <-d.ready:
	case <-d.stopping:
		return status.Error(codes.Unavailable, "controller is stopping")
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("sync: receive hello: %w", err)
	}
	hello := first.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "sync: the first message must be a Hello")
	}
	node := hello.GetNode()
	if err := resource.ValidID(node); err != nil {
		return status.Errorf(codes.InvalidArgument, "sync: hello.node: %v", err)
	}
	log := d.log.With("node", node)

	sub := &subscriber{wake: make(chan struct{}, 1)}
	d.mu.Lock()
	ns := d.node(node)
	ns.subs[sub] = struct{}{}
	d.streamStarted(ns)
	ns.lastSeen = d.cfg.Now()
	resp := d.response(ns, hello.GetAppliedVersion())
	if resp == nil {
		// Already up to date: say so with an empty delta, so the agent
		// knows its version is current.
		resp = &agentv1.SyncResponse{Version: ns.desired, FromVersion: ns.desired}
	}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(ns.subs, sub)
		d.streamEnded(node, ns)
		d.mu.Unlock()
	}()
	// After registering the stream, so a concurrent markDown sees it. Any
	// node: one that hosted load-balancer backends when it was marked may
	// host none now.
	if err := d.markUp(ctx, node); err != nil {
		log.Error("node liveness", "err", err)
	}
	log.Info("agent connected", "applied_version", hello.GetAppliedVersion(), "version", resp.GetVersion(), "snapshot", resp.GetSnapshot())

	// Acks are received concurrently with sending, so a slow agent does
	// not block its own acknowledgements.
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch m := req.GetMsg().(type) {
			case *agentv1.SyncRequest_Ack:
				d.ack(node, m.Ack)
			case *agentv1.SyncRequest_Report:
				d.report(node, m.Report)
			default:
				recvErr <- status.Errorf(codes.InvalidArgument, "sync: after Hello only Acks and Reports are allowed, got %T", m)
				return
			}
		}
	}()

	sent := uint64(0)
	for {
		if resp != nil {
			if size := proto.Size(resp); size > largeResponse {
				// gRPC clients refuse messages over 4 MiB by default; the
				// protocol has no chunking, so the agent must raise its limit.
				log.Warn("large sync response", "bytes", size, "version", resp.GetVersion(), "snapshot", resp.GetSnapshot())
			}
			if err := stream.Send(resp); err != nil {
				return fmt.Errorf("sync %s: send version %d: %w", node, resp.GetVersion(), err)
			}
			sent = resp.GetVersion()
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-d.stopping:
			return status.Error(codes.Unavailable, "controller is stopping")
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				log.Info("agent disconnected")
				return nil
			}
			return err
		case <-sub.wake:
			d.mu.Lock()
			resp = d.response(ns, sent)
			d.mu.Unlock()
		}
	}
}
