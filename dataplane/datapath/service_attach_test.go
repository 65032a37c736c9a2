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
// sockets, the programs attached to real veths) to an east-west VIP in its
// own subnet (reached through proxy ARP) over three backend namespaces
// that answer their own name, on two nodes with a data path each (the
// client's node and a second one behind VXLAN: the reply of a remote
// backend is reverse-translated in meridian_from_overlay); each backend
// gets some connections, each connection the backend lb/maglev names for
// its tuple. A fourth backend is added: every open connection keeps its
// backend (some of them would now hash to another one), and new
// connections reach the fourth too.
func TestServiceRealTCP(t *testing.T) {
	bpffs := privateBPFFS(t)
	inNewNetns(t, func(node netns.NsHandle) {
		node2 := newNetns(t, node)
		ip1, ip2 := ip("192.0.2.1"), ip("192.0.2.2")
		vethBetween(t, node, "svu1", ip1, node2, "svu2", ip2)
		client := newWorkload(t, node, "slc", ip("10.0.1.10"), ip("10.0.1.1"))
		type be struct {
			name   string
			w      *workload
			b      Backend
			remote bool // on node 2
		}
		var bes []be
		for i, a := range []string{"10.0.1.21", "10.0.2.23", "10.0.1.22", "10.0.2.24"} {
			addr := ip(a)
			gw := ip("10.0.1.1")
			if strings.HasPrefix(a, "10.0.2.") {
				gw = ip("10.0.2.1")
			}
			name := fmt.Sprintf("backend%d", i+1)
			remote := i%2 == 1 // backends 2 and 4 on node 2
			var w *workload
			if remote {
				inNs(t, node2, node, func() { w = newWorkload(t, node2, fmt.Sprintf("sb%d", i+1), addr, gw) })
			} else {
				w = newWorkload(t, node, fmt.Sprintf("sb%d", i+1), addr, gw)
			}
			nameServer(t, w.ns, node, name, addr, 8080)
			bes = append(bes, be{name: name, w: w, remote: remote,
				b: Backend{ID: uint32(i + 1), Address: addr, Port: 8080, Weight: 1, Healthy: true}})
		}

		// One data path per node; node 2 knows nothing of the service:
		// east-west translation happens at the client's port only.
		open := func(name string, ns netns.NsHandle, underlay netip.Addr, local []*workload, remote []*workload, peer netip.Addr) *Datapath {
			d, err := Open(filepath.Join(bpffs, name))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				d.Unpin()
				d.Close()
			})
			inNs(t, ns, node, func() {
				vx := addVXLAN(t, "sv"+name, underlay)
				if err := d.Attach(HookOverlay, vx.Attrs().Index); err != nil {
					t.Fatal(err)
				}
				for _, w := range local {
					if err := d.Attach(HookPort, w.host.Attrs().Index); err != nil {
						t.Fatal(err)
					}
				}
			})
			subnetOf := func(a netip.Addr) uint32 { return uint32(a.As4()[2]) }
			var policies []fw.SecurityGroupPolicy
			for _, w := range local {
				id := uint32(w.address.As4()[3]) // unique in this test
				p := Port{ID: id, Ifindex: w.host.Attrs().Index, MAC: w.mac, IPs: []netip.Addr{w.address}, VPC: 100, Subnet: subnetOf(w.address), SGPolicy: id}
				if err := d.UpsertPort(p); err != nil {
					t.Fatal(err)
				}
				if err := d.UpsertRoute(Route{VPC: 100, Prefix: netip.PrefixFrom(w.address, 32), LocalPort: id}); err != nil {
					t.Fatal(err)
				}
				policies = append(policies, allowAll(id))
			}
			for _, w := range remote {
				if err := d.UpsertRoute(Route{VPC: 100, Prefix: netip.PrefixFrom(w.address, 32), RemoteNode: peer, Subnet: subnetOf(w.address)}); err != nil {
					t.Fatal(err)
				}
			}
			for id, gw := range map[uint32]netip.Addr{1: ip("10.0.1.1"), 2: ip("10.0.2.1")} {
				if err := d.UpsertSubnet(Subnet{ID: id, Gateway: gw, RouterMAC: routerMAC}); err != nil {
					t.Fatal(err)
				}
			}
			compileAndApply(t, d, 100, policies...)
			if err := d.UpsertVPCPrefix(100, netip.MustParsePrefix("10.0.0.0/16")); err != nil {
				t.Fatal(err)
			}
			return d
		}
		var on1, on2 []*workload
		on1 = append(on1, client)
		for _, b := range bes {
			if b.remote {
				on2 = append(on2, b.w)
			} else {
				on1 = append(on1, b.w)
			}
		}
		d := open("n1", node, ip1, on1, on2, ip2)
		d2 := open("n2", node2, ip2, on2, on1, ip1)
		f, f2 := &fixture{d: d}, &fixture{d: d2}
		drops := func() string { return fmt.Sprintf("node 1 %v, node 2 %v", f.drops(t), f2.drops(t)) }

		// The VIP is in the client's subnet: the client ARPs for it and
		// the proxy answers.
		vip := ip("10.0.1.100")
		svc := Service{ID: 1, VPC: 100, VIP: vip, Port: 80, Protocol: fw.ProtoTCP, Internal: true,
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
					c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(vip, 80).String(), 3*time.Second)
					if err != nil {
						t.Fatalf("connect to the VIP: %v (drops %s)", err, drops())
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
					t.Fatalf("connection %d (%v): %v (drops %s)", i, c.LocalAddr(), err, drops())
				}
				if c.RemoteAddr().String() != "10.0.1.100:80" {
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
		for _, f := range []*fixture{f, f2} {
			for k, n := range f.drops(t) {
				if DropReason(k.Reason) != DropNotIPv4 { // the workloads' IPv6 neighbour discovery
					t.Fatalf("%d packets dropped at port %d: %v (%s)", n, k.Port, DropReason(k.Reason), drops())
				}
			}
		}
	})
}
