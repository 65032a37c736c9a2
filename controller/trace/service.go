package trace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/model"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
	"github.com/meridian-sdn/meridian/fw"
)

// DefaultSourcePort is the TCP/UDP source port of a traced packet when the
// request gives none: one of Linux's ephemeral ports (32768-60999), as a
// client's connection would use.
const DefaultSourcePort = 40000

// Service serves TraceService from the controller's store. It builds the
// logical model the way the distributor does (controller/model), once;
// when the store's revision has moved at the next trace, it applies the
// changes since (the store's change log, as the distributor's watch does)
// and rebuilds only the trace's index, so a trace after a change does not
// pay a full build.
type Service struct {
	v1.UnimplementedTraceServiceServer
	st  store.Store
	log *slog.Logger

	mu     sync.Mutex // guards the fields below: one update at a time
	rev    int64      // revision of m
	m      *Model
	mod    *model.Model // the logical model, at modRev
	modRev int64

	ovn *OVNTracer // nil: no ovn-trace beside the model trace
}

// catchUpTimeout bounds reading the change log; past it (or on any error,
// such as a compacted log) the model is rebuilt from a full listing.
const catchUpTimeout = 5 * time.Second

// NewService returns the service on st. A nil logger means slog.Default().
func NewService(st store.Store, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	return &Service{st: st, log: log}
}

// WithOVN makes the service also run ovn-trace (t) for traces from ports
// on nodes of the OVN realization, and returns it. Call it before serving.
func (s *Service) WithOVN(t *OVNTracer) *Service {
	s.ovn = t
	return s
}

// Register adds the service to a gRPC server.
func (s *Service) Register(g *grpc.Server) { v1.RegisterTraceServiceServer(g, s) }

// Model returns the trace model at the store's current revision.
func (s *Service) Model(ctx context.Context) (*Model, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.st.Revision()
	if s.m != nil && s.rev == cur {
		return s.m, s.rev, nil
	}
	if s.mod != nil {
		err := s.catchUp(ctx, cur)
		if err == nil {
			s.m, s.rev = NewModel(s.mod.Objects()), s.modRev
			return s.m, s.rev, nil
		}
		s.log.Warn("trace: model catch-up failed, rebuilding it", "from", s.modRev, "to", cur, "err", err)
	}
	err := s.st.View(ctx, func(tx store.ReadTx) error {
		mod := model.New(s.log)
		if err := mod.Load(tx); err != nil {
			return err
		}
		s.mod, s.modRev = mod, tx.Revision()
		return nil
	})
	if err != nil {
		s.mod = nil
		return nil, 0, fmt.Errorf("trace: load the model: %w", err)
	}
	s.m, s.rev = NewModel(s.mod.Objects()), s.modRev
	return s.m, s.rev, nil
}

// catchUp applies the store's changes after modRev up to revision upTo.
// It watches every key: each revision then has a response, so reaching
// upTo is seen even if the last revisions touched no resource.
func (s *Service) catchUp(ctx context.Context, upTo int64) error {
	ctx, cancel := context.WithTimeout(ctx, catchUpTimeout)
	defer cancel()
	ch, err := s.st.Watch(ctx, "", s.modRev)
	if err != nil {
		return fmt.Errorf("watch from revision %d: %w", s.modRev, err)
	}
	for s.modRev < upTo {
		select {
		case wr, ok := <-ch:
			if !ok {
				return fmt.Errorf("watch from revision %d: closed", s.modRev)
			}
			if wr.Err != nil {
				return fmt.Errorf("watch from revision %d: %w", s.modRev, wr.Err)
			}
			for _, ev := range wr.Events {
				s.mod.Apply(ev)
			}
			s.modRev = wr.Revision
		case <-ctx.Done():
			s.mod = nil // partly applied: rebuild
			return fmt.Errorf("catch up to revision %d: %w", upTo, ctx.Err())
		}
	}
	return nil
}

// Load builds a trace model from the store at its current revision.
func Load(ctx context.Context, st store.Store, log *slog.Logger) (*Model, int64, error) {
	var objs Objects
	var rev int64
	err := st.View(ctx, func(tx store.ReadTx) error {
		mod := model.New(log)
		if err := mod.Load(tx); err != nil {
			return err
		}
		objs, rev = mod.Objects(), tx.Revision()
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("trace: load the model: %w", err)
	}
	return NewModel(objs), rev, nil
}

// Trace implements TraceService.Trace.
func (s *Service) Trace(ctx context.Context, in *v1.TraceRequest) (*v1.TraceResponse, error) {
	req, err := ParseRequest(in)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	m, rev, err := s.Model(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	id, _ := auth.FromContext(ctx)
	if err := s.authorize(ctx, id, m, req); err != nil {
		return nil, err
	}
	res, err := m.Trace(req)
	if err != nil {
		if errors.Is(err, ErrInvalid) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	out := &v1.TraceResponse{Forward: res.Forward.Proto(), Allowed: res.Allowed, Revision: rev}
	if res.Reply != nil {
		out.Reply = res.Reply.Proto()
	}
	if s.ovn != nil {
		out.Ovn = s.ovnTrace(ctx, m, req, res, in.GetOvnDetail())
		if out.Ovn == nil {
			return out, nil
		}
		if out.Ovn.GetError() != "" {
			out.Forward.Notes = append(out.Forward.Notes, "ovn-trace failed: "+out.Ovn.GetError())
		} else if !out.Ovn.GetAgrees() {
			out.Forward.Notes = append(out.Forward.Notes, "ovn-trace DISAGREES with the model: "+out.Ovn.GetVerdict())
		}
	}
	return out, nil
}

// ovnTrace runs ovn-trace on the forward packet when the source is a port
// on an OVN node, or an outside address sending to a public address of a
// VPC whose gateways are OVN nodes; nil otherwise. A failure is reported in the result
// (the model trace stands on its own), and logged.
func (s *Service) ovnTrace(ctx context.Context, m *Model, req Request, res *Result, detail bool) *v1.OvnTrace {
	var v *OVNVerdict
	var err error
	if src, perr := m.OVNSource(req); perr == nil {
		v, err = s.ovn.Trace(ctx, m, src, res.Forward.Packet)
	} else if vpc, oerr := m.OVNOutside(req, res.Forward.Packet); oerr == nil && s.ovn.ExternalSwitch != "" {
		v, err = s.ovn.TraceOutside(ctx, vpc, res.Forward.Packet)
	} else {
		return nil
	}
	if err != nil {
		s.log.Warn("trace: ovn-trace failed", "from", req.From, "err", err)
		return &v1.OvnTrace{Error: err.Error()}
	}
	return v.Proto(res.Forward.Allowed, detail)
}

// authorize: a trace reveals the rules of the ports it passes, so the
// caller must be able to read the projects of the ports (or public
// addresses) it names. System administrators may trace anything.
func (s *Service) authorize(ctx context.Context, id *auth.Identity, m *Model, req Request) error {
	if id == nil {
		return status.Error(codes.Unauthenticated, "no identity")
	}
	if id.Role == auth.RoleSystemAdmin {
		return nil
	}
	var projects []string
	for _, end := range []string{req.From, req.To} {
		if _, err := netip.ParseAddr(end); err != nil {
			projects = append(projects, resource.ProjectOf(end))
		}
	}
	if _, err := netip.ParseAddr(req.From); err == nil {
		// From the outside: to a public address of a project.
		dst, _ := netip.ParseAddr(req.To)
		switch {
		case m.eipByAddr[dst] != nil:
			projects = append(projects, resource.ProjectOf(m.eipByAddr[dst].GetName()))
		case m.ngwByAddr[dst] != nil:
			projects = append(projects, resource.ProjectOf(m.ngwByAddr[dst].GetName()))
		}
	}
	if len(projects) == 0 {
		return status.Errorf(codes.PermissionDenied, "%s (%s) may trace only from or to ports and public addresses of their projects", id.Subject, id.Role)
	}
	for _, p := range projects {
		org, err := s.organization(ctx, p)
		if err != nil {
			return err
		}
		if err := auth.Authorize(id, auth.VerbGet, auth.Target{Kind: "Port", Project: p, Organization: org}); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) organization(ctx context.Context, project string) (string, error) {
	var org string
	err := s.st.View(ctx, func(tx store.ReadTx) error {
		kv, ok, err := tx.Get(resource.KindProject.Key(project))
		if err != nil || !ok {
			return err
		}
		var p v1.Project
		if err := proto.Unmarshal(kv.Value, &p); err != nil {
			return fmt.Errorf("project %s: %w", project, err)
		}
		org = p.GetOrganization()
		return nil
	})
	if err != nil {
		return "", status.Errorf(codes.Unavailable, "trace: read project %s: %v", project, err)
	}
	return org, nil
}

// ParseRequest checks and converts an API request.
func ParseRequest(in *v1.TraceRequest) (Request, error) {
	req := Request{From: strings.TrimSpace(in.GetSource()), To: strings.TrimSpace(in.GetDestination()), Reply: in.GetReply()}
	var errs []error
	if req.From == "" {
		errs = append(errs, errors.New("source: required (a port name or an IPv4 address)"))
	}
	if req.To == "" {
		errs = append(errs, errors.New("destination: required (an IPv4 address or a port name)"))
	}
	if s := strings.TrimSpace(in.GetSourceIp()); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("source_ip %q: not an IPv4 address", s))
		}
		req.SrcIP = a
	}
	proto, err := ParseProtocol(in.GetProtocol())
	if err != nil {
		errs = append(errs, err)
	}
	req.Protocol = proto
	switch proto {
	case fw.ProtoTCP, fw.ProtoUDP:
		if in.GetSourcePort() > 65535 || in.GetDestinationPort() > 65535 {
			errs = append(errs, errors.New("source_port, destination_port: at most 65535"))
		}
		if in.GetDestinationPort() == 0 {
			errs = append(errs, fmt.Errorf("destination_port: required for %s", protoName(proto)))
		}
		req.SrcPort, req.DstPort = uint16(in.GetSourcePort()), uint16(in.GetDestinationPort())
		if req.SrcPort == 0 {
			req.SrcPort = DefaultSourcePort
		}
	case fw.ProtoICMP:
		req.ICMPType = 8
		if in.IcmpType != nil {
			if in.GetIcmpType() > 255 {
				errs = append(errs, errors.New("icmp_type: at most 255"))
			}
			req.ICMPType = uint8(in.GetIcmpType())
		}
		if in.GetIcmpCode() > 255 {
			errs = append(errs, errors.New("icmp_code: at most 255"))
		}
		req.ICMPCode = uint8(in.GetIcmpCode())
	}
	if f := strings.TrimSpace(in.GetTcpFlags()); f != "" {
		if proto != fw.ProtoTCP {
			errs = append(errs, errors.New("tcp_flags: only for tcp"))
		}
		flags, err := ParseFlags(f)
		if err != nil {
			errs = append(errs, err)
		}
		req.TCPFlags = flags
	}
	return req, errors.Join(errs...)
}

// ParseProtocol reads "tcp", "udp", "icmp" or a protocol number (1-255).
func ParseProtocol(s string) (uint8, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "tcp":
		return fw.ProtoTCP, nil
	case "udp":
		return fw.ProtoUDP, nil
	case "icmp":
		return fw.ProtoICMP, nil
	case "":
		return 0, errors.New("protocol: required (tcp, udp, icmp or a number)")
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 8)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp or a number 1-255", s)
	}
	return uint8(n), nil
}

// ParseFlags reads TCP flags: "SYN", "SYN,ACK", ...
func ParseFlags(s string) (uint8, error) {
	var f uint8
	for _, n := range strings.Split(s, ",") {
		switch strings.ToUpper(strings.TrimSpace(n)) {
		case "SYN":
			f |= FlagSYN
		case "ACK":
			f |= FlagACK
		case "FIN":
			f |= FlagFIN
		case "RST":
			f |= FlagRST
		default:
			return 0, fmt.Errorf("tcp_flags %q: want a comma-separated list of SYN, ACK, FIN, RST", s)
		}
	}
	return f, nil
}

// Proto converts a trace to its API form.
func (t *Trace) Proto() *v1.PacketTrace {
	out := &v1.PacketTrace{State: t.State, Packet: t.Packet.String(), Allowed: t.Allowed, DropReason: t.Reason, Notes: t.Notes}
	for _, s := range t.Stages {
		out.Stages = append(out.Stages, &v1.TraceStage{Stage: s.Stage, Node: s.Node, Object: s.Object, Rule: s.Rule, Verdict: s.Verdict, Detail: s.Detail})
	}
	return out
}
