package ovn

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// natObjects: one VPC, one subnet, ports 1 and 2 in a group that allows
// everything, all on gateway node gw1; port 1 has elastic IP 172.16.0.50
// when eip is set; NAT gateway 3 translates the subnet to 172.16.0.60 and
// maps 172.16.0.60:8080 to port 2's port 80.
func natObjects(eip bool) map[string]*agentv1.Object {
	port := func(id uint32, ip string) *agentv1.Port {
		return &agentv1.Port{Id: id, VpcId: 1, SubnetId: 11, Mac: "02:00:00:00:00:0" + itoa(id), Ips: []string{ip},
			Node: "gw1", SecurityGroupIds: []uint32{21}, SourceDestCheck: true}
	}
	objs := withOutside(objects(
		&agentv1.Vpc{Id: 1, Cidrs: []string{"10.0.0.0/16"}},
		&agentv1.Subnet{Id: 11, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450},
		port(1, "10.0.1.10"), port(2, "10.0.1.11"),
		&agentv1.SecurityGroup{Id: 21, VpcId: 1, Rules: []*agentv1.Rule{rule(1, true, true, 0), rule(2, true, false, 0)}},
	),
		&agentv1.Gateway{Node: "gw1", UnderlayIp: "127.0.0.1"},
		&agentv1.NatGateway{Id: 3, VpcId: 1, Addresses: []string{"172.16.0.60"}, SubnetIds: []uint32{11},
			SnatCidrs: []string{"10.0.1.0/24"}, OwnerNode: "gw1", PortMappings: []*agentv1.PortMapping{
				{Protocol: 6, Address: "172.16.0.60", PublicPort: 8080, PortId: 2, PrivateIp: "10.0.1.11", PrivatePort: 80}}},
	)
	if eip {
		withOutside(objs, &agentv1.ElasticIp{Id: 1, Address: "172.16.0.50", VpcId: 1, PortId: 1, PrivateIp: "10.0.1.10"})
	}
	return objs
}

// TestOutsideDataPathOnRealOVN runs the rendering on a real chassis that
// is also the gateway node: ovs-vswitchd (userspace datapath) and
// ovn-controller, with br-ex mapped to the external network's physnet and
// a "fabric" namespace (172.16.0.1, the next hop) on br-ex. The fabric
// reaches a port through its elastic IP and the port sees the fabric's real
// address; ports leave through the NAT gateway's address unless they have
// an elastic IP; a port mapping reaches port 2; disassociating the elastic
// IP cuts it off. Hairpin works as documented in renderOutside.
func TestOutsideDataPathOnRealOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	hv := stack.StartChassis("gw1")
	hv.VsCtl("--may-exist", "add-br", "br-ex", "--", "set", "Bridge", "br-ex", "datapath_type=netdev")
	hv.VsCtl("set", "Open_vSwitch", ".", "external_ids:ovn-bridge-mappings="+DefaultPhysicalNetwork+":br-ex")
	fabric := plugFabric(t, hv, "02:aa:00:00:00:01", "172.16.0.1/24")
	r := connect(t, stack.NB.Endpoint(), nil)
	syncExt(t, r, natObjects(true))
	w1 := hv.Plug(LogicalPortName(1), "02:00:00:00:00:01", "10.0.1.10/24", "10.0.1.1")
	w2 := hv.Plug(LogicalPortName(2), "02:00:00:00:00:02", "10.0.1.11/24", "10.0.1.1")
	hv.WaitUp(LogicalPortName(1))
	hv.WaitUp(LogicalPortName(2))
	eventually(t, "gw1 holds the gateway port", func() bool {
		ch := stack.SBCtl("--bare", "--columns=chassis", "find", "Port_Binding", "logical_port=cr-"+GatewayPortName(1))
		return ch != "" && ch == stack.SBCtl("--bare", "--columns=_uuid", "find", "Chassis", "name=gw1")
	})
	stack.NBCtl("--wait=hv", "sync")

	// Each server answers a connection with the address it came from.
	servePeerAddress(t, w1.Netns, "0.0.0.0:80")
	servePeerAddress(t, w2.Netns, "0.0.0.0:80")
	servePeerAddress(t, fabric, "0.0.0.0:9000")

	t.Run("the fabric reaches port 1 through its elastic IP, which sees the fabric's address", func(t *testing.T) {
		expectPing(t, fabric, "172.16.0.50", true)
		expectPeer(t, fabric, "172.16.0.50:80", "172.16.0.1")
	})
	t.Run("an ICMP error from port 1 reaches the fabric translated", func(t *testing.T) {
		// Nothing listens on UDP 9999 behind the elastic IP: port 1's
		// port unreachable comes back, and the fabric's socket only sees
		// it if its inner header names the elastic IP again.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := udpProbe(fabric, "172.16.0.50:9999")
			if errors.Is(err, syscall.ECONNREFUSED) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("UDP to a closed port behind the elastic IP: %v, want connection refused", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	t.Run("port 1 leaves with its elastic IP, port 2 with the NAT gateway's address", func(t *testing.T) {
		expectPeer(t, w1.Netns, "172.16.0.1:9000", "172.16.0.50")
		expectPeer(t, w2.Netns, "172.16.0.1:9000", "172.16.0.60")
	})
	t.Run("a port mapping reaches port 2", func(t *testing.T) {
		expectPeer(t, fabric, "172.16.0.60:8080", "172.16.0.1")
	})
	t.Run("hairpin: ports reach elastic IPs of their own VPC", func(t *testing.T) {
		expectPeer(t, w2.Netns, "172.16.0.50:80", "172.16.0.60") // from its NAT gateway's address
		expectPeer(t, w1.Netns, "172.16.0.50:80", "172.16.0.50") // its own, from itself
		// A port with an elastic IP does not reach its VPC's port mappings:
		// the documented difference (see renderOutside), pinned here so a
		// fix shows up.
		if got, err := peerSeen(w1.Netns, "172.16.0.60:8080"); err == nil {
			t.Errorf("port 1 reached the port mapping (seen from %q): update the documented differences", got)
		}
	})
	t.Run("disassociating the elastic IP cuts it off; port 1 leaves through the NAT gateway", func(t *testing.T) {
		syncExt(t, r, natObjects(false))
		stack.NBCtl("--wait=hv", "sync")
		expectPing(t, fabric, "172.16.0.50", false)
		expectPeer(t, w1.Netns, "172.16.0.1:9000", "172.16.0.60")
	})
}

// plugFabric creates a namespace on the chassis' br-ex, standing for the
// fabric's router on the external network, and returns its name. It is
// removed in t.Cleanup (before the chassis stops).
func plugFabric(t *testing.T, hv *ovntest.Chassis, mac, ipPrefix string) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	suffix := hex.EncodeToString(b)
	ns, host := "mer-fab-"+suffix, "mer-f-"+suffix
	sh := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
		}
	}
	sh("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() })
	sh("ip", "-n", ns, "link", "set", "eth0", "address", mac)
	sh("ip", "-n", ns, "addr", "add", ipPrefix, "dev", "eth0")
	sh("ip", "-n", ns, "link", "set", "eth0", "up")
	sh("ip", "-n", ns, "link", "set", "lo", "up")
	sh("ip", "link", "set", host, "up")
	hv.VsCtl("add-port", "br-ex", host)
	return ns
}

// servePeerAddress listens on addr in namespace ns and answers every
// connection with the IP address it came from, until the test ends.
func servePeerAddress(t *testing.T, ns, addr string) {
	t.Helper()
	var l net.Listener
	err := plumbing.RunInNetns("/run/netns/"+ns, func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_, _ = io.WriteString(c, host)
			c.Close()
		}
	}()
}

// peerSeen connects from namespace ns to addr and returns what the server
// says (the address the connection reached it from).
func peerSeen(ns, addr string) (string, error) {
	var got string
	err := plumbing.RunInNetns("/run/netns/"+ns, func() error {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

// expectPeer waits until a connection from ns to addr is seen from want:
// the flows of a change reach the userspace datapath a moment after
// --wait=hv returns.
func expectPeer(t *testing.T, ns, addr, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := peerSeen(ns, addr)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("connection from %s to %s: seen from %q (%v), want %q", ns, addr, got, err, want)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func expectPing(t *testing.T, ns, dst string, ok bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", dst).CombinedOutput()
		if (err == nil) == ok {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("ping from %s to %s: reply %v, want %v\n%s", ns, dst, err == nil, ok, strings.TrimSpace(string(out)))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// udpProbe sends a datagram from namespace ns to addr and waits up to a
// second for an answer: a connected UDP socket reports an ICMP port
// unreachable about it as ECONNREFUSED.
func udpProbe(ns, addr string) error {
	return plumbing.RunInNetns("/run/netns/"+ns, func() error {
		c, err := net.DialTimeout("udp4", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
			return err
		}
		if _, err := c.Write([]byte("probe")); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 16))
		return err
	})
}
