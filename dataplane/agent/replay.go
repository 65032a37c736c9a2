package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

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
	// The test run sends a policy drop's event as a real drop does: with
	// the rule that decided. Subscribed before the run, none is missed.
	var sub *dropSub
	if a.dropSubs.readers.Load() > 0 {
		sub = a.dropSubs.subscribe()
		defer a.dropSubs.unsubscribe(sub)
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
		if al := x.Allowed; al != nil {
			pr.AllowKnown = true
			pr.AclEgressRule, pr.SgEgressRule, pr.AclIngressRule, pr.SgIngressRule = al.ACLEgress, al.SGEgress, al.ACLIngress, al.SGIngress
			pr.Stages = a.withAllowingRules(pr.Stages, *al, x.ConntrackHit)
		}
		out.Results[i] = pr
	}
	if sub != nil {
		a.replayRules(ctx, sub, r.Packets, res, out.Results)
	}
	return out, nil
}

// replayWaitEvents bounds the wait for the drop events of a replay's
// policy drops (the ring's reader is normally microseconds behind).
const replayWaitEvents = time.Second

// replayRules fills the deciding rule of each policy drop of a replay from
// the drop events the test runs sent, in order. An event is a replayed
// frame's if it has its reason and port and the frame's head (or, if the
// data path rewrote the frame before it dropped it, its length, source MAC
// and address and IP id): real drops meanwhile are passed over.
func (a *Agent) replayRules(ctx context.Context, sub *dropSub, frames [][]byte, res []datapath.ReplayResult, out []*agentv1.ReplayResult) {
	var want []int
	for i, x := range res {
		if x.Verdict == datapath.VerdictDrop && x.Reason.IsPolicy() {
			want = append(want, i)
		}
	}
	if len(want) == 0 {
		return
	}
	timer := time.NewTimer(replayWaitEvents)
	defer timer.Stop()
	var acls map[uint32]aclRuleRef
	for len(want) > 0 {
		var ev datapath.DropEvent
		select {
		case ev = <-sub.ch:
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
		for j, i := range want {
			if !replayedFrame(ev, frames[i], res[i]) {
				continue
			}
			pr := out[i]
			pr.RuleKnown, pr.DropRule = true, ev.Rule
			if ev.Rule != 0 && (ev.Reason == datapath.DropACLEgress || ev.Reason == datapath.DropACLIngress) {
				if acls == nil {
					acls = a.aclRules()
				}
				ref, ok := acls[ev.Rule]
				pr.DropRuleNumber, pr.DropAcl = ref.number, ref.acl
				if !ok {
					pr.DropAcl = ""
				}
			}
			pr.Stages = withRule(pr.Stages, pr)
			want = append(want[:j], want[j+1:]...)
			break
		}
	}
}

func replayedFrame(ev datapath.DropEvent, frame []byte, r datapath.ReplayResult) bool {
	if ev.Reason != r.Reason || ev.Port != r.DropPort || ev.Length != len(frame) {
		return false
	}
	if bytes.Equal(ev.Frame, frame[:min(len(frame), datapath.DropSnap)]) {
		return true
	}
	// rewritten before the drop (a service VIP's DNAT): what stays
	return len(ev.Frame) >= 30 && len(frame) >= 30 && bytes.Equal(ev.Frame[6:12], frame[6:12]) &&
		bytes.Equal(ev.Frame[18:20], frame[18:20]) && bytes.Equal(ev.Frame[26:30], frame[26:30])
}

type aclRuleRef struct {
	acl    string
	number uint32
}

// aclRules maps each network ACL rule of the desired state (by id) to its
// ACL's name and its number there.
func (a *Agent) aclRules() map[uint32]aclRuleRef {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := map[uint32]aclRuleRef{}
	for _, o := range a.desired {
		acl := o.GetNetworkAcl()
		if acl == nil {
			continue
		}
		name := acl.Name
		if name == "" {
			name = "acl " + strconv.FormatUint(uint64(acl.Id), 10)
		}
		for _, r := range acl.Rules {
			m[r.Id] = aclRuleRef{acl: name, number: r.Number}
		}
	}
	return m
}

// withAllowingRules names, in the policy stages a forwarded packet passed,
// the rule that allowed it.
func (a *Agent) withAllowingRules(stages []string, al datapath.AllowedBy, established bool) []string {
	acls := a.aclRules()
	sgs := a.sgRules()
	acl := func(id uint32) string {
		if id == 0 {
			return "no network ACL"
		}
		if ref, ok := acls[id]; ok {
			return fmt.Sprintf("rule #%d of network ACL %s (rule id %d)", ref.number, ref.acl, id)
		}
		return fmt.Sprintf("network ACL rule id %d", id)
	}
	sg := func(id uint32) string {
		if g, ok := sgs[id]; ok {
			return fmt.Sprintf("rule %d of security group %s", id, g)
		}
		return fmt.Sprintf("security-group rule %d", id)
	}
	out := append([]string(nil), stages...)
	for i, s := range out {
		switch {
		case s == "egress network ACL: passed":
			out[i] = s + ": " + acl(al.ACLEgress)
		case s == "ingress network ACL: passed":
			out[i] = s + ": " + acl(al.ACLIngress)
		case s == "egress security groups: passed" && !established && al.SGEgress != 0:
			out[i] = s + ": " + sg(al.SGEgress)
		case s == "ingress security groups: passed" && !established && al.SGIngress != 0:
			out[i] = s + ": " + sg(al.SGIngress)
		}
	}
	return out
}

// sgRules maps each security-group rule of the desired state (by id) to
// its group's name.
func (a *Agent) sgRules() map[uint32]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := map[uint32]string{}
	for _, o := range a.desired {
		g := o.GetSecurityGroup()
		if g == nil {
			continue
		}
		name := g.Name
		if name == "" {
			name = "sg " + strconv.FormatUint(uint64(g.Id), 10)
		}
		for _, r := range g.Rules {
			m[r.Id] = name
		}
	}
	return m
}

// withRule names the deciding rule in the stage that dropped.
func withRule(stages []string, r *agentv1.ReplayResult) []string {
	var by string
	switch {
	case strings.HasPrefix(r.DropReason, "sg-"):
		by = "no security-group rule allows"
	case r.DropRule == 0:
		by = "the network ACL's default deny (rule *)"
	case r.DropAcl != "":
		by = fmt.Sprintf("rule #%d of network ACL %s (rule id %d)", r.DropRuleNumber, r.DropAcl, r.DropRule)
	default:
		by = fmt.Sprintf("network ACL rule id %d (no longer in the desired state)", r.DropRule)
	}
	out := append([]string(nil), stages...)
	for i, s := range out {
		if strings.Contains(s, ": dropped ("+r.DropReason) {
			out[i] = s + ": " + by
		}
	}
	return out
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
