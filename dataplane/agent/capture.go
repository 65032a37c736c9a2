package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	xbpf "golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/fw"
)

// Bounds of one capture stream. The queue between the socket and the
// stream holds at most captureQueueBytes of frames: a client slower than
// the traffic loses frames (counted and reported at the end), the agent
// never holds more.
const (
	captureQueueBytes   = 8 << 20
	captureQueueFrames  = 8192
	captureBatchFrames  = 256
	captureBatchBytes   = 1 << 20 // well under gRPC's 4 MiB message limit
	captureMaxDuration  = 24 * time.Hour
	captureFlushEvery   = 100 * time.Millisecond // a quiet port's frames still arrive promptly
	dropSubscriberQueue = 4096
)

// Capture streams the frames on a port's interface, or the frames the data
// path drops, until the count or duration is reached or the caller goes.
func (s *localServer) Capture(r *agentv1.CaptureRequest, stream agentv1.LocalAgentService_CaptureServer) error {
	a := s.a
	filter, err := captureFilter(r)
	if err != nil {
		return err
	}
	var src captureSource
	var where string
	var portID uint32
	if r.Drops {
		src, where, portID, err = a.openDropCapture(r, filter)
	} else {
		src, where, portID, err = a.openPortCapture(r, filter)
	}
	if err != nil {
		return err
	}
	defer src.close()

	ctx := stream.Context()
	if r.DurationMs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(r.DurationMs)*time.Millisecond)
		defer cancel()
	}
	a.log.Info("capture started", "where", where, "filter", r.FilterExpression, "drops", r.Drops,
		"max_packets", r.MaxPackets, "duration_ms", r.DurationMs)
	if err := stream.Send(&agentv1.CaptureResponse{Interface: where, PortId: portID}); err != nil {
		return err
	}
	sum, err := runCapture(ctx, src, r.MaxPackets, stream.Send)
	a.log.Info("capture ended", "where", where, "packets", sum.Packets, "dropped_buffer", sum.DroppedBuffer,
		"dropped_kernel", sum.DroppedKernel, "ended_by", sum.EndedBy)
	if err != nil {
		return err // the client went away: nobody to tell
	}
	return stream.Send(&agentv1.CaptureResponse{Summary: sum})
}

// captureFilter checks the request's options and returns its filter
// program (nil: none).
func captureFilter(r *agentv1.CaptureRequest) ([]unix.SockFilter, error) {
	if r.Snaplen > datapath.MaxCaptureSnaplen {
		return nil, status.Errorf(codes.InvalidArgument, "snaplen %d: at most %d", r.Snaplen, datapath.MaxCaptureSnaplen)
	}
	if time.Duration(r.DurationMs)*time.Millisecond > captureMaxDuration {
		return nil, status.Errorf(codes.InvalidArgument, "duration %d ms: at most %v", r.DurationMs, captureMaxDuration)
	}
	switch r.Direction {
	case agentv1.CaptureRequest_DIRECTION_UNSPECIFIED, agentv1.CaptureRequest_BOTH,
		agentv1.CaptureRequest_FROM_PORT, agentv1.CaptureRequest_TO_PORT:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "direction %v: want FROM_PORT, TO_PORT or BOTH", r.Direction)
	}
	if len(r.Filter) > 4096 {
		return nil, status.Errorf(codes.InvalidArgument, "filter of %d instructions: the kernel takes at most 4096", len(r.Filter))
	}
	var prog []unix.SockFilter
	for i, in := range r.Filter {
		if in.Code > 0xffff || in.Jt > 0xff || in.Jf > 0xff {
			return nil, status.Errorf(codes.InvalidArgument, "filter instruction %d {%d %d %d %d}: code is 16 bits, jt and jf 8",
				i, in.Code, in.Jt, in.Jf, in.K)
		}
		prog = append(prog, unix.SockFilter{Code: uint16(in.Code), Jt: uint8(in.Jt), Jf: uint8(in.Jf), K: in.K})
	}
	return prog, nil
}

// captureSource yields captured packets one at a time.
type captureSource interface {
	// next blocks for the next packet; it returns an error once closed.
	next() (*agentv1.CapturedPacket, error)
	// kernelDrops is what the source lost before the agent saw it.
	kernelDrops() uint64
	close()
}

// attachmentOf finds a port attached on this node by name or numeric id.
func (a *Agent) attachmentOf(port string) (attachment, error) {
	if port == "" {
		return attachment{}, status.Error(codes.InvalidArgument, "port is required: projects/{project}/ports/{port} or its numeric id")
	}
	var id uint32
	if !strings.HasPrefix(port, "projects/") {
		n, err := a.replayPort(port)
		if err != nil {
			return attachment{}, err
		}
		id = n
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.attach {
		if at.Port == port || (id != 0 && at.PortID == id) {
			return *at, nil
		}
	}
	return attachment{}, status.Errorf(codes.NotFound, "port %s is not attached on node %s (capture runs on the port's node)", port, a.cfg.Node)
}

func (a *Agent) openPortCapture(r *agentv1.CaptureRequest, filter []unix.SockFilter) (captureSource, string, uint32, error) {
	at, err := a.attachmentOf(r.Port)
	if err != nil {
		return nil, "", 0, err
	}
	if at.NetnsPath == "" {
		return nil, "", 0, status.Errorf(codes.FailedPrecondition, "port %s has no workload namespace on node %s", r.Port, a.cfg.Node)
	}
	ifName := at.IfName
	if ifName == "" {
		ifName = "eth0"
	}
	dir := datapath.CaptureBoth
	switch r.Direction {
	case agentv1.CaptureRequest_FROM_PORT:
		dir = datapath.CaptureOutgoing
	case agentv1.CaptureRequest_TO_PORT:
		dir = datapath.CaptureIncoming
	}
	// The workload's end sees both directions; the host end would miss
	// every frame delivered to the port (bpf_redirect_peer skips it).
	sock, err := datapath.OpenCapture(datapath.CaptureOptions{Netns: at.NetnsPath, Interface: ifName, Direction: dir,
		Filter: filter, Snaplen: int(r.Snaplen)})
	if errors.Is(err, datapath.ErrCaptureInput) {
		return nil, "", 0, status.Errorf(codes.InvalidArgument, "capture on port %s: %v", r.Port, err)
	}
	if err != nil {
		return nil, "", 0, status.Errorf(codes.Internal, "capture on port %s: %v", r.Port, err)
	}
	where := fmt.Sprintf("%s in %s (port %s, id %d, node %s)", ifName, at.NetnsPath, at.Port, at.PortID, a.cfg.Node)
	return &socketSource{s: sock}, where, at.PortID, nil
}

type socketSource struct {
	s      *datapath.PacketSocket
	kdrops uint64
}

func (c *socketSource) next() (*agentv1.CapturedPacket, error) {
	fr, err := c.s.Read()
	if err != nil {
		return nil, err
	}
	dir := agentv1.CapturedPacket_TO_PORT
	if fr.Outgoing {
		dir = agentv1.CapturedPacket_FROM_PORT
	}
	return &agentv1.CapturedPacket{TimestampUnixNano: fr.Time.UnixNano(), Length: uint32(fr.Length), Data: fr.Data, Direction: dir}, nil
}

func (c *socketSource) kernelDrops() uint64 {
	if n, err := c.s.KernelDrops(); err == nil {
		c.kdrops += n // the kernel's count resets at each read
	}
	return c.kdrops
}

func (c *socketSource) close() { c.s.Close() }

// runCapture moves packets from src to send through a bounded queue until
// max packets (0: no limit), the context's end or an error of send. The
// summary is never nil; with an error of send it counts what was sent.
func runCapture(ctx context.Context, src captureSource, max uint64, send func(*agentv1.CaptureResponse) error) (*agentv1.CaptureSummary, error) {
	type item struct{ p *agentv1.CapturedPacket }
	queue := make(chan item, captureQueueFrames)
	var queued atomic.Int64
	var accepted, dropped atomic.Uint64
	endedBy := make(chan string, 1)

	// The reader never blocks on the stream: a full queue drops the frame.
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer close(queue)
		for {
			p, err := src.next()
			if err != nil {
				if ctx.Err() == nil {
					endedBy <- "error: " + err.Error()
				}
				return
			}
			n := int64(len(p.Data))
			if queued.Load()+n > captureQueueBytes {
				dropped.Add(1)
				continue
			}
			select {
			case queue <- item{p}:
				queued.Add(n)
			default:
				dropped.Add(1)
				continue
			}
			if n := accepted.Add(1); max > 0 && n >= max {
				endedBy <- "count"
				return
			}
		}
	}()
	// Closing the source is what unblocks the reader. Its kernel drop
	// count is read just before: a closed socket has none to give.
	stop := make(chan struct{})
	defer close(stop)
	kernelDrops := make(chan uint64, 1)
	go func() {
		select {
		case <-ctx.Done():
		case <-readerDone:
		case <-stop:
		}
		kernelDrops <- src.kernelDrops()
		src.close()
	}()

	var sent uint64
	var batch []*agentv1.CapturedPacket
	batchBytes := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := send(&agentv1.CaptureResponse{Packets: batch})
		sent += uint64(len(batch))
		batch, batchBytes = nil, 0
		return err
	}
	tick := time.NewTicker(captureFlushEvery)
	defer tick.Stop()
	gone := func(err error) (*agentv1.CaptureSummary, error) {
		return &agentv1.CaptureSummary{Packets: sent, DroppedBuffer: dropped.Load(), EndedBy: "client gone: " + err.Error()}, err
	}
	for {
		select {
		case it, ok := <-queue:
			if !ok {
				if err := flush(); err != nil {
					return gone(err)
				}
				// The queue closes once the reader is done, so the
				// closer has run (or is about to).
				sum := &agentv1.CaptureSummary{Packets: sent, DroppedBuffer: dropped.Load(), DroppedKernel: <-kernelDrops}
				select {
				case sum.EndedBy = <-endedBy:
				default:
					sum.EndedBy = "cancelled"
					if errors.Is(ctx.Err(), context.DeadlineExceeded) {
						sum.EndedBy = "duration"
					}
				}
				return sum, nil
			}
			queued.Add(-int64(len(it.p.Data)))
			batch = append(batch, it.p)
			batchBytes += len(it.p.Data)
			if len(batch) >= captureBatchFrames || batchBytes >= captureBatchBytes {
				if err := flush(); err != nil {
					return gone(err)
				}
			}
		case <-tick.C:
			if err := flush(); err != nil {
				return gone(err)
			}
		}
	}
}

// dropHub fans the data path's drop events (one ring, one reader:
// watchDrops) out to the captures that want them. A second reader of the
// ring would take events from the first: anything else that wants drop
// events subscribes here too. Its zero value is ready.
type dropHub struct {
	mu   sync.Mutex
	subs map[*dropSub]struct{}

	// captureMu orders the changes of the data path's drop_capture, the
	// number of drop captures running (captures), which makes it send
	// events for drops of every reason, not only policy drops.
	captureMu sync.Mutex
	captures  uint32

	// readers is how many readers of the ring publish here (watchDrops):
	// without one, nobody waits for an event that will not come.
	readers atomic.Int32
}

// captureStarted counts a drop capture in the data path. On error
// nothing changed.
func (h *dropHub) captureStarted(dp *datapath.Datapath) error {
	h.captureMu.Lock()
	defer h.captureMu.Unlock()
	if err := dp.SetDropCapture(h.captures + 1); err != nil {
		return err
	}
	h.captures++
	return nil
}

// captureEnded uncounts one; the count drops even if the data path could
// not be told (it would then send more events than wanted, within its
// budget, until the next change).
func (h *dropHub) captureEnded(dp *datapath.Datapath) error {
	h.captureMu.Lock()
	defer h.captureMu.Unlock()
	if h.captures > 0 {
		h.captures--
	}
	return dp.SetDropCapture(h.captures)
}

type dropSub struct {
	ch      chan datapath.DropEvent
	dropped atomic.Uint64 // events this subscriber was too slow for
}

func (h *dropHub) subscribe() *dropSub {
	s := &dropSub{ch: make(chan datapath.DropEvent, dropSubscriberQueue)}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[*dropSub]struct{}{}
	}
	h.subs[s] = struct{}{}
	return s
}

func (h *dropHub) unsubscribe(s *dropSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
}

// publish never blocks the ring's reader: a full subscriber loses the event.
func (h *dropHub) publish(ev datapath.DropEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s.ch <- ev:
		default:
			s.dropped.Add(1)
		}
	}
}

func (a *Agent) openDropCapture(r *agentv1.CaptureRequest, filter []unix.SockFilter) (captureSource, string, uint32, error) {
	if a.dp == nil {
		return nil, "", 0, status.Error(codes.FailedPrecondition, "drop capture reads the eBPF data path's drop events; this node uses the OVN realization")
	}
	var id uint32
	where := "drops on node " + a.cfg.Node
	if r.Port != "" {
		n, err := a.replayPort(r.Port)
		if err != nil {
			return nil, "", 0, err
		}
		id = n
		where = fmt.Sprintf("drops at port %s (id %d) on node %s", r.Port, id, a.cfg.Node)
	}
	src := &dropSource{a: a, hub: &a.dropSubs, port: id, snaplen: int(r.Snaplen), done: make(chan struct{})}
	switch r.Direction {
	case agentv1.CaptureRequest_FROM_PORT:
		src.dir, src.oneDir = fw.Egress, true
	case agentv1.CaptureRequest_TO_PORT:
		src.dir, src.oneDir = fw.Ingress, true
	}
	if len(filter) > 0 {
		// Drop events come from the ring, not a socket: the same classic
		// program runs here, in the agent, on the frame's first bytes.
		ins := make([]xbpf.Instruction, len(filter))
		for i, f := range filter {
			ins[i] = xbpf.RawInstruction{Op: f.Code, Jt: f.Jt, Jf: f.Jf, K: f.K}.Disassemble()
		}
		vm, err := xbpf.NewVM(ins)
		if err != nil {
			return nil, "", 0, status.Errorf(codes.InvalidArgument, "filter: %v", err)
		}
		src.vm = vm
	}
	// Only while a drop capture runs does the data path send the drops
	// of every reason (a load of a global otherwise); policy drops it
	// always sends, for the log and the flow logs.
	if err := src.hub.captureStarted(a.dp); err != nil {
		return nil, "", 0, status.Errorf(codes.Internal, "drop capture: %v", err)
	}
	src.sub = src.hub.subscribe()
	return src, where, id, nil
}

type dropSource struct {
	a       *Agent
	hub     *dropHub
	sub     *dropSub
	port    uint32 // 0: every port
	dir     fw.Direction
	oneDir  bool
	vm      *xbpf.VM
	snaplen int
	once    sync.Once
	done    chan struct{}

	rules        map[uint32]uint32 // ACL rule id -> number
	rulesVersion uint64
}

func (d *dropSource) next() (*agentv1.CapturedPacket, error) {
	for {
		select {
		case <-d.done:
			return nil, errors.New("capture closed")
		case ev := <-d.sub.ch:
			if (d.port != 0 && ev.Port != d.port) || (d.oneDir && ev.Direction != d.dir) || len(ev.Frame) == 0 {
				continue
			}
			data := ev.Frame
			if d.vm != nil {
				n, err := d.vm.Run(data)
				if err != nil || n == 0 {
					continue // a filter that cannot run on a cut frame does not match it
				}
				data = data[:min(n, len(data))]
			}
			if d.snaplen > 0 && len(data) > d.snaplen {
				data = data[:d.snaplen]
			}
			p := &agentv1.CapturedPacket{
				TimestampUnixNano: time.Now().UnixNano(), Length: uint32(ev.Length), Data: data,
				DropReason: ev.Reason.String(), DropRule: ev.Rule, DropPort: ev.Port, DropDirection: ev.Direction.String(),
			}
			if ev.Rule != 0 && (ev.Reason == datapath.DropACLEgress || ev.Reason == datapath.DropACLIngress) {
				p.DropRuleNumber = d.ruleNumber(ev.Rule)
			}
			return p, nil
		}
	}
}

func (d *dropSource) kernelDrops() uint64 { return d.sub.dropped.Load() }

func (d *dropSource) close() {
	d.once.Do(func() {
		d.hub.unsubscribe(d.sub)
		if err := d.hub.captureEnded(d.a.dp); err != nil {
			d.a.log.Error("drop capture ended: data path not told", "err", err)
		}
		close(d.done)
	})
}

// ruleNumber is the number, in its network ACL, of the rule the data path
// knows by id; 0 if the desired state no longer has it. The index is
// rebuilt only when the desired state changed, so a flood of drops does
// not rescan it.
func (d *dropSource) ruleNumber(id uint32) uint32 {
	a := d.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if d.rules == nil || d.rulesVersion != a.version {
		d.rules, d.rulesVersion = map[uint32]uint32{}, a.version
		for _, o := range a.desired {
			for _, r := range o.GetNetworkAcl().GetRules() {
				d.rules[r.Id] = r.Number
			}
		}
	}
	return d.rules[id]
}
