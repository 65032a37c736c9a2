package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// Proto is the protocol of a probe.
type Proto string

const (
	ICMP Proto = "icmp" // echo request, answered by the target's kernel
	TCP  Proto = "tcp"  // connect, send a nonce, expect it echoed
	UDP  Proto = "udp"  // send a nonce, expect it echoed
)

// DefaultProbeTimeout bounds one probe attempt. A denied flow costs this
// long, so it is short; probes run in parallel.
const DefaultProbeTimeout = time.Second

// Flow is one probe: From's namespace sends to To's address. From and To
// name nodes, workloads or "fabric"; To may also be a literal IP address,
// in which case nothing is started to answer TCP or UDP.
type Flow struct {
	From  string
	To    string
	Proto Proto
	Port  uint16 // TCP and UDP only
}

func (f Flow) String() string { return fmt.Sprintf("%s -> %s %s", f.From, f.To, f.service()) }

// service is "icmp" or "tcp/80": the column heading of a matrix.
func (f Flow) service() string {
	if f.Proto == ICMP {
		return string(ICMP)
	}
	return string(f.Proto) + "/" + strconv.Itoa(int(f.Port))
}

func (f Flow) validate() error {
	switch f.Proto {
	case ICMP:
		return nil
	case TCP, UDP:
		if f.Port == 0 {
			return fmt.Errorf("%s: no port", f)
		}
		return nil
	}
	return fmt.Errorf("%s: protocol %q is not icmp, tcp or udp", f, f.Proto)
}

// Ping probes To from From with one ICMP echo.
func (r *Run) Ping(ctx context.Context, from, to string) error {
	return r.Probe(ctx, Flow{From: from, To: to, Proto: ICMP})
}

// TCP connects from From to To's port and exchanges a nonce with a
// listener this call starts in To's namespace.
func (r *Run) TCP(ctx context.Context, from, to string, port uint16) error {
	return r.Probe(ctx, Flow{From: from, To: to, Proto: TCP, Port: port})
}

// UDP sends a nonce from From to To's port and waits for it to come back
// from a listener this call starts in To's namespace.
func (r *Run) UDP(ctx context.Context, from, to string, port uint16) error {
	return r.Probe(ctx, Flow{From: from, To: to, Proto: UDP, Port: port})
}

// Probe runs one flow with a listener of its own, with the attempts and
// timeout of the zero ProbeOptions; nil means it got through.
func (r *Run) Probe(ctx context.Context, f Flow) error {
	ls, err := r.startListeners([]Flow{f})
	if err != nil {
		return err
	}
	defer ls.Close()
	if err := r.try(ctx, f, ProbeOptions{}.withDefaults()); err != nil {
		return fmt.Errorf("%s: %w", f, err)
	}
	return nil
}

// try makes up to opts.Attempts attempts at f and returns the last error,
// or nil as soon as one gets through.
func (r *Run) try(ctx context.Context, f Flow, opts ProbeOptions) error {
	var err error
	for range opts.Attempts {
		if err = r.send(ctx, f, opts.Timeout); err == nil {
			return nil
		}
	}
	return err
}

// send makes one attempt at f; the error does not repeat the flow, which
// the caller reports anyway.
func (r *Run) send(ctx context.Context, f Flow, timeout time.Duration) error {
	if err := f.validate(); err != nil {
		return err
	}
	from, err := r.Netns(f.From)
	if err != nil {
		return err
	}
	to, err := r.Addr(f.To)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	nonce = []byte(hex.EncodeToString(nonce))
	// The socket is created inside From's namespace and stays there; the
	// whole exchange runs on that locked thread for simplicity.
	err = plumbing.RunInNetns(netnsPath(from), func() error {
		if f.Proto == ICMP {
			return icmpEcho(ctx, to, nonce)
		}
		return echoExchange(ctx, f.Proto, netip.AddrPortFrom(to, f.Port), nonce)
	})
	return err
}

// echoExchange sends nonce over TCP or UDP and expects it back.
func echoExchange(ctx context.Context, proto Proto, dst netip.AddrPort, nonce []byte) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, string(proto)+"4", dst.String())
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return err
		}
	}
	if _, err := c.Write(nonce); err != nil {
		return err
	}
	buf := make([]byte, len(nonce))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if !bytes.Equal(buf, nonce) {
		return fmt.Errorf("answer %q is not the nonce %q", buf, nonce)
	}
	return nil
}

// icmpEcho sends one echo request with nonce as payload on a raw socket
// and waits for the matching reply. A raw socket sees every ICMP packet of
// the namespace, so replies are matched by identifier, source and payload.
func icmpEcho(ctx context.Context, dst netip.Addr, nonce []byte) error {
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(dl); err != nil {
			return err
		}
	}
	id := binary.BigEndian.Uint16(nonce) // random: the nonce is
	req := make([]byte, 8+len(nonce))
	req[0] = 8 // echo request
	binary.BigEndian.PutUint16(req[4:], id)
	binary.BigEndian.PutUint16(req[6:], 1)
	copy(req[8:], nonce)
	binary.BigEndian.PutUint16(req[2:], inetChecksum(req))
	if _, err := c.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("send echo: %w", err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("no echo reply: %w", err)
		}
		src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		m := buf[:n]
		if n >= 8 && m[0] == 0 && binary.BigEndian.Uint16(m[4:]) == id && src.Unmap() == dst && bytes.Equal(m[8:], nonce) {
			return nil
		}
	}
}

// inetChecksum is the Internet checksum (RFC 1071) of b, whose checksum
// field is zero.
func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// listeners are the echo servers of a set of probes.
type listeners []io.Closer

func (ls listeners) Close() error {
	var errs []error
	for _, l := range ls {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// startListeners starts one echo server per distinct (To, protocol, port)
// of the TCP and UDP flows whose To is a node or workload.
func (r *Run) startListeners(flows []Flow) (listeners, error) {
	type key struct {
		ns    string
		proto Proto
		port  uint16
	}
	seen := map[key]bool{}
	var ls listeners
	for _, f := range flows {
		if err := f.validate(); err != nil {
			return ls, err
		}
		if f.Proto == ICMP {
			continue
		}
		if _, err := netip.ParseAddr(f.To); err == nil {
			continue
		}
		ns, err := r.Netns(f.To)
		if err != nil {
			return ls, errors.Join(err, ls.Close())
		}
		k := key{ns, f.Proto, f.Port}
		if seen[k] {
			continue
		}
		seen[k] = true
		l, err := listenEcho(ns, f.Proto, f.Port)
		if err != nil {
			return ls, errors.Join(fmt.Errorf("listener for %s: %w", f, err), ls.Close())
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// listenEcho opens a socket on all addresses of the namespace and echoes
// what it receives until closed. Probes of one test may overlap on a
// server's port (a poll's listener closing while the next one opens, a
// single probe beside a matrix), so a port in use is retried for a while
// before it is an error.
func listenEcho(ns string, proto Proto, port uint16) (io.Closer, error) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		c, err := listenEchoOnce(ns, proto, port)
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func listenEchoOnce(ns string, proto Proto, port uint16) (io.Closer, error) {
	addr := ":" + strconv.Itoa(int(port))
	var closer io.Closer
	err := plumbing.RunInNetns(netnsPath(ns), func() error {
		if proto == UDP {
			pc, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return err
			}
			go serveUDPEcho(pc)
			closer = pc
			return nil
		}
		l, err := net.Listen("tcp4", addr)
		if err != nil {
			return err
		}
		go serveTCPEcho(l)
		closer = l
		return nil
	})
	return closer, err
}

func serveUDPEcho(pc net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		_, _ = pc.WriteTo(buf[:n], from) // a lost answer is the probe's verdict
	}
}

func serveTCPEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 512)
			n, err := c.Read(buf)
			if err == nil {
				_, _ = c.Write(buf[:n]) // a lost answer is the probe's verdict
			}
		}()
	}
}
