package agent

// Flow logs (issue [6], part 5): the agent's half. The data path announces
// the new flows that flow logs chose (sampled and rate-limited in BPF,
// bpf/c/flowlog.h) and counts their packets and bytes in their conntrack
// entries; policy drops arrive as drop events. The agent keeps a table of
// the flows it was told about, reads their counters at each aggregation
// interval and when they end, and writes one record per flow and interval
// as a JSON line (AWS VPC flow-log fields plus Meridian's: VPC, subnet,
// direction, the deciding rule, the drop reason) to the flow log's file and
// to whoever follows the stream on the local API.
//
// Why the agent samples rejected flows itself: drop events are sent for
// every policy drop already (for the drop log and the metrics), so flow
// logs add no data-path work for them. A flood of rejected packets costs the
// drop-event ring what it cost before; the agent aggregates a rejected flow's
// packets within the interval and admits new rejected flows through the same
// sampling (by flow hash, so a flow is in or out as a whole) and rate limit.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/fw"
)

const (
	// flowTableMax bounds the flows the agent tracks at once (accepted
	// flows plus this interval's rejected ones): a flood can fill it, never
	// grow it. Flows announced beyond it are counted and not logged.
	flowTableMax = 100000
	// flowTick is how often the table is looked at; records are written
	// when a flow's interval is over, so this only bounds their delay.
	flowTick = 250 * time.Millisecond
	// flowPoll is how often the new-flow ring is read when the data path
	// did not wake the reader.
	flowPoll = 100 * time.Millisecond
	// defaultMaxFileBytes is where a flow-log file rotates (to path.1).
	defaultMaxFileBytes = 100 << 20
	// followerBuffer is how many batches a slow follower may lag before
	// it misses records (counted, and told in the stream).
	followerBuffer = 256
)

// FlowRecord is one flow-log record. The first fields are AWS VPC flow
// logs' (version 2 and the v3/v5 ones that apply); the rest are Meridian's.
type FlowRecord struct {
	Version     int        `json:"version"`
	AccountID   string     `json:"account-id"`
	InterfaceID string     `json:"interface-id"`
	SrcAddr     netip.Addr `json:"srcaddr"`
	DstAddr     netip.Addr `json:"dstaddr"`
	SrcPort     uint16     `json:"srcport"`
	DstPort     uint16     `json:"dstport"`
	Protocol    uint8      `json:"protocol"`
	Packets     uint64     `json:"packets"`
	Bytes       uint64     `json:"bytes"`
	Start       int64      `json:"start"`
	End         int64      `json:"end"`
	Action      string     `json:"action"`
	LogStatus   string     `json:"log-status"`
	VPCID       string     `json:"vpc-id"`
	SubnetID    string     `json:"subnet-id"`
	Direction   string     `json:"flow-direction"`
	// Meridian's fields.
	ReversePackets uint64 `json:"reverse-packets"`
	ReverseBytes   uint64 `json:"reverse-bytes"`
	Rule           string `json:"rule"`
	ACL            string `json:"acl,omitempty"`
	ACLRule        uint32 `json:"acl-rule,omitempty"` // rule number
	SecurityGroup  string `json:"security-group,omitempty"`
	SGRuleID       uint32 `json:"sg-rule-id,omitempty"`
	DropReason     string `json:"drop-reason,omitempty"`
	FlowEnded      bool   `json:"flow-ended,omitempty"`
	// SkippedFlows: in a SKIPDATA record, how many flows were not logged.
	SkippedFlows uint64 `json:"skipped-flows,omitempty"`
	Node         string `json:"node"`
	FlowLog      string `json:"flow-log"`

	subnet uint32 // the port's subnet, for the ACL's name
}

// flowLogCfg is one flow log applied on this node.
type flowLogCfg struct {
	flowLogOutput
	slot uint8
	// due holds this flow log's followed flows in the order their
	// windows end (one interval for all: arrival order is that order),
	// so a flush takes the due ones from the front instead of visiting
	// every followed flow at each tick. Entries of flows replaced or
	// forgotten meanwhile are skipped (flowLogs.flows no longer has them).
	due flowQueue
	// since is CLOCK_MONOTONIC when the flow log got its slot: a new-flow
	// event from before is of the slot's previous owner.
	since time.Duration
	// SKIPDATA (AWS's log status for "records were skipped during the
	// aggregation interval"): flows this flow log should have logged but
	// did not, for lack of capacity (its rate limit, the agent's table),
	// since skipFrom. Sampling is not skipping: it is what was asked.
	skipped  uint64
	skipFrom time.Time
	// dataSkipped is the data path's count of this slot's skipped new
	// flows (rate limit, ring full) at the last SKIPDATA window: the
	// count only grows, across owners of the slot; differences are ours.
	dataSkipped uint64
}

// flowFreeList keeps the structs of ended flows for new ones: a node
// logging thousands of short connections a second would otherwise make one
// garbage object per connection.
type flowFreeList struct{ free []*trackedFlow }

// spareMax bounds the free list: about one flush's worth of ended flows.
const spareMax = 16384

func (l *flowFreeList) get() *trackedFlow {
	if n := len(l.free); n > 0 {
		t := l.free[n-1]
		l.free = l.free[:n-1]
		return t
	}
	return new(trackedFlow)
}

func (l *flowFreeList) put(t *trackedFlow) {
	if len(l.free) < spareMax {
		*t = trackedFlow{} // keeps no config alive
		l.free = append(l.free, t)
	}
}

// flowQueue is a FIFO of followed flows.
type flowQueue struct {
	q    []*trackedFlow
	head int
}

func (q *flowQueue) push(t *trackedFlow) {
	if q.head > 1024 && q.head > len(q.q)/2 {
		// Reuse the front half already taken.
		n := copy(q.q, q.q[q.head:])
		clear(q.q[n:])
		q.q, q.head = q.q[:n], 0
	}
	q.q = append(q.q, t)
}

// front returns the first flow, nil when empty.
func (q *flowQueue) front() *trackedFlow {
	if q.head == len(q.q) {
		return nil
	}
	return q.q[q.head]
}

func (q *flowQueue) pop() {
	q.q[q.head] = nil
	q.head++
}

// flowNames resolves the data path's numbers into API names.
type flowNames struct {
	ports   map[uint32]*agentv1.Port
	subnets map[uint32]string
	vpcs    map[uint32]string // by VNI (the data path's VPC key)
	sgRule  map[uint32]string // rule id -> security group name
	aclRule map[uint32]aclRuleName
	aclOf   map[uint32]string    // subnet id -> its network ACL's name
	allowed map[[2]uint32]string // {SG rule, ACL rule} -> record's rule text
}

type aclRuleName struct {
	acl    string
	number uint32
	allow  bool
}

type flowID struct {
	port uint32
	key  datapath.FlowKey
}

// trackedFlow is an accepted flow being logged.
type trackedFlow struct {
	id          flowID
	cfg         *flowLogCfg
	ev          datapath.FlowEvent
	start       time.Time // first packet (first record) or the window's start
	windowStart time.Time
	seen        [2]uint64 // packets already reported
	seenBytes   [2]uint64
}

type rejectID struct {
	port   uint32
	key    datapath.FlowKey
	reason datapath.DropReason
	rule   uint32
}

type rejectedFlow struct {
	cfg     *flowLogCfg
	ev      datapath.DropEvent
	first   time.Time
	last    time.Time
	packets uint64
	bytes   uint64
}

// flowFollower is a local-API stream.
type flowFollower struct {
	flowLog string // "" = all
	port    string // "" = all
	ch      chan []string
	mu      sync.Mutex
	dropped uint64
}

// flowLogs is the agent's flow-log machinery.
type flowLogs struct {
	log  *slog.Logger
	dp   *datapath.Datapath
	node string

	mu        sync.Mutex
	cfgs      map[uint32]*flowLogCfg // by FlowLogConfig id
	lastSlot  uint8                  // the data-path slot given out last
	bySlot    map[uint8]*flowLogCfg
	portCfg   map[uint32]*flowLogCfg // local port -> the flow log logging it
	names     flowNames
	flows     map[flowID]*trackedFlow
	rejects   map[rejectID]*rejectedFlow
	followers map[*flowFollower]struct{}

	// Only the run goroutine uses clock, only flush's the buffers (reused
	// from one flush to the next: at thousands of flows a second their
	// allocations were much of the agent's GC work).
	clock   monoClock
	dueBuf  []*trackedFlow
	keyBuf  []datapath.FlowKey
	lineBuf []byte
	endBuf  []int
	outBuf  map[*flowLogCfg][]FlowRecord // emptied, not freed, after each flush
	spare   flowFreeList                 // ended flows' structs, for new ones (mu held)

	// counters for /metrics
	rejectLogged, rejectSampledOut, rejectLimited uint64
	tableFull, records, writeErrors               uint64
}

func newFlowLogs(log *slog.Logger, dp *datapath.Datapath, node string) *flowLogs {
	return &flowLogs{
		log: log.With("component", "flowlogs"), dp: dp, node: node,
		cfgs: map[uint32]*flowLogCfg{}, bySlot: map[uint8]*flowLogCfg{}, portCfg: map[uint32]*flowLogCfg{},
		flows: map[flowID]*trackedFlow{}, rejects: map[rejectID]*rejectedFlow{},
		followers: map[*flowFollower]struct{}{},
	}
}

// validateFlowLogConfig checks what the controller validated already; an
// agent must not trust a bad object into the data path either.
func validateFlowLogConfig(c *agentv1.FlowLogConfig) error {
	switch c.TrafficType {
	case "ACCEPT", "REJECT", "ALL":
	default:
		return fmt.Errorf("traffic type %q: want ACCEPT, REJECT or ALL", c.TrafficType)
	}
	if c.FilePath != "" && !filepath.IsAbs(c.FilePath) {
		return fmt.Errorf("file path %q is not absolute", c.FilePath)
	}
	if c.AggregationInterval == 0 || c.AggregationInterval > 600 {
		return fmt.Errorf("aggregation interval %d s: want 1..600", c.AggregationInterval)
	}
	if c.VpcId == 0 {
		return errors.New("no VPC")
	}
	return nil
}

// apply installs the node's flow logs: a data-path slot per flow log and,
// on every local port, the slot of the narrowest flow log covering it.
// localPorts are the ports the data path has installed. Errors are per
// object key, like the rest of reconcile.
func (f *flowLogs) apply(desired map[string]*agentv1.Object, v *agentv1.Index, localPorts map[uint32]bool, fail func(string, error)) {
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

	names := flowNames{ports: v.Ports, subnets: map[uint32]string{}, vpcs: map[uint32]string{},
		sgRule: map[uint32]string{}, aclRule: map[uint32]aclRuleName{}, aclOf: map[uint32]string{}, allowed: map[[2]uint32]string{}}
	for id, s := range v.Subnets {
		names.subnets[id] = s.Name
		if a := v.NetworkACLs[s.NetworkAclId]; a != nil {
			names.aclOf[id] = a.Name
		}
	}
	vniOf := map[uint32]uint32{}
	for id, x := range v.VPCs {
		names.vpcs[x.Vni] = x.Name
		vniOf[id] = x.Vni
	}
	for _, sg := range v.SecurityGroups {
		for _, r := range sg.Rules {
			names.sgRule[r.Id] = sg.Name
		}
	}
	for _, a := range v.NetworkACLs {
		for _, r := range a.Rules {
			names.aclRule[r.Id] = aclRuleName{acl: a.Name, number: r.Number, allow: r.Allow}
		}
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	f.names = names
	next := map[uint32]*flowLogCfg{}
	// Every slot in use before this pass stays taken during it, also the
	// slots of flow logs going away: a new flow log given such a slot
	// would be cleared below with the old one's, and the old one's events
	// still in the ring would be taken for its own. New flow logs take the
	// free slots round-robin after the last one given out, so a freed slot
	// is given again only after all the others (and events from before a
	// slot was given are dropped in newFlow in any case).
	usedSlots := map[uint8]bool{}
	for _, fc := range f.cfgs {
		usedSlots[fc.slot] = true
	}
	var since time.Duration // CLOCK_MONOTONIC now, read once for new flow logs
	for _, c := range want {
		fc := f.cfgs[c.Id]
		if fc == nil {
			slot, ok := f.freeSlot(usedSlots)
			if !ok {
				fail("flowlog/"+strconv.Itoa(int(c.Id)), fmt.Errorf("flow log %s: more than %d flow logs on this node", c.Name, datapath.FlowLogSlots))
				continue
			}
			if since == 0 {
				since, _ = datapath.MonotonicNow() // 0 on error: nothing dropped
			}
			fc = &flowLogCfg{slot: slot, since: since}
			if n, err := f.dp.FlowLogSlotSkipped(slot); err == nil {
				fc.dataSkipped = n // the slot's earlier owners' skips are not ours
			}
			usedSlots[slot] = true
		}
		if err := f.configure(fc, c); err != nil {
			fail("flowlog/"+strconv.Itoa(int(c.Id)), fmt.Errorf("flow log %s: %w", c.Name, err))
			continue
		}
		next[c.Id] = fc
	}
	// Flow logs that went away: slot off, file closed, their flows forgotten.
	for id, fc := range f.cfgs {
		if next[id] == fc {
			continue
		}
		if err := f.dp.ClearFlowLogSlot(fc.slot); err != nil {
			fail("flowlog/"+strconv.Itoa(int(id)), err)
		}
		fc.w.close()
		f.forget(fc)
	}
	f.cfgs = next
	f.bySlot = map[uint8]*flowLogCfg{}
	for _, fc := range next {
		f.bySlot[fc.slot] = fc
	}

	// Each local port gets the narrowest flow log covering it.
	rank := func(c *agentv1.FlowLogConfig, p *agentv1.Port) int {
		switch {
		case c.PortId != 0:
			if c.PortId == p.Id {
				return 3
			}
		case c.SubnetId != 0:
			if c.SubnetId == p.SubnetId {
				return 2
			}
		case c.VpcId == p.VpcId:
			return 1
		}
		return 0
	}
	portCfg := map[uint32]*flowLogCfg{}
	for pid := range localPorts {
		p := v.Ports[pid]
		if p == nil {
			continue
		}
		best, bestRank := (*flowLogCfg)(nil), 0
		for _, c := range want { // by id: the lowest wins a tie
			fc := next[c.Id]
			if r := rank(c, p); fc != nil && r > bestRank {
				best, bestRank = fc, r
			}
		}
		var slot uint8
		if best != nil {
			slot = best.slot
			portCfg[pid] = best
		}
		if err := f.dp.SetPortFlowLog(pid, slot); err != nil {
			fail(fmt.Sprintf("port/%d", pid), fmt.Errorf("flow log: %w", err))
		}
	}
	f.portCfg = portCfg
}

// configure (re)applies c to fc: data-path slot, file, bucket.
func (f *flowLogs) configure(fc *flowLogCfg, c *agentv1.FlowLogConfig) error {
	slot := datapath.FlowLogSlot{Sample: c.Sampling, Rate: c.RateLimit, Burst: c.Burst}
	if c.TrafficType != "REJECT" {
		slot.Traffic |= datapath.FlowLogAccept
	}
	if c.TrafficType != "ACCEPT" {
		slot.Traffic |= datapath.FlowLogReject
	}
	if err := f.dp.SetFlowLogSlot(fc.slot, slot); err != nil {
		return err
	}
	fc.flowLogOutput.configure(c)
	return nil
}

// flowLogOutput is what a flow log's records go through on this node, on
// eBPF and OVN nodes alike: its settings, its file and the admission of
// new rejected flows.
type flowLogOutput struct {
	cfg            *agentv1.FlowLogConfig
	interval       time.Duration
	accept, reject bool
	w              *jsonlWriter // nil: stream only
	bucket         tokenBucket  // admission of new rejected flows
}

// configure applies c (f.mu held): a new file path gets a new writer (the
// old one is closed), a new rate a new bucket.
func (o *flowLogOutput) configure(c *agentv1.FlowLogConfig) {
	o.accept = c.TrafficType != "REJECT"
	o.reject = c.TrafficType != "ACCEPT"
	max := int64(c.MaxFileBytes)
	if max <= 0 {
		max = defaultMaxFileBytes
	}
	if o.w == nil || o.w.path != c.FilePath {
		o.w.close()
		o.w = nil
		if c.FilePath != "" {
			o.w = &jsonlWriter{path: c.FilePath}
		}
	}
	if o.w != nil {
		o.w.setMax(max)
	}
	if o.cfg == nil || o.cfg.RateLimit != c.RateLimit || o.cfg.Burst != c.Burst {
		o.bucket = newTokenBucket(c.RateLimit, c.Burst)
	}
	o.cfg = c
	o.interval = time.Duration(c.AggregationInterval) * time.Second
}

// forget drops the tracked flows of a flow log that went away.
func (f *flowLogs) forget(fc *flowLogCfg) {
	for id, t := range f.flows {
		if t.cfg == fc {
			delete(f.flows, id)
		}
	}
	for id, r := range f.rejects {
		if r.cfg == fc {
			delete(f.rejects, id)
		}
	}
}

// freeSlot takes the next slot after the last one given out that is not in
// used (f.mu held).
func (f *flowLogs) freeSlot(used map[uint8]bool) (uint8, bool) {
	for range datapath.FlowLogSlots {
		f.lastSlot = f.lastSlot%datapath.FlowLogSlots + 1 // 1..FlowLogSlots
		if !used[f.lastSlot] {
			return f.lastSlot, true
		}
	}
	return 0, false
}

// run reads new-flow events and writes records until ctx is done.
func (f *flowLogs) run(ctx context.Context) {
	r, err := f.dp.FlowEvents()
	if err != nil {
		f.log.Error("flow events unavailable", "err", err)
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// The writer (counters, records, the file) runs at the lowest
		// priority (nice 19) on a thread of its own: its work can wait for
		// a CPU no workload wants, and records are due only at the end of
		// an interval. On a saturated node records come late, and past
		// flowTableMax followed flows new ones are counted, not logged
		// (flowlog_table_full): workloads keep their CPU. Not SCHED_IDLE:
		// its ~0.3% share could starve the writer for seconds on a busy
		// node. The thread is never unlocked, so it ends with this
		// goroutine and no other goroutine ever runs at this priority.
		runtime.LockOSThread()
		if err := unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19); err != nil {
			f.log.Warn("flow-log writer keeps normal priority", "err", err)
		}
		t := time.NewTicker(flowTick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				f.flush(time.Now(), true)
				return
			case now := <-t.C:
				f.flush(now, false)
			}
		}
	}()
	// The data path wakes the reader only when much is waiting
	// (bpf/c/flowlog.h): otherwise each deadline reads what came since.
	r.SetDeadline(time.Now().Add(flowPoll))
	for ctx.Err() == nil {
		ev, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			r.SetDeadline(time.Now().Add(flowPoll))
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				f.log.Error("read flow event", "err", err)
			}
			break
		}
		f.newFlow(ev)
	}
	r.Close()
	wg.Wait()
}

// monoClock converts the data path's CLOCK_MONOTONIC times to wall time.
// Reading CLOCK_MONOTONIC is a system call (no vDSO through x/sys), which
// per announced flow was a fifth of the agent's record work at thousands
// of flows a second: one reading serves the events of the next flowPoll.
type monoClock struct {
	wall time.Time     // time.Now() when mono was read
	mono time.Duration // CLOCK_MONOTONIC then
}

// wallOf is the wall time of CLOCK_MONOTONIC instant m (the first packet of
// a flow), now when the clock cannot be read or m is not in the past.
func (c *monoClock) wallOf(now time.Time, m time.Duration) time.Time {
	if c.wall.IsZero() || now.Sub(c.wall) >= flowPoll || m > c.mono {
		mono, err := datapath.MonotonicNow()
		if err != nil {
			c.wall = time.Time{}
			return now
		}
		c.wall, c.mono = now, mono
	}
	if m > c.mono {
		return now
	}
	// Both clocks advance together: m was (c.mono - m) before c.wall.
	return c.wall.Add(-(c.mono - m))
}

// newFlow starts tracking an accepted flow the data path announced.
func (f *flowLogs) newFlow(ev datapath.FlowEvent) {
	now := time.Now()
	start := f.clock.wallOf(now, ev.Mono)
	f.mu.Lock()
	defer f.mu.Unlock()
	fc := f.bySlot[ev.Slot]
	if fc == nil || !fc.accept || ev.Mono < fc.since {
		return // a flow log removed (or the slot's previous one) while its events were in the ring
	}
	id := flowID{port: ev.Port, key: ev.Key}
	if old := f.flows[id]; old != nil {
		// The same 5-tuple again: the old flow ended and its entry was
		// replaced; what it did since its last record is lost with it.
		delete(f.flows, id)
	} else if len(f.flows)+len(f.rejects) >= flowTableMax {
		f.tableFull++
		fc.skipped++
		return
	}
	t := f.spare.get()
	*t = trackedFlow{id: id, cfg: fc, ev: ev, start: start, windowStart: start}
	f.flows[id] = t
	fc.due.push(t)
}

// reject accounts a policy drop event to the flow log of its port.
func (f *flowLogs) reject(ev datapath.DropEvent) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	fc := f.portCfg[ev.Port]
	if fc == nil || !fc.reject {
		return
	}
	key := datapath.FlowKey{VPC: ev.VPC, Src: ev.Src, Dst: ev.Dst, SrcPort: ev.SrcPort, DstPort: ev.DstPort, Protocol: ev.Protocol}
	id := rejectID{port: ev.Port, key: key, reason: ev.Reason, rule: ev.Rule}
	if r := f.rejects[id]; r != nil {
		r.packets++
		r.bytes += ipBytes(ev)
		r.last = now
		return
	}
	if n := fc.cfg.Sampling; n > 1 && flowHash(key)%uint64(n) != 0 {
		f.rejectSampledOut++
		return
	}
	if !fc.bucket.take(now) {
		f.rejectLimited++
		fc.skipped++
		return
	}
	if len(f.flows)+len(f.rejects) >= flowTableMax {
		f.tableFull++
		fc.skipped++
		return
	}
	f.rejectLogged++
	f.rejects[id] = &rejectedFlow{cfg: fc, ev: ev, first: now, last: now, packets: 1, bytes: ipBytes(ev)}
}

// ipBytes is a dropped packet's IP length (its frame's, less Ethernet),
// as accepted flows count theirs.
func ipBytes(ev datapath.DropEvent) uint64 {
	if ev.Length <= 14 {
		return 0
	}
	return uint64(ev.Length - 14)
}

// flowHash picks rejected flows for sampling: the same flow always hashes
// the same, so a sampled flow is logged with all its packets.
func flowHash(k datapath.FlowKey) uint64 {
	h := fnv.New64a()
	b := k.Src.As4()
	h.Write(b[:])
	b = k.Dst.As4()
	h.Write(b[:])
	h.Write([]byte{byte(k.SrcPort >> 8), byte(k.SrcPort), byte(k.DstPort >> 8), byte(k.DstPort), k.Protocol,
		byte(k.VPC >> 24), byte(k.VPC >> 16), byte(k.VPC >> 8), byte(k.VPC)})
	return h.Sum64()
}

// flush writes the records of flows whose interval is over (all of them
// when final) and forgets the flows that ended.
func (f *flowLogs) flush(now time.Time, final bool) {
	f.mu.Lock()
	due, keys := f.dueBuf[:0], f.keyBuf[:0]
	for _, fc := range f.cfgs {
		for t := fc.due.front(); t != nil && (final || now.Sub(t.windowStart) >= fc.interval); t = fc.due.front() {
			fc.due.pop()
			if f.flows[t.id] == t {
				due = append(due, t)
				keys = append(keys, t.id.key)
			}
		}
	}
	f.mu.Unlock()
	f.dueBuf, f.keyBuf = due, keys

	// Counters are read without the lock, in one batch.
	var cs []datapath.FlowCounters
	var ok []bool
	if len(keys) > 0 {
		var err error
		if cs, ok, err = f.dp.FlowCounters(keys); err != nil {
			f.log.Warn("read flow counters", "err", err)
			f.mu.Lock()
			for _, t := range due { // again at the next tick
				if f.flows[t.id] == t {
					t.cfg.due.push(t)
				}
			}
			f.mu.Unlock()
			return
		}
	}

	out := f.outBuf
	if out == nil {
		out = map[*flowLogCfg][]FlowRecord{}
		f.outBuf = out
	}
	f.mu.Lock()
	for i, t := range due {
		if f.flows[t.id] != t {
			continue // replaced or forgotten meanwhile
		}
		c := cs[i]
		ended := !ok[i] || !c.Counting || c.Done
		if ok[i] && c.Counting {
			rec := f.acceptRecord(t, c, now, ended)
			if rec.Packets > 0 || rec.ReversePackets > 0 || ended {
				out[t.cfg] = append(out[t.cfg], rec)
			}
			t.seen, t.seenBytes = c.Packets, c.Bytes
		} else if t.seen == [2]uint64{} {
			// Gone before its first record (an LRU eviction or a reused
			// key): say what the data path said when it began.
			rec := f.acceptRecord(t, datapath.FlowCounters{Packets: [2]uint64{1, 0}, Bytes: [2]uint64{uint64(t.ev.Bytes), 0}}, now, true)
			out[t.cfg] = append(out[t.cfg], rec)
		}
		if ended || final {
			delete(f.flows, t.id)
			f.spare.put(t) // popped from its queue: nothing else refers to it
		} else {
			t.windowStart, t.start = now, now
			t.cfg.due.push(t)
		}
	}
	clear(due) // the buffer keeps no ended flow alive
	for _, fc := range f.cfgs {
		if fc.skipFrom.IsZero() {
			fc.skipFrom = now
		}
		if final || now.Sub(fc.skipFrom) >= fc.interval {
			// One read of a per-CPU array entry per flow log and interval.
			if n, err := f.dp.FlowLogSlotSkipped(fc.slot); err == nil && n >= fc.dataSkipped {
				fc.skipped += n - fc.dataSkipped
				fc.dataSkipped = n
			}
			if fc.skipped > 0 {
				out[fc] = append(out[fc], f.skipRecord(fc, now))
				fc.skipped = 0
			}
			fc.skipFrom = now
		}
	}
	for id, r := range f.rejects {
		if final || now.Sub(r.first) >= r.cfg.interval {
			out[r.cfg] = append(out[r.cfg], f.rejectRecord(r, now))
			delete(f.rejects, id)
		}
	}
	var n uint64
	for _, rs := range out {
		n += uint64(len(rs))
	}
	f.records += n
	followers := make([]*flowFollower, 0, len(f.followers))
	for fl := range f.followers {
		followers = append(followers, fl)
	}
	f.mu.Unlock()

	for fc, rs := range out {
		if len(rs) == 0 {
			delete(out, fc) // none this time: forget the flow log's buffer
			continue
		}
		slices.SortFunc(rs, func(a, b FlowRecord) int { return cmp.Compare(a.Start, b.Start) })
		// All the lines, each ending in a newline, in one reused buffer;
		// strings only for followers, as one string a line is a slice of.
		buf, ends := f.lineBuf[:0], f.endBuf[:0]
		for i := range rs {
			buf = append(appendRecordJSON(buf, &rs[i]), '\n')
			ends = append(ends, len(buf))
		}
		f.lineBuf, f.endBuf = buf, ends
		f.mu.Lock() // configure replaces fc.w and fc.cfg under f.mu
		w, name := fc.w, fc.cfg.Name
		f.mu.Unlock()
		if w != nil {
			if err := w.writeLines(buf, ends); errors.Is(err, errWriterClosed) {
				// the flow log was removed or moved to another file
				// meanwhile: its last records go nowhere, as its flows
			} else if err != nil {
				f.mu.Lock()
				f.writeErrors++
				f.mu.Unlock()
				f.log.Warn("write flow log", "flow_log", name, "path", w.path, "err", err)
			}
		}
		if len(followers) > 0 {
			all := string(buf)
			lines := make([]string, len(rs))
			for i, from := 0, 0; i < len(rs); i++ {
				lines[i], from = all[from:ends[i]-1], ends[i]
			}
			for _, fl := range followers {
				fl.send(name, rs, lines)
			}
		}
		clear(rs) // no strings kept alive until the next flush
		out[fc] = rs[:0]
	}
}

// skipRecord says how many flows fc skipped since fc.skipFrom: AWS's
// SKIPDATA record, with "-" where it has no flow data.
func (f *flowLogs) skipRecord(fc *flowLogCfg, now time.Time) FlowRecord {
	return FlowRecord{
		Version: 2, AccountID: fc.cfg.Project, InterfaceID: "-", Action: "-", LogStatus: "SKIPDATA",
		Start: fc.skipFrom.Unix(), End: now.Unix(), SkippedFlows: fc.skipped,
		Rule: "flows not logged for lack of capacity (rate limit or table full)", Node: f.node, FlowLog: fc.cfg.Name,
	}
}

// acceptRecord makes the record of an accepted flow's window from its
// counters (the whole flow's so far; the record has what is new).
func (f *flowLogs) acceptRecord(t *trackedFlow, c datapath.FlowCounters, now time.Time, ended bool) FlowRecord {
	r := f.baseRecord(t.cfg, t.ev.Port, t.ev.Key, t.ev.Direction)
	r.Packets = c.Packets[0] - t.seen[0]
	r.Bytes = c.Bytes[0] - t.seenBytes[0]
	r.ReversePackets = c.Packets[1] - t.seen[1]
	r.ReverseBytes = c.Bytes[1] - t.seenBytes[1]
	r.Start, r.End = t.start.Unix(), now.Unix()
	r.Action = "ACCEPT"
	r.FlowEnded = ended
	if t.ev.SGRule != 0 {
		r.SecurityGroup = f.names.sgRule[t.ev.SGRule]
		r.SGRuleID = t.ev.SGRule
	}
	if t.ev.ACLRule != 0 {
		a := f.names.aclRule[t.ev.ACLRule]
		r.ACL, r.ACLRule = a.acl, a.number
	}
	r.Rule = f.allowedBy(t.ev.SGRule, t.ev.ACLRule, r.SecurityGroup, r.ACL, r.ACLRule)
	return r
}

// allowedBy is the rule text of an accepted flow, made once per pair of
// rules (f.mu held): flows are many, the rules that allow them are few.
func (f *flowLogs) allowedBy(sgRule, aclRule uint32, sg, acl string, aclNumber uint32) string {
	k := [2]uint32{sgRule, aclRule}
	if s, ok := f.names.allowed[k]; ok {
		return s
	}
	var parts []string
	if sgRule != 0 {
		parts = append(parts, "security group "+orUnknown(sg)+" rule "+strconv.FormatUint(uint64(sgRule), 10))
	}
	if aclRule != 0 {
		parts = append(parts, "network ACL "+orUnknown(acl)+" rule "+strconv.FormatUint(uint64(aclNumber), 10))
	}
	s := "allowed"
	if len(parts) > 0 {
		s = "allowed by " + joinAnd(parts)
	}
	if len(f.names.allowed) < allowedByMax {
		f.names.allowed[k] = s
	}
	return s
}

// allowedByMax bounds the rule-text cache (a node with more distinct pairs
// of rules allowing its logged flows builds the rest each time).
const allowedByMax = 4096

func (f *flowLogs) rejectRecord(rf *rejectedFlow, now time.Time) FlowRecord {
	ev := rf.ev
	r := f.baseRecord(rf.cfg, ev.Port, datapath.FlowKey{VPC: ev.VPC, Src: ev.Src, Dst: ev.Dst,
		SrcPort: ev.SrcPort, DstPort: ev.DstPort, Protocol: ev.Protocol}, ev.Direction)
	r.Packets, r.Bytes = rf.packets, rf.bytes
	r.Start, r.End = rf.first.Unix(), now.Unix()
	r.Action = "REJECT"
	r.DropReason = ev.Reason.String()
	switch ev.Reason {
	case datapath.DropACLEgress, datapath.DropACLIngress:
		r.ACL = f.names.aclOf[r.subnet]
		if ev.Rule != 0 {
			a := f.names.aclRule[ev.Rule]
			r.ACL, r.ACLRule = orUnknown(a.acl), a.number
			r.Rule = fmt.Sprintf("denied by network ACL %s rule %d", r.ACL, a.number)
		} else {
			r.Rule = fmt.Sprintf("no rule of network ACL %s matches (default deny)", orUnknown(r.ACL))
		}
	case datapath.DropSGEgress, datapath.DropSGIngress:
		r.Rule = "no security-group rule allows it (default deny)"
	default:
		r.Rule = ev.Reason.String()
	}
	return r
}

func (f *flowLogs) baseRecord(fc *flowLogCfg, port uint32, k datapath.FlowKey, dir fw.Direction) FlowRecord {
	r := FlowRecord{
		Version: 2, AccountID: fc.cfg.Project,
		SrcAddr: k.Src, DstAddr: k.Dst, SrcPort: k.SrcPort, DstPort: k.DstPort, Protocol: k.Protocol,
		LogStatus: "OK", VPCID: f.names.vpcs[k.VPC], Direction: dir.String(), Node: f.node, FlowLog: fc.cfg.Name,
	}
	if p := f.names.ports[port]; p != nil {
		r.InterfaceID = p.Name
		r.SubnetID = f.names.subnets[p.SubnetId]
		r.subnet = p.SubnetId
	} else {
		r.InterfaceID = strconv.Itoa(int(port))
	}
	if k.Protocol == fw.ProtoICMP {
		// conntrack keys echo by identifier; flow logs show no ports for
		// ICMP (AWS shows 0 too)
		r.SrcPort, r.DstPort = 0, 0
	}
	return r
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

func joinAnd(parts []string) string {
	switch len(parts) {
	case 0:
		return ""
	case 1:
		return parts[0]
	}
	return parts[0] + " and " + parts[1]
}

// send hands a batch to a follower without ever blocking the writer.
func (fl *flowFollower) send(flowLog string, rs []FlowRecord, lines []string) {
	if fl.flowLog != "" && fl.flowLog != flowLog {
		return
	}
	var out []string
	for i, r := range rs {
		if fl.port == "" || fl.port == r.InterfaceID {
			out = append(out, lines[i])
		}
	}
	if len(out) == 0 {
		return
	}
	select {
	case fl.ch <- out:
	default:
		fl.mu.Lock()
		fl.dropped += uint64(len(out))
		fl.mu.Unlock()
	}
}

func (f *flowLogs) follow(flowLog, port string) (*flowFollower, func()) {
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

// flowLogServer is the local API's flow-log stream.
type flowLogServer struct {
	agentv1.UnimplementedFlowLogLocalServiceServer
	a *Agent
}

func (s *flowLogServer) FollowFlowLogs(r *agentv1.FollowFlowLogsRequest, st agentv1.FlowLogLocalService_FollowFlowLogsServer) error {
	if s.a.flowlogs == nil && s.a.ovnflow == nil {
		return status.Error(codes.FailedPrecondition, "flow logs need the eBPF data path, or on OVN nodes ovn-controller's log (--ovn-controller-log)")
	}
	fl, stop := s.a.followFlowLogs(r.FlowLog, r.Port) // ovnflowlog.go
	defer stop()
	var sent uint64
	for {
		select {
		case <-st.Context().Done():
			return nil
		case lines := <-fl.ch:
			resp := &agentv1.FollowFlowLogsResponse{}
			for _, l := range lines {
				resp.Records = append(resp.Records, &agentv1.FlowRecord{Json: l})
			}
			fl.mu.Lock()
			resp.Dropped = fl.dropped - sent
			sent = fl.dropped
			fl.mu.Unlock()
			if err := st.Send(resp); err != nil {
				return err
			}
		}
	}
}

// jsonlWriter appends JSON lines to a file, rotating it to path.1 when it
// would grow past max, so a flow log never fills the node's disk with more
// than twice max.
type jsonlWriter struct {
	path   string
	mu     sync.Mutex
	max    int64
	f      *os.File
	size   int64
	closed bool // by close: writes fail (errWriterClosed), nothing reopens the file
}

// errWriterClosed: the writer's flow log was removed or changed its file.
var errWriterClosed = errors.New("flow-log writer closed")

func (w *jsonlWriter) setMax(max int64) {
	w.mu.Lock()
	w.max = max
	w.mu.Unlock()
}

func (w *jsonlWriter) open() error {
	if err := os.MkdirAll(filepath.Dir(w.path), 0o755); err != nil {
		return fmt.Errorf("flow log directory: %w", err)
	}
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open flow log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat flow log: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

func (w *jsonlWriter) write(lines []string) error {
	var buf []byte
	ends := make([]int, len(lines))
	for i, l := range lines {
		buf = append(append(buf, l...), '\n')
		ends[i] = len(buf)
	}
	return w.writeLines(buf, ends)
}

// writeLines writes the lines buf[ends[i-1]:ends[i]], each ending in a
// newline: as few writes as the size cap allows (one per flush, unless the
// file rotates meanwhile), since buf already holds them all in a row.
func (w *jsonlWriter) writeLines(buf []byte, ends []int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errWriterClosed
	}
	if w.f == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	from := 0 // buf[from:] is not written yet
	for i := 0; i < len(ends); {
		// Take lines while they fit under the cap (at least one line
		// into an empty file, however long).
		j := i
		for j < len(ends) && (w.size+int64(ends[j]-from) <= w.max || (w.size == 0 && j == i)) {
			j++
		}
		if j == i {
			if err := w.rotate(); err != nil {
				return err
			}
			continue
		}
		n, err := w.f.Write(buf[from:ends[j-1]])
		w.size += int64(n)
		if err != nil {
			return fmt.Errorf("write flow log: %w", err)
		}
		from, i = ends[j-1], j
	}
	return nil
}

func (w *jsonlWriter) rotate() error {
	w.f.Close()
	w.f = nil
	if err := os.Rename(w.path, w.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("rotate flow log: %w", err)
	}
	return w.open()
}

func (w *jsonlWriter) close() {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

// tokenBucket limits new rejected flows per second (the data path has its
// own for accepted ones). Zero rate: no limit.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func newTokenBucket(rate, burst uint32) tokenBucket {
	if burst == 0 {
		burst = rate
	}
	return tokenBucket{rate: float64(rate), burst: float64(burst), tokens: float64(burst)}
}

func (b *tokenBucket) take(now time.Time) bool {
	if b.rate == 0 {
		return true
	}
	if !b.last.IsZero() {
		b.tokens += now.Sub(b.last).Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// flowLogCollector exports the flow-log counters on /metrics.
type flowLogCollector struct {
	f        *flowLogs
	newFlows *prometheus.Desc
	rejects  *prometheus.Desc
	records  *prometheus.Desc
	tracked  *prometheus.Desc
	full     *prometheus.Desc
	werr     *prometheus.Desc
}

func newFlowLogCollector(f *flowLogs) *flowLogCollector {
	return &flowLogCollector{
		f: f,
		newFlows: prometheus.NewDesc("meridian_agent_flowlog_new_flows_total",
			"New accepted flows at ports with flow logs, by what the data path did: logged, sampled_out, rate_limited, ring_full.",
			[]string{"outcome"}, nil),
		rejects: prometheus.NewDesc("meridian_agent_flowlog_rejected_flows_total",
			"New rejected flows at ports with flow logs, by what the agent did: logged, sampled_out, rate_limited.",
			[]string{"outcome"}, nil),
		records: prometheus.NewDesc("meridian_agent_flowlog_records_total", "Flow-log records written.", nil, nil),
		tracked: prometheus.NewDesc("meridian_agent_flowlog_tracked_flows", "Flows the agent is logging now.", nil, nil),
		full: prometheus.NewDesc("meridian_agent_flowlog_table_full_total",
			"Flows not logged because the agent's flow table was full.", nil, nil),
		werr: prometheus.NewDesc("meridian_agent_flowlog_write_errors_total", "Failed writes of flow-log files.", nil, nil),
	}
}

func (c *flowLogCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.newFlows, c.rejects, c.records, c.tracked, c.full, c.werr} {
		ch <- d
	}
}

func (c *flowLogCollector) Collect(ch chan<- prometheus.Metric) {
	if st, err := c.f.dp.FlowLogStats(); err == nil {
		for outcome, v := range map[string]uint64{"logged": st.Emitted, "sampled_out": st.SampledOut,
			"rate_limited": st.RateLimited, "ring_full": st.RingFull} {
			ch <- prometheus.MustNewConstMetric(c.newFlows, prometheus.CounterValue, float64(v), outcome)
		}
	}
	c.f.mu.Lock()
	rl, rs, rr := c.f.rejectLogged, c.f.rejectSampledOut, c.f.rejectLimited
	records, tracked, full, werr := c.f.records, len(c.f.flows)+len(c.f.rejects), c.f.tableFull, c.f.writeErrors
	c.f.mu.Unlock()
	for outcome, v := range map[string]uint64{"logged": rl, "sampled_out": rs, "rate_limited": rr} {
		ch <- prometheus.MustNewConstMetric(c.rejects, prometheus.CounterValue, float64(v), outcome)
	}
	ch <- prometheus.MustNewConstMetric(c.records, prometheus.CounterValue, float64(records))
	ch <- prometheus.MustNewConstMetric(c.tracked, prometheus.GaugeValue, float64(tracked))
	ch <- prometheus.MustNewConstMetric(c.full, prometheus.CounterValue, float64(full))
	ch <- prometheus.MustNewConstMetric(c.werr, prometheus.CounterValue, float64(werr))
}
