package bgp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// wireCapture timestamps, with the kernel's clock, the first outgoing BGP
// UPDATE that announces each prefix on one interface: the moment Meridian's
// share of an announcement ends.
type wireCapture struct {
	fd   int
	src  netip.Addr
	stop atomic.Bool
	done chan struct{}

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever seen grows
	seen    map[netip.Prefix]time.Time
	last    time.Time // newest UPDATE with an announcement
	stream  []byte    // bytes of the BGP stream not yet parsed
	nextSeq uint32
	synced  bool
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// inNetns runs f on a thread switched into the named namespace; the thread
// is thrown away (not unlocked) if it cannot be switched back.
func inNetns(name string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err) // stays locked: the thread dies with this goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func startCapture(tb testing.TB, ns, ifname string, src netip.Addr) *wireCapture {
	tb.Helper()
	c := &wireCapture{src: src, done: make(chan struct{}), changed: make(chan struct{}), seen: map[netip.Prefix]time.Time{}}
	err := inNetns(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		// ETH_P_ALL: sockets bound to one protocol never see outgoing
		// frames.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("binding to %s: %w", ifname, err)
		}
		// Kernel receive timestamps: the time the frame crossed the
		// interface, not when this goroutine got to read it.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			unix.Close(fd)
			return err
		}
		// A timeout lets the reader notice stop without closing a
		// descriptor another goroutine is blocked on.
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000}); err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		tb.Fatalf("capture on %s/%s: %v", ns, ifname, err)
	}
	go c.read()
	tb.Cleanup(func() {
		c.stop.Store(true)
		<-c.done
		unix.Close(c.fd)
	})
	return c
}

func (c *wireCapture) read() {
	defer close(c.done)
	buf := make([]byte, 1<<17)
	oob := make([]byte, 128)
	for !c.stop.Load() {
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, 0)
		if err != nil {
			continue // timeout (EAGAIN) or EINTR
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype != unix.PACKET_OUTGOING {
			continue
		}
		ts := time.Now()
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
					sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
					nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
					ts = time.Unix(sec, nsec)
				}
			}
		}
		c.frame(buf[:n], ts)
	}
}

// frame takes an Ethernet frame carrying IPv4 from the speaker to port 179.
func (c *wireCapture) frame(f []byte, ts time.Time) {
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
		return
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+20 || total > len(ip) {
		return
	}
	if src, _ := netip.AddrFromSlice(ip[12:16]); src != c.src {
		return
	}
	tcp := ip[ihl:total]
	if binary.BigEndian.Uint16(tcp[2:4]) != 179 {
		return
	}
	seq := binary.BigEndian.Uint32(tcp[4:8])
	payload := tcp[int(tcp[12]>>4)*4:]
	if len(payload) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.synced {
		// Join the stream at the first segment that starts a message.
		if len(payload) < 16 || !allFF(payload[:16]) {
			return
		}
		c.synced, c.nextSeq = true, seq
	}
	if d := int32(seq - c.nextSeq); d < 0 || d > 0 {
		// A retransmission (d < 0) brings nothing new; a gap (d > 0)
		// means a lost frame: resynchronise at the next message start.
		if d > 0 {
			c.synced, c.stream = false, nil
		}
		return
	}
	c.nextSeq = seq + uint32(len(payload))
	c.stream = append(c.stream, payload...)
	grew := false
	for len(c.stream) >= bgp.BGP_HEADER_LENGTH {
		l := int(binary.BigEndian.Uint16(c.stream[16:18]))
		if l < bgp.BGP_HEADER_LENGTH || len(c.stream) < l {
			break
		}
		msg := c.stream[:l]
		c.stream = c.stream[l:]
		if msg[18] != bgp.BGP_MSG_UPDATE {
			continue
		}
		m, err := bgp.ParseBGPMessage(msg)
		if err != nil {
			continue
		}
		for _, n := range m.Body.(*bgp.BGPUpdate).NLRI {
			p, err := netip.ParsePrefix(n.String())
			if err != nil {
				continue
			}
			if _, ok := c.seen[p]; !ok {
				c.seen[p] = ts
				grew = true
			}
		}
		if len(m.Body.(*bgp.BGPUpdate).NLRI) > 0 {
			c.last = ts
		}
	}
	if len(c.stream) == 0 {
		c.stream = nil
	}
	if grew {
		close(c.changed)
		c.changed = make(chan struct{})
	}
}

func allFF(b []byte) bool {
	for _, x := range b {
		if x != 0xff {
			return false
		}
	}
	return true
}

// wait returns when prefix was first seen in an UPDATE.
func (c *wireCapture) wait(ctx context.Context, p netip.Prefix) (time.Time, error) {
	for {
		c.mu.Lock()
		ts, ok := c.seen[p]
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return ts, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("no UPDATE announcing %v on the wire: %w", p, ctx.Err())
		}
	}
}

// count returns how many distinct prefixes were announced so far and the
// time of the newest UPDATE.
func (c *wireCapture) count() (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen), c.last
}
