package agent

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// Replay runs captured frames through a port's pipeline with the BPF
// test-run facility. Nothing is sent, but the live maps are used: what a
// replayed packet leaves behind (a conntrack entry, a drop counter, a drop
// event in the log) is what the same packet arriving would leave.
func (s *localServer) Replay(ctx context.Context, r *agentv1.ReplayRequest) (*agentv1.ReplayResponse, error) {
	a := s.a
	if a.dp == nil {
		return nil, status.Error(codes.FailedPrecondition, "replay runs the eBPF data path's programs; this node uses the OVN realization (use ovn-trace)")
	}
	id, err := a.replayPort(r.Port)
	if err != nil {
		return nil, err
	}
	dir := datapath.ReplayFromPort
	switch r.Direction {
	case agentv1.ReplayRequest_DIRECTION_UNSPECIFIED, agentv1.ReplayRequest_FROM_PORT:
	case agentv1.ReplayRequest_TO_PORT:
		dir = datapath.ReplayToPort
	default:
		return nil, status.Errorf(codes.InvalidArgument, "direction %v: want FROM_PORT or TO_PORT", r.Direction)
	}
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	res, err := a.dp.Replay(id, dir, r.Packets)
	if errors.Is(err, datapath.ErrReplayPortNotHere) {
		return nil, status.Errorf(codes.NotFound, "port %s is not on node %s (no port of the data path has id %d)", r.Port, a.cfg.Node, id)
	}
	if errors.Is(err, datapath.ErrReplayInput) {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "replay on port %s: %v", r.Port, err)
	}
	a.log.Info("replayed packets", "port", r.Port, "port_id", id, "direction", dir.String(), "packets", len(res))
	out := &agentv1.ReplayResponse{Results: make([]*agentv1.ReplayResult, len(res))}
	for i, x := range res {
		pr := &agentv1.ReplayResult{
			Index: uint32(i), Verdict: string(x.Verdict), DropPort: x.DropPort, OutPort: x.OutPort,
			Vni: x.VNI, ConntrackHit: x.ConntrackHit, Stages: x.Stages, FrameOut: x.Frame,
		}
		if x.Verdict == datapath.VerdictDrop {
			pr.DropReason = "unknown"
			if x.Reason != 0 {
				pr.DropReason = x.Reason.String()
			}
		}
		if x.TunnelRemote.IsValid() {
			pr.TunnelRemote = x.TunnelRemote.String()
		}
		out.Results[i] = pr
	}
	return out, nil
}

// replayPort resolves a port given by name (from the node's desired state)
// or by its numeric ID.
func (a *Agent) replayPort(name string) (uint32, error) {
	if name == "" {
		return 0, status.Error(codes.InvalidArgument, "port is required: projects/{project}/ports/{port} or its numeric id")
	}
	if strings.HasPrefix(name, "projects/") {
		p, _ := a.portByName(name)
		if p == nil {
			return 0, status.Errorf(codes.NotFound, "port %s is not in node %s's desired state (not bound here?)", name, a.cfg.Node)
		}
		return p.Id, nil
	}
	id, err := strconv.ParseUint(name, 10, 32)
	if err != nil || id == 0 {
		return 0, status.Errorf(codes.InvalidArgument, "port %q: want projects/{project}/ports/{port} or a numeric port id", name)
	}
	return uint32(id), nil
}
