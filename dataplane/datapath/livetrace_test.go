package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/meridian-sdn/meridian/fw"
)

// traceEvents reads what the ring holds until it stays quiet for quiet.
func traceEvents(t testing.TB, r *TraceReader, quiet time.Duration) []TraceEvent {
	t.Helper()
	var out []TraceEvent
	for {
		r.SetDeadline(time.Now().Add(quiet))
		ev, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("read trace events: %v", err)
		}
		out = append(out, ev)
	}
}

// path renders a packet's events as "stage[detail] stage[detail] ...", in
// the order the programs wrote them.
func path(evs []TraceEvent) string {
	var parts []string
	for _, e := range evs {
		s := e.Stage.String()
		switch e.Stage {
		case TraceEntry:
			s += fmt.Sprintf("[port %d]", e.Port)
		case TraceConntrack:
			s += fmt.Sprintf("[state %d]", e.A)
		case TraceACLEgress, TraceACLIngress:
			s += fmt.Sprintf("[rule %d]", e.A)
		case TraceSGEgress, TraceSGIngress:
			s += fmt.Sprintf("[rule %d est %d]", e.A, e.B)
		case TraceRoute:
			s += fmt.Sprintf("[kind %d]", e.A)
		case TraceTunnel:
			s += fmt.Sprintf("[%v vni %d]", AddrOfU32(e.A), e.B)
		case TraceDeliver:
			s += fmt.Sprintf("[port %d]", e.Port)
		case TraceDrop:
			s += fmt.Sprintf("[%v rule %d port %d]", e.Reason(), e.B, e.Port)
		case TraceEnd:
			s += fmt.Sprintf("[%d]", int32(e.A))
		case TraceGatewayIn:
			s += fmt.Sprintf("[%v %v -> %v %d]", GatewayMatch(e.Kind), e.From, e.To, e.A)
		case TraceNAT:
			s += fmt.Sprintf("[%v %v -> %v]", NATKind(e.Kind), e.From, e.To)
		case TraceGatewayOut:
			s += fmt.Sprintf("[%d %v -> %v if %d via %v]", e.Kind, e.From.Addr(), e.To.Addr(), e.A, AddrOfU32(e.B))
		case TraceService:
			s += fmt.Sprintf("[%v %v -> %v svc %d backend %d]", ServiceHow(e.Kind), e.From, e.To, e.A, e.B)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// TestLiveTraceStages: real test runs of meridian_from_port with a filter
// on port A report the stages the model trace names, with the deciding
// rule: a delivery, a security-group drop (no rule), a network-ACL drop
// (the rule's id), a tunnel to a remote node; and the packets' own tuple.
func TestLiveTraceStages(t *testing.T) {
	f := newFixture(t)
	anyNet := netip.MustParsePrefix("0.0.0.0/0")
	f.acls[1] = &fw.ACL{ID: 51, Rules: []fw.ACLRule{
		{ID: 5101, Number: 100, Direction: fw.Egress, Action: fw.Deny, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 23, To: 23}, CIDR: anyNet},
		{ID: 5102, Number: 200, Direction: fw.Egress, Action: fw.Allow, Protocol: fw.ProtoAny, CIDR: anyNet},
		{ID: 5103, Number: 200, Direction: fw.Ingress, Action: fw.Allow, Protocol: fw.ProtoAny, CIDR: anyNet},
	}}
	f.policies[3] = fw.SecurityGroupPolicy{ID: 3, Rules: []fw.SGRule{
		{ID: 3001, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteCIDR: anyNet}}}
	f.install(t)
	r, err := f.d.TraceEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 9, Port: portA.ID, Dst: netip.MustParsePrefix("10.0.2.0/24")}}); err != nil {
		t.Fatal(err)
	}

	pkt := func(dst netip.Addr, dport uint16) []byte {
		fr := from(portA, dst)
		fr.dport = dport
		return fr.bytes(t)
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		want string
	}{
		{"allowed", pkt(portC.IPs[0], 80),
			"source[port 1] anti-spoofing conntrack[state 0] acl-egress[rule 5102] sg-egress[rule 1001 est 0] route[kind 1] " +
				"acl-ingress[rule 0] sg-ingress[rule 3001 est 0] deliver[port 3] verdict[7]"},
		{"security group", pkt(portC.IPs[0], 22),
			"source[port 1] anti-spoofing conntrack[state 0] acl-egress[rule 5102] sg-egress[rule 1001 est 0] route[kind 1] " +
				"acl-ingress[rule 0] drop[sg-ingress rule 0 port 3] verdict[2]"},
		{"network ACL", pkt(portC.IPs[0], 23),
			"source[port 1] anti-spoofing conntrack[state 0] drop[acl-egress rule 5101 port 1] verdict[2]"},
		{"tunnel", pkt(remoteIP, 80),
			"source[port 1] anti-spoofing conntrack[state 0] acl-egress[rule 5102] sg-egress[rule 1001 est 0] route[kind 2] " +
				"tunnel[192.0.2.2 vni 100] verdict[7]"},
	} {
		f.fromPort(t, portA, c.pkt)
		evs := traceEvents(t, r, 100*time.Millisecond)
		if got := path(evs); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
			continue
		}
		e := evs[0]
		if e.ID != 9 || e.Prog != TraceFromPort || e.VPC != 100 || e.Src != portA.IPs[0] || e.Protocol != fw.ProtoTCP ||
			e.SrcPort != 40000 || e.TCPFlags != 0x02 {
			t.Errorf("%s: entry event %+v", c.name, e)
		}
		for i, x := range evs {
			if x.Packet != e.Packet || x.Seq != uint32(i) || x.ID != 9 {
				t.Errorf("%s: event %d is packet %d seq %d id %d, want packet %d seq %d id 9", c.name, i, x.Packet, x.Seq, x.ID, e.Packet, i)
			}
		}
	}

	// The reply of the allowed connection, over the overlay filter (port 0):
	// conntrack says established, the security group is skipped.
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 10, Src: netip.MustParsePrefix("10.0.2.30/32")}}); err != nil {
		t.Fatal(err)
	}
	reply := frame{srcMAC: portC.MAC, src: portC.IPs[0], dst: portA.IPs[0], proto: fw.ProtoTCP, sport: 80, dport: 40000, flags: "SA"}
	f.fromPort(t, portC, reply.bytes(t))
	if got := path(traceEvents(t, r, 100*time.Millisecond)); got != "" {
		t.Errorf("a filter for any port (0) matches only what comes over VXLAN; got %s", got)
	}
	f.fromOverlay(t, 100, frame{srcMAC: portC.MAC, src: remoteIP, dst: portA.IPs[0], proto: fw.ProtoUDP, sport: 1, dport: 2}.bytes(t))
	if got := path(traceEvents(t, r, 100*time.Millisecond)); got != "" {
		t.Errorf("overlay packet not matching the filter traced: %s", got)
	}
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 11, Src: netip.MustParsePrefix("10.0.2.40/32")}}); err != nil {
		t.Fatal(err)
	}
	f.fromOverlay(t, 100, frame{srcMAC: portC.MAC, src: remoteIP, dst: portA.IPs[0], proto: fw.ProtoUDP, sport: 3, dport: 2}.bytes(t))
	want := "source[port 0] route[kind 1] conntrack[state 0] acl-ingress[rule 5103] sg-ingress[rule 1002 est 0] deliver[port 1] verdict[7]"
	if got := path(traceEvents(t, r, 100*time.Millisecond)); got != want {
		t.Errorf("from the overlay:\n got %s\nwant %s", got, want)
	}
}

// TestLiveTraceOff: without filters, after they are removed, and for
// packets no filter takes, nothing is written.
func TestLiveTraceOff(t *testing.T) {
	f := newFixture(t)
	r, err := f.d.TraceEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	send := func() {
		for _, dst := range []netip.Addr{portB.IPs[0], portC.IPs[0], remoteIP} {
			f.fromPort(t, portA, from(portA, dst).bytes(t))
		}
	}
	send()
	if evs := traceEvents(t, r, 100*time.Millisecond); len(evs) != 0 {
		t.Fatalf("tracing off: %d events: %s", len(evs), path(evs))
	}
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 1, Port: portB.ID}, {ID: 2, Port: portA.ID, Protocol: fw.ProtoUDP}}); err != nil {
		t.Fatal(err)
	}
	send()
	if evs := traceEvents(t, r, 100*time.Millisecond); len(evs) != 0 {
		t.Fatalf("no filter matches: %d events: %s", len(evs), path(evs))
	}
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 3, Port: portA.ID}}); err != nil {
		t.Fatal(err)
	}
	send()
	if evs := traceEvents(t, r, 100*time.Millisecond); len(evs) == 0 {
		t.Fatal("a matching filter wrote nothing: the test cannot see events")
	}
	if err := f.d.SetTraceFilters(nil); err != nil {
		t.Fatal(err)
	}
	send()
	if evs := traceEvents(t, r, 100*time.Millisecond); len(evs) != 0 {
		t.Fatalf("filters removed: %d events: %s", len(evs), path(evs))
	}
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 0, Port: portA.ID}}); err == nil {
		t.Error("a filter with id 0 was accepted")
	}
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 4, Src: netip.MustParsePrefix("fd00::/8")}}); err == nil {
		t.Error("an IPv6 filter was accepted")
	}
	var active uint32
	if err := f.d.objs.LtActive.Get(&active); err != nil || active != 0 {
		t.Errorf("refused filters changed lt_active to %d (%v)", active, err)
	}
}

// TestLiveTraceFloodCapped: 5,000 matching packets in one burst (a test run
// repeated in the kernel, on one CPU at a time; a packet the security group drops, as
// a delivered one would be rewritten for the next run) trace no more than
// the filter's budget; the rest are counted as capped. Every traced packet
// is whole.
func TestLiveTraceFloodCapped(t *testing.T) {
	f := newFixture(t)
	r, err := f.d.TraceEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	const rate, burst, n = 10, 20, 5000
	if err := f.d.SetTraceFilters([]TraceFilter{{ID: 5, Port: portA.ID, Rate: rate, Burst: burst}}); err != nil {
		t.Fatal(err)
	}
	var ctx skbContext
	ctx[skbIngressIfindex] = uint32(portA.Ifindex)
	f.policies[2] = fw.SecurityGroupPolicy{ID: 2}
	f.install(t)
	pkt := from(portA, portB.IPs[0]).bytes(t)
	start := time.Now()
	if _, err := f.d.objs.MeridianFromPort.Run(&ebpf.RunOptions{Data: pkt, Context: ctx, Repeat: n}); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	evs := traceEvents(t, r, 200*time.Millisecond)
	packets := map[uint32][]TraceEvent{}
	for _, e := range evs {
		packets[e.Packet] = append(packets[e.Packet], e)
	}
	// One CPU's share of the burst, plus what the rate refills meanwhile;
	// but a long test run gives the CPU up when the scheduler asks (and
	// may go on on another CPU, with that CPU's share: seen on a loaded
	// machine), so the bound is the node's: the whole burst, plus the
	// refill, plus a packet of rounding per CPU.
	limit := burst + cpus + int(elapsed.Seconds()*rate) + 1
	if len(packets) == 0 || len(packets) > limit {
		t.Fatalf("%d of %d packets traced, want 1..%d", len(packets), n, limit)
	}
	for id, p := range packets {
		if p[0].Stage != TraceEntry || p[len(p)-1].Stage != TraceEnd || !slices.ContainsFunc(p, func(e TraceEvent) bool { return e.Stage == TraceDrop && e.Reason() == DropSGIngress }) {
			t.Errorf("packet %d incomplete: %s", id, path(p))
		}
	}
	counts, err := f.d.TraceCounts(1)
	if err != nil {
		t.Fatal(err)
	}
	if counts[0].Traced != uint64(len(packets)) || counts[0].Traced+counts[0].Capped != n {
		t.Fatalf("counts %+v, want traced %d and traced+capped %d", counts[0], len(packets), n)
	}
	t.Logf("%d packets: %d traced (%d events), %d capped", n, counts[0].Traced, len(evs), counts[0].Capped)
}

// TestLiveTraceAcrossNodes: two nodes (network namespaces with a data path
// each, a VXLAN device in external mode and a veth underlay between them),
// a workload on each. A UDP datagram from w1 to w2, sent for real, is
// traced on node 1 by its port filter up to the tunnel to node 2, and on
// node 2 by a filter for the overlay (port 0) from decapsulation to the
// delivery to w2's port.
func TestLiveTraceAcrossNodes(t *testing.T) {
	bpffs := privateBPFFS(t)
	inNewNetns(t, func(node1 netns.NsHandle) {
		must := func(what string, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
		node2, err := netns.New() // switches this thread
		must("create node 2", err)
		defer node2.Close()
		must("back to node 1", netns.Set(node1))

		// underlay 192.0.2.1 (node 1) <-> 192.0.2.2 (node 2)
		must("add underlay", netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ltu1"}, PeerName: "ltu2"}))
		u2, err := netlink.LinkByName("ltu2")
		must("find ltu2", err)
		must("move ltu2", netlink.LinkSetNsFd(u2, int(node2)))
		nodeIP := map[int]netip.Addr{1: ip("192.0.2.1"), 2: ip("192.0.2.2")}
		type node struct {
			ns  netns.NsHandle
			d   *Datapath
			w   *workload
			vx  netlink.Link
			evs *TraceReader
		}
		nodes := map[int]*node{1: {ns: node1}, 2: {ns: node2}}
		addrs := map[int]netip.Addr{1: ip("10.0.1.10"), 2: ip("10.0.2.20")}
		gws := map[int]netip.Addr{1: ip("10.0.1.1"), 2: ip("10.0.2.1")}
		for i, n := range nodes {
			must("enter node", netns.Set(n.ns))
			u, err := netlink.LinkByName(fmt.Sprintf("ltu%d", i))
			must("find underlay", err)
			must("underlay address", netlink.AddrAdd(u, &netlink.Addr{IPNet: &net.IPNet{IP: nodeIP[i].AsSlice(), Mask: net.CIDRMask(24, 32)}}))
			must("underlay up", netlink.LinkSetUp(u))
			must("add vxlan", netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "ltvx"}, FlowBased: true, Port: 4789}))
			n.vx, err = netlink.LinkByName("ltvx")
			must("find vxlan", err)
			must("vxlan up", netlink.LinkSetUp(n.vx))
			n.w = newWorkload(t, n.ns, fmt.Sprintf("lt%d", i), addrs[i], gws[i])
			n.d, err = Open(filepath.Join(bpffs, fmt.Sprintf("node%d", i)))
			must("open data path", err)
			d := n.d
			t.Cleanup(func() { d.Unpin(); d.Close() })
			must("attach port", d.Attach(HookPort, n.w.host.Attrs().Index))
			must("attach overlay", d.Attach(HookOverlay, n.vx.Attrs().Index))
			for sub, gw := range gws {
				must("subnet", d.UpsertSubnet(Subnet{ID: uint32(sub), Gateway: gw, RouterMAC: routerMAC}))
			}
			for j, a := range addrs {
				r := Route{VPC: 100, Prefix: netip.PrefixFrom(a, 32), RemoteNode: nodeIP[j], Subnet: uint32(j)}
				if j == i {
					r = Route{VPC: 100, Prefix: netip.PrefixFrom(a, 32), LocalPort: uint32(i)}
				}
				must("route", d.UpsertRoute(r))
			}
			must("port", d.UpsertPort(Port{ID: uint32(i), Ifindex: n.w.host.Attrs().Index, MAC: n.w.mac, IPs: []netip.Addr{addrs[i]},
				VPC: 100, Subnet: uint32(i), SGPolicy: uint32(i)}))
			compileAndApply(t, d, 100, allowAll(1), allowAll(2))
			n.evs, err = d.TraceEvents()
			must("open trace ring", err)
			defer n.evs.Close()
		}
		must("back to node 1", netns.Set(node1))
		must("node 1 filter", nodes[1].d.SetTraceFilters([]TraceFilter{{ID: 1, Port: 1, Dst: netip.PrefixFrom(addrs[2], 32), Protocol: fw.ProtoUDP}}))
		must("node 2 filter", nodes[2].d.SetTraceFilters([]TraceFilter{{ID: 2, Src: netip.PrefixFrom(addrs[1], 32), Protocol: fw.ProtoUDP}}))

		msg := []byte("across")
		_, err = nodes[1].w.conn.WriteToUDP(msg, &net.UDPAddr{IP: addrs[2].AsSlice(), Port: 7000})
		must("send", err)
		buf := make([]byte, 100)
		nodes[2].w.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := nodes[2].w.conn.ReadFromUDP(buf)
		if err != nil || string(buf[:n]) != string(msg) {
			t.Fatalf("w2 received %q, %v: the two nodes do not forward", buf[:n], err)
		}
		want := map[int]string{
			1: "source[port 1] anti-spoofing conntrack[state 0] acl-egress[rule 0] sg-egress[rule 1001 est 0] route[kind 2] " +
				"tunnel[192.0.2.2 vni 100] verdict[7]",
			2: "source[port 0] route[kind 1] conntrack[state 0] acl-ingress[rule 0] sg-ingress[rule 2002 est 0] deliver[port 2] verdict[7]",
		}
		for i := 1; i <= 2; i++ {
			evs := traceEvents(t, nodes[i].evs, 200*time.Millisecond)
			if got := path(evs); got != want[i] {
				t.Errorf("node %d:\n got %s\nwant %s", i, got, want[i])
			}
		}
	})
}
