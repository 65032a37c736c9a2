package agent

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// metricsWorld: VPC 1 with subnet 1 (port web-1, ID 1, 10.0.1.10) behind
// network ACL 7, which denies TCP to port 23 on the way out, and subnet 2
// (port db-1, ID 2, 10.0.2.20) whose security group 2 lets in TCP 80 only.
func metricsWorld() map[string]*agentv1.Object {
	anyRule := func(id uint32, ingress bool) *agentv1.Rule {
		return &agentv1.Rule{Id: id, Ingress: ingress, IcmpType: -1, IcmpCode: -1}
	}
	return objects(
		&agentv1.Object{Key: "vpc/1", Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{Id: 1, Vni: 100, Cidrs: []string{"10.0.0.0/16"}}}},
		&agentv1.Object{Key: "subnet/1", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 1, VpcId: 1, Cidr: "10.0.1.0/24",
			GatewayIp: "10.0.1.1", NetworkAclId: 7}}},
		&agentv1.Object{Key: "subnet/2", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 2, VpcId: 1, Cidr: "10.0.2.0/24", GatewayIp: "10.0.2.1"}}},
		&agentv1.Object{Key: "acl/7", Body: &agentv1.Object_NetworkAcl{NetworkAcl: &agentv1.NetworkAcl{Id: 7, Rules: []*agentv1.Rule{
			{Id: 70, Number: 100, Allow: false, Protocol: 6, PortMin: 23, PortMax: 23, IcmpType: -1, IcmpCode: -1},
			{Id: 71, Number: 200, Allow: true, IcmpType: -1, IcmpCode: -1},
			{Id: 72, Number: 300, Allow: true, Ingress: true, IcmpType: -1, IcmpCode: -1},
		}}}},
		&agentv1.Object{Key: "sg/1", Body: &agentv1.Object_SecurityGroup{SecurityGroup: &agentv1.SecurityGroup{Id: 1, VpcId: 1,
			Rules: []*agentv1.Rule{anyRule(10, false), anyRule(11, true)}}}},
		&agentv1.Object{Key: "sg/2", Body: &agentv1.Object_SecurityGroup{SecurityGroup: &agentv1.SecurityGroup{Id: 2, VpcId: 1,
			Rules: []*agentv1.Rule{anyRule(20, false), {Id: 21, Ingress: true, Protocol: 6, PortMin: 80, PortMax: 80, IcmpType: -1, IcmpCode: -1}}}}},
		&agentv1.Object{Key: "port/1", Body: &agentv1.Object_Port{Port: &agentv1.Port{Id: 1, Name: "web-1", VpcId: 1, SubnetId: 1,
			Mac: "02:00:00:00:01:0a", Ips: []string{"10.0.1.10"}, Node: "n1", SecurityGroupIds: []uint32{1}}}},
		&agentv1.Object{Key: "port/2", Body: &agentv1.Object_Port{Port: &agentv1.Port{Id: 2, Name: "db-1", VpcId: 1, SubnetId: 2,
			Mac: "02:00:00:00:02:14", Ips: []string{"10.0.2.20"}, Node: "n1", SecurityGroupIds: []uint32{2}}}},
	)
}

// tcpSYN is a TCP SYN from web-1 to db-1's dport, from sport.
func tcpSYN(t testing.TB, sport, dport uint16) []byte {
	t.Helper()
	src, _ := net.ParseMAC("02:00:00:00:01:0a")
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: RouterMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.ParseIP("10.0.1.10").To4(), DstIP: net.ParseIP("10.0.2.20").To4()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), SYN: true, Window: 1024}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// scrape fetches /metrics over HTTP, as Prometheus would, and returns each
// sample by its name and labels, e.g. `meridian_agent_drops_total{port="2",reason="sg-ingress"}`.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := name
			if len(ls) > 0 {
				key += "{" + strings.Join(ls, ",") + "}"
			}
			out[key] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return m.GetUntyped().GetValue()
}

// TestDatapathMetrics: packets run through the installed pipeline move the
// per-port, per-reason drop counters on /metrics by exactly the packets
// dropped, conntrack occupancy is the number of flows let through, ports
// are named, and the sync lag is the age of what is received but not yet
// applied.
func TestDatapathMetrics(t *testing.T) {
	// The server listens in the test's own network namespace; the data path
	// under test lives in a private one, entered by one locked thread only.
	var handler atomic.Pointer[http.Handler]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*handler.Load()).ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	url := srv.URL + "/metrics"
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		addVeth(t, "mweb1")
		addVeth(t, "mdb1")
		a := &Agent{
			cfg: Config{Node: "n1", StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp,
			desired: map[string]*agentv1.Object{}, changed: make(chan struct{}, 1), errs: map[string]string{},
			attach: map[string]*attachment{
				"web-1": {Port: "web-1", PortID: 1, HostIf: "mweb1"},
				"db-1":  {Port: "db-1", PortID: 2, HostIf: "mdb1"},
			},
			applied: newApplied(),
		}
		clock := time.Unix(1_800_000_000, 0)
		a.syncm.now = func() time.Time { return clock }
		h := promhttp.HandlerFor(a.metricsRegistry(), promhttp.HandlerOpts{})
		handler.Store(&h)

		m := scrape(t, url)
		if m["meridian_agent_applied_version"] != 0 || m["meridian_agent_sync_lag_seconds"] != 0 {
			t.Fatalf("before any state: applied %v, lag %v; want 0, 0", m["meridian_agent_applied_version"], m["meridian_agent_sync_lag_seconds"])
		}

		// The controller's snapshot arrives; 2.5 s later it is still not applied.
		objs := metricsWorld()
		var ups []*agentv1.Object
		for _, o := range objs {
			ups = append(ups, o)
		}
		a.applyResponse(&agentv1.SyncResponse{Snapshot: true, Version: 5, Upserts: ups})
		clock = clock.Add(2500 * time.Millisecond)
		m = scrape(t, url)
		if m["meridian_agent_sync_lag_seconds"] != 2.5 || m["meridian_agent_desired_version"] != 5 || m["meridian_agent_applied_version"] != 0 {
			t.Fatalf("received 5, not applied: lag %v desired %v applied %v; want 2.5, 5, 0", m["meridian_agent_sync_lag_seconds"],
				m["meridian_agent_desired_version"], m["meridian_agent_applied_version"])
		}
		a.reconcileOnce()
		if len(a.errs) != 0 {
			t.Fatalf("reconcile errors: %v", a.errs)
		}
		m = scrape(t, url)
		if m["meridian_agent_sync_lag_seconds"] != 0 || m["meridian_agent_applied_version"] != 5 ||
			m["meridian_agent_last_apply_timestamp_seconds"] != float64(clock.Unix())+0.5 {
			t.Fatalf("applied: lag %v applied %v at %v; want 0, 5, %v", m["meridian_agent_sync_lag_seconds"],
				m["meridian_agent_applied_version"], m["meridian_agent_last_apply_timestamp_seconds"], float64(clock.Unix())+0.5)
		}
		for _, k := range []string{`meridian_agent_port_info{name="web-1",port="1"}`, `meridian_agent_port_info{name="db-1",port="2"}`} {
			if m[k] != 1 {
				t.Fatalf("%s missing from %v", k, m)
			}
		}
		if m[`meridian_agent_table_entries{table="conntrack"}`] != 0 || m[`meridian_agent_table_capacity{table="conntrack"}`] != 262144 ||
			m[`meridian_agent_table_entries{table="nat"}`] != 0 {
			t.Fatalf("tables before traffic: %v", m)
		}

		// Traffic: 6 flows to db-1:80 (allowed), 3 SYNs to db-1:22 (db-1's
		// security group says no), 2 SYNs to port 23 (subnet 1's ACL says no).
		const flows, sgDrops, aclDrops = 6, 3, 2
		var frames [][]byte
		for i := range flows {
			frames = append(frames, tcpSYN(t, uint16(40000+i), 80))
		}
		for i := range sgDrops {
			frames = append(frames, tcpSYN(t, uint16(41000+i), 22))
		}
		for i := range aclDrops {
			frames = append(frames, tcpSYN(t, uint16(42000+i), 23))
		}
		before := m
		res, err := dp.Replay(1, datapath.ReplayFromPort, frames)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			want := datapath.VerdictDeliver
			if i >= flows {
				want = datapath.VerdictDrop
			}
			if r.Verdict != want {
				t.Fatalf("packet %d: %+v, want %s", i, r, want)
			}
		}

		m = scrape(t, url)
		moved := map[string]float64{}
		for k, v := range m {
			if strings.HasPrefix(k, "meridian_agent_drops_total") && v != before[k] {
				moved[k] = v - before[k]
			}
		}
		want := map[string]float64{
			`meridian_agent_drops_total{port="2",reason="sg-ingress"}`: sgDrops,
			`meridian_agent_drops_total{port="1",reason="acl-egress"}`: aclDrops,
		}
		if len(moved) != len(want) || moved[`meridian_agent_drops_total{port="2",reason="sg-ingress"}`] != sgDrops ||
			moved[`meridian_agent_drops_total{port="1",reason="acl-egress"}`] != aclDrops {
			t.Fatalf("drop counters moved by %v, want %v", moved, want)
		}
		if m[`meridian_agent_table_entries{table="conntrack"}`] != flows || m[`meridian_agent_table_live_entries{table="conntrack"}`] != flows {
			t.Fatalf("conntrack entries %v (live %v), want %d: one per flow let through", m[`meridian_agent_table_entries{table="conntrack"}`],
				m[`meridian_agent_table_live_entries{table="conntrack"}`], flows)
		}

		// A delta arrives while the applied state is current: lag counts
		// from its arrival, and ends when a reconcile applies it.
		a.applyResponse(&agentv1.SyncResponse{FromVersion: 5, Version: 6, Deletes: []string{"acl/7"}})
		clock = clock.Add(time.Second)
		if lag := scrape(t, url)["meridian_agent_sync_lag_seconds"]; lag != 1 {
			t.Fatalf("lag %v one second after delta 6 arrived, want 1", lag)
		}
		a.reconcileOnce()
		m = scrape(t, url)
		if m["meridian_agent_sync_lag_seconds"] != 0 || m["meridian_agent_applied_version"] != 6 {
			t.Fatalf("after applying 6: lag %v applied %v", m["meridian_agent_sync_lag_seconds"], m["meridian_agent_applied_version"])
		}
	})
}

// BenchmarkMetricsScrape100k is the cost of one /metrics scrape (every
// collector, text encoding) on a node whose conntrack table holds 100,000
// flows, all created by packets run through the pipeline. The baseline in
// the same run is the same scrape with the table empty.
func BenchmarkMetricsScrape100k(b *testing.B) {
	inPrivateNetns(b, func(dp *datapath.Datapath) {
		addVeth(b, "mweb1")
		addVeth(b, "mdb1")
		world := metricsWorld()
		// db-1 lets in every TCP port, so that 100,000 flows fit in the
		// 5-tuples of one client.
		world["sg/2"].GetSecurityGroup().Rules[1].PortMax = 65535
		inst := &Installer{a: &Agent{cfg: Config{Node: "n1"}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp},
			attach: map[string]*attachment{
				"web-1": {Port: "web-1", PortID: 1, HostIf: "mweb1"},
				"db-1":  {Port: "db-1", PortID: 2, HostIf: "mdb1"},
			}, prev: newApplied()}
		inst.a.attach = inst.attach
		if errs := inst.Install(world); len(errs) != 0 {
			b.Fatalf("install: %v", errs)
		}
		h := promhttp.HandlerFor(inst.a.metricsRegistry(), promhttp.HandlerOpts{})
		scrapeOnce := func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
			if rec.Code != http.StatusOK {
				b.Fatalf("scrape: %d %s", rec.Code, rec.Body)
			}
		}
		const rounds = 20
		start := time.Now()
		for range rounds {
			scrapeOnce()
		}
		empty := time.Since(start) / rounds

		const flows = 100_000
		var frames [][]byte
		for i := range flows {
			frames = append(frames, tcpSYN(b, uint16(10000+i%50000), uint16(80+i/50000)))
			if len(frames) == datapath.MaxReplayPackets || i == flows-1 {
				if _, err := dp.Replay(1, datapath.ReplayFromPort, frames); err != nil {
					b.Fatal(err)
				}
				frames = frames[:0]
			}
		}
		o, err := dp.ConntrackOccupancy()
		if err != nil || o.Entries != flows {
			b.Fatalf("conntrack %+v, %v: want %d entries", o, err, flows)
		}
		b.ResetTimer()
		for b.Loop() {
			scrapeOnce()
		}
		b.StopTimer()
		per := b.Elapsed() / time.Duration(b.N)
		b.ReportMetric(float64(per.Microseconds())/1000, "ms/scrape")
		b.ReportMetric(float64(empty.Microseconds())/1000, "empty_table_ms/scrape")
		b.ReportMetric(float64(per)/float64(empty), "x_empty_table")
	})
}

// TestSyncClock: the lag is the age of the oldest update not yet applied,
// including updates that arrive while a reconcile runs, and past the cap on
// remembered receipts.
func TestSyncClock(t *testing.T) {
	now := time.Unix(1000, 0)
	c := &syncClock{now: func() time.Time { return now }}
	c.receive() // 1 at t=1000
	seq := c.seen()
	now = now.Add(time.Second)
	c.receive() // 2 at t=1001, during the reconcile of 1
	now = now.Add(time.Second)
	if c.lag() != 2*time.Second {
		t.Fatalf("lag %v with receipt 1 pending for 2 s", c.lag())
	}
	c.apply(seq, 7)
	if c.lag() != time.Second {
		t.Fatalf("lag %v after applying 1: receipt 2 is 1 s old", c.lag())
	}
	if v, at := c.last(); v != 7 || !at.Equal(now) {
		t.Fatalf("last applied %d at %v", v, at)
	}
	c.apply(seq, 7) // a reconcile with nothing new changes nothing
	if v, _ := c.last(); v != 7 || c.lag() != time.Second {
		t.Fatalf("idle reconcile: version %d lag %v", v, c.lag())
	}
	c.apply(c.seen(), 8)
	if c.lag() != 0 {
		t.Fatalf("lag %v when all applied", c.lag())
	}

	// More receipts than remembered: the oldest decide while they are
	// pending; once they are applied, the forgotten rest count from then.
	for range maxPending + 10 {
		c.receive()
		now = now.Add(time.Millisecond)
	}
	if want := time.Duration(maxPending+10) * time.Millisecond; c.lag() != want {
		t.Fatalf("lag %v, want %v", c.lag(), want)
	}
	c.apply(c.seen()-5, 9)
	now = now.Add(time.Second)
	if c.lag() != time.Second {
		t.Fatalf("lag %v: the 5 forgotten receipts count from the last apply", c.lag())
	}
	c.apply(c.seen(), 10)
	if c.lag() != 0 || len(c.pending) != 0 {
		t.Fatalf("lag %v, pending %d when all applied", c.lag(), len(c.pending))
	}
}
