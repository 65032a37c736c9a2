package agent

// Load balancing (issue [5]) on this node; see the LbService comment in
// api/agent/v1/agent.proto for where each part runs.
//
// Health checks: this node probes the backends whose ports it hosts
// (package dataplane/health), from the subnet gateway's address on the
// port's host end, and reports their health in NodeReport. The controller
// folds the reports into LbBackend.healthy for every node, so the node
// never uses its own results directly: all nodes build the same tables.

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/health"
)

// checkOf converts a service's health check, with the protocol's
// defaults; ok is false for a service without one.
func checkOf(hc *agentv1.HealthCheck) (health.Check, bool, error) {
	if hc == nil {
		return health.Check{}, false, nil
	}
	if hc.GetPort() > 65535 {
		return health.Check{}, false, fmt.Errorf("health check port %d beyond 65535", hc.GetPort())
	}
	c := health.Check{
		Protocol: hc.GetProtocol(), Port: uint16(hc.GetPort()), Path: hc.GetPath(),
		Interval:         time.Duration(hc.GetIntervalMs()) * time.Millisecond,
		Timeout:          time.Duration(hc.GetTimeoutMs()) * time.Millisecond,
		HealthyThreshold: int(hc.GetHealthyThreshold()), UnhealthyThreshold: int(hc.GetUnhealthyThreshold()),
	}
	if c.Protocol == "" {
		c.Protocol = "tcp"
	}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		return health.Check{}, false, err
	}
	return c, true, nil
}

// healthTargets lists the backends node checks: those of services with a
// health check whose port is bound to node and plumbed here (hostIf: port
// ID -> host end of its veth). Per-object errors go to errs by key.
func healthTargets(node string, desired map[string]*agentv1.Object, v *agentv1.Index, hostIf map[uint32]string,
	errs map[string]string) []health.Target {
	var out []health.Target
	keys := make([]string, 0, len(desired))
	for k, o := range desired {
		if o.GetLbService() != nil {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, key := range keys {
		s := desired[key].GetLbService()
		check, ok, err := checkOf(s.GetHealthCheck())
		if err != nil {
			errs[key] = err.Error()
			continue
		}
		if !ok {
			continue
		}
		for _, b := range s.GetBackends() {
			if b.GetNode() != node {
				continue
			}
			ifName, plumbed := hostIf[b.GetPortId()]
			p := v.Ports[b.GetPortId()]
			if !plumbed || p == nil {
				continue // not here (yet): nothing to probe through
			}
			sn := v.Subnets[p.GetSubnetId()]
			gw, err := netip.ParseAddr(sn.GetGatewayIp())
			if err != nil || !gw.Is4() {
				errs[key] = fmt.Sprintf("backend %d: subnet %d has no IPv4 gateway to probe from", b.GetId(), p.GetSubnetId())
				continue
			}
			addr, err := netip.ParseAddr(b.GetAddress())
			if err != nil || !addr.Is4() {
				errs[key] = fmt.Sprintf("backend %d: address %q is not IPv4", b.GetId(), b.GetAddress())
				continue
			}
			mac, err := parseMAC(p.GetMac())
			if err != nil {
				errs[key] = fmt.Sprintf("backend %d: port MAC: %v", b.GetId(), err)
				continue
			}
			if b.GetPort() == 0 || b.GetPort() > 65535 {
				errs[key] = fmt.Sprintf("backend %d: port %d out of range", b.GetId(), b.GetPort())
				continue
			}
			out = append(out, health.Target{
				Key:    health.Key{Service: s.GetId(), Backend: b.GetId()},
				HostIf: ifName, RouterMAC: RouterMAC, PortMAC: mac, Gateway: gw, Address: addr,
				Port: uint16(b.GetPort()), Check: check,
			})
		}
	}
	return out
}

// reconcileHealth makes the checker probe exactly the backends this node
// checks. ready are the local ports the data path serves (plumbed and
// attached): a port that is not has no host end to probe through.
func (a *Agent) reconcileHealth(desired map[string]*agentv1.Object, attach map[string]*attachment, ready map[uint32]bool, errs map[string]string) {
	if a.health == nil {
		return // not running (tests of the reconcile alone) or OVN, whose Service_Monitor checks
	}
	hostIf := map[uint32]string{}
	for _, at := range attach {
		if ready[at.PortID] {
			hostIf[at.PortID] = at.HostIf
		}
	}
	targets := healthTargets(a.cfg.Node, desired, agentv1.IndexObjects(desired), hostIf, errs)
	if err := a.health.Set(targets); err != nil {
		// healthTargets validated everything Set checks: a bug if reached.
		a.log.Error("health checks", "err", err)
	}
}

// backendHealth is the health this node's checks found, for NodeReport.
func (a *Agent) backendHealth() []*agentv1.BackendHealth {
	if a.health == nil {
		return nil
	}
	var out []*agentv1.BackendHealth
	for _, s := range a.health.Statuses() {
		out = append(out, &agentv1.BackendHealth{ServiceId: s.Service, BackendId: s.Backend, Healthy: s.Healthy,
			SinceUnix: s.Since.Unix(), LastError: s.LastError})
	}
	return out
}
