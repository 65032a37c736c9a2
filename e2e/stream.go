package e2e

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// This file holds traffic that lasts: a TCP stream and a ping train that
// run while a test disrupts the deployment, and report afterwards whether
// anything was lost. Sockets are opened inside the namespaces and stay
// there, so the goroutines using them run on any thread.

// Stream is one long-running TCP connection carrying a known byte pattern
// at a steady rate, checked byte for byte by the receiver.
type Stream struct {
	sent     atomic.Int64
	received atomic.Int64
	conn     *net.TCPConn
	lis      net.Listener
	stop     chan struct{}
	sendDone chan struct{}
	recvDone chan struct{}
	start    time.Time

	mu       sync.Mutex
	sendErr  error
	recvErr  error
	accepted int
	lastRead time.Time
	stall    time.Duration
}

// StreamStats is what a stream saw from start to Stop.
type StreamStats struct {
	Sent, Received int64
	// Connections the receiver accepted: 1 unless something reconnected.
	Connections int
	// LongestStall is the longest time the receiver waited for data.
	LongestStall time.Duration
	// Retransmits is the sender's TCP retransmission count (TCP_INFO).
	Retransmits uint32
	Duration    time.Duration
}

// streamChunkEvery paces the sender: a write every 10 ms keeps the flow
// steady without saturating two shared CPUs.
const streamChunkEvery = 10 * time.Millisecond

// StartStream connects from From to To's port and sends bytesPerSecond
// until Stop. The receiver verifies every byte, so a corrupted, duplicated
// or skipped segment is an error, not just a count.
func (r *Run) StartStream(ctx context.Context, from, to string, port uint16, bytesPerSecond int) (*Stream, error) {
	fromNS, err := r.Netns(from)
	if err != nil {
		return nil, err
	}
	toNS, err := r.Netns(to)
	if err != nil {
		return nil, err
	}
	dst, err := r.Addr(to)
	if err != nil {
		return nil, err
	}
	s := &Stream{stop: make(chan struct{}), sendDone: make(chan struct{}), recvDone: make(chan struct{})}
	if err := plumbing.RunInNetns(netnsPath(toNS), func() (err error) {
		s.lis, err = net.Listen("tcp4", ":"+strconv.Itoa(int(port)))
		return err
	}); err != nil {
		return nil, fmt.Errorf("stream listener in %s: %w", to, err)
	}
	go s.receive()
	err = plumbing.RunInNetns(netnsPath(fromNS), func() error {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(dctx, "tcp4", netip.AddrPortFrom(dst, port).String())
		if err != nil {
			return err
		}
		s.conn = c.(*net.TCPConn)
		return nil
	})
	if err != nil {
		s.lis.Close()
		<-s.recvDone
		return nil, fmt.Errorf("stream %s -> %s: %w", from, to, err)
	}
	s.start = time.Now()
	go s.send(max(1, bytesPerSecond/int(time.Second/streamChunkEvery)))
	return s, nil
}

// patternByte is the stream's content at offset: a period of 251 (prime)
// never lines up with chunk or segment sizes, so a shifted byte shows.
func patternByte(offset int64) byte { return byte(offset % 251) }

func (s *Stream) send(chunk int) {
	defer close(s.sendDone)
	buf := make([]byte, chunk)
	tick := time.NewTicker(streamChunkEvery)
	defer tick.Stop()
	var off int64
	for {
		select {
		case <-s.stop:
			// A clean end the receiver can tell from a reset: FIN.
			s.setErr(&s.sendErr, s.conn.CloseWrite())
			return
		case <-tick.C:
		}
		for i := range buf {
			buf[i] = patternByte(off + int64(i))
		}
		// A data path that stops forwarding makes the write block once
		// the socket buffer is full; the deadline turns that into an
		// error instead of a hung test.
		_ = s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		n, err := s.conn.Write(buf)
		off += int64(n)
		s.sent.Add(int64(n))
		if err != nil {
			s.setErr(&s.sendErr, err)
			return
		}
	}
}

func (s *Stream) receive() {
	defer close(s.recvDone)
	// Every accepted connection counts: one that reconnected would be
	// another.
	first := make(chan net.Conn, 1)
	go func() {
		for {
			c, err := s.lis.Accept()
			if err != nil {
				close(first)
				return
			}
			s.mu.Lock()
			s.accepted++
			n := s.accepted
			s.mu.Unlock()
			if n == 1 {
				first <- c
			} else {
				c.Close()
			}
		}
	}()
	c, ok := <-first
	if !ok {
		return
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := c.Read(buf)
		now := time.Now()
		s.mu.Lock()
		if !s.lastRead.IsZero() {
			s.stall = max(s.stall, now.Sub(s.lastRead))
		}
		s.lastRead = now
		s.mu.Unlock()
		for i := range n {
			if buf[i] != patternByte(off+int64(i)) {
				s.setErr(&s.recvErr, fmt.Errorf("byte %d is %d, want %d", off+int64(i), buf[i], patternByte(off+int64(i))))
				return
			}
		}
		off += int64(n)
		s.received.Add(int64(n))
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			s.setErr(&s.recvErr, err)
			return
		}
	}
}

func (s *Stream) setErr(dst *error, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *dst == nil {
		*dst = err
	}
}

// Received is how many bytes have arrived so far.
func (s *Stream) Received() int64 { return s.received.Load() }

// Err is the first error either end has met so far.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(wrapErr("send", s.sendErr), wrapErr("receive", s.recvErr))
}

func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Stop ends the stream with a FIN, waits up to timeout for the receiver to
// read everything, and returns the statistics and the first error of
// either end (a reset, a timeout, a wrong byte, data missing at the end).
func (s *Stream) Stop(timeout time.Duration) (StreamStats, error) {
	close(s.stop)
	<-s.sendDone
	var err error
	select {
	case <-s.recvDone:
	case <-time.After(timeout):
		err = fmt.Errorf("receiver did not see the end of the stream within %s", timeout)
	}
	st := StreamStats{Sent: s.sent.Load(), Received: s.received.Load(), Duration: time.Since(s.start)}
	if info, ierr := tcpInfo(s.conn); ierr == nil {
		st.Retransmits = info.Total_retrans
	}
	s.conn.Close()
	s.lis.Close()
	<-s.recvDone
	s.mu.Lock()
	st.Connections, st.LongestStall = s.accepted, s.stall
	s.mu.Unlock()
	if st.Received != st.Sent {
		err = errors.Join(err, fmt.Errorf("received %d of %d bytes sent", st.Received, st.Sent))
	}
	return st, errors.Join(err, s.Err())
}

func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	return info, gerr
}

// Pinger sends ICMP echo requests at a fixed interval and counts the
// replies, like `ping -i`, from inside a namespace.
type Pinger struct {
	conn     net.PacketConn
	dst      netip.Addr
	id       uint16
	stop     chan struct{}
	sendDone chan struct{}
	recvDone chan struct{}

	mu     sync.Mutex
	sent   map[uint16]time.Time // by sequence number
	got    map[uint16]time.Duration
	maxRTT time.Duration
	err    error
}

// PingStats counts what a Pinger sent and got back.
type PingStats struct {
	Sent, Received int
	MaxRTT         time.Duration
}

// Lost is how many requests got no reply.
func (p PingStats) Lost() int { return p.Sent - p.Received }

// StartPing pings To from From every interval until Stop, with a random
// identifier.
func (r *Run) StartPing(from, to string, interval time.Duration) (*Pinger, error) {
	var id [2]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	return r.startPing(from, to, interval, binary.BigEndian.Uint16(id[:]))
}

// EchoWithID sends one echo request with identifier id from From to To and
// says whether its reply came within timeout: for checks of how conntrack
// pairs requests with replies, where the identifier is the point.
func (r *Run) EchoWithID(from, to string, id uint16, timeout time.Duration) (bool, error) {
	// The first request goes out at once; the next would after an hour.
	p, err := r.startPing(from, to, time.Hour, id)
	if err != nil {
		return false, err
	}
	st, err := p.Stop(timeout)
	return st.Received > 0, err
}

func (r *Run) startPing(from, to string, interval time.Duration, id uint16) (*Pinger, error) {
	ns, err := r.Netns(from)
	if err != nil {
		return nil, err
	}
	dst, err := r.Addr(to)
	if err != nil {
		return nil, err
	}
	p := &Pinger{dst: dst, id: id, stop: make(chan struct{}), sendDone: make(chan struct{}),
		recvDone: make(chan struct{}), sent: map[uint16]time.Time{}, got: map[uint16]time.Duration{}}
	if err := plumbing.RunInNetns(netnsPath(ns), func() (err error) {
		p.conn, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, fmt.Errorf("icmp socket in %s: %w", from, err)
	}
	go p.receive()
	go p.send(interval)
	return p, nil
}

func (p *Pinger) send(interval time.Duration) {
	defer close(p.sendDone)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := uint16(1); ; seq++ {
		req := make([]byte, 16)
		req[0] = 8 // echo request
		binary.BigEndian.PutUint16(req[4:], p.id)
		binary.BigEndian.PutUint16(req[6:], seq)
		binary.BigEndian.PutUint16(req[2:], inetChecksum(req))
		p.mu.Lock()
		p.sent[seq] = time.Now()
		p.mu.Unlock()
		if _, err := p.conn.WriteTo(req, &net.IPAddr{IP: p.dst.AsSlice()}); err != nil {
			p.mu.Lock()
			p.err = errors.Join(p.err, fmt.Errorf("send echo %d: %w", seq, err))
			p.mu.Unlock()
		}
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

func (p *Pinger) receive() {
	defer close(p.recvDone)
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return // closed by Stop
		}
		src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		m := buf[:n]
		if n < 8 || m[0] != 0 || binary.BigEndian.Uint16(m[4:]) != p.id || src.Unmap() != p.dst {
			continue
		}
		seq := binary.BigEndian.Uint16(m[6:])
		p.mu.Lock()
		if t, ok := p.sent[seq]; ok {
			if _, dup := p.got[seq]; !dup {
				rtt := time.Since(t)
				p.got[seq] = rtt
				p.maxRTT = max(p.maxRTT, rtt)
			}
		}
		p.mu.Unlock()
	}
}

// Stop stops sending, waits up to linger for the last replies and
// returns the counts; the error is about sending, not about loss.
func (p *Pinger) Stop(linger time.Duration) (PingStats, error) {
	close(p.stop)
	<-p.sendDone
	deadline := time.Now().Add(linger)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		all := len(p.got) == len(p.sent)
		p.mu.Unlock()
		if all {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.conn.Close()
	<-p.recvDone
	p.mu.Lock()
	defer p.mu.Unlock()
	return PingStats{Sent: len(p.sent), Received: len(p.got), MaxRTT: p.maxRTT}, p.err
}
