package datapath

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/meridian-sdn/meridian/fw"
)

// nameServer listens on addr:port inside ns and answers every line a
// client sends with name: the client learns which backend it reached.
func nameServer(t *testing.T, ns, node netns.NsHandle, name string, addr netip.Addr, port uint16) {
	t.Helper()
	var ln net.Listener
	inNs(t, ns, node, func() {
		var err error
		if ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, port).String()); err != nil {
			t.Fatalf("backend %s: listen: %v", name, err)
		}
	})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by the cleanup
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s\n", name); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// ask sends a line on c and returns the backend's name.
func ask(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, "who\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestServiceRealTCP: a client namespace opens 50 TCP connections (real
// sockets, the programs attached to real veths) to an east-west VIP over
// three backend namespaces that answer their own name; each backend gets
// some, each connection the backend lb/maglev names for its tuple. A
// fourth backend is added: every open connection keeps its backend (some
// of them would now hash to another one), and new connections reach the
// fourth too.
func TestServiceRealTCP(t *testing.T) {
	pin := filepath.Join(privateBPFFS(t), "meridian", "svc")
	inNewNetns(t, func(node netns.NsHandle) {
		client := newWorkload(t, node, "slc", ip("10.0.1.10"), ip("10.0.1.1"))
		type be struct {
			name string
			w    *workload
			b    Backend
		}
		var bes []be
		for i, a := range []string{"10.0.1.21", "10.0.1.22", "10.0.2.23", "10.0.2.24"} {
			addr := ip(a)
			gw := ip("10.0.1.1")
			if strings.HasPrefix(a, "10.0.2.") {
				gw = ip("10.0.2.1")
			}
			name := fmt.Sprintf("backend%d", i+1)
			w := newWorkload(t, node, fmt.Sprintf("sb%d", i+1), addr, gw)
			nameServer(t, w.ns, node, name, addr, 8080)
			bes = append(bes, be{name: name, w: w, b: Backend{ID: uint32(i + 1), Address: addr, Port: 8080, Weight: 1, Healthy: true}})
		}

		d, err := Open(pin)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			d.Unpin()
			d.Close()
		})
		f := &fixture{d: d}
		ws := []*workload{client}
		for _, b := range bes {
			ws = append(ws, b.w)
		}
		var policies []fw.SecurityGroupPolicy
		for i, w := range ws {
			id := uint32(i + 1)
			subnet := uint32(1)
			if w.address.As4()[2] == 2 {
				subnet = 2
			}
			if err := d.Attach(HookPort, w.host.Attrs().Index); err != nil {
				t.Fatal(err)
			}
			p := Port{ID: id, Ifindex: w.host.Attrs().Index, MAC: w.mac, IPs: []netip.Addr{w.address}, VPC: 100, Subnet: subnet, SGPolicy: id}
			if err := d.UpsertPort(p); err != nil {
				t.Fatal(err)
			}
			if err := d.UpsertRoute(Route{VPC: 100, Prefix: netip.PrefixFrom(w.address, 32), LocalPort: id}); err != nil {
				t.Fatal(err)
			}
			policies = append(policies, allowAll(id))
		}
		for id, gw := range map[uint32]netip.Addr{1: ip("10.0.1.1"), 2: ip("10.0.2.1")} {
			if err := d.UpsertSubnet(Subnet{ID: id, Gateway: gw, RouterMAC: routerMAC}); err != nil {
				t.Fatal(err)
			}
		}
		compileAndApply(t, d, 100, policies...)

		svc := Service{ID: 1, VPC: 100, VIP: svcVIP, Port: 80, Protocol: fw.ProtoTCP, Internal: true,
			Backends: []Backend{bes[0].b, bes[1].b, bes[2].b}}
		if err := d.UpsertService(svc); err != nil {
			t.Fatal(err)
		}
		nameOf := map[uint32]string{}
		for _, b := range bes {
			nameOf[b.b.ID] = b.name
		}
		dial := func(n int) []net.Conn {
			t.Helper()
			conns := make([]net.Conn, 0, n)
			inNs(t, client.ns, node, func() {
				for range n {
					c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(svcVIP, 80).String(), 3*time.Second)
					if err != nil {
						t.Fatalf("connect to the VIP: %v (drops %v)", err, f.drops(t))
					}
					t.Cleanup(func() { c.Close() })
					conns = append(conns, c)
				}
			})
			return conns
		}
		// check asks on every connection and compares with the Go choice
		// of table s (or with want, the backends they had).
		check := func(conns []net.Conn, s Service, want []string) ([]string, map[string]int) {
			t.Helper()
			got := make([]string, len(conns))
			per := map[string]int{}
			for i, c := range conns {
				name, err := ask(c)
				if err != nil {
					t.Fatalf("connection %d (%v): %v (drops %v)", i, c.LocalAddr(), err, f.drops(t))
				}
				if c.RemoteAddr().String() != "10.0.9.9:80" {
					t.Fatalf("connection %d talks to %v, not the VIP", i, c.RemoteAddr())
				}
				if want != nil && name != want[i] {
					t.Fatalf("connection %d moved from %s to %s", i, want[i], name)
				}
				if want == nil {
					local := c.LocalAddr().(*net.TCPAddr)
					if choice := nameOf[goChoice(t, s, client.address, uint16(local.Port)).ID]; name != choice {
						t.Fatalf("connection %d from port %d reached %s, lb/maglev says %s", i, local.Port, name, choice)
					}
				}
				got[i] = name
				per[name]++
			}
			return got, per
		}

		conns := dial(50)
		first, per := check(conns, svc, nil)
		t.Logf("50 connections over 3 backends: %v", per)
		for _, b := range bes[:3] {
			if per[b.name] == 0 {
				t.Fatalf("%s got none of 50 connections: %v", b.name, per)
			}
		}

		grown := svc
		grown.Backends = []Backend{bes[0].b, bes[1].b, bes[2].b, bes[3].b}
		if err := d.UpsertService(grown); err != nil {
			t.Fatal(err)
		}
		moved := 0
		for i, c := range conns {
			local := c.LocalAddr().(*net.TCPAddr)
			if nameOf[goChoice(t, grown, client.address, uint16(local.Port)).ID] != first[i] {
				moved++
			}
		}
		if moved == 0 {
			t.Fatal("no open connection hashes to another backend in the new table: stickiness untested")
		}
		check(conns, grown, first)
		t.Logf("a 4th backend added: all 50 open connections kept their backend (%d would hash elsewhere now)", moved)

		_, per = check(dial(30), grown, nil)
		if per[bes[3].name] == 0 {
			t.Fatalf("no new connection reached the added backend: %v", per)
		}
		t.Logf("30 new connections over 4 backends: %v", per)
		for k, n := range f.drops(t) {
			if DropReason(k.Reason) != DropNotIPv4 { // the workloads' IPv6 neighbour discovery
				t.Fatalf("%d packets dropped at port %d: %v", n, k.Port, DropReason(k.Reason))
			}
		}
	})
}
