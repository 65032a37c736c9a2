package agent

// Flow logs on OVN nodes (issue [6], part 5). The eBPF data path announces
// flows and counts them; OVN has nothing of the kind, but it logs ACL hits:
// the controller sets log, a name ("sg:G:R", "acl:N:K", "acl:N:default",
// "deny:sg") and a meter on the ACLs that decide the fate of covered ports
// (controller/ovn/flowlog.go), and ovn-controller writes an acl_log line to
// its log file for each packet such an ACL matched, at most the meter's
// rate. This agent follows that file, maps each line to the local port
// (the MAC: the source for from-lport ACLs, the destination for to-lport
// ones) and the flow log covering it (the same placement as eBPF nodes),
// and writes the same FlowRecord JSON lines to the flow log's file and to
// its followers.
//
// What OVN tells and what it does not: the 5-tuple, the verdict, the
// deciding rule and the direction, per packet it logged. OVN 23.03
// evaluates allow ACLs for every packet of a connection but its replies,
// so the controller logs copies of the allows that match only ct.new: an
// accepted flow is logged once, at its first packet (a TCP SYN); a drop
// is logged for each packet, up to the meter. There are no byte counts and no end of an accepted flow:
// records of OVN nodes say so in log-status ("OVN-FIRST-PACKETS": packets
// are the logged packets, bytes 0 because unknown) instead of inventing
// counters. Lines of one flow (port, 5-tuple, rule, verdict) within the
// flow log's aggregation interval make one record, as on eBPF nodes.
//
// Sampling (1 in N flows, by flow hash, so a flow is in or out whole) and
// the flow log's rate limit (new flows per second, a token bucket per flow
// log) are applied here; the meter in OVN bounds what a flood costs
// ovn-controller and this agent before that.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

const (
	// ovnLogPoll is how often the ovn-controller log is read for new
	// lines (and checked for rotation).
	ovnLogPoll = 100 * time.Millisecond
	// ovnFlowTableMax bounds the flows aggregated at once.
	ovnFlowTableMax = 100000
	// ovnLogMaxLine bounds a line kept while its end has not arrived.
	ovnLogMaxLine = 64 << 10
	// OVNLogStatus is the log-status of records from OVN nodes: packets
	// are the packets OVN logged (an accepted flow's first; every dropped
	// one up to the meter), bytes are not known.
	OVNLogStatus = "OVN-FIRST-PACKETS"
	// DefaultOVNControllerLog is where Debian's ovn-host logs.
	DefaultOVNControllerLog = "/var/log/ovn/ovn-controller.log"
)

// ovnFlowLog is one flow log applied on an OVN node.
type ovnFlowLog struct {
	flowLogOutput
}

// ovnFlowID is what one record aggregates: the lines of one flow at one
// port decided by one rule the same way.
type ovnFlowID struct {
	port             uint32
	src, dst         netip.Addr
	srcPort, dstPort uint16
	proto            uint8
	name             string
	verdict          string
	egress           bool
}

type ovnFlow struct {
	fl      *ovnFlowLog
	first   time.Time // the first logged packet (OVN's timestamp)
	seen    time.Time // when the agent read it (the interval runs from here)
	last    time.Time
	packets uint64
}

// ovnNames resolves the ids of the desired state into API names.
type ovnNames struct {
	ports   map[uint32]*agentv1.Port
	byMAC   map[string]uint32 // local ports
	subnets map[uint32]*agentv1.Subnet
	vpcs    map[uint32]string
	sgs     map[uint32]string
	acls    map[uint32]string
}

// ovnFlowLogs follows ovn-controller's log and writes flow-log records.
type ovnFlowLogs struct {
	log  *slog.Logger
	node string
	path string // ovn-controller's log file

	mu        sync.Mutex
	cfgs      map[uint32]*ovnFlowLog
	portCfg   map[uint32]*ovnFlowLog
	names     ovnNames
	flows     map[ovnFlowID]*ovnFlow
	followers map[*flowFollower]struct{}

	// counters
	lines, newFlows, aggregated, unparsable, uncovered, sampledOut, limited, tableFull, records, writeErrors uint64
}

func newOVNFlowLogs(log *slog.Logger, node, path string) *ovnFlowLogs {
	return &ovnFlowLogs{
		log: log.With("component", "ovn-flowlogs"), node: node, path: path,
		cfgs: map[uint32]*ovnFlowLog{}, portCfg: map[uint32]*ovnFlowLog{}, flows: map[ovnFlowID]*ovnFlow{},
		followers: map[*flowFollower]struct{}{},
	}
}

// apply takes the node's flow logs from the desired state: each port bound
// to this node is logged by the narrowest flow log covering it. Errors are
// per object key.
func (f *ovnFlowLogs) apply(desired map[string]*agentv1.Object, v *agentv1.Index, node string, fail func(string, error)) {
	var want []*agentv1.FlowLogConfig
	for key, o := range desired {
		c := o.GetFlowLog()
		if c == nil {
			continue
		}
		if err := validateFlowLogConfig(c); err != nil {
			fail(key, fmt.Errorf("flow log %s: %w", c.Name, err))
			continue
		}
		want = append(want, c)
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Id < want[j].Id })
	names := ovnNames{ports: v.Ports, byMAC: map[string]uint32{}, subnets: v.Subnets,
		vpcs: map[uint32]string{}, sgs: map[uint32]string{}, acls: map[uint32]string{}}
	for id, x := range v.VPCs {
		names.vpcs[id] = x.Name
	}
	for id, g := range v.SecurityGroups {
		names.sgs[id] = g.Name
	}
	for id, a := range v.NetworkACLs {
		names.acls[id] = a.Name
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	next := map[uint32]*ovnFlowLog{}
	for _, c := range want {
		fl := f.cfgs[c.Id]
		if fl == nil {
			fl = &ovnFlowLog{}
		}
		fl.configure(c)
		next[c.Id] = fl
	}
	for id, fl := range f.cfgs {
		if next[id] != fl {
			fl.w.close()
			for k, x := range f.flows {
				if x.fl == fl {
					delete(f.flows, k)
				}
			}
		}
	}
	f.cfgs = next
	portCfg := map[uint32]*ovnFlowLog{}
	for id, p := range v.Ports {
		if p.Node != node {
			continue
		}
		if mac := strings.ToLower(p.Mac); mac != "" {
			names.byMAC[mac] = id
		}
		var best *ovnFlowLog
		bestRank := 0
		for _, c := range want { // by id: the lowest wins a tie
			r := 0
			switch {
			case c.PortId != 0:
				if c.PortId == id {
					r = 3
				}
			case c.SubnetId != 0:
				if c.SubnetId == p.SubnetId {
					r = 2
				}
			case c.VpcId == p.VpcId:
				r = 1
			}
			if r > bestRank {
				best, bestRank = next[c.Id], r
			}
		}
		if best != nil {
			portCfg[id] = best
		}
	}
	f.portCfg, f.names = portCfg, names
}

// line accounts one line of ovn-controller's log.
func (f *ovnFlowLogs) line(s string, now time.Time) {
	l, err := parseACLLog(s)
	if errors.Is(err, errNotACLLog) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines++
	if err != nil {
		f.unparsable++
		f.log.Debug("acl_log line not understood", "err", err)
		return
	}
	egress := l.Direction == "from-lport"
	mac := l.DlDst
	if egress {
		mac = l.DlSrc
	}
	port, ok := f.names.byMAC[mac]
	fl := f.portCfg[port]
	accepted := l.Verdict == "allow"
	if !ok || fl == nil || (accepted && !fl.accept) || (!accepted && !fl.reject) {
		// Logged for another port of the same ACL row, or a port another
		// node hosts.
		f.uncovered++
		return
	}
	id := ovnFlowID{port: port, src: l.Src, dst: l.Dst, srcPort: l.SrcPort, dstPort: l.DstPort, proto: l.Protocol,
		name: l.Name, verdict: l.Verdict, egress: egress}
	if x := f.flows[id]; x != nil {
		f.aggregated++
		x.packets++
		x.last = l.Time
		return
	}
	if n := fl.cfg.Sampling; n > 1 && ovnFlowHash(id)%uint64(n) != 0 {
		f.sampledOut++
		return
	}
	if !fl.bucket.take(now) {
		f.limited++
		return
	}
	if len(f.flows) >= ovnFlowTableMax {
		f.tableFull++
		return
	}
	f.newFlows++
	f.flows[id] = &ovnFlow{fl: fl, first: l.Time, seen: now, last: l.Time, packets: 1}
}

// ovnFlowHash picks flows for sampling: the same flow always hashes the
// same, so a sampled flow is logged whole.
func ovnFlowHash(id ovnFlowID) uint64 {
	h := fnv.New64a()
	h.Write(id.src.AsSlice())
	h.Write(id.dst.AsSlice())
	h.Write([]byte{byte(id.srcPort >> 8), byte(id.srcPort), byte(id.dstPort >> 8), byte(id.dstPort), id.proto})
	return h.Sum64()
}

// flush writes the records of flows whose interval is over (all of them
// when final).
func (f *ovnFlowLogs) flush(now time.Time, final bool) {
	f.mu.Lock()
	out := map[*ovnFlowLog][]FlowRecord{}
	for id, x := range f.flows {
		if final || now.Sub(x.seen) >= x.fl.interval {
			out[x.fl] = append(out[x.fl], f.record(id, x))
			delete(f.flows, id)
		}
	}
	for _, rs := range out {
		f.records += uint64(len(rs))
	}
	followers := make([]*flowFollower, 0, len(f.followers))
	for fl := range f.followers {
		followers = append(followers, fl)
	}
	f.mu.Unlock()

	for fl, rs := range out {
		sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
		var buf []byte
		ends := make([]int, len(rs))
		for i := range rs {
			buf = append(appendRecordJSON(buf, &rs[i]), '\n')
			ends[i] = len(buf)
		}
		f.mu.Lock() // configure replaces fl.w and fl.cfg under f.mu
		w, name := fl.w, fl.cfg.Name
		f.mu.Unlock()
		if w != nil {
			if err := w.writeLines(buf, ends); errors.Is(err, errWriterClosed) {
				// removed or moved to another file meanwhile
			} else if err != nil {
				f.mu.Lock()
				f.writeErrors++
				f.mu.Unlock()
				f.log.Warn("write flow log", "flow_log", name, "path", w.path, "err", err)
			}
		}
		if len(followers) > 0 {
			lines := make([]string, len(rs))
			for i, from := 0, 0; i < len(rs); i++ {
				lines[i], from = string(buf[from:ends[i]-1]), ends[i]
			}
			for _, fw := range followers {
				fw.send(name, rs, lines)
			}
		}
	}
}

// record makes a flow's record (f.mu held).
func (f *ovnFlowLogs) record(id ovnFlowID, x *ovnFlow) FlowRecord {
	r := FlowRecord{
		Version: 2, AccountID: x.fl.cfg.Project, InterfaceID: strconv.Itoa(int(id.port)),
		SrcAddr: id.src, DstAddr: id.dst, SrcPort: id.srcPort, DstPort: id.dstPort, Protocol: id.proto,
		Packets: x.packets, Start: x.first.Unix(), End: x.last.Unix(),
		LogStatus: OVNLogStatus, Direction: "ingress", Node: f.node, FlowLog: x.fl.cfg.Name,
	}
	if id.egress {
		r.Direction = "egress"
	}
	if p := f.names.ports[id.port]; p != nil {
		r.InterfaceID = p.Name
		r.VPCID = f.names.vpcs[p.VpcId]
		if s := f.names.subnets[p.SubnetId]; s != nil {
			r.SubnetID = s.Name
		}
	}
	// "kind:a:b" (see controller/ovn/flowlog.go)
	parts := append(strings.SplitN(id.name, ":", 3), "", "")
	kind, a, b := parts[0], parts[1], parts[2]
	if id.verdict == "allow" {
		r.Action = "ACCEPT"
		r.Rule = "allowed"
		if kind == "sg" {
			g, _ := strconv.ParseUint(a, 10, 32)
			rule, _ := strconv.ParseUint(b, 10, 32)
			r.SecurityGroup, r.SGRuleID = orUnknown(f.names.sgs[uint32(g)]), uint32(rule)
			r.Rule = fmt.Sprintf("allowed by security group %s rule %d", r.SecurityGroup, rule)
		}
		return r
	}
	r.Action = "REJECT"
	switch kind {
	case "acl":
		n, _ := strconv.ParseUint(a, 10, 32)
		r.ACL = orUnknown(f.names.acls[uint32(n)])
		r.DropReason = "acl-ingress"
		if id.egress {
			r.DropReason = "acl-egress"
		}
		if b == "default" {
			r.Rule = fmt.Sprintf("no rule of network ACL %s matches (default deny)", r.ACL)
		} else {
			num, _ := strconv.ParseUint(b, 10, 32)
			r.ACLRule = uint32(num)
			r.Rule = fmt.Sprintf("denied by network ACL %s rule %d", r.ACL, num)
		}
	case "deny":
		r.DropReason = "sg-ingress"
		if id.egress {
			r.DropReason = "sg-egress"
		}
		r.Rule = "no security-group rule allows it (default deny)"
	default:
		r.Rule = "dropped by OVN ACL " + strconv.Quote(id.name)
	}
	return r
}

// run follows the log file and writes records until ctx is done.
func (f *ovnFlowLogs) run(ctx context.Context) {
	t := &logTail{path: f.path}
	tick := time.NewTicker(ovnLogPoll)
	defer tick.Stop()
	lastFlush := time.Now()
	warned := false
	for {
		now := time.Now()
		if err := t.poll(func(s string) { f.line(s, now) }); err != nil {
			if !warned {
				f.log.Warn("cannot read ovn-controller's log: no flow-log records until it can", "path", f.path, "err", err)
				warned = true
			}
		} else {
			warned = false
		}
		if now.Sub(lastFlush) >= flowTick {
			f.flush(now, false)
			lastFlush = now
		}
		select {
		case <-ctx.Done():
			t.close()
			f.flush(time.Now(), true)
			return
		case <-tick.C:
		}
	}
}

func (f *ovnFlowLogs) follow(flowLog, port string) (*flowFollower, func()) {
	fl := &flowFollower{flowLog: flowLog, port: port, ch: make(chan []string, followerBuffer)}
	f.mu.Lock()
	f.followers[fl] = struct{}{}
	f.mu.Unlock()
	return fl, func() {
		f.mu.Lock()
		delete(f.followers, fl)
		f.mu.Unlock()
	}
}

// followFlowLogs registers a follower of this node's flow logs, from the
// eBPF data path or from OVN's ACL log (the local API's FollowFlowLogs).
func (a *Agent) followFlowLogs(flowLog, port string) (*flowFollower, func()) {
	if a.flowlogs != nil {
		return a.flowlogs.follow(flowLog, port)
	}
	return a.ovnflow.follow(flowLog, port)
}

// validateOVNControllerLog checks Config.OVNControllerLog: an absolute
// path, and only with the OVN realization (an eBPF node logs flows from
// its own data path).
func validateOVNControllerLog(cfg Config) error {
	if cfg.OVNControllerLog == "" {
		return nil
	}
	if cfg.Realization != RealizationOVN {
		return fmt.Errorf("agent: ovn-controller log %q given, but the realization is %q (flow logs of eBPF nodes come from the data path)", cfg.OVNControllerLog, cfg.Realization)
	}
	if !filepath.IsAbs(cfg.OVNControllerLog) {
		return fmt.Errorf("agent: ovn-controller log %q is not an absolute path", cfg.OVNControllerLog)
	}
	return nil
}

// logTail follows a file that is appended to, rotated (renamed and
// created again) and truncated, line by line. A file present at the first
// poll is read from its end (what was logged before the agent started is
// not replayed); a file that appears later, or replaces a rotated one, is
// read from its start.
type logTail struct {
	path    string
	f       *os.File
	ino     uint64
	off     int64
	partial []byte
	buf     []byte // read buffer, kept between polls
	started bool
}

func (t *logTail) poll(line func(string)) error {
	if t.f == nil {
		f, err := os.Open(t.path)
		if err != nil {
			t.started = true // whatever appears later is new
			return fmt.Errorf("open %s: %w", t.path, err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("stat %s: %w", t.path, err)
		}
		t.f, t.ino, t.off, t.partial = f, inode(st), 0, t.partial[:0]
		if !t.started {
			t.off = st.Size()
		}
		t.started = true
	}
	if err := t.drain(line); err != nil {
		return err
	}
	st, err := os.Stat(t.path)
	switch {
	case err != nil || inode(st) != t.ino:
		// Rotated (or removed): the old file is read to its end above;
		// the new one from its start at the next poll.
		t.close()
	case st.Size() < t.off:
		// Truncated in place (copytruncate): start over.
		t.off, t.partial = 0, t.partial[:0]
	}
	return nil
}

// drain reads what was appended since the last read.
func (t *logTail) drain(line func(string)) error {
	if t.buf == nil {
		t.buf = make([]byte, 64<<10)
	}
	buf := t.buf
	for {
		n, err := t.f.ReadAt(buf, t.off)
		t.off += int64(n)
		data := buf[:n]
		for len(data) > 0 {
			i := bytes.IndexByte(data, '\n')
			if i < 0 {
				if len(t.partial)+len(data) <= ovnLogMaxLine {
					t.partial = append(t.partial, data...)
				} else {
					t.partial = t.partial[:0] // a runaway line: dropped
				}
				break
			}
			if len(t.partial) > 0 {
				line(string(append(t.partial, data[:i]...)))
				t.partial = t.partial[:0]
			} else {
				line(string(data[:i]))
			}
			data = data[i+1:]
		}
		if errors.Is(err, io.EOF) || n == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", t.path, err)
		}
	}
}

func (t *logTail) close() {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

func inode(st os.FileInfo) uint64 {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino
	}
	return 0
}

// ovnFlowLogCollector exports the OVN flow-log counters on /metrics.
type ovnFlowLogCollector struct {
	f       *ovnFlowLogs
	lines   *prometheus.Desc
	records *prometheus.Desc
	tracked *prometheus.Desc
	werr    *prometheus.Desc
}

func newOVNFlowLogCollector(f *ovnFlowLogs) *ovnFlowLogCollector {
	return &ovnFlowLogCollector{
		f: f,
		lines: prometheus.NewDesc("meridian_agent_ovn_flowlog_lines_total",
			"acl_log lines of ovn-controller's log, by what the agent did: logged (a new flow), aggregated (into a flow's record), "+
				"uncovered (a port no flow log of this node covers), unparsable, sampled_out, rate_limited, table_full.",
			[]string{"outcome"}, nil),
		records: prometheus.NewDesc("meridian_agent_ovn_flowlog_records_total", "Flow-log records written from OVN's ACL log.", nil, nil),
		tracked: prometheus.NewDesc("meridian_agent_ovn_flowlog_tracked_flows", "Flows aggregated until their interval ends.", nil, nil),
		werr:    prometheus.NewDesc("meridian_agent_ovn_flowlog_write_errors_total", "Failed writes of flow-log files.", nil, nil),
	}
}

func (c *ovnFlowLogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lines, c.records, c.tracked, c.werr} {
		ch <- d
	}
}

func (c *ovnFlowLogCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.f
	f.mu.Lock()
	counts := map[string]uint64{"logged": f.newFlows, "aggregated": f.aggregated, "uncovered": f.uncovered, "unparsable": f.unparsable,
		"sampled_out": f.sampledOut, "rate_limited": f.limited, "table_full": f.tableFull}
	records, tracked, werr := f.records, len(f.flows), f.writeErrors
	f.mu.Unlock()
	for outcome, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.lines, prometheus.CounterValue, float64(v), outcome)
	}
	ch <- prometheus.MustNewConstMetric(c.records, prometheus.CounterValue, float64(records))
	ch <- prometheus.MustNewConstMetric(c.tracked, prometheus.GaugeValue, float64(tracked))
	ch <- prometheus.MustNewConstMetric(c.werr, prometheus.CounterValue, float64(werr))
}
