package agent

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// syncClock follows how far the applied desired state is behind what the
// controller sent: each response the sync loop folds in is a receipt, each
// reconcile applies every receipt counted before it started. The sync lag
// is the age of the oldest receipt not yet applied, zero when all are.
type syncClock struct {
	mu             sync.Mutex
	now            func() time.Time // nil: time.Now; tests set it
	received       uint64           // receipts so far
	applied        uint64           // receipts applied by the last reconcile
	appliedVersion uint64
	appliedAt      time.Time
	// pending holds the receive times of receipts applied+1, applied+2, ...
	// It keeps the oldest maxPending: only the oldest decides the lag.
	pending []time.Time
}

const maxPending = 1024

func (c *syncClock) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// receive counts one response folded into the desired state.
func (c *syncClock) receive() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.received++
	if len(c.pending) < maxPending {
		c.pending = append(c.pending, c.clock())
	}
}

// seen returns the receipts counted so far; a reconcile takes it with its
// copy of the desired state and hands it to apply.
func (c *syncClock) seen() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received
}

// apply records that a reconcile installed every receipt up to seq, which
// made the desired state of version.
func (c *syncClock) apply(seq, version uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq <= c.applied {
		return
	}
	n := seq - c.applied
	now := c.clock()
	if n >= uint64(len(c.pending)) {
		c.pending = c.pending[:0]
		if c.received > seq { // receipts beyond the cap: their times are lost, count from now
			c.pending = append(c.pending, now)
		}
	} else {
		c.pending = append(c.pending[:0], c.pending[n:]...)
	}
	c.applied, c.appliedVersion, c.appliedAt = seq, version, now
}

// lag is the age of the oldest receipt not applied yet.
func (c *syncClock) lag() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.received == c.applied || len(c.pending) == 0 {
		return 0
	}
	return c.clock().Sub(c.pending[0])
}

func (c *syncClock) last() (version uint64, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.appliedVersion, c.appliedAt
}

// datapathCollector exports what the drop counters of dropCollector do not:
// how full the LRU tables are, which API port each port ID is, and how far
// the data path is behind the controller. Everything is read at scrape time.
type datapathCollector struct {
	a         *Agent
	entries   *prometheus.Desc
	live      *prometheus.Desc
	capacity  *prometheus.Desc
	portInfo  *prometheus.Desc
	applied   *prometheus.Desc
	appliedAt *prometheus.Desc
	lag       *prometheus.Desc
	connected *prometheus.Desc
}

func newDatapathCollector(a *Agent) *datapathCollector {
	table := []string{"table"}
	return &datapathCollector{
		a: a,
		entries: prometheus.NewDesc("meridian_agent_table_entries",
			"Entries in a data-path LRU table (conntrack, nat), expired ones included: they hold a slot until evicted.", table, nil),
		live: prometheus.NewDesc("meridian_agent_table_live_entries",
			"Entries in a data-path LRU table whose timeout has not passed.", table, nil),
		capacity: prometheus.NewDesc("meridian_agent_table_capacity",
			"Maximum entries of a data-path LRU table; at capacity new flows evict the least recently used.", table, nil),
		portInfo: prometheus.NewDesc("meridian_agent_port_info",
			"1 for each port attached on this node: its data-path ID (label port, as in meridian_agent_drops_total) and API name.",
			[]string{"port", "name"}, nil),
		applied: prometheus.NewDesc("meridian_agent_applied_version",
			"Version of the desired state the last reconcile installed.", nil, nil),
		appliedAt: prometheus.NewDesc("meridian_agent_last_apply_timestamp_seconds",
			"Unix time of the last reconcile that installed newly received state.", nil, nil),
		lag: prometheus.NewDesc("meridian_agent_sync_lag_seconds",
			"Age of the oldest update received from the controller and not yet installed; 0 when up to date.", nil, nil),
		connected: prometheus.NewDesc("meridian_agent_controller_connected",
			"1 while the agent has a sync stream open to the controller.", nil, nil),
	}
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.entries, c.live, c.capacity, c.portInfo, c.applied, c.appliedAt, c.lag, c.connected} {
		ch <- d
	}
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	if a.dp != nil {
		for _, t := range []struct {
			name string
			read func() (datapath.Occupancy, error)
		}{{"conntrack", a.dp.ConntrackOccupancy}, {"nat", a.dp.NATOccupancy}} {
			o, err := t.read()
			if err != nil {
				// An invalid metric fails the scrape visibly rather than
				// exporting a zero that looks like an empty table.
				ch <- prometheus.NewInvalidMetric(c.entries, err)
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(o.Entries), t.name)
			ch <- prometheus.MustNewConstMetric(c.live, prometheus.GaugeValue, float64(o.Live), t.name)
			ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(o.Capacity), t.name)
		}
	}
	a.mu.Lock()
	// Only this node's attachments: bounded by the ports a node can hold,
	// unlike the desired state, which names every port of its VPCs.
	for _, at := range a.attach {
		if at.PortID != 0 {
			ch <- prometheus.MustNewConstMetric(c.portInfo, prometheus.GaugeValue, 1, strconv.FormatUint(uint64(at.PortID), 10), at.Port)
		}
	}
	connected := a.stream != nil
	a.mu.Unlock()
	v, at := a.syncm.last()
	ch <- prometheus.MustNewConstMetric(c.applied, prometheus.GaugeValue, float64(v))
	if !at.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.appliedAt, prometheus.GaugeValue, float64(at.UnixNano())/1e9)
	}
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, a.syncm.lag().Seconds())
	ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, boolGauge(connected))
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
