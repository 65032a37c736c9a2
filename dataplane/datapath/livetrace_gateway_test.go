package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/meridian-sdn/meridian/fw"
)

// Live trace through the gateway (gateway.h) and the services (service.h):
// BPF_PROG_TEST_RUN of the same programs the nodes attach, each node a data
// path of its own, the frame one program sent fed to the next node's.

// sentFrame is the frame a test run left, without the output buffer's
// tail: Ethernet plus the IPv4 total length.
func sentFrame(t testing.TB, b []byte) []byte {
	t.Helper()
	if len(b) < ETHHLen+20 {
		t.Fatalf("frame of %d bytes", len(b))
	}
	n := ETHHLen + int(binary.BigEndian.Uint16(b[ETHHLen+2:]))
	if n > len(b) {
		t.Fatalf("IPv4 total length %d beyond the %d bytes sent", n-ETHHLen, len(b))
	}
	return slices.Clone(b[:n])
}

// ETHHLen is the Ethernet header's length.
const ETHHLen = 14

// onePacket reads one traced packet's events and checks they are one
// packet, in order, of trace id.
func onePacket(t testing.TB, r *TraceReader, id uint32) []TraceEvent {
	t.Helper()
	evs := traceEvents(t, r, 100*time.Millisecond)
	if len(evs) == 0 {
		t.Fatalf("trace %d: no events", id)
	}
	for i, e := range evs {
		if e.ID != id || e.Packet != evs[0].Packet || e.Seq != uint32(i) {
			t.Fatalf("trace %d: event %d is trace %d packet %d seq %d; want one packet, in order: %s", id, i, e.ID, e.Packet, e.Seq, path(evs))
		}
	}
	return evs
}

func expectPath(t testing.TB, what string, evs []TraceEvent, want string) {
	t.Helper()
	if got := path(evs); got != want {
		t.Fatalf("%s:\n got %s\nwant %s", what, got, want)
	}
}

// TestLiveTraceNATGatewayOutbound: C (subnet 2, behind NAT gateway 7) opens
// a TCP connection to the outside host. Its node reports the route outside
// to the NAT gateway's owner and the tunnel there; the gateway, fed the
// frame the workload node sent, reports the NAT gateway's SNAT with the
// public address and port the packet really left with (a new flow, then
// the flow's own port for the next packet) and its exit to the fabric:
// the uplink's ifindex and the next hop bpf_fib_lookup gave.
func TestLiveTraceNATGatewayOutbound(t *testing.T) {
	newGateway(t, func(g *gateway) {
		gwNode := ip("192.0.2.60")
		w := newFixture(t) // C's node
		if err := w.d.UpsertEgress(Egress{VPC: 100, Prefix: netip.MustParsePrefix("10.0.2.0/24"), NATOwner: gwNode, NATGateway: 7}); err != nil {
			t.Fatal(err)
		}
		if err := g.d.DeleteElasticIP(eipC); err != nil { // C goes out through the NAT gateway
			t.Fatal(err)
		}
		wr, err := w.d.TraceEvents()
		if err != nil {
			t.Fatal(err)
		}
		defer wr.Close()
		gr, err := g.d.TraceEvents()
		if err != nil {
			t.Fatal(err)
		}
		defer gr.Close()
		if err := w.d.SetTraceFilters([]TraceFilter{{ID: 1, Port: portC.ID, Dst: netip.PrefixFrom(outsideHost, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := g.d.SetTraceFilters([]TraceFilter{{ID: 2, VPC: 100, Src: netip.PrefixFrom(portC.IPs[0], 32)}}); err != nil {
			t.Fatal(err)
		}
		g.run(t, "workload node, then gateway", func(t *testing.T) {
			var public uint16
			for i, flags := range []string{"S", "A"} {
				fr := from(portC, outsideHost)
				fr.flags = flags
				sent := runTunnel(t, w.d.objs.MeridianFromPortTest, portC.Ifindex, 0, netip.Addr{}, fr.bytes(t))
				if sent.verdict != actRedirect || sent.remote != gwNode {
					t.Fatalf("workload node: verdict %d to %v, want redirect to the NAT gateway's owner %v", sent.verdict, sent.remote, gwNode)
				}
				// the second packet: the flow's conntrack entry (SYN sent), SG skipped
				ct := "conntrack[state 0] acl-egress[rule 0] sg-egress[rule 3001 est 0]"
				if i > 0 {
					ct = "conntrack[state 1] acl-egress[rule 0] sg-egress[rule 0 est 1]"
				}
				evs := onePacket(t, wr, 1)
				expectPath(t, fmt.Sprintf("workload node, packet %d", i), evs,
					"source[port 3] anti-spoofing "+ct+" route[kind 0] tunnel[192.0.2.60 vni 100] verdict[7]")
				if evs[len(evs)-3].Stage != TraceRoute || AddrOfU32(evs[len(evs)-3].B) != gwNode {
					t.Fatalf("route stage names node %v, want the gateway %v", AddrOfU32(evs[len(evs)-3].B), gwNode)
				}

				out := runTunnel(t, g.d.objs.MeridianFromOverlayMark, g.uplink, 100, nodeC, sentFrame(t, sent.frame))
				d := expectToFabric(t, g, out)
				if d.src() != natAddr || d.tcp == nil {
					t.Fatalf("left as %v, want from the NAT gateway's %v", d.src(), natAddr)
				}
				port := uint16(d.tcp.SrcPort)
				kind := "snat nat-gateway-new"
				if i == 0 {
					public = port
				} else {
					kind = "snat nat-gateway"
					if port != public {
						t.Fatalf("the flow's second packet left from port %d, the first from %d", port, public)
					}
				}
				evs = onePacket(t, gr, 2)
				expectPath(t, fmt.Sprintf("gateway, packet %d", i), evs, fmt.Sprintf(
					"source[port 0] nat[%s 10.0.2.30:40000 -> 198.51.100.20:%d] uplink[0 198.51.100.20 -> 203.0.113.2 if %d via 203.0.113.2] verdict[7]",
					kind, port, g.uplink))
				if evs[0].Prog != TraceFromOverlay || evs[0].Src != portC.IPs[0] || evs[0].Dst != outsideHost {
					t.Fatalf("gateway entry %+v, want the untranslated packet from the overlay", evs[0])
				}
			}
		})
	})
}

// TestLiveTraceGatewayInbound: packets from the fabric are traced on the
// gateway from its uplink, in the VPC of the entry they are for: an elastic
// IP's DNAT to the port's private address and the tunnel to the port's
// node (where the same filter follows it to the port), a port mapping, a
// hairpin between two elastic IPs, a destination the gateway does not
// serve (left to the host), and drops at the gateway with their reason.
func TestLiveTraceGatewayInbound(t *testing.T) {
	newGateway(t, func(g *gateway) {
		w := newFixture(t) // A's node
		gr, err := g.d.TraceEvents()
		if err != nil {
			t.Fatal(err)
		}
		defer gr.Close()
		wr, err := w.d.TraceEvents()
		if err != nil {
			t.Fatal(err)
		}
		defer wr.Close()
		fromOutside := TraceFilter{ID: 3, VPC: 100, Src: netip.PrefixFrom(outsideHost, 32)}
		setFilter := func(t *testing.T, f TraceFilter) {
			t.Helper()
			if err := g.d.SetTraceFilters([]TraceFilter{f}); err != nil {
				t.Fatal(err)
			}
		}

		g.run(t, "elastic IP: DNAT, tunnel to the port's node, delivered there", func(t *testing.T) {
			setFilter(t, fromOutside)
			if err := w.d.SetTraceFilters([]TraceFilter{{ID: 4, VPC: 100, Src: netip.PrefixFrom(outsideHost, 32)}}); err != nil {
				t.Fatal(err)
			}
			in := frame{src: outsideHost, dst: eipA, proto: fw.ProtoTCP, sport: 5555, dport: 80, flags: "S"}
			r := g.inbound(t, in)
			expectToPort(t, r, nodeA, portA)
			evs := onePacket(t, gr, 3)
			expectPath(t, "gateway", evs, "source[port 0] gateway[elastic-ip 203.0.113.2:5555 -> 198.51.100.10:80 100] "+
				"nat[dnat elastic-ip 198.51.100.10:80 -> 10.0.1.10:80] tunnel[192.0.2.11 vni 100] verdict[7]")
			if e := evs[0]; e.Prog != TraceFromUplink || e.VPC != 100 || e.Src != outsideHost || e.Dst != eipA || e.DstPort != 80 {
				t.Fatalf("entry %+v, want from the uplink, VPC 100 (the elastic IP's), the packet as it arrived", e)
			}
			ret, _ := run(t, w.d.objs.MeridianFromOverlayMark, overlayIfx, r.vni, sentFrame(t, r.frame))
			if ret != actRedirect {
				t.Fatalf("A's node: verdict %d, drops %v", ret, w.drops(t))
			}
			expectPath(t, "A's node", onePacket(t, wr, 4),
				"source[port 0] route[kind 1] conntrack[state 0] acl-ingress[rule 0] sg-ingress[rule 1002 est 0] deliver[port 1] verdict[7]")
		})
		g.run(t, "port mapping", func(t *testing.T) {
			setFilter(t, fromOutside)
			in := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoTCP, sport: 5555, dport: 8080, flags: "S"}
			expectToPort(t, g.inbound(t, in), nodeC, portC)
			expectPath(t, "port mapping", onePacket(t, gr, 3), "source[port 0] gateway[nat-gateway 203.0.113.2:5555 -> 198.51.100.20:8080 7] "+
				"nat[dnat port-mapping 198.51.100.20:8080 -> 10.0.2.30:80] tunnel[192.0.2.13 vni 100] verdict[7]")
		})
		g.run(t, "a filter for another VPC does not take it", func(t *testing.T) {
			f := fromOutside
			f.VPC = 200
			setFilter(t, f)
			g.inbound(t, frame{src: outsideHost, dst: eipA, proto: fw.ProtoTCP, sport: 5556, dport: 80, flags: "S"})
			if evs := traceEvents(t, gr, 100*time.Millisecond); len(evs) != 0 {
				t.Fatalf("traced: %s", path(evs))
			}
		})
		g.run(t, "hairpin: A to C's elastic IP", func(t *testing.T) {
			setFilter(t, TraceFilter{ID: 5, Src: netip.PrefixFrom(portA.IPs[0], 32)})
			out := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: eipC, proto: fw.ProtoTCP, sport: 40000, dport: 443, flags: "S", ttl: 64}
			expectToPort(t, g.outbound(t, nodeA, out), nodeC, portC)
			expectPath(t, "hairpin", onePacket(t, gr, 5), "source[port 0] nat[snat elastic-ip 10.0.1.10:40000 -> 198.51.100.10:40000] "+
				"gateway[elastic-ip 198.51.100.10:40000 -> 198.51.100.11:443 100] nat[dnat elastic-ip 198.51.100.11:443 -> 10.0.2.30:443] "+
				"tunnel[192.0.2.13 vni 100] verdict[7]")
		})
		g.run(t, "not a public address of this gateway: left to the host", func(t *testing.T) {
			setFilter(t, TraceFilter{ID: 6, Dst: netip.MustParsePrefix("203.0.113.1/32")})
			own := frame{src: outsideHost, dst: ip("203.0.113.1"), proto: fw.ProtoTCP, sport: 5555, dport: 179, flags: "S"}
			if r := g.inbound(t, own); r.verdict != actTCXNext {
				t.Fatalf("verdict %#x, want TCX_NEXT", r.verdict)
			}
			expectPath(t, "no match", onePacket(t, gr, 6), "source[port 0] gateway[none 203.0.113.2:0 -> 203.0.113.1:0 0] verdict[-1]")
		})
		g.run(t, "drops at the gateway name their reason", func(t *testing.T) {
			anyVPC := TraceFilter{ID: 7, Src: netip.PrefixFrom(outsideHost, 32)}
			setFilter(t, anyVPC)
			// a NAT gateway's address: no flow, no port mapping
			stray := frame{src: outsideHost, dst: natAddr, proto: fw.ProtoTCP, sport: 5555, dport: 9999, flags: "S"}
			g.expectGatewayDrop(t, DropNATNoFlow, func() tunnelOut { return g.inbound(t, stray) })
			expectPath(t, "no NAT flow", onePacket(t, gr, 7), "source[port 0] gateway[nat-gateway 203.0.113.2:5555 -> 198.51.100.20:9999 7] "+
				"drop[nat-no-flow rule 0 port 0] verdict[2]")
			// an elastic IP whose port is on no node
			if err := g.d.UpsertElasticIP(ElasticIP{Address: eipA, VPC: 100, PrivateIP: portA.IPs[0], PortMAC: portA.MAC}); err != nil {
				t.Fatal(err)
			}
			in := frame{src: outsideHost, dst: eipA, proto: fw.ProtoTCP, sport: 5555, dport: 80, flags: "S"}
			g.expectGatewayDrop(t, DropEIPUnbound, func() tunnelOut { return g.inbound(t, in) })
			expectPath(t, "unbound elastic IP", onePacket(t, gr, 7), "source[port 0] gateway[elastic-ip 203.0.113.2:5555 -> 198.51.100.10:80 100] "+
				"drop[eip-unbound rule 0 port 0] verdict[2]")
			// outbound from a source with neither elastic IP nor NAT gateway
			setFilter(t, TraceFilter{ID: 8, Src: netip.PrefixFrom(portB.IPs[0], 32)})
			out := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: outsideHost, proto: fw.ProtoTCP, sport: 1, dport: 2, flags: "S", ttl: 63}
			g.expectGatewayDrop(t, DropNoRoute, func() tunnelOut { return g.outbound(t, nodeA, out) })
			expectPath(t, "no translation", onePacket(t, gr, 8), "source[port 0] drop[no-route rule 0 port 0] verdict[2]")
		})
	})
}

// TestLiveTraceService: a packet to an east-west VIP reports, at the
// client's port, the backend chosen: for new flows the one lb/maglev's
// table picks (computed in Go here), for the flow's next packet the same
// backend as its stored one; the reply reports its source rewritten back
// to the VIP; a VIP without a usable backend is a drop with its reason;
// north-south, on the backend's node, the backend found by its MAC.
func TestLiveTraceService(t *testing.T) {
	f := newServiceFixture(t)
	s := eastWest(backendB, backendC, backendR)
	f.upsertService(t, s)
	r, err := f.d.TraceEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	set := func(t *testing.T, fs ...TraceFilter) {
		t.Helper()
		if err := f.d.SetTraceFilters(fs); err != nil {
			t.Fatal(err)
		}
	}
	a := portA.IPs[0]
	toVIP := func(sport uint16, flags string) frame {
		return frame{srcMAC: portA.MAC, src: a, dst: svcVIP, proto: fw.ProtoTCP, sport: sport, dport: 80, flags: flags}
	}
	serviceEvent := func(t *testing.T, evs []TraceEvent) TraceEvent {
		t.Helper()
		// at the client's port, right after anti-spoofing, before conntrack
		if len(evs) < 4 || evs[2].Stage != TraceService || evs[3].Stage != TraceConntrack {
			t.Fatalf("no load-balancer stage before conntrack: %s", path(evs))
		}
		return evs[2]
	}

	t.Run("new flows: the Maglev table's backend; the next packet: the stored one", func(t *testing.T) {
		set(t, TraceFilter{ID: 1, Port: portA.ID, Dst: netip.PrefixFrom(svcVIP, 32)})
		seen := map[uint32]int{}
		for sport := uint16(31000); sport < 31024; sport++ {
			want := goChoice(t, s, a, sport)
			f.toService(t, portA, toVIP(sport, "S"), want)
			e := serviceEvent(t, onePacket(t, r, 1))
			wantTo := netip.AddrPortFrom(want.Address, want.Port)
			if ServiceHow(e.Kind) != ServiceMaglev || e.From != netip.AddrPortFrom(svcVIP, 80) || e.To != wantTo || e.A != s.ID || e.B != want.ID {
				t.Fatalf("flow from port %d: %v %v -> %v service %d backend %d; want maglev %v:80 -> %v service %d backend %d",
					sport, ServiceHow(e.Kind), e.From, e.To, e.A, e.B, svcVIP, wantTo, s.ID, want.ID)
			}
			seen[want.ID]++
			if sport%4 == 0 {
				f.toService(t, portA, toVIP(sport, "A"), want)
				e := serviceEvent(t, onePacket(t, r, 1))
				if ServiceHow(e.Kind) != ServiceStored || e.To != wantTo || e.B != want.ID {
					t.Fatalf("established flow from port %d: %v to %v backend %d; want stored, %v backend %d", sport, ServiceHow(e.Kind), e.To, e.B, wantTo, want.ID)
				}
			}
		}
		if len(seen) < 2 {
			t.Fatalf("24 flows all went to backend %v: the test cannot tell a wrong choice", seen)
		}
	})
	t.Run("reply: source back to the VIP", func(t *testing.T) {
		sport := sportWhere(t, func(sp uint16) bool { return goChoice(t, s, a, sp).ID == backendB.ID })
		fl := toVIP(sport, "S")
		set(t)
		f.toService(t, portA, fl, backendB)
		set(t, TraceFilter{ID: 2, Port: portB.ID})
		f.replyFrom(t, backendB, fl, portA, svcVIP, 80)
		evs := onePacket(t, r, 2)
		i := slices.IndexFunc(evs, func(e TraceEvent) bool { return e.Stage == TraceService })
		if i < 0 || evs[i+1].Stage != TraceDeliver {
			t.Fatalf("no load-balancer stage right before the delivery: %s", path(evs))
		}
		if e := evs[i]; ServiceHow(e.Kind) != ServiceReply || e.From != netip.AddrPortFrom(backendB.Address, 8080) || e.To != netip.AddrPortFrom(svcVIP, 80) {
			t.Fatalf("reply: %s", path(evs))
		}
	})
	t.Run("no usable backend: the drop and its reason", func(t *testing.T) {
		none := eastWest(backendB, backendC)
		none.Backends[0].Healthy, none.Backends[1].Draining = false, true
		f.upsertService(t, none)
		set(t, TraceFilter{ID: 3, Port: portA.ID})
		f.expectDrop(t, portA, toVIP(60000, "S").bytes(t), portA.ID, DropLBNoBackend)
		expectPath(t, "no backend", onePacket(t, r, 3), "source[port 1] anti-spoofing drop[lb-no-backend rule 0 port 1] verdict[2]")
	})
	t.Run("north-south, on the backend's node: by the backend port's MAC", func(t *testing.T) {
		f.upsertService(t, northSouth)
		set(t, TraceFilter{ID: 4, Src: netip.PrefixFrom(nsClient, 32)})
		fr := nsFromLB
		fr.srcMAC = mac("02:99:00:00:00:50")
		ret, _ := f.fromOverlay(t, 100, fr.bytes(t))
		if ret != actRedirect {
			t.Fatalf("verdict %d, drops %v", ret, f.drops(t))
		}
		expectPath(t, "north-south", onePacket(t, r, 4), "source[port 0] load-balancer[local 198.51.100.50:443 -> 10.0.1.20:8443 svc 20 backend 0] "+
			"route[kind 1] conntrack[state 0] acl-ingress[rule 0] sg-ingress[rule 2002 est 0] deliver[port 2] verdict[7]")
	})
}

// stagesOf renders each packet of evs (grouped by packet, in order) as
// its stage names with the gateway stages' kinds: "source(3) gateway(1)
// nat(129) tunnel verdict", keyed by the filter id.
func stagesOf(evs []TraceEvent) map[uint32][]string {
	byPkt := map[uint32][]TraceEvent{}
	var order []uint32
	for _, e := range evs {
		if _, ok := byPkt[e.Packet]; !ok {
			order = append(order, e.Packet)
		}
		byPkt[e.Packet] = append(byPkt[e.Packet], e)
	}
	out := map[uint32][]string{}
	for _, p := range order {
		var names []string
		for _, e := range byPkt[p] {
			s := e.Stage.String()
			switch e.Stage {
			case TraceEntry:
				s += fmt.Sprintf("(%d)", e.Prog)
			case TraceGatewayIn, TraceNAT, TraceService:
				s += fmt.Sprintf("(%d)", e.Kind)
			}
			names = append(names, s)
		}
		id := byPkt[p][0].ID
		out[id] = append(out[id], fmt.Sprint(names))
	}
	return out
}

// TestLiveTraceGatewayRealTraffic: the attached programs of a workload node
// and a gateway (gwTopology's real namespaces, VXLAN and uplink), an echo
// from the outside host to w1's elastic IP and its reply, sent for real.
// The request is traced on the gateway from its uplink (elastic IP, DNAT,
// tunnel to w1's node) and on w1's node from the overlay to the delivery;
// the reply on w1's node by its port filter (route outside, tunnel to the
// gateway) and on the gateway from the overlay (SNAT to the elastic IP,
// out of the uplink toward the outside host).
func TestLiveTraceGatewayRealTraffic(t *testing.T) {
	bpffs := privateBPFFS(t)
	inNewNetns(t, func(node netns.NsHandle) {
		g := newGatewayTopology(t, node, bpffs)
		gr, err := g.dg.TraceEvents()
		if err != nil {
			t.Fatal(err)
		}
		defer gr.Close()
		nr, err := g.dn.TraceEvents()
		if err != nil {
			t.Fatal(err)
		}
		defer nr.Close()
		out := netip.PrefixFrom(g.outIP, 32)
		if err := g.dg.SetTraceFilters([]TraceFilter{{ID: 1, VPC: 100, Src: out, Protocol: fw.ProtoICMP}, {ID: 4, VPC: 100, Dst: out, Protocol: fw.ProtoICMP}}); err != nil {
			t.Fatal(err)
		}
		if err := g.dn.SetTraceFilters([]TraceFilter{{ID: 2, VPC: 100, Src: out, Protocol: fw.ProtoICMP}, {ID: 3, Port: 1, Dst: out, Protocol: fw.ProtoICMP}}); err != nil {
			t.Fatal(err)
		}
		inNs(t, g.outNs, node, func() {
			from, err := ping(t, g.eip, 4343)
			if err != nil || from != g.eip {
				t.Fatalf("ping %v: reply from %v, %v", g.eip, from, err)
			}
		})
		gevs := traceEvents(t, gr, 200*time.Millisecond)
		nevs := traceEvents(t, nr, 200*time.Millisecond)
		want := map[string]map[uint32][]string{
			"gateway": {
				1: {"[source(3) gateway(1) nat(129) tunnel verdict]"},
				4: {"[source(2) nat(1) uplink verdict]"},
			},
			"workload node": {
				2: {"[source(2) route conntrack acl-ingress sg-ingress deliver verdict]"},
				3: {"[source(1) anti-spoofing conntrack acl-egress sg-egress route tunnel verdict]"},
			},
		}
		for name, evs := range map[string][]TraceEvent{"gateway": gevs, "workload node": nevs} {
			if got := stagesOf(evs); fmt.Sprint(got) != fmt.Sprint(want[name]) {
				t.Errorf("%s: %v\nwant %v\nevents: %s", name, got, want[name], path(evs))
			}
		}
		for _, e := range gevs {
			switch e.Stage {
			case TraceTunnel:
				if AddrOfU32(e.A) != g.nodeIP || e.B != 100 {
					t.Errorf("gateway tunnel to %v VNI %d, want %v VNI 100", AddrOfU32(e.A), e.B, g.nodeIP)
				}
			case TraceNAT:
				if k := NATKind(e.Kind); k.Dst() && (e.From.Addr() != g.eip || e.To.Addr() != g.w1.address) ||
					!k.Dst() && (e.From.Addr() != g.w1.address || e.To.Addr() != g.eip) {
					t.Errorf("gateway %v %v -> %v", k, e.From, e.To)
				}
			case TraceGatewayOut:
				if int(e.A) != g.uplink.Attrs().Index || AddrOfU32(e.B) != g.outIP || e.To.Addr() != g.outIP || e.From.Addr() != g.eip {
					t.Errorf("out of ifindex %d via %v (%v -> %v), want the uplink %d via %v (%v -> %v)",
						e.A, AddrOfU32(e.B), e.From.Addr(), e.To.Addr(), g.uplink.Attrs().Index, g.outIP, g.eip, g.outIP)
				}
			}
		}
		for _, e := range nevs {
			if e.Stage == TraceTunnel && AddrOfU32(e.A) != g.gwIP {
				t.Errorf("workload node tunnels the reply to %v, want the gateway %v", AddrOfU32(e.A), g.gwIP)
			}
		}
		t.Logf("gateway: %s\nworkload node: %s", path(gevs), path(nevs))
	})
}
