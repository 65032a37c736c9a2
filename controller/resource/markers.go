package resource

// Store keys that are not API resources but live under "res/" so that the
// distributor's and the model's watch see them in order with every other
// change (versions stay store revisions), they survive controller restarts
// and a full model rebuild reads them like an incremental one. The API
// server's watch ignores them (they are no kind).

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// NodeDownPrefix is the prefix of the markers of nodes whose agent has
// been away longer than the grace period. The name says "Gateway" for
// compatibility with stores written before load balancing: gateways were
// the first nodes whose absence mattered to others; nodes hosting
// load-balancer backends are marked too.
const NodeDownPrefix = "res/GatewayDown/nodes/"

// NodeDownKey is the store key marking node (ID) down. Its value is ignored.
func NodeDownKey(node string) string { return NodeDownPrefix + node }

// LbHealthPrefix is the prefix of the backend health records.
const LbHealthPrefix = "res/LbHealth/"

// LbHealthKey is the store key of the health of backend (ID) of listener
// (ID), as the node hosting the backend last reported it.
func LbHealthKey(listener, backend uint32) string {
	return LbHealthPrefix + strconv.FormatUint(uint64(listener), 10) + "/" + strconv.FormatUint(uint64(backend), 10)
}

// ParseLbHealthKey splits a health record key into listener and backend IDs.
func ParseLbHealthKey(key string) (listener, backend uint32, ok bool) {
	rest, ok := strings.CutPrefix(key, LbHealthPrefix)
	if !ok {
		return 0, 0, false
	}
	l, b, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, false
	}
	lv, err1 := strconv.ParseUint(l, 10, 32)
	bv, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return uint32(lv), uint32(bv), true
}

// LbHealth is a backend health record. Node says which node's checker
// wrote it: a record of another node than the one hosting the backend now
// (the port moved) says nothing about the backend.
type LbHealth struct {
	Node      string `json:"node"`
	Healthy   bool   `json:"healthy"`
	SinceUnix int64  `json:"since,omitempty"`
	Error     string `json:"error,omitempty"`
}

// Encode returns the record's stored form.
func (h LbHealth) Encode() []byte {
	b, _ := json.Marshal(h) // plain struct of strings, bools and ints: cannot fail
	return b
}

// DecodeLbHealth parses a stored record.
func DecodeLbHealth(b []byte) (LbHealth, error) {
	var h LbHealth
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("decode backend health record: %w", err)
	}
	return h, nil
}

// Backend health states, as the API shows them.
const (
	LbStateHealthy   = "healthy"
	LbStateUnhealthy = "unhealthy"
	LbStateUnknown   = "unknown"
	LbStateDraining  = "draining"
	LbStateUnbound   = "unbound"
)

// LbBackendFacts is what decides one backend's health.
type LbBackendFacts struct {
	Node     string    // node ID hosting the backend's port ("" = unbound)
	Draining bool      // no new connections
	Record   *LbHealth // the stored report, nil if none
	NodeDown bool      // the node's agent has been away past the grace period
}

// LbBackendVerdict is the decision for one backend.
type LbBackendVerdict struct {
	Healthy bool   // LbBackend.healthy: may take connections as far as health goes
	State   string // LbState*
	Reason  string // why not healthy
}

// DecideLbHealth is the one place that turns health facts into what the
// data path uses (LbBackend.healthy) and what the API shows, so the two
// never disagree. A backend on a node marked down (its agent away past the
// grace period) is unhealthy: the node may be gone, and nobody can check.
// Otherwise, without a health check every bound backend is healthy; with
// one, a backend is healthy or unhealthy as its node's checker last
// reported it (a report by another node than the one hosting it now does
// not count), and unknown before its first report. Unknown backends serve only while no backend of the
// listener is known healthy: a new load balancer serves at once instead of
// black-holing until the first reports (the checks take it down within
// interval x threshold if it is broken), while a backend added to a
// serving listener waits for its first good report, like AWS's "initial"
// targets, so a server still starting gets no connections.
func DecideLbHealth(checked bool, in []LbBackendFacts) []LbBackendVerdict {
	out := make([]LbBackendVerdict, len(in))
	knownHealthy := false
	for i, f := range in {
		v := &out[i]
		switch {
		case f.Node == "":
			v.State, v.Reason = LbStateUnbound, "the port is not bound to a node"
		case f.NodeDown:
			v.State, v.Reason = LbStateUnhealthy, "the agent of node "+f.Node+" has been away past the grace period: the node may be gone"
		case !checked:
			v.Healthy, v.State = true, LbStateHealthy
		case f.Record == nil || f.Record.Node != f.Node:
			v.State = LbStateUnknown
		case f.Record.Healthy:
			v.Healthy, v.State = true, LbStateHealthy
		default:
			v.State, v.Reason = LbStateUnhealthy, f.Record.Error
			if v.Reason == "" {
				v.Reason = "failed its health check"
			}
		}
		if v.Healthy && !f.Draining {
			knownHealthy = true
		}
	}
	for i, f := range in {
		v := &out[i]
		if v.State == LbStateUnknown {
			v.Healthy = !knownHealthy
			if knownHealthy {
				v.Reason = "waiting for its first check result"
			} else {
				v.Reason = "no check result yet (serving: no backend is known healthy)"
			}
		}
		if f.Draining && f.Node != "" {
			v.State = LbStateDraining
			if v.Reason == "" {
				v.Reason = "draining: established connections only"
			}
		}
	}
	return out
}

// Load-balancer defaults the API documents; the API server fills them on
// write and the model applies them to anything stored without them.
const (
	LbDefaultIntervalMs          = 2000
	LbDefaultTimeoutMs           = 1000
	LbDefaultThreshold           = 2
	LbDefaultWeight              = 1
	LbDefaultMaglevSize          = 65537 // prime; Maglev wants M >> backends (65537 balances a few hundred within ~1%)
	LbSchemeInternetFacing       = "internet-facing"
	LbSchemeInternal             = "internal"
	LbHealthCheckTCP             = "tcp"
	LbHealthCheckHTTP            = "http"
	LbDefaultHealthCheckHTTPPath = "/"
)
