package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/bgp/frrtest"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// The outside world of issue [4], end to end: a top-of-rack router (FRR,
// zebra + bgpd) with an "internet" host behind it, two gateway nodes with
// an uplink to the router and a BGP session each, and a workload node.
//
//	inet 100.64.0.10 ── tor 100.64.0.1 (FRR, AS 65000)
//	                     ├─ 172.31.1.1 ── 172.31.1.2 ext0 gw-1 (AS 65001) ─┐
//	                     └─ 172.31.2.1 ── 172.31.2.2 ext0 gw-2 (AS 65001) ─┤ underlay (fabric bridge)
//	                                                    node-1: web-1, web-2, tiny-1
//
// Public addresses come from 198.51.100.0/24 (documentation space): they
// exist only inside the run's namespaces.

const (
	torASN    = 65000
	gwASN     = 65001
	inetAddr  = "100.64.0.10"
	poolCIDR  = "198.51.100.0/24"
	webEIP    = "198.51.100.10"
	natEIP    = "198.51.100.20"
	tinyEIP   = "198.51.100.30"
	echoPort  = 8080 // the workloads' "what is my peer" service
	inetPort  = 9090 // the internet host's echo service
	tinyPorts = 2    // the exhausted NAT gateway's whole port range
)

var outsideGateways = []string{"gw-1", "gw-2"}

// outsideTopology is the run's nodes, workloads and tenant intent; the
// outside objects (pool, peers, elastic IPs, NAT gateways) are applied by
// the scenarios.
func outsideTopology() Topology {
	return Topology{
		Nodes: []Node{
			{Name: "node-1"},
			{Name: "gw-1", Roles: []string{"gateway"}, AgentArgs: []string{"--uplink", "ext0"}},
			{Name: "gw-2", Roles: []string{"gateway"}, AgentArgs: []string{"--uplink", "ext0"}},
		},
		Workloads: []Workload{
			{Name: "web-1", Node: "node-1", Port: "projects/demo/ports/web-1", Subnet: "projects/demo/vpcs/prod/subnets/web",
				IP: "10.0.1.11", SecurityGroups: []string{"projects/demo/securityGroups/web"}},
			{Name: "web-2", Node: "node-1", Port: "projects/demo/ports/web-2", Subnet: "projects/demo/vpcs/prod/subnets/web",
				IP: "10.0.1.12", SecurityGroups: []string{"projects/demo/securityGroups/web"}},
			{Name: "tiny-1", Node: "node-1", Port: "projects/demo/ports/tiny-1", Subnet: "projects/demo/vpcs/prod/subnets/tiny",
				IP: "10.0.3.11", SecurityGroups: []string{"projects/demo/securityGroups/web"}},
		},
		Intent: `kind: Project
name: projects/demo
organization: acme
---
kind: Vpc
name: projects/demo/vpcs/prod
cidrBlocks: [10.0.0.0/16]
---
kind: Subnet
name: projects/demo/vpcs/prod/subnets/web
cidrBlock: 10.0.1.0/24
---
kind: Subnet
name: projects/demo/vpcs/prod/subnets/tiny
cidrBlock: 10.0.3.0/24
---
kind: SecurityGroup
name: projects/demo/securityGroups/web
vpc: projects/demo/vpcs/prod
rules:
- {direction: INGRESS, protocol: tcp, portRangeMin: 8080, portRangeMax: 8080, remoteCidr: 0.0.0.0/0}
- {direction: INGRESS, protocol: icmp, remoteCidr: 0.0.0.0/0}
- {direction: EGRESS, protocol: all, remoteCidr: 0.0.0.0/0}
`,
	}
}

// outside is a running outside world around a Run.
type outside struct {
	r   *Run
	tor *frrtest.Router
}

// setupOutside builds the run, the router and the internet host, wires the
// gateways' uplinks, starts FRR and applies the pool and the BGP peers; it
// returns once both sessions are established.
func setupOutside(t testing.TB) *outside {
	t.Helper()
	if err := Build(t.Context(), testBins, "./cmd/meridian-agent"); err != nil {
		t.Fatal(err)
	}
	r := Setup(t, outsideTopology(), Options{BinDir: testBins})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	tor, err := r.AddHost(ctx, "tor")
	if err != nil {
		t.Fatal(err)
	}
	inet, err := r.AddHost(ctx, "inet")
	if err != nil {
		t.Fatal(err)
	}
	frrtest.Veth(t, frrtest.End{Netns: tor, Name: "inet0", Addrs: []string{"100.64.0.1/24"}},
		frrtest.End{Netns: inet, Name: "eth0", Addrs: []string{inetAddr + "/24"}})
	script(t, inet, "ip route add default via 100.64.0.1")
	script(t, tor, "sysctl -qw net.ipv4.ip_forward=1")
	for i, gw := range outsideGateways {
		ns, err := r.Netns(gw)
		if err != nil {
			t.Fatal(err)
		}
		frrtest.Veth(t, frrtest.End{Netns: tor, Name: gw, Addrs: []string{fmt.Sprintf("172.31.%d.1/24", i+1)}},
			frrtest.End{Netns: ns, Name: "ext0", Addrs: []string{fmt.Sprintf("172.31.%d.2/24", i+1)}})
		// The gateway's way out: translated packets leave by its own
		// routing table (bpf_fib_lookup).
		script(t, ns, fmt.Sprintf("ip route add default via 172.31.%d.1", i+1))
	}
	router := frrtest.Start(t, frrtest.Options{Netns: tor, ASN: torASN})
	for i := range outsideGateways {
		if err := router.AddNeighbor(ctx, frrtest.Neighbor{Address: netip.MustParseAddr(fmt.Sprintf("172.31.%d.2", i+1)),
			ASN: gwASN, Keepalive: 1, Hold: 3}); err != nil {
			t.Fatal(err)
		}
	}
	var docs []string
	docs = append(docs, fmt.Sprintf(`kind: PublicAddressPool
name: publicAddressPools/internet
cidrs: [%s]
communities: ["65000:100"]
med: 10`, poolCIDR))
	for i, gw := range outsideGateways {
		docs = append(docs, fmt.Sprintf(`kind: BgpPeer
name: bgpPeers/%s-tor
node: nodes/%s
localAsn: %d
peerAsn: %d
peerAddress: 172.31.%d.1
holdTime: 3
restartTime: 120`, gw, gw, gwASN, torASN, i+1))
	}
	if err := r.Apply(ctx, strings.Join(docs, "\n---\n")+"\n"); err != nil {
		t.Fatal(err)
	}
	for i := range outsideGateways {
		if err := router.WaitEstablished(ctx, netip.MustParseAddr(fmt.Sprintf("172.31.%d.2", i+1))); err != nil {
			t.Fatalf("%v\n%s", err, r.Logs(30))
		}
	}
	return &outside{r: r, tor: router}
}

func hostPrefix(a string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(a), 32) }

func gwAddr(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("172.31.%d.2", i)) }

// associate (re)applies the web elastic IP, associated with web-1 or not.
func (o *outside) webEIP(ctx context.Context, port string) error {
	doc := fmt.Sprintf("kind: ElasticIp\nname: projects/demo/elasticIps/web\npool: publicAddressPools/internet\naddress: %s\n", webEIP)
	// apply updates only the fields a document names: disassociation
	// names the port, empty.
	doc += fmt.Sprintf("port: %q\n", port)
	return o.r.Apply(ctx, doc)
}

// serveRemote makes name answer every TCP connection on port with the
// address the connection came from, as the workload sees it.
func serveRemote(t testing.TB, r *Run, name string, port int) {
	t.Helper()
	ns, err := r.Netns(name)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	if err := plumbing.RunInNetns(netnsPath(ns), func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", name, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}()
}

// dialFrom connects from a namespace of the run.
func dialFrom(r *Run, from, addr string, timeout time.Duration) (net.Conn, error) {
	ns, err := r.Netns(from)
	if err != nil {
		return nil, err
	}
	var c net.Conn
	err = plumbing.RunInNetns(netnsPath(ns), func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

// askRemote connects from a namespace to a serveRemote service and returns
// the address the service saw.
func askRemote(r *Run, from, addr string) (string, error) {
	c, err := dialFrom(r, from, addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(line))
	if err != nil {
		return "", err
	}
	return ap.Addr().String(), nil
}

// echoServer serves TCP echo on port in a namespace until the test ends
// and reports the source address of every accepted connection.
func echoServer(t testing.TB, r *Run, name string, port int) <-chan netip.AddrPort {
	t.Helper()
	ns, err := r.Netns(name)
	if err != nil {
		t.Fatal(err)
	}
	var l net.Listener
	if err := plumbing.RunInNetns(netnsPath(ns), func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", name, err)
	}
	t.Cleanup(func() { l.Close() })
	seen := make(chan netip.AddrPort, 64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort():
			default:
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return seen
}

// echoes checks that a connection still carries data both ways.
func echoes(c net.Conn) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	msg := []byte("still there?\n")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// capture runs tcpdump on the internet host and returns the source
// addresses of TCP SYNs to port, as the internet host received them.
type capture struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	srcs []string
	done chan struct{}
}

func startCapture(t testing.TB, r *Run, host, ifName string, port int) *capture {
	t.Helper()
	ns, err := r.Netns(host)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &capture{done: make(chan struct{})}
	c.cmd = Command(ctx, ns, "tcpdump", "-n", "-l", "-i", ifName,
		fmt.Sprintf("tcp dst port %d and tcp[tcpflags] & tcp-syn != 0", port))
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("tcpdump in %s: %v", host, err)
	}
	t.Cleanup(func() { cancel(); c.cmd.Wait(); <-c.done })
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errOut)
		once := sync.Once{}
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { close(listening) })
			}
		}
	}()
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			// "12:00:00.000000 IP 198.51.100.20.20001 > 100.64.0.10.9090: Flags [S], ..."
			f := strings.Fields(sc.Text())
			if len(f) < 4 || f[1] != "IP" {
				continue
			}
			src := f[2]
			if i := strings.LastIndexByte(src, '.'); i > 0 {
				src = src[:i]
			}
			c.mu.Lock()
			c.srcs = append(c.srcs, src)
			c.mu.Unlock()
		}
	}()
	select {
	case <-listening:
	case <-time.After(5 * time.Second):
		t.Fatal("tcpdump did not start listening")
	}
	return c
}

func (c *capture) sources() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.srcs...)
}

// ctlJSON runs meridianctl with -o json and decodes the output.
func ctlJSON(ctx context.Context, r *Run, v any, args ...string) error {
	out, err := r.Ctl(ctx, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("decode %q: %w", out, err)
	}
	return nil
}

// lossWindow is the longest run of consecutive unanswered echoes of a
// finished Pinger, in requests.
func lossWindow(p *Pinger) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	longest, run := 0, 0
	for seq := uint16(1); int(seq) <= len(p.sent); seq++ {
		if _, ok := p.got[seq]; ok {
			run = 0
			continue
		}
		run++
		longest = max(longest, run)
	}
	return longest
}

// TestOutside runs the six scenarios of issue [4] on one deployment, in an
// order where each leaves what the next needs: one topology saves CI the
// start-up of five more.
func TestOutside(t *testing.T) {
	o := setupOutside(t)
	r := o.r
	ctx := t.Context()
	serveRemote(t, r, "web-1", echoPort)
	inetSeen := echoServer(t, r, "inet", inetPort)
	webPfx := hostPrefix(webEIP)

	ok := t.Run("1-associate", func(t *testing.T) {
		start := time.Now()
		if err := o.webEIP(ctx, "projects/demo/ports/web-1"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		// Both gateways announce it: ECMP in the router's kernel FIB.
		if err := o.tor.WaitNextHops(wctx, webPfx, func(nhs []netip.Addr, ok bool) bool { return len(nhs) == 2 }); err != nil {
			t.Fatalf("elastic IP %s not in FRR's FIB through both gateways: %v\n%s", webEIP, err, r.Logs(20))
		}
		t.Logf("associate -> /32 in FRR's FIB via both gateways in %v", time.Since(start).Round(time.Millisecond))
		paths, err := o.tor.Route(ctx, webPfx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range paths {
			if p.MED != 10 || len(p.Communities) != 1 || p.Communities[0] != "65000:100" {
				t.Errorf("path %+v: want the pool's MED 10 and community 65000:100", p)
			}
		}
		if out, err := r.Exec(ctx, "inet", "ping", "-c", "3", "-i", "0.2", "-W", "2", webEIP); err != nil {
			t.Fatalf("internet host cannot ping %s: %v\n%s", webEIP, err, out)
		}
		seen, err := askRemote(r, "inet", fmt.Sprintf("%s:%d", webEIP, echoPort))
		if err != nil {
			t.Fatalf("internet host -> %s:%d: %v", webEIP, echoPort, err)
		}
		if seen != inetAddr {
			t.Fatalf("web-1 sees the internet host's connection from %s, want its real address %s", seen, inetAddr)
		}
		// The API shows each gateway's session and what it announces
		// (the agents' node reports).
		for _, gw := range outsideGateways {
			var peer struct {
				Status struct {
					State      string `json:"state"`
					Advertised int    `json:"advertised"`
				} `json:"status"`
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				err := ctlJSON(ctx, r, &peer, "bgp-peer", "get", "bgpPeers/"+gw+"-tor")
				if err == nil && peer.Status.State == "established" && peer.Status.Advertised >= 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("bgp-peer %s-tor status %+v (%v): want established, advertising the elastic IP", gw, peer.Status, err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}
	})
	if !ok {
		return
	}

	t.Run("2-nat-gateway", func(t *testing.T) {
		if err := r.Apply(ctx, fmt.Sprintf(`kind: ElasticIp
name: projects/demo/elasticIps/egress
pool: publicAddressPools/internet
address: %s
---
kind: NatGateway
name: projects/demo/natGateways/egress
vpc: projects/demo/vpcs/prod
elasticIps: [projects/demo/elasticIps/egress]
subnets: [projects/demo/vpcs/prod/subnets/web]
portMin: 20000
portMax: 29999
`, natEIP)); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := o.tor.WaitFIB(wctx, hostPrefix(natEIP), true); err != nil {
			t.Fatalf("NAT gateway address not in FRR's FIB: %v", err)
		}
		// The owner announces with the pool's MED, the other gateway as a
		// backup with +100: one best path.
		paths, err := o.tor.Route(ctx, hostPrefix(natEIP))
		if err != nil {
			t.Fatal(err)
		}
		meds := map[uint32]int{}
		for _, p := range paths {
			meds[p.MED]++
		}
		if len(paths) != 2 || meds[10] != 1 || meds[110] != 1 {
			t.Errorf("NAT address paths %+v: want one with MED 10 (owner) and one with MED 110 (backup)", paths)
		}
		capt := startCapture(t, r, "inet", "eth0", inetPort)
		c, err := dialFrom(r, "web-2", fmt.Sprintf("%s:%d", inetAddr, inetPort), 3*time.Second)
		if err != nil {
			t.Fatalf("web-2 -> internet host through the NAT gateway: %v\n%s", err, r.Logs(20))
		}
		defer c.Close()
		if err := echoes(c); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-inetSeen:
			if a.Addr().String() != natEIP || a.Port() < 20000 || a.Port() > 29999 {
				t.Errorf("internet host accepted web-2's connection from %v, want %s:20000-29999", a, natEIP)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("internet host accepted nothing")
		}
		deadline := time.Now().Add(2 * time.Second)
		for len(capt.sources()) == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		srcs := capt.sources()
		if len(srcs) == 0 {
			t.Fatal("the capture on the internet host saw no SYN")
		}
		for _, s := range srcs {
			if s != natEIP {
				t.Errorf("capture on the internet host: SYN from %s, want the NAT gateway's %s (all: %v)", s, natEIP, srcs)
			}
		}
	})

	t.Run("5-graceful-restart", func(t *testing.T) {
		watch := frrtest.WatchRoutes(t, o.tor.Netns())
		if err := r.Restart(ctx, "gw-1-agent"); err != nil {
			t.Fatal(err)
		}
		// Until the restarted speaker has sent End-of-RIB, FRR holds gw-1's
		// paths as stale; wait for fresh ones.
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := o.tor.WaitEstablished(wctx, gwAddr(1)); err != nil {
			t.Fatal(err)
		}
		for {
			paths, err := o.tor.Route(wctx, webPfx)
			fresh := 0
			for _, p := range paths {
				if p.Peer == gwAddr(1) && !p.Stale {
					fresh++
				}
			}
			if err == nil && fresh == 1 {
				break
			}
			if wctx.Err() != nil {
				t.Fatalf("gw-1's path of %s not refreshed after the restart: %+v, %v", webEIP, paths, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // let a late FIB change show
		if ch := watch.Changes("198.51.100."); len(ch) != 0 {
			t.Fatalf("FRR's kernel FIB changed during gw-1's agent restart:\n%s", strings.Join(ch, "\n"))
		}
		if out, err := r.Exec(ctx, "inet", "ping", "-c", "2", "-i", "0.2", "-W", "2", webEIP); err != nil {
			t.Fatalf("after the restart: %v\n%s", err, out)
		}
	})

	t.Run("6-port-exhaustion", func(t *testing.T) {
		if err := r.Apply(ctx, fmt.Sprintf(`kind: ElasticIp
name: projects/demo/elasticIps/tiny
pool: publicAddressPools/internet
address: %s
---
kind: NatGateway
name: projects/demo/natGateways/tiny
vpc: projects/demo/vpcs/prod
elasticIps: [projects/demo/elasticIps/tiny]
subnets: [projects/demo/vpcs/prod/subnets/tiny]
portMin: 30000
portMax: %d
`, tinyEIP, 30000+tinyPorts-1)); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := o.tor.WaitFIB(wctx, hostPrefix(tinyEIP), true); err != nil {
			t.Fatal(err)
		}
		var open []net.Conn
		defer func() {
			for _, c := range open {
				c.Close()
			}
		}()
		for i := range tinyPorts {
			c, err := dialFrom(r, "tiny-1", fmt.Sprintf("%s:%d", inetAddr, inetPort), 3*time.Second)
			if err != nil {
				t.Fatalf("connection %d of %d the range holds: %v", i+1, tinyPorts, err)
			}
			open = append(open, c)
		}
		// The range is used up: a new flow fails (its SYN is dropped), and
		// says so in the NAT gateway's status.
		if c, err := dialFrom(r, "tiny-1", fmt.Sprintf("%s:%d", inetAddr, inetPort), time.Second); err == nil {
			c.Close()
			t.Fatalf("a connection beyond the %d-port range got through", tinyPorts)
		}
		var ngw struct {
			Status struct {
				PortExhausted string `json:"portExhausted"`
				ActiveFlows   string `json:"activeFlows"`
				OwnerNode     string `json:"ownerNode"`
			} `json:"status"`
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := ctlJSON(ctx, r, &ngw, "nat-gateway", "get", "projects/demo/natGateways/tiny")
			if err == nil && ngw.Status.PortExhausted != "" && ngw.Status.PortExhausted != "0" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("NatGateway status does not count the refused flow: %+v, %v", ngw.Status, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("NatGateway status: %+v", ngw.Status)
		// The host stays healthy: the open flows still work, and so does
		// other traffic through the same gateways.
		for i, c := range open {
			if err := echoes(c); err != nil {
				t.Errorf("open connection %d after exhaustion: %v", i+1, err)
			}
		}
		if seen, err := askRemote(r, "inet", fmt.Sprintf("%s:%d", webEIP, echoPort)); err != nil || seen != inetAddr {
			t.Errorf("elastic IP traffic after the exhaustion: seen %q, %v", seen, err)
		}
		if c, err := dialFrom(r, "web-2", fmt.Sprintf("%s:%d", inetAddr, inetPort), 3*time.Second); err != nil {
			t.Errorf("the other NAT gateway after the exhaustion: %v", err)
		} else {
			c.Close()
		}
	})

	t.Run("3-disassociate", func(t *testing.T) {
		if err := o.webEIP(ctx, ""); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := o.tor.WaitFIB(wctx, webPfx, false); err != nil {
			t.Fatalf("elastic IP still in FRR's FIB after disassociation: %v", err)
		}
		if _, err := askRemote(r, "inet", fmt.Sprintf("%s:%d", webEIP, echoPort)); err == nil {
			t.Fatal("internet host still reaches web-1 through the disassociated elastic IP")
		}
		if out, err := r.Exec(ctx, "inet", "ping", "-c", "2", "-i", "0.2", "-W", "1", webEIP); err == nil {
			t.Fatalf("disassociated elastic IP still answers pings:\n%s", out)
		}
	})

	t.Run("4-gateway-failure", func(t *testing.T) {
		if err := o.webEIP(ctx, "projects/demo/ports/web-1"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := o.tor.WaitNextHops(wctx, webPfx, func(nhs []netip.Addr, ok bool) bool { return len(nhs) == 2 }); err != nil {
			t.Fatal(err)
		}
		const interval = 10 * time.Millisecond
		p, err := r.StartPing("inet", webEIP, interval)
		if err != nil {
			t.Fatal(err)
		}
		// The router hashes the echo requests to one gateway (they enter
		// its ext0), the workload node hashes the replies to one (they
		// enter its underlay): the gateway carrying more of the probe
		// dies, so the probe really loses its path.
		count := func(gw string) uint64 {
			var n uint64
			for _, ifName := range []string{"ext0", uplinkName} {
				c, err := r.RxPackets(gw, ifName)
				if err != nil {
					t.Fatal(err)
				}
				n += c
			}
			return n
		}
		var before [2]uint64
		for i, gw := range outsideGateways {
			before[i] = count(gw)
		}
		time.Sleep(500 * time.Millisecond)
		victim, survivor := 0, 1
		for i, gw := range outsideGateways {
			before[i] = count(gw) - before[i]
		}
		if before[1] > before[0] {
			victim, survivor = 1, 0
		}
		dead := outsideGateways[victim]
		t.Logf("the probe goes through %s (%d vs %d packets on its uplink and underlay): killing it", dead, before[victim], before[survivor])
		// It dies: its agent, and its links (a crashed host answers
		// nothing, on the uplink or the underlay).
		if err := r.Kill(dead + "-agent"); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		if _, err := r.Exec(ctx, dead, "sh", "-c", "ip link set ext0 down; ip link set "+uplinkName+" down"); err != nil {
			t.Fatal(err)
		}
		if err := o.tor.WaitNextHops(wctx, webPfx, func(nhs []netip.Addr, ok bool) bool {
			return len(nhs) == 1 && nhs[0] == gwAddr(survivor+1)
		}); err != nil {
			t.Fatalf("FRR still routes through the dead gateway: %v", err)
		}
		t.Logf("FIB down to %s %v after the kill", outsideGateways[survivor], time.Since(killed).Round(time.Millisecond))
		// Echo replies leave the workload node through a gateway by flow
		// hash too: those hashed to the dead one are lost until the
		// workload node drops it from its gateway set, which happens as
		// soon as the controller sees its agent's stream end (the gateway
		// drains; its NAT gateways move only after the grace period).
		// Wait for a clean second.
		recovered := func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			last := len(p.sent) - 5 // the newest may be in flight
			if last < 100 {
				return false
			}
			for seq := last - 100; seq < last; seq++ {
				if _, ok := p.got[uint16(seq)]; !ok {
					return false
				}
			}
			return true
		}
		for !recovered() && time.Since(killed) < 15*time.Second {
			time.Sleep(100 * time.Millisecond)
		}
		st, err := p.Stop(time.Second)
		if err != nil {
			t.Fatal(err)
		}
		window := lossWindow(p)
		t.Logf("ping every %v across the gateway's death: sent %d, lost %d, loss window %v", interval, st.Sent, st.Lost(),
			time.Duration(window)*interval)
		// Traffic continues through gw-2: the last second got through.
		p.mu.Lock()
		lastLost := 0
		for seq := len(p.sent) - int(time.Second/interval); seq <= len(p.sent); seq++ {
			if _, ok := p.got[uint16(seq)]; !ok && seq > 0 {
				lastLost++
			}
		}
		p.mu.Unlock()
		if lastLost > 2 {
			t.Fatalf("after the gateway's death, %d of the last second's echoes were lost (loss window %v)", lastLost, time.Duration(window)*interval)
		}
		if seen, err := askRemote(r, "inet", fmt.Sprintf("%s:%d", webEIP, echoPort)); err != nil || seen != inetAddr {
			t.Fatalf("new TCP connection through the surviving gateway: seen %q, %v", seen, err)
		}
	})
}
