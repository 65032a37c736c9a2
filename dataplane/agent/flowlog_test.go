package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/fw"
)

// flowWorkload is a workload namespace plugged into a port of the node
// namespace (the calling thread's), as the agent's plumbing would.
type flowWorkload struct {
	ns   netns.NsHandle
	node netns.NsHandle
}

func newFlowWorkload(t testing.TB, host, mac, addr, gw string) *flowWorkload {
	t.Helper()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("workload %s: %s: %v", host, what, err)
		}
	}
	node, err := netns.Get()
	must("node netns", err)
	t.Cleanup(func() { node.Close() })
	must("add veth", netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: host + "w"}))
	h, err := netlink.LinkByName(host)
	must("host end", err)
	peer, err := netlink.LinkByName(host + "w")
	must("workload end", err)
	ns, err := netns.New() // switches this thread
	must("create netns", err)
	t.Cleanup(func() { ns.Close() })
	must("back to node", netns.Set(node))
	must("move", netlink.LinkSetNsFd(peer, int(ns)))
	must("host up", netlink.LinkSetUp(h))
	must("enter workload", netns.Set(ns))
	defer func() { must("back to node", netns.Set(node)) }()
	peer, err = netlink.LinkByName(host + "w")
	must("moved end", err)
	hw, _ := net.ParseMAC(mac)
	must("mac", netlink.LinkSetHardwareAddr(peer, hw))
	a, n, _ := net.ParseCIDR(addr)
	must("address", netlink.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: a, Mask: n.Mask}}))
	must("up", netlink.LinkSetUp(peer))
	lo, err := netlink.LinkByName("lo")
	must("lo", err)
	must("lo up", netlink.LinkSetUp(lo))
	must("route", netlink.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.ParseIP(gw)}))
	return &flowWorkload{ns: ns, node: node}
}

// in runs fn with the thread in the workload's namespace: sockets made in
// fn belong to the workload.
func (w *flowWorkload) in(t testing.TB, fn func()) {
	t.Helper()
	if err := netns.Set(w.ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(w.node); err != nil {
			t.Fatal(err)
		}
	}()
	fn()
}

// flowLogWorld is metricsWorld with names, a flow log on the whole VPC
// and db-1 open to UDP (for the flood).
func flowLogWorld(path string, sampling, rate, burst uint32) map[string]*agentv1.Object {
	w := metricsWorld()
	w["vpc/1"].GetVpc().Name = "projects/p/vpcs/v"
	w["subnet/1"].GetSubnet().Name = "projects/p/vpcs/v/subnets/web"
	w["subnet/2"].GetSubnet().Name = "projects/p/vpcs/v/subnets/db"
	w["acl/7"].GetNetworkAcl().Name = "projects/p/networkAcls/web"
	w["sg/1"].GetSecurityGroup().Name = "projects/p/securityGroups/web"
	w["sg/2"].GetSecurityGroup().Name = "projects/p/securityGroups/db"
	w["port/1"].GetPort().Name = "projects/p/ports/web-1"
	w["port/2"].GetPort().Name = "projects/p/ports/db-1"
	sg2 := w["sg/2"].GetSecurityGroup()
	sg2.Rules = append(sg2.Rules, &agentv1.Rule{Id: 22, Ingress: true, Protocol: 17, IcmpType: -1, IcmpCode: -1})
	w["flowlog/9"] = &agentv1.Object{Key: "flowlog/9", Body: &agentv1.Object_FlowLog{FlowLog: &agentv1.FlowLogConfig{
		Id: 9, Name: "projects/p/flowLogs/all", Project: "projects/p", VpcId: 1, TrafficType: "ALL", FilePath: path,
		Sampling: sampling, RateLimit: rate, Burst: burst, AggregationInterval: 1}}}
	return w
}

// startFlowLogAgent installs world into dp with the two workloads' host
// interfaces and runs the flow-log reader, the drop watcher and /metrics
// (served from the test's namespace through handler).
func startFlowLogAgent(t testing.TB, dp *datapath.Datapath, world map[string]*agentv1.Object, handler *atomic.Pointer[http.Handler]) *Agent {
	t.Helper()
	a := newFlowLogAgent(t, dp, world)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.flowlogs.run(ctx) }()
	go func() { defer wg.Done(); a.watchDrops(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	if handler != nil {
		h := promhttp.HandlerFor(a.metricsRegistry(), promhttp.HandlerOpts{})
		handler.Store(&h)
	}
	return a
}

// newFlowLogAgent is startFlowLogAgent's agent with nothing running.
func newFlowLogAgent(t testing.TB, dp *datapath.Datapath, world map[string]*agentv1.Object) *Agent {
	t.Helper()
	a := &Agent{
		cfg: Config{Node: "n1", StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp,
		desired: map[string]*agentv1.Object{}, changed: make(chan struct{}, 1), errs: map[string]string{},
		attach: map[string]*attachment{
			"projects/p/ports/web-1": {Port: "projects/p/ports/web-1", PortID: 1, HostIf: "flweb"},
			"projects/p/ports/db-1":  {Port: "projects/p/ports/db-1", PortID: 2, HostIf: "fldb"},
		},
		applied: newApplied(),
	}
	a.flowlogs = newFlowLogs(a.log, dp, "n1")
	var ups []*agentv1.Object
	for _, o := range world {
		ups = append(ups, o)
	}
	a.applyResponse(&agentv1.SyncResponse{Snapshot: true, Version: 1, Upserts: ups})
	a.reconcileOnce()
	if len(a.errs) != 0 {
		t.Fatalf("reconcile errors: %v", a.errs)
	}
	return a
}

// readRecords reads the JSON lines of a flow-log file.
func readRecords(t *testing.T, path string) []FlowRecord {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []FlowRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r FlowRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// TestFlowLogRecords: real TCP between two workload namespaces through the
// attached pipeline. An accepted connection is logged at both ports with
// its 5-tuple, packets and bytes both ways and the rules that let it
// through; a security-group drop and a network-ACL drop are logged as
// REJECT with their reason and rule; the same records reach a follower of
// the local stream.
func TestFlowLogRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows", "flows.jsonl")
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		web := newFlowWorkload(t, "flweb", "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1")
		db := newFlowWorkload(t, "fldb", "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1")
		a := startFlowLogAgent(t, dp, flowLogWorld(path, 1, 0, 0), nil)
		fl, stop := a.flowlogs.follow("", "projects/p/ports/db-1")
		defer stop()

		var ln net.Listener
		db.in(t, func() {
			var err error
			if ln, err = net.Listen("tcp4", "10.0.2.20:80"); err != nil {
				t.Fatal(err)
			}
		})
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.Copy(c, c) // echo until the client closes
			c.Close()
		}()
		var clientPort int
		const msg = "flow logs, please"
		web.in(t, func() {
			c, err := net.DialTimeout("tcp4", "10.0.2.20:80", 3*time.Second)
			if err != nil {
				t.Fatalf("allowed connection: %v", err)
			}
			clientPort = c.LocalAddr().(*net.TCPAddr).Port
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("echo: %v", err)
			}
			c.Close()
			// db-1's security group lets in TCP 80 only; subnet 1's ACL
			// denies TCP 23 on the way out (rule 100).
			for _, port := range []int{22, 23} {
				if c, err := net.DialTimeout("tcp4", fmt.Sprintf("10.0.2.20:%d", port), 300*time.Millisecond); err == nil {
					c.Close()
					t.Fatalf("connection to port %d got through", port)
				}
			}
		})

		// Wait for: ACCEPT at web-1 and db-1 (ended), REJECT at db-1 (22)
		// and at web-1 (23).
		find := func(rs []FlowRecord, port, action string, dport uint16) *FlowRecord {
			for i := range rs {
				r := &rs[i]
				if r.InterfaceID == port && r.Action == action && r.DstPort == dport {
					return r
				}
			}
			return nil
		}
		var rs []FlowRecord
		deadline := time.Now().Add(10 * time.Second)
		for {
			rs = readRecords(t, path)
			if find(rs, "projects/p/ports/web-1", "ACCEPT", 80) != nil && find(rs, "projects/p/ports/db-1", "ACCEPT", 80) != nil &&
				find(rs, "projects/p/ports/db-1", "REJECT", 22) != nil && find(rs, "projects/p/ports/web-1", "REJECT", 23) != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("records after 10 s: %+v", rs)
			}
			time.Sleep(100 * time.Millisecond)
		}

		// Accepted, at web-1 (it opened the flow) and db-1 (it took it).
		var out, back uint64 // packets; summed over records (one per interval)
		for _, r := range rs {
			if r.InterfaceID == "projects/p/ports/web-1" && r.Action == "ACCEPT" {
				out += r.Packets
				back += r.ReversePackets
			}
		}
		acc := find(rs, "projects/p/ports/web-1", "ACCEPT", 80)
		if acc.SrcAddr.String() != "10.0.1.10" || acc.DstAddr.String() != "10.0.2.20" || acc.SrcPort != uint16(clientPort) || acc.Protocol != 6 ||
			acc.Direction != "egress" || acc.VPCID != "projects/p/vpcs/v" || acc.SubnetID != "projects/p/vpcs/v/subnets/web" ||
			acc.AccountID != "projects/p" || acc.FlowLog != "projects/p/flowLogs/all" || acc.Node != "n1" || acc.LogStatus != "OK" ||
			acc.Version != 2 || acc.Start == 0 || acc.End < acc.Start {
			t.Errorf("web-1 ACCEPT record: %+v", acc)
		}
		if acc.SecurityGroup != "projects/p/securityGroups/web" || acc.SGRuleID != 10 ||
			acc.ACL != "projects/p/networkAcls/web" || acc.ACLRule != 200 ||
			acc.Rule != "allowed by security group projects/p/securityGroups/web rule 10 and network ACL projects/p/networkAcls/web rule 200" {
			t.Errorf("web-1 ACCEPT rules: sg %q/%d acl %q/%d rule %q", acc.SecurityGroup, acc.SGRuleID, acc.ACL, acc.ACLRule, acc.Rule)
		}
		// SYN, ACK, data, FIN, ACK(s) out; SYN-ACK, echo, FIN-ACK back.
		if out < 4 || back < 3 {
			t.Errorf("web-1 ACCEPT packets %d out, %d back; want >= 4 and >= 3", out, back)
		}
		var bytesOut uint64
		for _, r := range rs {
			if r.InterfaceID == "projects/p/ports/web-1" && r.Action == "ACCEPT" {
				bytesOut += r.Bytes
			}
		}
		if min := out*40 + uint64(len(msg)); bytesOut < min {
			t.Errorf("web-1 ACCEPT bytes %d, want >= %d (40-byte headers and the message)", bytesOut, min)
		}
		in := find(rs, "projects/p/ports/db-1", "ACCEPT", 80)
		if in.Direction != "ingress" || in.SGRuleID != 21 || in.SecurityGroup != "projects/p/securityGroups/db" ||
			in.SrcAddr.String() != "10.0.1.10" || in.SrcPort != uint16(clientPort) || in.SubnetID != "projects/p/vpcs/v/subnets/db" {
			t.Errorf("db-1 ACCEPT record: %+v", in)
		}
		ended := false
		for _, r := range rs {
			if r.InterfaceID == "projects/p/ports/web-1" && r.Action == "ACCEPT" && r.FlowEnded {
				ended = true
			}
		}
		if !ended {
			t.Errorf("the closed connection has no final record: %+v", rs)
		}

		sg := find(rs, "projects/p/ports/db-1", "REJECT", 22)
		if sg.DropReason != "sg-ingress" || sg.Direction != "ingress" || sg.SrcAddr.String() != "10.0.1.10" || sg.Protocol != 6 ||
			sg.Packets < 1 || sg.Bytes < 40*sg.Packets || sg.Rule != "no security-group rule allows it (default deny)" {
			t.Errorf("security-group REJECT record: %+v", sg)
		}
		acl := find(rs, "projects/p/ports/web-1", "REJECT", 23)
		if acl.DropReason != "acl-egress" || acl.Direction != "egress" || acl.ACL != "projects/p/networkAcls/web" || acl.ACLRule != 100 ||
			acl.Rule != "denied by network ACL projects/p/networkAcls/web rule 100" || acl.Packets < 1 || acl.Bytes < 40*acl.Packets {
			t.Errorf("network-ACL REJECT record: %+v", acl)
		}

		// The follower of db-1 got db-1's records, and only those.
		var got []FlowRecord
		timeout := time.After(3 * time.Second)
		for len(got) < 2 {
			select {
			case lines := <-fl.ch:
				for _, l := range lines {
					var r FlowRecord
					if err := json.Unmarshal([]byte(l), &r); err != nil {
						t.Fatal(err)
					}
					got = append(got, r)
				}
			case <-timeout:
				t.Fatalf("follower got %+v", got)
			}
		}
		for _, r := range got {
			if r.InterfaceID != "projects/p/ports/db-1" {
				t.Errorf("follower of db-1 got %+v", r)
			}
		}
	})
}

// TestFlowLogFlood: a UDP sweep of 30,000 new flows at a port whose flow
// log samples 1 in 10 with a limit of 100 flows/s (bucket 100): the agent
// writes at most the bucket plus the rate over the flood's duration, the
// counters of what was sampled out and rate-limited move by the rest, and
// the agent's /metrics keeps answering quickly during the flood.
func TestFlowLogFlood(t *testing.T) {
	const flows, rate, burst = 30000, 100, 100
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	var handler atomic.Pointer[http.Handler]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*handler.Load()).ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		web := newFlowWorkload(t, "flweb", "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1")
		newFlowWorkload(t, "fldb", "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1")
		world := flowLogWorld(path, 10, rate, burst)
		world["flowlog/9"].GetFlowLog().PortId = 1 // web-1 only: one decision per flow
		startFlowLogAgent(t, dp, world, &handler)
		before := scrape(t, srv.URL+"/metrics")

		// Scrape /metrics from another goroutine (the test's namespace)
		// while the flood runs: the slowest answer must stay well under a
		// second.
		stop := make(chan struct{})
		var slowest atomic.Int64
		var scrapes atomic.Int64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				t0 := time.Now()
				resp, err := http.Get(srv.URL + "/metrics")
				if err != nil {
					slowest.Store(int64(time.Hour))
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if d := int64(time.Since(t0)); d > slowest.Load() {
					slowest.Store(d)
				}
				scrapes.Add(1)
			}
		}()

		start := time.Now()
		web.in(t, func() {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 0, 1, 10)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			msg := []byte("sweep")
			for i := range flows {
				dst := &net.UDPAddr{IP: net.IPv4(10, 0, 2, 20), Port: 1024 + i}
				if _, err := c.WriteToUDP(msg, dst); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
			}
		})
		elapsed := time.Since(start)
		// Records of the flood's flows are written when their 1 s interval
		// ends: wait (up to 10 s) until the file holds every flow the data
		// path announced and the agent has counted its lines; the checks
		// below say what is missing if not.
		var (
			after     map[string]float64
			recs      []FlowRecord
			accepted  int
			flowsSeen map[string]bool
		)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			after = scrape(t, srv.URL+"/metrics")
			recs = readRecords(t, path)
			accepted, flowsSeen = acceptedFlows(recs)
			logged := after[`meridian_agent_flowlog_new_flows_total{outcome="logged"}`] - before[`meridian_agent_flowlog_new_flows_total{outcome="logged"}`]
			// records_total moves just after the lines are written.
			written := after["meridian_agent_flowlog_records_total"] >= float64(accepted)
			// and the SKIPDATA records of the windows the flood spanned
			skippedNow := 0.0
			for _, k := range []string{`meridian_agent_flowlog_new_flows_total{outcome="rate_limited"}`, `meridian_agent_flowlog_new_flows_total{outcome="ring_full"}`,
				`meridian_agent_flowlog_rejected_flows_total{outcome="rate_limited"}`, "meridian_agent_flowlog_table_full_total"} {
				skippedNow += after[k] - before[k]
			}
			if (logged > 0 && float64(len(flowsSeen)) == logged && written && float64(skipDataFlows(recs)) >= skippedNow) || time.Now().After(deadline) {
				break
			}
		}
		close(stop)
		wg.Wait()
		d := func(k string) float64 { return after[k] - before[k] }
		logged := d(`meridian_agent_flowlog_new_flows_total{outcome="logged"}`)
		sampledOut := d(`meridian_agent_flowlog_new_flows_total{outcome="sampled_out"}`)
		limited := d(`meridian_agent_flowlog_new_flows_total{outcome="rate_limited"}`)
		ringFull := d(`meridian_agent_flowlog_new_flows_total{outcome="ring_full"}`)
		t.Logf("%d UDP flows in %v: %d records; data path: %v logged, %v sampled out, %v rate-limited, %v ring full; %d scrapes, slowest %v",
			flows, elapsed, accepted, logged, sampledOut, limited, ringFull, scrapes.Load(), time.Duration(slowest.Load()))
		limit := burst + rate*elapsed.Seconds() + 2 // +2: one token per CPU may refill as the flood starts
		if float64(len(flowsSeen)) > limit || accepted == 0 {
			t.Errorf("%d flows logged of %d, want 1..%.0f (bucket %d + %d/s over %v)", len(flowsSeen), flows, limit, burst, rate, elapsed)
		}
		if float64(len(flowsSeen)) != logged {
			t.Errorf("%d flows in %d records, but the data path announced %v", len(flowsSeen), accepted, logged)
		}
		if n := logged + sampledOut + limited + ringFull; n < flows || n > flows+1 {
			t.Errorf("logged %v + sampled out %v + limited %v + ring full %v: want %d flows (+1 for the ICMP errors)", logged, sampledOut, limited, ringFull, flows)
		}
		if sampledOut < flows*0.8 || limited == 0 {
			t.Errorf("sampled out %v (want about %d), rate-limited %v (want > 0)", sampledOut, flows*9/10, limited)
		}
		if scrapes.Load() == 0 || time.Duration(slowest.Load()) > 2*time.Second {
			t.Errorf("/metrics during the flood: %d scrapes, slowest %v", scrapes.Load(), time.Duration(slowest.Load()))
		}
		if n := after["meridian_agent_flowlog_records_total"]; int(n) < accepted {
			t.Errorf("records_total %v, file has %d", n, accepted)
		}
		// What was not logged for lack of capacity is in SKIPDATA records,
		// flow for flow (sampled-out flows are not skipped: asked for).
		skipped := limited + ringFull + d(`meridian_agent_flowlog_rejected_flows_total{outcome="rate_limited"}`) + d("meridian_agent_flowlog_table_full_total")
		if got := skipDataFlows(recs); float64(got) != skipped || got == 0 {
			t.Errorf("SKIPDATA records count %d skipped flows, /metrics %v (want equal, > 0)", got, skipped)
		}
	})
}

// TestFlowLogFileRotation: a flow-log file that would pass its size cap is
// rotated to path.1 (one generation kept), so a flow log takes at most
// twice the cap on the node's disk; every line stays whole.
func TestFlowLogFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "f.jsonl")
	w := &jsonlWriter{path: path, max: 100}
	line := `{"n":"0123456789012345678901234567890123456789"}` // 48 bytes + newline
	for i := range 5 {
		if err := w.write([]string{line}); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	w.close()
	cur, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(path + ".1")
	if err != nil {
		t.Fatal(err)
	}
	// 2 lines (98 bytes) fit; the 3rd and 5th rotate: path.1 holds lines
	// 3-4, path line 5.
	if len(cur) != 49 || len(old) != 98 {
		t.Fatalf("after 5 lines: %d bytes in the file, %d in .1; want 49 and 98", len(cur), len(old))
	}
	// A reopened writer appends and counts what is there.
	w = &jsonlWriter{path: path, max: 100}
	if err := w.write([]string{line, line}); err != nil {
		t.Fatal(err)
	}
	w.close()
	if cur, _ = os.ReadFile(path); len(cur) != 49 {
		t.Fatalf("after reopening: %d bytes, want 49 (rotated once more)", len(cur))
	}
}

// acceptedFlows counts the ACCEPT records and the flows they are of: a flow
// that spans two aggregation intervals has a record in each (as in AWS flow
// logs), so checks against what the data path logged count flows, not lines.
// (db-1's kernel answers a UDP sweep with ICMP port unreachables: one more
// flow, as ICMP errors share their flow's key.)
// skipDataFlows sums the skipped-flows of the SKIPDATA records.
func skipDataFlows(recs []FlowRecord) uint64 {
	var n uint64
	for _, r := range recs {
		if r.LogStatus == "SKIPDATA" {
			n += r.SkippedFlows
		}
	}
	return n
}

func acceptedFlows(recs []FlowRecord) (int, map[string]bool) {
	accepted := 0
	flows := map[string]bool{}
	for _, r := range recs {
		if r.Action == "ACCEPT" {
			accepted++
			flows[fmt.Sprintf("%s %d %s %d %d", r.SrcAddr, r.SrcPort, r.DstAddr, r.DstPort, r.Protocol)] = true
		}
	}
	return accepted, flows
}

// TestFlowLogSlotsAreNotReusedAtOnce: a flow log replacing another gets a
// slot of its own (not the one being freed, which the same pass clears),
// freed slots come back only after the others, and a new-flow event from
// before a flow log got its slot (the ring is read every 100 ms) is not
// taken for one of its flows.
func TestFlowLogSlotsAreNotReusedAtOnce(t *testing.T) {
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		newFlowWorkload(t, "flweb", "02:00:00:00:01:0a", "10.0.1.10/24", "10.0.1.1")
		newFlowWorkload(t, "fldb", "02:00:00:00:02:14", "10.0.2.20/24", "10.0.2.1")
		world := flowLogWorld(filepath.Join(t.TempDir(), "a.jsonl"), 1, 0, 0)
		f := newFlowLogAgent(t, dp, world).flowlogs
		fail := func(key string, err error) { t.Errorf("%s: %v", key, err) }
		apply := func(ids ...uint32) map[uint32]*flowLogCfg {
			w := map[string]*agentv1.Object{}
			for k, o := range world {
				if o.GetFlowLog() == nil {
					w[k] = o
				}
			}
			for _, id := range ids {
				c := proto.Clone(world["flowlog/9"].GetFlowLog()).(*agentv1.FlowLogConfig)
				c.Id, c.Name = id, fmt.Sprintf("projects/p/flowLogs/f%d", id)
				w[fmt.Sprintf("flowlog/%d", id)] = &agentv1.Object{Key: fmt.Sprintf("flowlog/%d", id), Body: &agentv1.Object_FlowLog{FlowLog: c}}
			}
			f.apply(w, agentv1.IndexObjects(w), map[uint32]bool{1: true, 2: true}, fail)
			f.mu.Lock()
			defer f.mu.Unlock()
			return maps.Clone(f.cfgs)
		}
		first := apply(20)[20]
		second := apply(21)[21] // 20 goes, 21 comes, in one pass
		if second.slot == first.slot {
			t.Fatalf("flow log 21 took slot %d of flow log 20, freed in the same pass", first.slot)
		}
		if s, err := dp.PortFlowLog(1); err != nil || s != second.slot {
			t.Fatalf("port 1's slot %d (%v), want flow log 21's %d", s, err, second.slot)
		}
		third := apply(22)[22]
		if third.slot == first.slot || third.slot == second.slot {
			t.Fatalf("slots %d, %d, %d: a freed slot came back before the others", first.slot, second.slot, third.slot)
		}

		// An event of the slot from before its flow log had it.
		ev := datapath.FlowEvent{Key: datapath.FlowKey{VPC: 100, Src: netip.MustParseAddr("10.0.1.10"), Dst: netip.MustParseAddr("10.0.2.20"),
			SrcPort: 1000, DstPort: 80, Protocol: 6}, Port: 1, Slot: third.slot, Direction: fw.Egress, Mono: third.since - time.Millisecond}
		f.newFlow(ev)
		ev.Key.SrcPort, ev.Mono = 1001, third.since+time.Millisecond
		f.newFlow(ev)
		f.mu.Lock()
		n := len(f.flows)
		_, old := f.flows[flowID{port: 1, key: datapath.FlowKey{VPC: 100, Src: ev.Key.Src, Dst: ev.Key.Dst, SrcPort: 1000, DstPort: 80, Protocol: 6}}]
		f.mu.Unlock()
		if n != 1 || old {
			t.Fatalf("%d flows followed (the older event's too: %v), want only the one after the flow log got its slot", n, old)
		}
	})
}
