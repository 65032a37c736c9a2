package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// WorkloadSpec is one workload interface to plumb.
type WorkloadSpec = plumbing.WorkloadSpec

// Plumber creates and removes the node's interfaces. The agent's own
// implementation uses netlink (package plumbing); tests may substitute.
type Plumber interface {
	EnsureWorkload(WorkloadSpec) error
	DeleteWorkload(hostName string) error
	// EnsureOverlay creates (or keeps) the VXLAN device in external mode and
	// returns its ifindex.
	EnsureOverlay(name string, underlay netip.Addr, mtu int) (int, error)
}

// setupNode prepares what every node needs once: the VXLAN device with the
// overlay program, and the data path's knowledge of it.
func (a *Agent) setupNode() error {
	if changes, err := plumbing.EnsureNodeSysctls(); err != nil {
		return fmt.Errorf("agent: node sysctls: %w", err)
	} else if len(changes) > 0 {
		a.log.Info("node sysctls set", "changes", changes)
	}
	idx, err := a.plumb.EnsureOverlay(a.cfg.VXLANName, a.cfg.UnderlayIP, 1500)
	if err != nil {
		return fmt.Errorf("agent: overlay device: %w", err)
	}
	if err := a.dp.Attach(datapath.HookOverlay, idx); err != nil {
		return fmt.Errorf("agent: attach overlay program: %w", err)
	}
	a.overlay = idx
	return nil
}

// watchDrops turns policy drop events from the data path into structured
// logs (who dropped what, by which rule) and flow-log rejects, and hands
// every drop event to the captures and replays that subscribed. Drops of
// other reasons (sent only while a drop capture runs) are the captures':
// they are neither logged nor flow-logged (no policy rejected them).
func (a *Agent) watchDrops(ctx context.Context) {
	r, err := a.dp.DropEvents()
	if err != nil {
		a.log.Error("drop events unavailable", "err", err)
		return
	}
	defer r.Close()
	// A crashed agent's drop captures are gone: no data path left over
	// should keep sending every drop (a new one starts at 0 anyway).
	a.dropSubs.captureMu.Lock()
	if a.dropSubs.captures == 0 {
		if err := a.dp.SetDropCapture(0); err != nil {
			a.log.Error("clear drop capture", "err", err)
		}
	}
	a.dropSubs.captureMu.Unlock()
	a.dropSubs.readers.Add(1)
	defer a.dropSubs.readers.Add(-1)
	for ctx.Err() == nil {
		r.SetDeadline(time.Now().Add(500 * time.Millisecond))
		ev, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				a.log.Error("read drop event", "err", err)
			}
			return
		}
		a.dropSubs.publish(ev)
		if !ev.Reason.IsPolicy() {
			continue
		}
		if a.flowlogs != nil {
			a.flowlogs.reject(ev)
		}
		a.log.Info("policy drop", "reason", ev.Reason.String(), "rule", ev.Rule, "port", ev.Port,
			"direction", ev.Direction.String(), "vpc", ev.VPC, "proto", ev.Protocol,
			"src", ev.Src.String()+":"+strconv.Itoa(int(ev.SrcPort)), "dst", ev.Dst.String()+":"+strconv.Itoa(int(ev.DstPort)))
	}
}

// dropCollector exports the data path's drop counters per reason and port
// at scrape time, so nothing is copied between scrapes.
type dropCollector struct {
	dp        *datapath.Datapath
	desc      *prometheus.Desc
	ct        *prometheus.Desc
	natFlows  *prometheus.Desc
	natExhaus *prometheus.Desc
}

func (c *dropCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.ct
	ch <- c.natFlows
	ch <- c.natExhaus
}

func (c *dropCollector) Collect(ch chan<- prometheus.Metric) {
	drops, err := c.dp.Drops()
	if err == nil {
		for _, d := range drops {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(d.Packets), d.Reason.String(), strconv.Itoa(int(d.Port)))
		}
	}
	if nat, err := c.dp.NATStats(); err == nil { // gateway nodes: their NAT gateways
		for _, n := range nat {
			id := strconv.FormatUint(uint64(n.ID), 10)
			ch <- prometheus.MustNewConstMetric(c.natFlows, prometheus.GaugeValue, float64(n.ActiveFlows), id)
			ch <- prometheus.MustNewConstMetric(c.natExhaus, prometheus.CounterValue, float64(n.PortExhausted), id)
		}
	}
	if st, err := c.dp.ConntrackStats(); err == nil {
		for name, v := range map[string]uint64{"inserts": st.Inserts, "insert_failures": st.InsertFailures,
			"hits": st.Hits, "misses": st.Misses, "expired": st.Expired} {
			ch <- prometheus.MustNewConstMetric(c.ct, prometheus.CounterValue, float64(v), name)
		}
	}
}

// newDropCollector exports the data path's counters: drops, conntrack
// events and, on gateway nodes, the NAT gateways' flows and exhaustion.
func newDropCollector(dp *datapath.Datapath) *dropCollector {
	return &dropCollector{
		dp:   dp,
		desc: prometheus.NewDesc("meridian_agent_drops_total", "Packets dropped by the data path, by reason and port ID.", []string{"reason", "port"}, nil),
		ct:   prometheus.NewDesc("meridian_agent_conntrack_events_total", "Conntrack table events.", []string{"event"}, nil),
		natFlows: prometheus.NewDesc("meridian_agent_nat_active_flows", "Active flows of a NAT gateway on this gateway node.",
			[]string{"nat_gateway"}, nil),
		natExhaus: prometheus.NewDesc("meridian_agent_nat_port_exhausted_total",
			"New flows of a NAT gateway refused for want of a free source port.", []string{"nat_gateway"}, nil),
	}
}

// serveMetrics serves /metrics and /healthz on addr until ctx is done.
func (a *Agent) serveMetrics(ctx context.Context, addr string) error {
	reg := a.metricsRegistry()
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("agent metrics: %w", err)
	}
	return nil
}

// metricsRegistry holds everything /metrics exports.
func (a *Agent) metricsRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	if a.dp != nil { // the OVN realization has no eBPF counters
		reg.MustRegister(newDropCollector(a.dp))
	}
	if a.flowlogs != nil {
		reg.MustRegister(newFlowLogCollector(a.flowlogs))
	}
	if a.ovnflow != nil {
		reg.MustRegister(newOVNFlowLogCollector(a.ovnflow)) // ovnflowlog.go
	}
	reg.MustRegister(newDatapathCollector(a))
	reg.MustRegister(newLBCollector(&a.nslb)) // gateways: the XDP load balancer (lb.go)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meridian_agent_desired_version", Help: "Version of the desired state received."},
		func() float64 { a.mu.Lock(); defer a.mu.Unlock(); return float64(a.version) }))
	return reg
}
