package distributor

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector exposes the distributor's per-node sync state. It reads the
// state at scrape time rather than mirroring it into gauges, so nodes that
// disappear need no cleanup and nothing is updated on the hot path.
type collector struct {
	d                                        *Distributor
	lag, desired, applied, connected         *prometheus.Desc
	snapshots, deltas, acks, batches, events *prometheus.Desc
}

// Collectors returns the distributor's Prometheus collectors.
func (d *Distributor) Collectors() []prometheus.Collector {
	node := []string{"node"}
	return []prometheus.Collector{&collector{
		d:         d,
		lag:       prometheus.NewDesc("meridian_agent_sync_lag_seconds", "How long the node's desired version has been ahead of the version its agent applied; 0 when in sync.", node, nil),
		desired:   prometheus.NewDesc("meridian_agent_desired_version", "Latest version computed for the node.", node, nil),
		applied:   prometheus.NewDesc("meridian_agent_applied_version", "Latest version the node's agent acknowledged.", node, nil),
		connected: prometheus.NewDesc("meridian_agent_connected", "1 while the node's agent has a Sync stream open.", node, nil),
		snapshots: prometheus.NewDesc("meridian_agent_snapshots_sent_total", "Full snapshots sent to agents.", nil, nil),
		deltas:    prometheus.NewDesc("meridian_agent_deltas_sent_total", "Deltas sent to agents.", nil, nil),
		acks:      prometheus.NewDesc("meridian_agent_acks_total", "Acknowledgements received from agents.", nil, nil),
		batches:   prometheus.NewDesc("meridian_distributor_batches_total", "Batches of store changes applied to the model.", nil, nil),
		events:    prometheus.NewDesc("meridian_distributor_events_total", "Store events applied to the model.", nil, nil),
	}}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lag, c.desired, c.applied, c.connected, c.snapshots, c.deltas, c.acks, c.batches, c.events} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.d.Metrics() {
		conn := 0.0
		if m.Connected {
			conn = 1
		}
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, m.SyncLagSeconds, m.Node)
		ch <- prometheus.MustNewConstMetric(c.desired, prometheus.GaugeValue, float64(m.Desired), m.Node)
		ch <- prometheus.MustNewConstMetric(c.applied, prometheus.GaugeValue, float64(m.Applied), m.Node)
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, conn, m.Node)
	}
	c.d.mu.Lock()
	n := c.d.counters
	c.d.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.snapshots, prometheus.CounterValue, float64(n.snapshots))
	ch <- prometheus.MustNewConstMetric(c.deltas, prometheus.CounterValue, float64(n.deltas))
	ch <- prometheus.MustNewConstMetric(c.acks, prometheus.CounterValue, float64(n.acks))
	ch <- prometheus.MustNewConstMetric(c.batches, prometheus.CounterValue, float64(n.batches))
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(n.events))
}
