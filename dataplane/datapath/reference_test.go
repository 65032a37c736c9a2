package datapath

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
	"github.com/meridian-sdn/meridian/fw/fwtest"
)

// refPipeline is the oracle for the BPF programs: the data-path pipeline of
// doc.go written plainly over the fixture, with rule walks (fw's reference
// evaluators) instead of compiled tables, and a map for conntrack.
type refPipeline struct {
	f  *fixture
	ct map[refFlow]*refEntry
}

type refFlow struct {
	vpc          uint32
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
}

type refEntry struct {
	state uint8
	fin   uint8
}

// Conntrack states, as in bpf/c/maps.h.
const (
	ctSynSent     = 1
	ctEstablished = 2
	ctFinWait     = 3
	ctClosed      = 4
	ctUDP         = 5
	ctOther       = 6
)

// verdict is what happened to a packet.
type verdict struct {
	deliver  uint32 // port id it was delivered to
	remote   bool   // sent to the overlay
	reason   DropReason
	dropPort uint32
	rule     uint32 // ACL rule of an ACL drop
}

func (v verdict) String() string {
	switch {
	case v.deliver != 0:
		return fmt.Sprintf("deliver to port %d", v.deliver)
	case v.remote:
		return "to overlay"
	}
	return fmt.Sprintf("drop %v at port %d (rule %d)", v.reason, v.dropPort, v.rule)
}

func (fr frame) packet() fw.Packet {
	p := fw.Packet{Src: fr.src, Dst: fr.dst, Protocol: fr.proto}
	switch fr.proto {
	case fw.ProtoTCP, fw.ProtoUDP:
		p.SrcPort, p.DstPort = fr.sport, fr.dport
	case fw.ProtoICMP:
		p.ICMPType, p.ICMPCode = fr.icmpType, fr.icmpCode
	}
	return p
}

func (fr frame) flow(vpc uint32) refFlow {
	k := refFlow{vpc: vpc, src: fr.src, dst: fr.dst, proto: fr.proto}
	switch fr.proto {
	case fw.ProtoTCP, fw.ProtoUDP:
		k.sport, k.dport = fr.sport, fr.dport
	case fw.ProtoICMP:
		switch fr.icmpType {
		case 8: // echo request
			k.sport, k.dport = fr.icmpID, fr.icmpID+1
		case 0: // echo reply
			k.sport, k.dport = fr.icmpID+1, fr.icmpID
		}
	}
	return k
}

func (k refFlow) reversed() refFlow {
	return refFlow{vpc: k.vpc, src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, proto: k.proto}
}

func flagBits(s string) uint8 {
	var b uint8
	for _, c := range s {
		b |= map[rune]uint8{'F': 0x01, 'S': 0x02, 'R': 0x04, 'A': 0x10}[c]
	}
	return b
}

// lookup mirrors ct_lookup: the entry of the flow and whether fr is a reply.
func (r *refPipeline) lookup(fr frame, vpc uint32) (*refEntry, bool) {
	k := fr.flow(vpc)
	e, reply := r.ct[k], false
	if e == nil {
		e, reply = r.ct[k.reversed()], true
		if e == nil {
			return nil, false
		}
	}
	flags := flagBits(fr.flags)
	newSyn := fr.proto == fw.ProtoTCP && flags&(0x02|0x10|0x04) == 0x02
	if e.state == ctClosed && !reply && newSyn {
		return nil, false
	}
	return e, reply
}

func tcpNext(e *refEntry, flags uint8, reply bool) {
	switch {
	case flags&0x04 != 0:
		e.state = ctClosed
	case flags&0x01 != 0:
		if reply {
			e.fin |= 2
		} else {
			e.fin |= 1
		}
		e.state = ctFinWait
		if e.fin == 3 {
			e.state = ctClosed
		}
	case e.state == ctSynSent && reply:
		e.state = ctEstablished
	}
}

// commit mirrors ct_commit.
func (r *refPipeline) commit(fr frame, vpc uint32, e *refEntry, reply bool) {
	flags := flagBits(fr.flags)
	if e != nil {
		if fr.proto == fw.ProtoTCP {
			tcpNext(e, flags, reply)
		}
		return
	}
	n := &refEntry{state: ctOther}
	switch fr.proto {
	case fw.ProtoTCP:
		n.state = ctEstablished
		if flags&(0x02|0x10) == 0x02 {
			n.state = ctSynSent
		}
		tcpNext(n, flags, false)
	case fw.ProtoUDP:
		n.state = ctUDP
	}
	r.ct[fr.flow(vpc)] = n
}

func (r *refPipeline) portByAddr(vpc uint32, a netip.Addr) (Port, bool) {
	for _, p := range fixturePort {
		if p.VPC == vpc && slices.Contains(p.IPs, a) {
			return p, true
		}
	}
	return Port{}, false
}

func (r *refPipeline) policy(p Port) *fw.SecurityGroupPolicy {
	pol := r.f.policies[p.SGPolicy]
	return &pol
}

// ingress is the receiving half shared by both programs.
func (r *refPipeline) ingress(fr frame, vpc uint32, dst Port, est bool) (verdict, bool) {
	pkt := fr.packet()
	if ok, rule := r.f.acls[dst.Subnet].Evaluate(fw.Ingress, pkt); !ok {
		return verdict{reason: DropACLIngress, dropPort: dst.ID, rule: rule}, false
	}
	if pol := r.policy(dst); !est {
		if ok, _ := pol.Evaluate(fw.Ingress, pkt, r.f.groups[vpc]); !ok {
			return verdict{reason: DropSGIngress, dropPort: dst.ID}, false
		}
	}
	return verdict{}, true
}

func (r *refPipeline) fromPort(src Port, fr frame) verdict {
	if fr.moreFragments || fr.fragOffset != 0 {
		return verdict{reason: DropFragment, dropPort: src.ID}
	}
	if !slices.Contains(src.IPs, fr.src) {
		return verdict{reason: DropSpoofIP, dropPort: src.ID}
	}
	vpc, pkt := src.VPC, fr.packet()
	e, reply := r.lookup(fr, vpc)
	est := e != nil
	if ok, rule := r.f.acls[src.Subnet].Evaluate(fw.Egress, pkt); !ok {
		return verdict{reason: DropACLEgress, dropPort: src.ID, rule: rule}
	}
	if !est {
		if ok, _ := r.policy(src).Evaluate(fw.Egress, pkt, r.f.groups[vpc]); !ok {
			return verdict{reason: DropSGEgress, dropPort: src.ID}
		}
	}
	dst, local := r.portByAddr(vpc, fr.dst)
	var cross bool
	switch {
	case local:
		cross = dst.Subnet != src.Subnet
	case vpc == 100 && fr.dst == remoteIP:
		cross = src.Subnet != 2
	default:
		return verdict{reason: DropNoRoute, dropPort: src.ID}
	}
	if cross && fr.ttl <= 1 {
		return verdict{reason: DropTTLExceeded, dropPort: src.ID}
	}
	if !local {
		r.commit(fr, vpc, e, reply)
		return verdict{remote: true}
	}
	if v, ok := r.ingress(fr, vpc, dst, est); !ok {
		return v
	}
	r.commit(fr, vpc, e, reply)
	return verdict{deliver: dst.ID}
}

func (r *refPipeline) fromOverlay(vni uint32, fr frame) verdict {
	if fr.moreFragments || fr.fragOffset != 0 {
		return verdict{reason: DropFragment}
	}
	dst, local := r.portByAddr(vni, fr.dst)
	switch {
	case local:
	case vni == 100 && fr.dst == remoteIP:
		return verdict{reason: DropNotLocal}
	default:
		return verdict{reason: DropNoRoute}
	}
	e, reply := r.lookup(fr, vni)
	if v, ok := r.ingress(fr, vni, dst, e != nil); !ok {
		return v
	}
	r.commit(fr, vni, e, reply)
	return verdict{deliver: dst.ID}
}

// ---- the differential driver ----

// step is one packet of a case: sent by a port, or arriving over VXLAN.
type step struct {
	from    Port   // zero ID: from the overlay
	vni     uint32 // overlay only
	frame   frame
	comment string
}

func (s step) String() string {
	src := fmt.Sprintf("port %d", s.from.ID)
	if s.from.ID == 0 {
		src = fmt.Sprintf("overlay vni %d", s.vni)
	}
	fr := s.frame
	return fmt.Sprintf("%s: %v:%d -> %v:%d proto %d flags %q icmp %d/%d ttl %d frag %v/%d %s", src, fr.src, fr.sport,
		fr.dst, fr.dport, fr.proto, fr.flags, fr.icmpType, fr.icmpCode, fr.ttl, fr.moreFragments, fr.fragOffset, s.comment)
}

var allHosts = func() []netip.Addr {
	out := []netip.Addr{remoteIP, ip("10.0.1.99")}
	for _, p := range fixturePort {
		out = append(out, p.IPs...)
	}
	return out
}()

// randomCase draws rule sets for every port and subnet and a sequence of
// packets, some of them replies to earlier ones.
func randomCase(f *fixture, seed uint64) []step {
	g := fwtest.New(seed)
	g.Hosts = allHosts
	groups := []uint32{500, 501}
	for _, vpc := range []uint32{100, 200} {
		f.groups[vpc] = g.Groups(groups)
	}
	// Broad allow rules now and then, so that enough packets make it all
	// the way through for delivery to be tested as much as denial.
	any4 := netip.MustParsePrefix("0.0.0.0/0")
	for _, p := range fixturePort {
		pol := g.Policy(p.SGPolicy, g.R.IntN(8), groups)
		for _, d := range []fw.Direction{fw.Egress, fw.Ingress} {
			if g.R.IntN(2) == 0 {
				pol.Rules = append(pol.Rules, fw.SGRule{ID: g.NextID, Direction: d, RemoteCIDR: any4})
				g.NextID++
			}
		}
		f.policies[p.SGPolicy] = pol
	}
	for sub := range gateways {
		f.acls[sub] = nil
		if g.R.IntN(2) == 0 {
			acl := g.ACL(600+sub, g.R.IntN(10))
			for _, d := range []fw.Direction{fw.Egress, fw.Ingress} {
				if g.R.IntN(3) != 0 {
					acl.Rules = append(acl.Rules, fw.ACLRule{ID: g.NextID, Number: 10000, Direction: d, Action: fw.Allow, CIDR: any4})
					g.NextID++
				}
			}
			f.acls[sub] = &acl
		}
	}
	var steps []step
	for range 8 {
		var s step
		if len(steps) > 0 && g.R.IntN(3) == 0 {
			// a reply to an earlier packet, from its destination
			prev := steps[g.R.IntN(len(steps))]
			fr := prev.frame
			fr.src, fr.dst, fr.sport, fr.dport = fr.dst, fr.src, fr.dport, fr.sport
			if fr.proto == fw.ProtoICMP && fr.icmpType == 8 {
				fr.icmpType = 0
			}
			fr.flags = []string{"SA", "A", "FA", "R"}[g.R.IntN(4)]
			vpc := prev.vni
			if prev.from.ID != 0 {
				vpc = prev.from.VPC
			}
			dst, local := (&refPipeline{}).portByAddr(vpc, fr.src)
			if !local {
				s = step{vni: vpc, frame: fr, comment: "(reply over overlay)"}
			} else {
				s = step{from: dst, frame: fr, comment: "(reply)"}
			}
		} else {
			pkt := g.Packet(g.Addr(), g.Addr())
			fr := frame{dst: pkt.Dst, proto: pkt.Protocol, sport: pkt.SrcPort, dport: pkt.DstPort,
				icmpType: pkt.ICMPType, icmpCode: pkt.ICMPCode, icmpID: uint16(g.R.IntN(3)),
				flags: []string{"S", "S", "A", "F", "R"}[g.R.IntN(5)]}
			if g.R.IntN(6) == 0 {
				s = step{vni: []uint32{100, 200}[g.R.IntN(2)], frame: fr}
				s.frame.src = pkt.Src
			} else {
				s = step{from: fixturePort[g.R.IntN(len(fixturePort))], frame: fr}
				s.frame.src = s.from.IPs[g.R.IntN(len(s.from.IPs))]
				if g.R.IntN(20) == 0 {
					s.frame.src = pkt.Src // likely spoofed
				}
				if g.R.IntN(3) != 0 { // stay inside the VPC more often
					s.frame.dst = allHosts[g.R.IntN(len(allHosts))]
				}
			}
		}
		s.frame.ttl = []uint8{64, 64, 64, 2, 1}[g.R.IntN(5)]
		if g.R.IntN(40) == 0 {
			s.frame.moreFragments = true
		}
		if s.from.ID != 0 {
			s.frame.srcMAC = s.from.MAC
		} else {
			s.frame.srcMAC = mac("02:99:00:00:00:01")
		}
		steps = append(steps, s)
	}
	return steps
}

func (f *fixture) flushConntrack(t testing.TB) {
	t.Helper()
	if err := deleteWhere(f.d.objs.Conntrack, func(bpf.MeridianCtKey) bool { return true }); err != nil {
		t.Fatalf("flush conntrack: %v", err)
	}
}

// runCase installs the case's rules, plays its packets through the BPF
// programs and the reference, and reports the first disagreement.
func runCase(t testing.TB, f *fixture, events *EventReader, seed uint64, outcomes map[string]int) {
	t.Helper()
	steps := randomCase(f, seed)
	f.install(t)
	f.flushConntrack(t)
	ref := &refPipeline{f: f, ct: map[refFlow]*refEntry{}}
	for i, s := range steps {
		var want verdict
		var ret uint32
		var out []byte
		pkt := s.frame.bytes(t)
		port, reason, dropped := f.dropDelta(t, func() {
			if s.from.ID != 0 {
				want = ref.fromPort(s.from, s.frame)
				ret, out = f.fromPort(t, s.from, pkt)
			} else {
				want = ref.fromOverlay(s.vni, s.frame)
				ret, out = f.fromOverlay(t, s.vni, pkt)
			}
		})
		got := verdict{reason: reason, dropPort: port}
		if dropped && (reason == DropSGEgress || reason == DropSGIngress || reason == DropACLEgress || reason == DropACLIngress) {
			got.rule = nextEvent(t, events).Rule
		}
		if !dropped && ret == actRedirect {
			got = verdict{remote: true}
			for _, p := range fixturePort {
				if bytes.Equal(out[0:6], p.MAC) && bytes.Equal(out[6:12], routerMAC) {
					got = verdict{deliver: p.ID}
				}
			}
		} else if !dropped || ret != actShot {
			got = verdict{reason: DropReason(1000 + ret)} // nonsense on purpose
		}
		if got != want {
			t.Fatalf("seed %d step %d: %v\nBPF: %v\nreference: %v\n%s", seed, i, s, got, want, describe(f, steps, i))
		}
		switch {
		case want.deliver != 0:
			outcomes["delivered"]++
		case want.remote:
			outcomes["to-overlay"]++
		default:
			outcomes[want.reason.String()]++
		}
	}
}

func describe(f *fixture, steps []step, upto int) string {
	var b strings.Builder
	for id, p := range f.policies {
		fmt.Fprintf(&b, "policy %d: %+v\n", id, p.Rules)
	}
	for sub, a := range f.acls {
		if a != nil {
			fmt.Fprintf(&b, "subnet %d acl: %+v\n", sub, a.Rules)
		}
	}
	fmt.Fprintf(&b, "groups: %v\n", f.groups)
	for i := range upto {
		fmt.Fprintf(&b, "earlier step %d: %v\n", i, steps[i])
	}
	return b.String()
}

// TestDifferentialPipeline plays a few thousand random packets against
// random rule sets, deterministically.
func TestDifferentialPipeline(t *testing.T) {
	f := newFixture(t)
	events, err := f.d.DropEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	outcomes := map[string]int{}
	for seed := range uint64(400) {
		runCase(t, f, events, seed, outcomes)
	}
	t.Logf("outcomes: %v", outcomes)
	// Guard against a generator that drifts into testing one thing only.
	for _, o := range []string{"delivered", "to-overlay", "sg-egress", "sg-ingress", "acl-egress", "acl-ingress", "no-route", "ttl-exceeded", "spoofed-ip"} {
		if outcomes[o] < 10 {
			t.Errorf("only %d packets ended %s", outcomes[o], o)
		}
	}
	noEvent(t, events)
}

// FuzzPipeline is the open-ended version: go test -fuzz=FuzzPipeline.
func FuzzPipeline(f *testing.F) {
	for _, s := range []uint64{0, 1, 42, 1 << 40} {
		f.Add(s)
	}
	fx := newFixture(f)
	events, err := fx.d.DropEvents()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { events.Close() })
	f.Fuzz(func(t *testing.T, seed uint64) {
		runCase(t, fx, events, seed, map[string]int{})
	})
}
