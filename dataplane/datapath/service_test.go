package datapath

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
	"github.com/meridian-sdn/meridian/lb/maglev"
)

// The service fixture: east-west VIP 10.0.9.9:80/tcp in VPC 100 over B
// and C (local) and the remote 10.0.2.40 (and 10.0.2.41, added by some
// tests), all on target port 8080.
var (
	svcVIP    = ip("10.0.9.9")
	remoteIP2 = ip("10.0.2.41")
	backendB  = Backend{ID: 1, Address: portB.IPs[0], Port: 8080, Weight: 1, Healthy: true}
	backendC  = Backend{ID: 2, Address: portC.IPs[0], Port: 8080, Weight: 1, Healthy: true}
	backendR  = Backend{ID: 3, Address: remoteIP, Port: 8080, Weight: 1, Healthy: true}
	backendR2 = Backend{ID: 4, Address: remoteIP2, Port: 8080, Weight: 1, Healthy: true}
)

func eastWest(bs ...Backend) Service {
	return Service{ID: 9, VPC: 100, VIP: svcVIP, Port: 80, Protocol: fw.ProtoTCP, Internal: true, TableSize: 1021, Backends: bs}
}

func newServiceFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	if err := f.d.UpsertRoute(Route{VPC: 100, Prefix: netip.PrefixFrom(remoteIP2, 32), RemoteNode: remoteNode, Subnet: 2}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) upsertService(t *testing.T, s Service) {
	t.Helper()
	if err := f.d.UpsertService(s); err != nil {
		t.Fatal(err)
	}
}

// goChoice is the backend lb/maglev picks for a flow from src:sport to the
// service: what every node computes in Go.
func goChoice(t testing.TB, s Service, src netip.Addr, sport uint16) Backend {
	t.Helper()
	table, err := s.Table()
	if err != nil || table == nil {
		t.Fatalf("table of service %d: %v (nil: %v)", s.ID, err, table == nil)
	}
	var h uint32
	if s.SourceIPPersistence {
		h, err = maglev.FlowHash(src, s.VIP, 0, 0, 0)
	} else {
		h, err = maglev.FlowHash(src, s.VIP, sport, s.Port, s.Protocol)
	}
	if err != nil {
		t.Fatal(err)
	}
	id := table[h%uint32(len(table))]
	for _, b := range s.Backends {
		if b.ID == id {
			return b
		}
	}
	t.Fatalf("table entry %d is no backend", id)
	return Backend{}
}

// portOf is the fixture port with address a, if local.
func portOf(a netip.Addr) (Port, bool) {
	for _, p := range fixturePort[:3] {
		if p.IPs[0] == a {
			return p, true
		}
	}
	return Port{}, false
}

// toService sends fr from port p and checks it left translated to b: the
// destination address and port rewritten with exact checksums, everything
// else as routed; delivered to b's port here or tunnelled to the remote
// node.
func (f *fixture) toService(t *testing.T, p Port, fr frame, b Backend) decoded {
	t.Helper()
	var r tunnelOut
	port, reason, dropped := f.dropDelta(t, func() {
		r = runTunnel(t, f.d.objs.MeridianFromPortTest, p.Ifindex, 0, netip.Addr{}, fr.bytes(t))
	})
	if dropped || r.verdict != actRedirect {
		t.Fatalf("verdict %d (drop at port %d: %v), want redirect", r.verdict, port, reason)
	}
	d := decodeChecked(t, r.frame)
	sport, dport := d.ports()
	if d.dst() != b.Address || dport != b.Port || d.src() != fr.src || sport != fr.sport {
		t.Fatalf("sent %v:%d -> %v:%d, want %v:%d -> backend %d %v:%d", d.src(), sport, d.dst(), dport,
			fr.src, fr.sport, b.ID, b.Address, b.Port)
	}
	if d.tcp != nil && string(d.tcp.Payload) != "hello" {
		t.Fatalf("payload %q changed", d.tcp.Payload)
	}
	if dst, local := portOf(b.Address); local {
		if r.remote.IsValid() || !bytes.Equal(d.eth.DstMAC, dst.MAC) {
			t.Fatalf("to local backend %d: tunnel %v, MAC %v; want delivery to %v", b.ID, r.remote, d.eth.DstMAC, dst.MAC)
		}
	} else if r.remote != remoteNode || r.vni != 100 {
		t.Fatalf("to remote backend %d: tunnel %v VNI %d, want %v VNI 100", b.ID, r.remote, r.vni, remoteNode)
	}
	return d
}

// replyFrom plays backend b's reply to fr (from its port here, or out of
// the overlay for the remote one) and checks the client gets it from the
// VIP, checksums exact.
func (f *fixture) replyFrom(t *testing.T, b Backend, fr frame, client Port, wantSrc netip.Addr, wantSport uint16) decoded {
	t.Helper()
	rep := frame{src: b.Address, dst: fr.src, proto: fr.proto, sport: b.Port, dport: fr.sport, flags: "SA"}
	var r tunnelOut
	port, reason, dropped := f.dropDelta(t, func() {
		if p, local := portOf(b.Address); local {
			rep.srcMAC = p.MAC
			r = runTunnel(t, f.d.objs.MeridianFromPortTest, p.Ifindex, 0, netip.Addr{}, rep.bytes(t))
		} else {
			rep.srcMAC, rep.dstMAC, rep.ttl = mac("02:99:00:00:00:01"), routerMAC, 63
			r = runTunnel(t, f.d.objs.MeridianFromOverlayMark, overlayIfx, 100, remoteNode, rep.bytes(t))
		}
	})
	if dropped || r.verdict != actRedirect || r.remote.IsValid() {
		t.Fatalf("reply: verdict %d tunnel %v (drop at port %d: %v), want delivery to the client", r.verdict, r.remote, port, reason)
	}
	d := decodeChecked(t, r.frame)
	sport, dport := d.ports()
	if !bytes.Equal(d.eth.DstMAC, client.MAC) || d.src() != wantSrc || sport != wantSport || d.dst() != fr.src || dport != fr.sport {
		t.Fatalf("reply delivered to %v as %v:%d -> %v:%d, want %v as %v:%d -> %v:%d", d.eth.DstMAC, d.src(), sport, d.dst(), dport,
			client.MAC, wantSrc, wantSport, fr.src, fr.sport)
	}
	return d
}

// sportWhere finds a client source port whose flow satisfies ok.
func sportWhere(t *testing.T, ok func(sport uint16) bool) uint16 {
	t.Helper()
	for sport := uint16(30000); sport < 40000; sport++ {
		if ok(sport) {
			return sport
		}
	}
	t.Fatal("no source port found")
	return 0
}

func TestServiceEastWest(t *testing.T) {
	f := newServiceFixture(t)
	s := eastWest(backendB, backendC, backendR)
	f.upsertService(t, s)
	a := portA.IPs[0]
	toVIP := func(sport uint16, flags string) frame {
		return frame{srcMAC: portA.MAC, src: a, dst: svcVIP, proto: fw.ProtoTCP, sport: sport, dport: 80, flags: flags}
	}

	t.Run("VIP hit: DNAT to the Maglev choice, reply from the VIP", func(t *testing.T) {
		for _, want := range []Backend{backendB, backendC, backendR} {
			sport := sportWhere(t, func(sp uint16) bool { return goChoice(t, s, a, sp).ID == want.ID })
			fr := toVIP(sport, "S")
			f.toService(t, portA, fr, want)
			f.replyFrom(t, want, fr, portA, svcVIP, 80)
			fr.flags = "A"
			f.toService(t, portA, fr, want)
		}
	})
	t.Run("traffic not to a VIP is unchanged", func(t *testing.T) {
		direct := frame{srcMAC: portA.MAC, src: a, dst: backendB.Address, proto: fw.ProtoTCP, sport: 41000, dport: 8080, flags: "S"}
		f.toService(t, portA, direct, backendB)
		// its reply keeps the backend's address: no reverse translation
		f.replyFrom(t, backendB, direct, portA, backendB.Address, 8080)
		other := direct
		other.dst, other.dport = svcVIP, 81 // the VIP on a port no listener has
		f.expectDrop(t, portA, other.bytes(t), portA.ID, DropNoRoute)
		udp := other
		udp.proto, udp.dport = fw.ProtoUDP, 80 // nor this protocol
		f.expectDrop(t, portA, udp.bytes(t), portA.ID, DropNoRoute)
	})

	// A flow established on X, then a fourth backend that Maglev would
	// now give the flow to: the flow stays on X; new flows see the new table.
	grown := eastWest(backendB, backendC, backendR, backendR2)
	var x Backend
	sticky := sportWhere(t, func(sp uint16) bool {
		x = goChoice(t, s, a, sp)
		return goChoice(t, grown, a, sp).ID == backendR2.ID
	})
	fr := toVIP(sticky, "S")
	f.toService(t, portA, fr, x)
	f.replyFrom(t, x, fr, portA, svcVIP, 80)
	t.Run("established flow keeps its backend when one is added", func(t *testing.T) {
		f.upsertService(t, grown)
		fr.flags = "A"
		for range 3 {
			f.toService(t, portA, fr, x)
		}
		fresh := sportWhere(t, func(sp uint16) bool { return sp != sticky && goChoice(t, grown, a, sp).ID == backendR2.ID })
		f.toService(t, portA, toVIP(fresh, "S"), backendR2)
	})
	t.Run("draining backend keeps its flows, takes no new ones", func(t *testing.T) {
		drained := grown
		drained.Backends = []Backend{backendB, backendC, backendR, backendR2}
		for i := range drained.Backends {
			drained.Backends[i].Draining = drained.Backends[i].ID == x.ID
		}
		f.upsertService(t, drained)
		f.toService(t, portA, fr, x)
		for sp := uint16(50000); sp < 50100; sp++ {
			b := goChoice(t, drained, a, sp)
			if b.ID == x.ID {
				t.Fatalf("Go table gives a new flow to draining backend %d", x.ID)
			}
			f.toService(t, portA, toVIP(sp, "S"), b)
		}
	})
	t.Run("removed backend: its flow is chosen afresh", func(t *testing.T) {
		var rest []Backend
		for _, b := range grown.Backends {
			if b.ID != x.ID {
				rest = append(rest, b)
			}
		}
		shrunk := eastWest(rest...)
		f.upsertService(t, shrunk)
		now := goChoice(t, shrunk, a, sticky)
		if now.ID == x.ID {
			t.Fatal("removed backend still chosen in Go")
		}
		d := f.toService(t, portA, fr, now)
		if d.tcp.SYN {
			t.Fatal("flags changed")
		}
		// and the new backend's replies come from the VIP
		f.replyFrom(t, now, fr, portA, svcVIP, 80)
		f.upsertService(t, grown)
	})
	t.Run("unhealthy backend: its flows are chosen afresh", func(t *testing.T) {
		sp := sportWhere(t, func(sp uint16) bool { return goChoice(t, grown, a, sp).ID == backendC.ID })
		fl := toVIP(sp, "S")
		f.toService(t, portA, fl, backendC)
		f.replyFrom(t, backendC, fl, portA, svcVIP, 80)
		sick := eastWest(backendB, backendC, backendR, backendR2)
		sick.Backends[1].Healthy = false
		f.upsertService(t, sick)
		fl.flags = "A"
		f.toService(t, portA, fl, goChoice(t, sick, a, sp))
	})
	t.Run("no usable backend: dropped", func(t *testing.T) {
		none := eastWest(backendB, backendC)
		none.Backends[0].Healthy, none.Backends[1].Draining = false, true
		f.upsertService(t, none)
		f.expectDrop(t, portA, toVIP(60000, "S").bytes(t), portA.ID, DropLBNoBackend)
	})
	t.Run("source-IP persistence: one backend per client", func(t *testing.T) {
		p := grown
		p.SourceIPPersistence = true
		f.upsertService(t, p)
		for _, src := range portA.IPs {
			want := goChoice(t, p, src, 0)
			for sp := uint16(61000); sp < 61020; sp++ {
				fr := toVIP(sp, "S")
				fr.src = src
				f.toService(t, portA, fr, want)
			}
		}
	})
}

// The data path's Maglev choice is lb/maglev's for 500 random flows, TCP
// and UDP, with weights; and its table is the Go table.
func TestServiceMaglevMatchesGo(t *testing.T) {
	f := newServiceFixture(t)
	bs := []Backend{backendB, backendC, backendR, backendR2}
	for i := range bs {
		bs[i].Weight = uint32(i + 1)
	}
	tcp := Service{ID: 1, VPC: 100, VIP: svcVIP, Port: 80, Protocol: fw.ProtoTCP, Internal: true, Backends: bs}
	udp := Service{ID: 2, VPC: 100, VIP: svcVIP, Port: 53, Protocol: fw.ProtoUDP, Internal: true, Backends: bs}
	f.upsertService(t, tcp)
	f.upsertService(t, udp)
	for _, s := range []Service{tcp, udp} {
		want, err := s.Table()
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.d.ServiceTable(s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != maglev.DefaultSize || !slicesEqual(got, want) {
			t.Fatalf("service %d: data path table (%d entries) differs from the Go table (%d)", s.ID, len(got), len(want))
		}
	}
	rng := rand.New(rand.NewPCG(7, 11))
	seen := map[uint32]int{}
	for i := range 500 {
		s := tcp
		if i%2 == 1 {
			s = udp
		}
		src := portA.IPs[rng.IntN(len(portA.IPs))]
		sport := uint16(1024 + rng.IntN(64000))
		want := goChoice(t, s, src, sport)
		fr := frame{srcMAC: portA.MAC, src: src, dst: svcVIP, proto: s.Protocol, sport: sport, dport: s.Port, flags: "S"}
		f.toService(t, portA, fr, want)
		seen[want.ID]++
	}
	if len(seen) != len(bs) {
		t.Fatalf("500 flows reached backends %v, want all %d", seen, len(bs))
	}
	t.Logf("500 flows per backend (weights 1..4): %v", seen)
}

func slicesEqual(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Tables are rebuilt only when the backends new flows may use change.
func TestServiceTableRebuiltOnlyOnChange(t *testing.T) {
	f := newServiceFixture(t)
	tableID := func() uint32 {
		var id uint32
		if err := f.d.objs.LbTables.Lookup(uint32(9), &id); err != nil {
			t.Fatalf("table of service 9: %v", err)
		}
		return id
	}
	s := eastWest(backendB, backendC, backendR)
	f.upsertService(t, s)
	first := tableID()
	f.upsertService(t, s)
	moved := s
	moved.VIP = ip("10.0.9.10") // the listener moves; the table stays
	f.upsertService(t, moved)
	if got := tableID(); got != first {
		t.Fatalf("re-applying the same backends replaced the table (%d -> %d)", first, got)
	}
	if ids, err := f.d.ServiceIDs(); err != nil || len(ids) != 1 {
		t.Fatalf("services after a VIP change: %v, %v", ids, err)
	}
	var n uint32
	if err := f.d.objs.SvcAddrs.Lookup(bpf.MeridianSvcAddrKey{Vpc: 100, Vip: be32(moved.VIP)}, &n); err != nil || n != 1 ||
		countEntries(t, f.d.objs.SvcAddrs) != 1 {
		t.Fatalf("proxy ARP after a VIP change: new VIP count %d (%v), %d entries", n, err, countEntries(t, f.d.objs.SvcAddrs))
	}
	f.expectDrop(t, portA, frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: svcVIP, proto: fw.ProtoTCP, sport: 1, dport: 80, flags: "S"}.bytes(t),
		portA.ID, DropNoRoute)
	sick := moved
	sick.Backends = []Backend{backendB, backendC, backendR}
	sick.Backends[2].Healthy = false
	f.upsertService(t, sick)
	if got := tableID(); got == first {
		t.Fatal("a backend left the table's inputs but the table was kept")
	}
	if err := f.d.DeleteService(9); err != nil {
		t.Fatal(err)
	}
	for name, n := range map[string]int{"services": countEntries(t, f.d.objs.Services), "lb_tables": countEntries(t, f.d.objs.LbTables),
		"lb_backends": countEntries(t, f.d.objs.LbBackends), "lb_local": countEntries(t, f.d.objs.LbLocal),
		"svc_addrs": countEntries(t, f.d.objs.SvcAddrs)} {
		if n != 0 {
			t.Fatalf("%s has %d entries after delete", name, n)
		}
	}
}

func TestServiceBadInputChangesNothing(t *testing.T) {
	f := newServiceFixture(t)
	good := eastWest(backendB, backendC)
	f.upsertService(t, good)
	before := countEntries(t, f.d.objs.LbBackends)
	bad := map[string]func(s *Service){
		"id 0":              func(s *Service) { s.ID = 0 },
		"IPv6 VIP":          func(s *Service) { s.VIP = ip("fd00::1") },
		"protocol":          func(s *Service) { s.Protocol = 1 },
		"port 0":            func(s *Service) { s.Port = 0 },
		"table not prime":   func(s *Service) { s.TableSize = 1024 },
		"weight 0":          func(s *Service) { s.Backends[0].Weight = 0 },
		"duplicate id":      func(s *Service) { s.Backends[1].ID = s.Backends[0].ID },
		"duplicate key":     func(s *Service) { s.Backends[1].Address = s.Backends[0].Address },
		"local without MAC": func(s *Service) { s.Backends[0].Local = true },
	}
	for name, mut := range bad {
		s := eastWest(backendB, backendC, backendR)
		s.Backends = append([]Backend{}, s.Backends...)
		mut(&s)
		if err := f.d.UpsertService(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	taken := eastWest(backendR)
	taken.ID = 10 // another service on the same listener
	if err := f.d.UpsertService(taken); err == nil {
		t.Error("a second service on a taken listener: accepted")
	}
	if got := countEntries(t, f.d.objs.LbBackends); got != before {
		t.Fatalf("bad input changed lb_backends: %d -> %d entries", before, got)
	}
	f.toService(t, portA, frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: svcVIP, proto: fw.ProtoTCP, sport: 2, dport: 80, flags: "S"},
		goChoice(t, good, portA.IPs[0], 2))
}

// North-south, on the backend's node: the load balancer's packet arrives
// over the overlay still addressed to the public VIP, with the backend
// port's MAC; it is translated to that backend and its policy sees the
// translated packet; the reply leaves from the VIP to a gateway.
var (
	nsVIP       = ip("198.51.100.50")
	nsClient    = ip("203.0.113.2")
	lbNode      = ip("192.0.2.50")
	nsBackendB  = Backend{ID: 1, Address: portB.IPs[0], Port: 8443, Weight: 1, Healthy: true, Local: true, PortMAC: portB.MAC}
	nsBackendR  = Backend{ID: 2, Address: remoteIP, Port: 8443, Weight: 1, Healthy: true}
	nsGateways  = []netip.Addr{ip("192.0.2.101"), ip("192.0.2.102")}
	northSouth  = Service{ID: 20, VPC: 100, VIP: nsVIP, Port: 443, Protocol: fw.ProtoTCP, TableSize: 251, Backends: []Backend{nsBackendB, nsBackendR}}
	nsFromLB    = frame{dstMAC: portB.MAC, src: nsClient, dst: nsVIP, proto: fw.ProtoTCP, sport: 5555, dport: 443, flags: "S", ttl: 63}
	nsFromOwner = frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: nsClient, proto: fw.ProtoTCP, sport: 8443, dport: 5555, flags: "SA"}
)

func TestServiceNorthSouthBackendNode(t *testing.T) {
	f := newServiceFixture(t)
	f.upsertService(t, northSouth)
	if err := f.d.SetGateways(nsGateways); err != nil {
		t.Fatal(err)
	}
	fromLB := func(fr frame) tunnelOut {
		if fr.srcMAC == nil {
			fr.srcMAC = mac("02:99:00:00:00:50")
		}
		return runTunnel(t, f.d.objs.MeridianFromOverlayMark, overlayIfx, 100, lbNode, fr.bytes(t))
	}

	t.Run("VIP packet for a local backend's MAC: DNAT and delivery", func(t *testing.T) {
		var r tunnelOut
		port, reason, dropped := f.dropDelta(t, func() { r = fromLB(nsFromLB) })
		if dropped || r.verdict != actRedirect || r.remote.IsValid() {
			t.Fatalf("verdict %d tunnel %v (drop at port %d: %v), want delivery to B", r.verdict, r.remote, port, reason)
		}
		d := decodeChecked(t, r.frame)
		if !bytes.Equal(d.eth.DstMAC, portB.MAC) || d.src() != nsClient || d.dst() != portB.IPs[0] ||
			d.tcp.SrcPort != 5555 || d.tcp.DstPort != 8443 || d.ip.TTL != 63 || string(d.tcp.Payload) != "hello" {
			t.Fatalf("delivered to %v: %v:%d -> %v:%d TTL %d", d.eth.DstMAC, d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort, d.ip.TTL)
		}
	})
	t.Run("reply: source VIP, tunnelled to a live gateway", func(t *testing.T) {
		var r tunnelOut
		port, reason, dropped := f.dropDelta(t, func() {
			r = runTunnel(t, f.d.objs.MeridianFromPortTest, portB.Ifindex, 0, netip.Addr{}, nsFromOwner.bytes(t))
		})
		if dropped || r.verdict != actRedirect || !slicesContains(nsGateways, r.remote) || r.vni != 100 {
			t.Fatalf("verdict %d to %v VNI %d (drop at port %d: %v), want a gateway, VNI 100", r.verdict, r.remote, r.vni, port, reason)
		}
		d := decodeChecked(t, r.frame)
		if d.src() != nsVIP || d.tcp.SrcPort != 443 || d.dst() != nsClient || d.tcp.DstPort != 5555 || d.ip.TTL != 63 {
			t.Fatalf("reply %v:%d -> %v:%d TTL %d, want %v:443 -> %v:5555 TTL 63", d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort, d.ip.TTL, nsVIP, nsClient)
		}
		if err := f.d.SetGateways(nil); err != nil {
			t.Fatal(err)
		}
		again := nsFromOwner
		again.flags = "A"
		f.expectDrop(t, portB, again.bytes(t), portB.ID, DropNoGateway)
		if err := f.d.SetGateways(nsGateways); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("VIP packet for a MAC that is no backend here: dropped", func(t *testing.T) {
		fr := nsFromLB
		fr.dstMAC = portC.MAC
		var r tunnelOut
		_, reason, ok := f.dropDelta(t, func() { r = fromLB(fr) })
		if r.verdict != actShot || !ok || reason != DropNotLocal {
			t.Fatalf("verdict %d drop %v (%v), want %v", r.verdict, reason, ok, DropNotLocal)
		}
	})
	t.Run("the backend's policy sees the translated packet", func(t *testing.T) {
		f.policies[2] = fw.SecurityGroupPolicy{ID: 2, Rules: []fw.SGRule{
			{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 443, To: 443}, RemoteCIDR: netip.MustParsePrefix("0.0.0.0/0")},
		}}
		f.install(t)
		fr := nsFromLB
		fr.sport = 5556
		var r tunnelOut
		port, reason, ok := f.dropDelta(t, func() { r = fromLB(fr) })
		if r.verdict != actShot || !ok || port != portB.ID || reason != DropSGIngress {
			t.Fatalf("verdict %d drop %d %v (%v), want B's SG ingress (443 allowed, the packet is for 8443)", r.verdict, port, reason, ok)
		}
	})
}

// On a gateway, the reply of a north-south service (source VIP:port) goes
// out of the uplink unchanged; any other source of that address is not.
func TestServiceNorthSouthGateway(t *testing.T) {
	newGateway(t, func(g *gateway) {
		svc := northSouth
		svc.Backends = []Backend{nsBackendR, {ID: 1, Address: portB.IPs[0], Port: 8443, Weight: 1, Healthy: true}}
		if err := g.d.UpsertService(svc); err != nil {
			t.Fatal(err)
		}
		g.run(t, "VIP-sourced reply: out of the uplink, untranslated", func(t *testing.T) {
			out := nsFromOwner
			out.src, out.sport, out.dst, out.ttl = nsVIP, 443, outsideHost, 63
			d := expectToFabric(t, g, g.outbound(t, nodeA, out))
			if d.src() != nsVIP || d.tcp.SrcPort != 443 || d.dst() != outsideHost || d.tcp.DstPort != 5555 || d.ip.TTL != 63 {
				t.Fatalf("left as %v:%d -> %v:%d TTL %d", d.src(), d.tcp.SrcPort, d.dst(), d.tcp.DstPort, d.ip.TTL)
			}
		})
		g.run(t, "the VIP on another port: not a service reply", func(t *testing.T) {
			out := nsFromOwner
			out.src, out.sport, out.dst, out.ttl = nsVIP, 444, outsideHost, 63
			g.expectGatewayDrop(t, DropNoRoute, func() tunnelOut { return g.outbound(t, nodeA, out) })
		})
	})
}

// An east-west VIP inside a client's subnet is reached directly (no
// gateway): proxy ARP answers for it while a listener uses it, even though
// the VPC CIDR around it has no port there.
func TestServiceVIPAnsweredByProxyARP(t *testing.T) {
	f := newServiceFixture(t)
	if err := f.d.UpsertVPCPrefix(100, netip.MustParsePrefix("10.0.0.0/16")); err != nil {
		t.Fatal(err)
	}
	inSubnet := ip("10.0.1.99")
	req := arpFrame(t, portA.MAC, 1, portA.IPs[0], inSubnet)
	f.expectDrop(t, portA, req, portA.ID, DropARP)

	s := eastWest(backendB, backendC)
	s.VIP = inSubnet
	f.upsertService(t, s)
	udp := s
	udp.ID, udp.Protocol = 10, fw.ProtoUDP // a second listener on the address
	f.upsertService(t, udp)
	ret, out := f.fromPort(t, portA, req)
	if ret != actRedirect {
		t.Fatalf("ARP for the VIP: verdict %d, want the proxy's answer", ret)
	}
	if !bytes.Equal(out[22:28], routerMAC) || !bytes.Equal(out[28:32], inSubnet.AsSlice()) {
		t.Fatalf("ARP answer says %v is at %v", out[28:32], out[22:28])
	}
	f.toService(t, portA, frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: inSubnet, proto: fw.ProtoTCP, sport: 3, dport: 80, flags: "S"},
		goChoice(t, s, portA.IPs[0], 3))

	if err := f.d.DeleteService(s.ID); err != nil {
		t.Fatal(err)
	}
	if ret, _ := f.fromPort(t, portA, req); ret != actRedirect {
		t.Fatal("ARP for the VIP unanswered while the UDP listener remains")
	}
	ns := udp
	ns.Internal = false // a north-south listener's address is no neighbour
	f.upsertService(t, ns)
	f.expectDrop(t, portA, req, portA.ID, DropARP)
	if err := f.d.DeleteService(udp.ID); err != nil {
		t.Fatal(err)
	}
	if n := countEntries(t, f.d.objs.SvcAddrs); n != 0 {
		t.Fatalf("svc_addrs has %d entries with no listener", n)
	}
}
