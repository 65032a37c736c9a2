package health

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// Why a probe failed. The messages are the backend's last_error in the
// API, so they carry nothing that changes from probe to probe.
var (
	errRefused = errors.New("connection refused (RST)")
	errNoReply = errors.New("no SYN-ACK within the timeout")
)

// maxStatusLine bounds what an http check reads before the line ends.
const maxStatusLine = 1024

// probe runs one check of t and returns nil if it passed.
func (c *Checker) probe(ctx context.Context, t Target) error {
	s, err := openProbe(c.cfg.Netns, t, uint16(ProbePortMin+rand.IntN(ProbePortMax-ProbePortMin+1)))
	if err != nil {
		return err
	}
	defer s.close()
	// A read blocked on the socket returns when ctx ends.
	stop := context.AfterFunc(ctx, func() { s.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		s.f.SetReadDeadline(dl)
	}
	return s.run(t.Check.Protocol, t.Check.Path)
}

// probeConn is one probe's TCP connection on raw frames.
type probeConn struct {
	f       *os.File
	t       Target
	ifindex int
	sport   uint16
	dport   uint16
	iss     uint32 // our initial sequence number
	buf     []byte
}

// openProbe opens an ETH_P_ALL packet socket on t's host interface that
// sees only the backend's segments to gateway:sport. The filter is in
// place before the socket is bound, so nothing else is ever queued.
func openProbe(netnsPath string, t Target, sport uint16) (*probeConn, error) {
	s := &probeConn{t: t, sport: sport, dport: t.probePort(), iss: rand.Uint32(), buf: make([]byte, 65536+256)}
	open := func() error {
		ifi, err := net.InterfaceByName(t.HostIf)
		if err != nil {
			return fmt.Errorf("host interface %s: %w", t.HostIf, err)
		}
		s.ifindex = ifi.Index
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		filter := replyFilter(t.Address, t.Gateway, s.dport, sport)
		prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
			unix.Close(fd)
			return fmt.Errorf("attach probe filter: %w", err)
		}
		// Our own frames would not pass the filter anyway; this spares
		// the kernel a copy of each.
		unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
		// ETH_P_ALL, not ETH_P_IP: sockets of one protocol are served
		// after the tc ingress hook, which drops these replies; the
		// ETH_P_ALL taps see them before it.
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind packet socket to %s: %w", t.HostIf, err)
		}
		s.f = os.NewFile(uintptr(fd), "probe-"+t.HostIf)
		return nil
	}
	var err error
	if netnsPath == "" {
		err = open()
	} else {
		err = plumbing.RunInNetns(netnsPath, open)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (s *probeConn) close() { s.f.Close() }

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// run does the check's exchange; the socket's read deadline bounds it.
func (s *probeConn) run(protocol, path string) error {
	if err := s.send(s.iss, 0, true, false, false, nil); err != nil {
		return err
	}
	var synack *layers.TCP
	for synack == nil {
		seg, err := s.read(errNoReply)
		if err != nil {
			return err
		}
		switch {
		case seg.RST && seg.ACK && seg.Ack == s.iss+1:
			return errRefused
		case seg.SYN && seg.ACK && seg.Ack == s.iss+1:
			synack = seg
		}
	}
	if protocol == "tcp" {
		return s.send(s.iss+1, 0, false, false, true, nil)
	}

	req := []byte("GET " + path + " HTTP/1.1\r\nHost: " + hostHeader(s.t.Address, s.dport) +
		"\r\nUser-Agent: meridian-health-check\r\nConnection: close\r\n\r\n")
	next := synack.Seq + 1 // the server's next sequence number
	if err := s.send(s.iss+1, next, false, true, false, req); err != nil {
		return err
	}
	reset := func() { s.send(s.iss+1+uint32(len(req)), 0, false, false, true, nil) }
	var line []byte
	for {
		seg, err := s.read(errors.New("no HTTP status line within the timeout"))
		if err != nil {
			reset()
			return err
		}
		if seg.RST {
			return errors.New("connection reset before the HTTP status line")
		}
		// In-order data only; what overlaps what we have is trimmed.
		if off := next - seg.Seq; len(seg.Payload) > 0 && int32(off) >= 0 && int(off) < len(seg.Payload) {
			data := seg.Payload[off:]
			line = append(line, data...)
			next += uint32(len(data))
		}
		if i := bytes.Index(line, []byte("\r\n")); i >= 0 {
			reset()
			return statusOK(line[:i])
		}
		if len(line) > maxStatusLine {
			reset()
			return errors.New("HTTP status line too long")
		}
		if seg.FIN && seg.Seq+uint32(len(seg.Payload)) == next {
			reset()
			return errors.New("connection closed before the HTTP status line")
		}
	}
}

func hostHeader(a netip.Addr, port uint16) string {
	if port == 80 {
		return a.String()
	}
	return a.String() + ":" + strconv.Itoa(int(port))
}

// statusOK accepts a 2xx or 3xx status line.
func statusOK(line []byte) error {
	f := bytes.Fields(line)
	if len(f) < 2 || !bytes.HasPrefix(f[0], []byte("HTTP/")) || len(f[1]) != 3 {
		return fmt.Errorf("not an HTTP status line: %.40q", line)
	}
	code, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return fmt.Errorf("not an HTTP status line: %.40q", line)
	}
	if code < 200 || code >= 400 {
		return fmt.Errorf("HTTP status %d", code)
	}
	return nil
}

// read returns the next segment of the backend to the probe (the filter
// admits nothing else); onTimeout is the error when the deadline passes.
func (s *probeConn) read(onTimeout error) (*layers.TCP, error) {
	for {
		n, err := s.f.Read(s.buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, onTimeout
		}
		if err != nil {
			return nil, fmt.Errorf("read probe reply: %w", err)
		}
		pkt := gopacket.NewPacket(s.buf[:n], layers.LayerTypeEthernet, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
		if tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP); ok {
			return tcp, nil
		}
	}
}

// send writes one segment from gateway:sport to the backend, as the VPC
// router would: from its MAC, with full checksums.
func (s *probeConn) send(seq, ack uint32, syn, hasAck, rst bool, payload []byte) error {
	eth := &layers.Ethernet{SrcMAC: s.t.RouterMAC, DstMAC: s.t.PortMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
		Id: uint16(rand.Uint32()), SrcIP: s.t.Gateway.AsSlice(), DstIP: s.t.Address.AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.sport), DstPort: layers.TCPPort(s.dport), Seq: seq, Ack: ack,
		SYN: syn, ACK: hasAck, RST: rst, PSH: len(payload) > 0, Window: 64240}
	if syn {
		mss := make([]byte, 2)
		binary.BigEndian.PutUint16(mss, 1400)
		tcp.Options = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: mss}}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		return fmt.Errorf("probe segment: %w", err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		return fmt.Errorf("probe segment: %w", err)
	}
	rc, err := s.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("send probe: %w", err)
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: s.ifindex}
	var serr error
	werr := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), buf.Bytes(), 0, to)
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err := errors.Join(werr, serr); err != nil {
		return fmt.Errorf("send probe on %s: %w", s.t.HostIf, err)
	}
	return nil
}

// replyFilter is a classic BPF program admitting the backend's TCP
// segments from backend:dport to gateway:sport (unfragmented IPv4 on
// Ethernet), and nothing else.
func replyFilter(backend, gateway netip.Addr, dport, sport uint16) []unix.SockFilter {
	be := func(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }
	const (
		ldh  = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldb  = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldw  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		ldhx = unix.BPF_LD | unix.BPF_H | unix.BPF_IND
		msh  = unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
	)
	// Each test jumps to the final "drop" on failure: jf counts the
	// instructions between the test and it.
	prog := []unix.SockFilter{
		{Code: ldh, K: 12}, {Code: jeq, K: unix.ETH_P_IP, Jf: 14},
		{Code: ldb, K: 23}, {Code: jeq, K: unix.IPPROTO_TCP, Jf: 12},
		{Code: ldw, K: 26}, {Code: jeq, K: be(backend), Jf: 10},
		{Code: ldw, K: 30}, {Code: jeq, K: be(gateway), Jf: 8},
		{Code: ldh, K: 20}, {Code: jset, K: 0x1fff, Jt: 6}, // fragments: no TCP header to test
		{Code: msh, K: 14},
		{Code: ldhx, K: 14}, {Code: jeq, K: uint32(dport), Jf: 3},
		{Code: ldhx, K: 16}, {Code: jeq, K: uint32(sport), Jf: 1},
		{Code: ret, K: 0x40000},
		{Code: ret, K: 0},
	}
	return prog
}
