package datapath

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/meridian-sdn/meridian/fw"
)

// benchMatch is a rule body that never matches the benchmark packet
// (TCP 10.0.1.10:40000 -> 10.0.2.30:80) although its CIDR may contain
// either address: the tables are as deep as with real rules.
func benchMatch(r *rand.Rand) (uint8, fw.PortRange, *fw.ICMPMatch, netip.Prefix) {
	cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))}), 8+r.IntN(25)).Masked()
	switch r.IntN(4) {
	case 0:
		return fw.ProtoUDP, fw.PortRange{From: uint16(r.IntN(1000)), To: uint16(1000 + r.IntN(60000))}, nil, cidr
	case 1:
		return fw.ProtoICMP, fw.PortRange{}, &fw.ICMPMatch{Type: uint8(r.IntN(20)), AnyCode: r.IntN(2) == 0}, cidr
	case 2:
		return 47, fw.PortRange{}, nil, cidr
	default:
		lo := 1000 + r.IntN(60000)
		return fw.ProtoTCP, fw.PortRange{From: uint16(lo), To: uint16(lo + r.IntN(65535-lo))}, nil, cidr
	}
}

// benchFixture installs n security-group rules and n ACL rules. A's egress
// allows the packet with one rule among n/2; C's ingress has n/2 rules and,
// if admit, one that admits it (last): without it the packet goes through
// every stage and is dropped by the last lookup.
func benchFixture(b testing.TB, n int, admit bool) *fixture {
	f := newFixture(b)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	id := uint32(1)
	sgRules := func(d fw.Direction, count int) []fw.SGRule {
		var out []fw.SGRule
		for range count {
			proto, ports, icmp, cidr := benchMatch(r)
			out = append(out, fw.SGRule{ID: id, Direction: d, Protocol: proto, Ports: ports, ICMP: icmp, RemoteCIDR: cidr})
			id++
		}
		return out
	}
	tcp80 := fw.PortRange{From: 80, To: 80}
	egress := sgRules(fw.Egress, n/2)
	egress = append(egress[:len(egress)/2], append([]fw.SGRule{{ID: 999999, Direction: fw.Egress, Protocol: fw.ProtoTCP,
		Ports: tcp80, RemoteCIDR: netip.MustParsePrefix("10.0.2.0/24")}}, egress[len(egress)/2:]...)...)
	f.policies[1] = fw.SecurityGroupPolicy{ID: 1, Rules: egress}
	ingress := sgRules(fw.Ingress, n-n/2)
	if admit {
		ingress = append(ingress, fw.SGRule{ID: 999998, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: tcp80,
			RemoteCIDR: netip.MustParsePrefix("10.0.1.0/24")})
	}
	f.policies[3] = fw.SecurityGroupPolicy{ID: 3, Rules: ingress}

	// ACLs: subnet 1 egress and subnet 2 ingress get up to 250 rules each
	// ending in an allow-all; the rest of the n go to ACLs of other subnets.
	aclRules := func(d fw.Direction, count int) []fw.ACLRule {
		var out []fw.ACLRule
		for i := range count {
			proto, ports, icmp, cidr := benchMatch(r)
			out = append(out, fw.ACLRule{ID: id, Number: uint32(i + 1), Direction: d, Action: fw.ACLAction(r.IntN(2)),
				Protocol: proto, Ports: ports, ICMP: icmp, CIDR: cidr})
			id++
		}
		return out
	}
	attached := min(n/2, fw.MaxACLRules-6)
	allowAll := func(d fw.Direction) fw.ACLRule {
		id++
		return fw.ACLRule{ID: id, Number: 32000, Direction: d, Action: fw.Allow, CIDR: netip.MustParsePrefix("0.0.0.0/0")}
	}
	f.acls[1] = &fw.ACL{ID: 801, Rules: append(aclRules(fw.Egress, attached), allowAll(fw.Egress), allowAll(fw.Ingress))}
	f.acls[2] = &fw.ACL{ID: 802, Rules: append(aclRules(fw.Ingress, attached), allowAll(fw.Ingress), allowAll(fw.Egress))}
	f.install(b)
	for rest, aclID := n-2*attached, uint32(900); rest > 0; aclID++ {
		k := min(rest, fw.MaxACLRules)
		c, err := fw.CompileACL(&fw.ACL{ID: aclID, Rules: aclRules(fw.Egress, k)})
		if err != nil {
			b.Fatal(err)
		}
		if err := f.d.ApplyACL(c); err != nil {
			b.Fatal(err)
		}
		rest -= k
	}
	return f
}

// BenchmarkPortIngress measures ns/packet of meridian_from_port, A -> C
// across subnets, with 10, 1,000 and 10,000 security-group rules and as
// many ACL rules installed:
//
//   - new-flow: conntrack misses and every stage runs (ACL egress, SG
//     egress, route, ACL ingress, SG ingress), the last lookup denies — the
//     most policy work a packet can cost;
//   - established: conntrack hit, ACLs on both sides, redirect.
//
// It logs the 10,000 / 10 ratio of each (target <= 1.2).
func BenchmarkPortIngress(b *testing.B) {
	sizes := []int{10, 1000, 10000}
	for _, mode := range []string{"new-flow", "established"} {
		perPacket := map[int]float64{}
		for _, n := range sizes {
			b.Run(fmt.Sprintf("%s/rules=%d", mode, n), func(b *testing.B) {
				f := benchFixture(b, n, mode == "established")
				fr := from(portA, portC.IPs[0])
				want := uint32(actShot)
				if mode == "established" {
					fr.flags = "A"
					want = actRedirect
				}
				data := fr.bytes(b)
				// the first packet of an allowed flow creates its conntrack entry
				if ret, _ := f.fromPort(b, portA, data); ret != want {
					b.Fatalf("%s: verdict %d, want %d", mode, ret, want)
				}
				benchRun(b, f, data, want, perPacket, n)
			})
		}
		if perPacket[10] > 0 && perPacket[10000] > 0 {
			b.Logf("%s: %.1f ns/packet with 10 rules, %.1f with 1,000, %.1f with 10,000: ratio 10,000/10 = %.2f",
				mode, perPacket[10], perPacket[1000], perPacket[10000], perPacket[10000]/perPacket[10])
		}
	}
}

func benchRun(b *testing.B, f *fixture, data []byte, want uint32, perPacket map[int]float64, n int) {
	var ctx skbContext
	ctx[skbIngressIfindex] = uint32(portA.Ifindex)
	b.ResetTimer()
	start := time.Now()
	ret, err := f.d.objs.MeridianFromPort.Run(&ebpf.RunOptions{Data: data, Context: ctx, Repeat: uint32(b.N)})
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil || ret != want {
		b.Fatalf("verdict %d (%v), want %d", ret, err, want)
	}
	perPacket[n] = float64(elapsed.Nanoseconds()) / float64(b.N)
}
