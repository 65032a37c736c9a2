package datapath

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CaptureDirection selects frames by which way they cross the captured
// interface, seen from the workload that owns it.
type CaptureDirection int

const (
	CaptureBoth     CaptureDirection = iota
	CaptureOutgoing                  // sent by the interface's owner (from the port)
	CaptureIncoming                  // received by it (to the port)
)

// Capture limits.
const (
	MaxCaptureSnaplen = 262144 // tcpdump's default and largest
	maxFilterInsns    = 4096   // BPF_MAXINSNS: the kernel refuses longer classic programs
)

// ErrCaptureInput marks a capture refused for its options: nothing was opened.
var ErrCaptureInput = errors.New("invalid capture")

// CaptureOptions say where to capture and what.
type CaptureOptions struct {
	// Netns is the path of the network namespace Interface lives in (e.g.
	// /run/netns/web-1); "" is the caller's.
	Netns     string
	Interface string
	Direction CaptureDirection
	// Filter is a classic BPF program as `tcpdump -ddd` prints it; nil keeps
	// every frame. The kernel runs it on each frame before anything is copied.
	Filter  []unix.SockFilter
	Snaplen int // bytes kept per frame; 0: MaxCaptureSnaplen
}

// CapturedFrame is one frame read from a PacketSocket.
type CapturedFrame struct {
	Time     time.Time
	Length   int    // on the wire
	Data     []byte // the first Snaplen bytes
	Outgoing bool   // sent by the interface's owner
}

// PacketSocket is an AF_PACKET socket bound to one interface with the
// capture's filter attached in the kernel.
type PacketSocket struct {
	f       *os.File
	rc      syscall.RawConn
	snaplen int
	Ifindex int
}

// Packet types (linux/if_packet.h) and the classic BPF ancillary load of
// skb->pkt_type, by which the kernel filters on direction.
const (
	packetOutgoing = 4
	skfAdPkttype   = 0xfffff000 + 4 // SKF_AD_OFF + SKF_AD_PKTTYPE
	bpfLdWAbs      = 0x20           // BPF_LD | BPF_W | BPF_ABS
	bpfJeqK        = 0x15           // BPF_JMP | BPF_JEQ | BPF_K
	bpfRetK        = 0x06           // BPF_RET | BPF_K
)

// captureProgram is the filter the kernel runs: a direction test in front
// of the user's filter (whose jumps are relative, so they need no change),
// and a snap length if there is no filter to return one.
func captureProgram(o CaptureOptions) ([]unix.SockFilter, error) {
	prog := o.Filter
	if len(prog) == 0 {
		prog = []unix.SockFilter{{Code: bpfRetK, K: uint32(o.Snaplen)}}
	}
	switch o.Direction {
	case CaptureBoth:
	case CaptureOutgoing, CaptureIncoming:
		jt, jf := uint8(1), uint8(0) // outgoing: on to the filter; else to "ret 0"
		if o.Direction == CaptureIncoming {
			jt, jf = 0, 1
		}
		prog = append([]unix.SockFilter{
			{Code: bpfLdWAbs, K: skfAdPkttype},
			{Code: bpfJeqK, Jt: jt, Jf: jf, K: packetOutgoing},
			{Code: bpfRetK, K: 0},
		}, prog...)
	default:
		return nil, fmt.Errorf("%w: direction %d", ErrCaptureInput, o.Direction)
	}
	if len(prog) > maxFilterInsns {
		return nil, fmt.Errorf("%w: the filter has %d instructions, the kernel takes at most %d", ErrCaptureInput, len(prog), maxFilterInsns)
	}
	return prog, nil
}

// OpenCapture opens a packet socket on o.Interface with the filter in the
// kernel. The socket is created with protocol 0 (it receives nothing),
// filtered, then bound: no unfiltered frame can slip in before the filter.
func OpenCapture(o CaptureOptions) (*PacketSocket, error) {
	if o.Snaplen == 0 {
		o.Snaplen = MaxCaptureSnaplen
	}
	if o.Snaplen < 0 || o.Snaplen > MaxCaptureSnaplen {
		return nil, fmt.Errorf("%w: snap length %d, want 1 to %d", ErrCaptureInput, o.Snaplen, MaxCaptureSnaplen)
	}
	prog, err := captureProgram(o)
	if err != nil {
		return nil, err
	}
	var fd, ifindex int
	err = inNetns(o.Netns, func() error {
		l, err := netlink.LinkByName(o.Interface)
		if err != nil {
			return fmt.Errorf("%w: interface %s: %v", ErrCaptureInput, o.Interface, err)
		}
		ifindex = l.Attrs().Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	fail := func(what string, err error) (*PacketSocket, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("capture on %s: %s: %w", o.Interface, what, err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		// The kernel checks the program: a bad one is the caller's.
		return fail("attach filter", fmt.Errorf("%w: the kernel refused the filter program: %v", ErrCaptureInput, err))
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return fail("PACKET_AUXDATA", err)
	}
	// A larger queue rides out bursts; the kernel counts what overflows it.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	proto := htons(unix.ETH_P_ALL)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifindex}); err != nil {
		return fail("bind", err)
	}
	f := os.NewFile(uintptr(fd), "capture-"+o.Interface)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("capture on %s: %w", o.Interface, err)
	}
	return &PacketSocket{f: f, rc: rc, snaplen: o.Snaplen, Ifindex: ifindex}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// inNetns runs fn on a locked thread in the network namespace at path (""
// runs it where the caller is). A thread that cannot be put back stays
// locked so Go retires it.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("%w: network namespace %s: %v", ErrCaptureInput, path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("leave network namespace %s: %w (thread retired)", path, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// auxdata is struct tpacket_auxdata: tp_len is the frame's length before the
// filter cut it to the snap length.
type auxdata struct {
	Status   uint32
	Len      uint32
	Snaplen  uint32
	Mac      uint16
	Net      uint16
	VlanTCI  uint16
	VlanTPID uint16
}

// Read blocks until a frame arrives, the deadline passes or the socket is
// closed. The frame's Data is a fresh slice.
func (s *PacketSocket) Read() (CapturedFrame, error) {
	buf := make([]byte, s.snaplen)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(auxdata{}))))
	var n, oobn int
	var from unix.Sockaddr
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_TRUNC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return CapturedFrame{}, fmt.Errorf("read capture: %w", err)
	}
	fr := CapturedFrame{Time: time.Now(), Length: n, Data: buf[:min(n, s.snaplen)]}
	if ll, ok := from.(*unix.SockaddrLinklayer); ok {
		fr.Outgoing = ll.Pkttype == packetOutgoing
	}
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= int(unsafe.Sizeof(auxdata{})) {
				aux := (*auxdata)(unsafe.Pointer(&m.Data[0]))
				fr.Length = max(int(aux.Len), len(fr.Data))
			}
		}
	}
	return fr, nil
}

// SetReadDeadline makes a blocked Read return os.ErrDeadlineExceeded at t.
func (s *PacketSocket) SetReadDeadline(t time.Time) error { return s.f.SetReadDeadline(t) }

// KernelDrops is the number of frames the kernel dropped since the last
// call because the socket's queue was full (PACKET_STATISTICS resets).
func (s *PacketSocket) KernelDrops() (uint64, error) {
	var st *unix.TpacketStats
	var serr error
	err := s.rc.Control(func(fd uintptr) {
		st, serr = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("capture statistics: %w", err)
	}
	return uint64(st.Drops), nil
}

// Close closes the socket; a blocked Read returns.
func (s *PacketSocket) Close() error { return s.f.Close() }
