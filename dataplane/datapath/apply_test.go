package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/meridian-sdn/meridian/fw"
)

func countEntries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestApplyIsIdempotentAndPrunes: applying the same compiled state twice
// changes nothing, applying a smaller one removes what it no longer has,
// deleting removes everything, and ports lose addresses they no longer own.
func TestApplyIsIdempotentAndPrunes(t *testing.T) {
	f := newFixture(t)
	m := &f.d.objs.MeridianMaps
	var big fw.SecurityGroupPolicy
	big.ID = 1
	for i := range 40 {
		// the first 20 share a CIDR: 10 disjoint ports per direction make
		// a port set; the others have a CIDR each
		cidr := netip.MustParsePrefix("10.0.0.0/16")
		if i >= 20 {
			cidr = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24)
		}
		big.Rules = append(big.Rules, fw.SGRule{ID: uint32(i + 1), Direction: fw.Direction(i % 2), Protocol: fw.ProtoTCP,
			Ports: fw.PortRange{From: uint16(100 + 3*i), To: uint16(100 + 3*i)}, RemoteCIDR: cidr})
	}
	f.policies[1] = big
	f.install(t)
	sgBig := countEntries(t, m.SgPolicy)
	if countEntries(t, m.SgPorts) == 0 {
		t.Fatal("expected port sets for 10 single-port rules per direction on one CIDR")
	}
	f.install(t)
	if got := countEntries(t, m.SgPolicy); got != sgBig {
		t.Fatalf("re-apply changed sg_policy from %d to %d entries", sgBig, got)
	}
	f.policies[1] = allowAll(1)
	f.install(t)
	if got := countEntries(t, m.SgPolicy); got >= sgBig {
		t.Fatalf("smaller policy left %d sg_policy entries (had %d)", got, sgBig)
	}
	if n := countEntries(t, m.SgPorts); n != 0 {
		t.Fatalf("%d port-set entries left", n)
	}
	if err := f.d.DeleteSecurityGroupPolicy(1); err != nil {
		t.Fatal(err)
	}
	f.expectDrop(t, portA, from(portA, portB.IPs[0]).bytes(t), portA.ID, DropSGEgress)

	acl := fw.ACL{ID: 5, Rules: []fw.ACLRule{
		{ID: 1, Number: 1, Direction: fw.Egress, Action: fw.Allow, CIDR: netip.MustParsePrefix("10.0.0.0/8")},
		{ID: 2, Number: 2, Direction: fw.Egress, Action: fw.Deny, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 1, To: 9}, CIDR: netip.MustParsePrefix("10.1.0.0/16")},
	}}
	c, err := fw.CompileACL(&acl)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := f.d.ApplyACL(c); err != nil {
			t.Fatal(err)
		}
	}
	before := countEntries(t, m.AclIntervals) + countEntries(t, m.AclProto) + countEntries(t, m.AclRules)
	acl.Rules = acl.Rules[:1]
	if c, err = fw.CompileACL(&acl); err != nil {
		t.Fatal(err)
	}
	if err := f.d.ApplyACL(c); err != nil {
		t.Fatal(err)
	}
	if after := countEntries(t, m.AclIntervals) + countEntries(t, m.AclProto) + countEntries(t, m.AclRules); after >= before {
		t.Fatalf("smaller ACL left %d entries (had %d)", after, before)
	}
	if err := f.d.DeleteACL(5); err != nil {
		t.Fatal(err)
	}
	for name, mp := range map[string]*ebpf.Map{"metas": m.AclMetas, "intervals": m.AclIntervals, "proto": m.AclProto, "rules": m.AclRules} {
		if n := countEntries(t, mp); n != 0 {
			t.Errorf("acl %s: %d entries left after delete", name, n)
		}
	}

	// A port that loses its secondary address may no longer send from it.
	p := from(portA, portB.IPs[0])
	p.src = portA.IPs[1]
	f.policies[1] = allowAll(1)
	f.install(t)
	f.expectDeliver(t, portA, p.bytes(t), portB, 64)
	a := portA
	a.IPs = a.IPs[:1]
	if err := f.d.UpsertPort(a); err != nil {
		t.Fatal(err)
	}
	p.sport++
	f.expectDrop(t, portA, p.bytes(t), portA.ID, DropSpoofIP)
	if err := f.d.DeletePort(a.ID); err != nil {
		t.Fatal(err)
	}
	f.expectDrop(t, portA, p.bytes(t), 0, DropUnknownPort)
	if err := f.d.DeletePort(a.ID); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}
