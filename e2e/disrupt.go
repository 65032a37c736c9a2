package e2e

import (
	"context"
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

// This file holds what scenarios do to a running deployment besides
// changing intent: crash a process, migrate a workload, and look at which
// workload really answered.

// Kill sends SIGKILL to one of the run's processes ("node-1-agent",
// "controller") and waits until it is gone: a crash, with no cleanup and
// no goodbye on its streams, unlike Stop. Restart starts it again.
func (r *Run) Kill(name string) error {
	p, exited, err := r.proc(name)
	if err != nil {
		return err
	}
	if !p.Alive() {
		return fmt.Errorf("%s (pid %d) is not running", name, p.PID)
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s (pid %d): %w", name, p.PID, err)
	}
	deadline := time.Now().Add(stopGrace)
	for time.Now().Before(deadline) {
		select {
		case <-exited: // nil for processes this Run did not start: poll
			return nil
		default:
		}
		if exited == nil && !p.Alive() {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("%s (pid %d) survived SIGKILL for %s", name, p.PID, stopGrace)
}

// MoveWorkload migrates a workload to another node the way a compute
// layer moves an instance: DetachPort on the old node's agent, then
// AttachPort on the new one with the same namespace and port. It returns
// when the new node's agent has programmed the port.
func (r *Run) MoveWorkload(ctx context.Context, name, node string) error {
	w, ok := r.State().workload(name)
	if !ok {
		return fmt.Errorf("no workload %q in run %s", name, r.st.RunID)
	}
	if _, ok := r.State().node(node); !ok {
		return fmt.Errorf("no node %q in run %s", node, r.st.RunID)
	}
	if err := r.DetachWorkload(ctx, name); err != nil {
		return err
	}
	if err := r.AttachWorkload(ctx, Workload{Name: name, Node: node, Port: w.Port}); err != nil {
		return err
	}
	return r.record(func(st *State) {
		for i := range st.Workloads {
			if st.Workloads[i].Name == name {
				st.Workloads[i].Node = node
			}
		}
	})
}

// RxPackets is the kernel's count of packets received on an interface of
// a node's or workload's namespace: what reached it, whatever the sockets
// made of it.
func (r *Run) RxPackets(name, ifName string) (uint64, error) {
	ns, err := r.Netns(name)
	if err != nil {
		return 0, err
	}
	h, nsh, err := handleAt(ns)
	if err != nil {
		return 0, err
	}
	defer nsh.Close()
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		return 0, fmt.Errorf("%s in %s: %w", ifName, name, err)
	}
	if l.Attrs().Statistics == nil {
		return 0, fmt.Errorf("%s in %s: no statistics", ifName, name)
	}
	return l.Attrs().Statistics.RxPackets, nil
}

// ServeNames starts, in each named workload, a TCP and a UDP server on
// port that answer with the workload's name: where two workloads share an
// address (in different VPCs) the answer says which one a packet reached.
func (r *Run) ServeNames(port uint16, names ...string) (io.Closer, error) {
	var ls listeners
	for _, name := range names {
		ns, err := r.Netns(name)
		if err != nil {
			return nil, errors.Join(err, ls.Close())
		}
		err = plumbing.RunInNetns(netnsPath(ns), func() error {
			addr := ":" + strconv.Itoa(int(port))
			l, err := net.Listen("tcp4", addr)
			if err != nil {
				return err
			}
			ls = append(ls, l)
			go serveTCPName(l, name)
			pc, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return err
			}
			ls = append(ls, pc)
			go serveUDPName(pc, name)
			return nil
		})
		if err != nil {
			return nil, errors.Join(fmt.Errorf("name server in %s: %w", name, err), ls.Close())
		}
	}
	return ls, nil
}

func serveTCPName(l net.Listener, name string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed
		}
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_, _ = c.Write([]byte(name)) // a lost answer is the asker's verdict
		c.Close()
	}
}

func serveUDPName(pc net.PacketConn, name string) {
	buf := make([]byte, 64)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		_, _ = pc.WriteTo([]byte(name), from)
	}
}

// Whoami asks, from From's namespace, the name server (ServeNames) at
// to's address which workload it is. to is a node, a workload or an IP.
func (r *Run) Whoami(ctx context.Context, from, to string, proto Proto, port uint16) (string, error) {
	ns, err := r.Netns(from)
	if err != nil {
		return "", err
	}
	dst, err := r.Addr(to)
	if err != nil {
		return "", err
	}
	if proto != TCP && proto != UDP {
		return "", fmt.Errorf("whoami over %s: only tcp and udp carry an answer", proto)
	}
	ctx, cancel := context.WithTimeout(ctx, DefaultProbeTimeout)
	defer cancel()
	var answer []byte
	err = plumbing.RunInNetns(netnsPath(ns), func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, string(proto)+"4", netip.AddrPortFrom(dst, port).String())
		if err != nil {
			return err
		}
		defer c.Close()
		dl, _ := ctx.Deadline()
		if err := c.SetDeadline(dl); err != nil {
			return err
		}
		if proto == UDP {
			if _, err := c.Write([]byte("?")); err != nil {
				return err
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			answer = buf[:n]
			return err
		}
		answer, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("whoami %s -> %s %s/%d: %w", from, to, proto, port, err)
	}
	return string(answer), nil
}
