package ovn

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// lbDataPathObjects: one VPC; client port 1 on subnet 11, backend ports
// 2-4 on subnet 12, all on node n1 in a group that allows everything; an
// internal TCP listener 10.0.1.100:80 (on the client's subnet) over the
// backends' port 8080, checked every second, offline after 2 failures.
func lbDataPathObjects() map[string]*agentv1.Object {
	port := func(id, subnet uint32, ip string) *agentv1.Port {
		return &agentv1.Port{Id: id, VpcId: 1, SubnetId: subnet, Mac: "02:00:00:00:00:0" + itoa(id), Ips: []string{ip},
			Node: "n1", SecurityGroupIds: []uint32{21}, SourceDestCheck: true}
	}
	var backends []*agentv1.LbBackend
	for id := uint32(2); id <= 4; id++ {
		backends = append(backends, &agentv1.LbBackend{Id: id, Address: "10.0.2.1" + itoa(id), Port: 8080, Weight: 1,
			PortId: id, Node: "n1", Healthy: true})
	}
	return withOutside(objects(
		&agentv1.Vpc{Id: 1, Cidrs: []string{"10.0.0.0/16"}},
		&agentv1.Subnet{Id: 11, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450},
		&agentv1.Subnet{Id: 12, VpcId: 1, Cidr: "10.0.2.0/24", GatewayIp: "10.0.2.1", Mtu: 1450},
		port(1, 11, "10.0.1.10"), port(2, 12, "10.0.2.12"), port(3, 12, "10.0.2.13"), port(4, 12, "10.0.2.14"),
		&agentv1.SecurityGroup{Id: 21, VpcId: 1, Rules: []*agentv1.Rule{rule(1, true, true, 0), rule(2, true, false, 0)}},
	), &agentv1.LbService{Id: 7, VpcId: 1, Vni: 1, Name: "web/http", Vip: "10.0.1.100", Port: 80, Protocol: 6, Internal: true,
		Backends: backends, HealthCheck: &agentv1.HealthCheck{Protocol: "tcp", IntervalMs: 1000, TimeoutMs: 1000,
			HealthyThreshold: 1, UnhealthyThreshold: 2}})
}

// TestLoadBalancerDataPathOnRealOVN runs an internal listener on a real
// chassis (ovs-vswitchd on the userspace datapath, ovn-controller): a
// client namespace reaches the VIP, its connections spread over the three
// backend namespaces, ovn-controller's health checks find them online, a
// backend whose listener closes goes offline in Service_Monitor and gets
// no new connection, and comes back when it listens again. The backends'
// subnet keeps its gateway: the monitor source is not its address.
func TestLoadBalancerDataPathOnRealOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	hv := stack.StartChassis("n1")
	r := connect(t, stack.NB.Endpoint(), nil)
	mustSync(t, r, lbDataPathObjects())
	client := hv.Plug(LogicalPortName(1), "02:00:00:00:00:01", "10.0.1.10/24", "10.0.1.1")
	backends := map[string]*ovntest.Workload{}
	for id := uint32(2); id <= 4; id++ {
		backends["10.0.2.1"+itoa(id)] = hv.Plug(LogicalPortName(id), "02:00:00:00:00:0"+itoa(id), "10.0.2.1"+itoa(id)+"/24", "10.0.2.1")
	}
	for id := uint32(1); id <= 4; id++ {
		hv.WaitUp(LogicalPortName(id))
	}
	stack.NBCtl("--wait=hv", "sync")
	servers := map[string]*nameServer{}
	for addr, w := range backends {
		servers[addr] = serveName(t, w.Netns, "0.0.0.0:8080", addr)
	}

	monitors := func() map[string]string {
		out := map[string]string{}
		for _, line := range strings.Split(stack.SBCtl("--bare", "--format=csv", "--no-headings", "--columns=ip,status", "list", "Service_Monitor"), "\n") {
			if ip, st, ok := strings.Cut(strings.TrimSpace(line), ","); ok {
				out[ip] = st
			}
		}
		return out
	}
	waitMonitors := func(t *testing.T, want map[string]string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			got := monitors()
			if mapsEqualStr(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("Service_Monitor status %v, want %v", got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// spread opens n connections to the VIP and counts them by backend.
	spread := func(t *testing.T, n int) map[string]int {
		t.Helper()
		return spreadOver(t, client.Netns, "10.0.1.100:80", "10.0.1.10", n)
	}

	t.Run("the health checks find every backend online", func(t *testing.T) {
		waitMonitors(t, map[string]string{"10.0.2.12": "online", "10.0.2.13": "online", "10.0.2.14": "online"})
	})
	t.Run("connections to the VIP spread over the three backends", func(t *testing.T) {
		// The first connection after the flows land may be lost in the
		// datapath's revalidation: wait for one to work.
		eventuallyConnects(t, client.Netns, "10.0.1.100:80")
		got := spread(t, 30)
		t.Logf("30 connections: %v", got)
		for addr := range backends {
			if got[addr] == 0 {
				t.Errorf("backend %s got none of 30 connections: %v", addr, got)
			}
		}
	})
	t.Run("a draining backend keeps its connections and gets no new one", func(t *testing.T) {
		held, greeting, err := dialHeld(client.Netns, "10.0.1.100:80")
		if err != nil {
			t.Fatalf("connection to the VIP: %v", err)
		}
		defer held.Close()
		drained, _, _ := strings.Cut(greeting, " ")
		objs := lbDataPathObjects()
		for _, b := range objs["lb/7"].GetLbService().GetBackends() {
			b.Draining = b.GetAddress() == drained
		}
		mustSync(t, r, objs)
		stack.NBCtl("--wait=hv", "sync")
		waitNoneTo(t, client.Netns, "10.0.1.100:80", drained)
		if got := spread(t, 30); got[drained] != 0 {
			t.Errorf("draining %s still got new connections: %v", drained, got)
		}
		// The held connection still reaches the draining backend.
		if err := held.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(held, "still there?\n"); err != nil {
			t.Fatalf("write on the held connection: %v", err)
		}
		echo, err := bufio.NewReader(held).ReadString('\n')
		if err != nil || echo != "still there?\n" {
			t.Errorf("the held connection to draining %s: %q, %v", drained, echo, err)
		}
		mustSync(t, r, lbDataPathObjects())
		stack.NBCtl("--wait=hv", "sync")
	})
	t.Run("the backends' subnet keeps its gateway", func(t *testing.T) {
		// A backend that forgot its gateway's MAC asks again: the answer
		// must still be the router's, so its routed traffic flows.
		w := backends["10.0.2.12"]
		if out, err := w.Exec("ip", "neigh", "flush", "all"); err != nil {
			t.Fatalf("neigh flush: %v: %s", err, out)
		}
		expectPing(t, w.Netns, "10.0.1.10", true)
		if out, _ := w.Exec("ip", "neigh", "show", "10.0.2.1"); !strings.Contains(out, routerMAC(12)) {
			t.Errorf("the backend resolved its gateway to %q, want the router port's %s", strings.TrimSpace(out), routerMAC(12))
		}
	})
	t.Run("a backend that stops listening goes offline and gets no new connection", func(t *testing.T) {
		start := time.Now()
		servers["10.0.2.14"].close()
		waitMonitors(t, map[string]string{"10.0.2.12": "online", "10.0.2.13": "online", "10.0.2.14": "offline"})
		t.Logf("offline in Service_Monitor %v after the listener closed", time.Since(start).Round(100*time.Millisecond))
		// northd then takes it out of the flows; the datapath follows.
		stack.NBCtl("--wait=hv", "sync")
		waitBackendGone(t, client.Netns, "10.0.1.100:80")
		got := spread(t, 30)
		t.Logf("30 connections: %v", got)
		if got["10.0.2.14"] != 0 || got["10.0.2.12"] == 0 || got["10.0.2.13"] == 0 {
			t.Errorf("after 10.0.2.14 went offline: %v, want only the other two", got)
		}
	})
	t.Run("it comes back when it listens again", func(t *testing.T) {
		servers["10.0.2.14"] = serveName(t, backends["10.0.2.14"].Netns, "0.0.0.0:8080", "10.0.2.14")
		waitMonitors(t, map[string]string{"10.0.2.12": "online", "10.0.2.13": "online", "10.0.2.14": "online"})
		stack.NBCtl("--wait=hv", "sync")
		deadline := time.Now().Add(10 * time.Second)
		for spread(t, 10)["10.0.2.14"] == 0 {
			if time.Now().After(deadline) {
				t.Fatal("10.0.2.14 back online but gets no connection")
			}
		}
	})
}

func mapsEqualStr(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// spreadOver opens n connections from namespace ns to addr and counts
// them by the server that answered, checking each saw the client as
// client. A connection that times out (a loaded machine) is retried, up
// to 3 in all; one refused (the datapath sent it to a server that does
// not listen) is a failure.
func spreadOver(t *testing.T, ns, addr, client string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	retries := 0
	for sum(got) < n {
		name, peer, err := nameSeen(ns, addr)
		if errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connection %d to %s refused: it went to a backend that does not listen (so far %v)", sum(got)+1, addr, got)
		}
		if err != nil {
			if retries++; retries > 3 {
				t.Fatalf("connection to %s: %v (so far %v)", addr, err, got)
			}
			continue
		}
		if peer != client {
			t.Fatalf("backend %s saw the client as %q, want %s", name, peer, client)
		}
		got[name]++
	}
	return got
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// nameServer answers every connection with its name and the client's address.
type nameServer struct {
	l    net.Listener
	once sync.Once
}

func (s *nameServer) close() { s.once.Do(func() { s.l.Close() }) }

// serveName listens on addr in namespace ns and answers every connection
// with name and the address the connection came from ("name peer"), until
// closed or the test ends.
func serveName(t *testing.T, ns, addr, name string) *nameServer {
	t.Helper()
	s := &nameServer{}
	err := plumbing.RunInNetns("/run/netns/"+ns, func() error {
		var err error
		s.l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(s.close)
	go func() {
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			go func() {
				// The greeting, then an echo of every line until the
				// client closes: a held connection shows it still reaches
				// this server.
				defer c.Close()
				peer, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				if _, err := io.WriteString(c, name+" "+peer+"\n"); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return s
}

// dialHeld connects from namespace ns to addr and returns the connection
// with the server's greeting ("name peer").
func dialHeld(ns, addr string) (net.Conn, string, error) {
	var c net.Conn
	err := plumbing.RunInNetns("/run/netns/"+ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, time.Second)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		c.Close()
		return nil, "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", err
	}
	return c, strings.TrimSuffix(line, "\n"), nil
}

// nameSeen connects from namespace ns to addr and returns the name of the
// server that answered and the client address it saw.
func nameSeen(ns, addr string) (name, peer string, err error) {
	c, got, err := dialHeld(ns, addr)
	if err != nil {
		return "", "", err
	}
	c.Close()
	name, peer, _ = strings.Cut(got, " ")
	return name, peer, nil
}

func eventuallyConnects(t *testing.T, ns, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := nameSeen(ns, addr)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection from %s to %s: %v", ns, addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitNoneTo waits until 10 connections in a row from ns to addr reach
// another server than name.
func waitNoneTo(t *testing.T, ns, addr, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for ok := 0; ok < 10; {
		got, _, err := nameSeen(ns, addr)
		if err == nil && got != name {
			ok++
			continue
		}
		ok = 0
		if time.Now().After(deadline) {
			t.Fatalf("connections from %s to %s still reach %s 10 s after it left the pool", ns, addr, name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitBackendGone waits until connections to addr stop failing: a
// connection the datapath still sends to the closed backend is refused.
func waitBackendGone(t *testing.T, ns, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	ok := 0
	for ok < 10 {
		if _, _, err := nameSeen(ns, addr); err == nil {
			ok++
			continue
		}
		ok = 0
		if time.Now().After(deadline) {
			t.Fatalf("connections to %s still fail 10 s after the backend went offline", addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNorthSouthLoadBalancerDataPathOnRealOVN: a north-south listener on a
// real chassis that is also the gateway node (br-ex on the external
// network's physnet, a fabric namespace on it as in
// TestOutsideDataPathOnRealOVN). The fabric reaches the public VIP, its
// connections spread over both backends, and the backends see the
// fabric's own address (no SNAT on the way in).
func TestNorthSouthLoadBalancerDataPathOnRealOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	hv := stack.StartChassis("gw1")
	hv.VsCtl("--may-exist", "add-br", "br-ex", "--", "set", "Bridge", "br-ex", "datapath_type=netdev")
	hv.VsCtl("set", "Open_vSwitch", ".", "external_ids:ovn-bridge-mappings="+DefaultPhysicalNetwork+":br-ex")
	fabric := plugFabric(t, hv, "02:aa:00:00:00:01", "172.16.0.1/24")
	port := func(id uint32, ip string) *agentv1.Port {
		return &agentv1.Port{Id: id, VpcId: 1, SubnetId: 11, Mac: "02:00:00:00:00:0" + itoa(id), Ips: []string{ip},
			Node: "gw1", SecurityGroupIds: []uint32{21}, SourceDestCheck: true}
	}
	objs := withOutside(objects(
		&agentv1.Vpc{Id: 1, Cidrs: []string{"10.0.0.0/16"}},
		&agentv1.Subnet{Id: 11, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450},
		port(1, "10.0.1.10"), port(2, "10.0.1.11"),
		&agentv1.SecurityGroup{Id: 21, VpcId: 1, Rules: []*agentv1.Rule{rule(1, true, true, 0), rule(2, true, false, 0)}},
	), &agentv1.Gateway{Node: "gw1", UnderlayIp: "127.0.0.1"},
		&agentv1.LbService{Id: 9, VpcId: 1, Vni: 1, Name: "pub/https", Vip: "172.16.0.80", Port: 443, Protocol: 6,
			Backends: []*agentv1.LbBackend{
				{Id: 1, Address: "10.0.1.10", Port: 8443, Weight: 1, PortId: 1, Node: "gw1", Healthy: true},
				{Id: 2, Address: "10.0.1.11", Port: 8443, Weight: 1, PortId: 2, Node: "gw1", Healthy: true},
			}, HealthCheck: &agentv1.HealthCheck{Protocol: "tcp", IntervalMs: 1000}})
	r := connect(t, stack.NB.Endpoint(), nil)
	syncExt(t, r, objs)
	w1 := hv.Plug(LogicalPortName(1), "02:00:00:00:00:01", "10.0.1.10/24", "10.0.1.1")
	w2 := hv.Plug(LogicalPortName(2), "02:00:00:00:00:02", "10.0.1.11/24", "10.0.1.1")
	hv.WaitUp(LogicalPortName(1))
	hv.WaitUp(LogicalPortName(2))
	eventually(t, "gw1 holds the gateway port", func() bool {
		ch := stack.SBCtl("--bare", "--columns=chassis", "find", "Port_Binding", "logical_port=cr-"+GatewayPortName(1))
		return ch != "" && ch == stack.SBCtl("--bare", "--columns=_uuid", "find", "Chassis", "name=gw1")
	})
	stack.NBCtl("--wait=hv", "sync")
	serveName(t, w1.Netns, "0.0.0.0:8443", "10.0.1.10")
	serveName(t, w2.Netns, "0.0.0.0:8443", "10.0.1.11")
	t.Run("the health checks find both backends online", func(t *testing.T) {
		eventually(t, "both monitors online", func() bool {
			return stack.SBCtl("--bare", "--columns=status", "list", "Service_Monitor") == "online\n\nonline"
		})
	})
	t.Run("the fabric's connections spread over both backends, which see its address", func(t *testing.T) {
		eventuallyConnects(t, fabric, "172.16.0.80:443")
		got := spreadOver(t, fabric, "172.16.0.80:443", "172.16.0.1", 30)
		t.Logf("30 connections: %v", got)
		if got["10.0.1.10"] == 0 || got["10.0.1.11"] == 0 {
			t.Errorf("connections did not spread over both backends: %v", got)
		}
	})
}
