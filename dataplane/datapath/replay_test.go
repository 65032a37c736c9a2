package datapath

import (
	"bytes"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/meridian-sdn/meridian/fw"
)

// replayFixture: B admits TCP 80 only, so A's SYN to B:80 is delivered and
// A's SYN to B:22 is dropped by B's security group.
func replayFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	f.policies[2] = fw.SecurityGroupPolicy{ID: 2, Rules: []fw.SGRule{
		{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoTCP, Ports: fw.PortRange{From: 80, To: 80}, RemoteCIDR: netip.MustParsePrefix("10.0.0.0/8")},
		{ID: 22, Direction: fw.Egress, RemoteCIDR: netip.MustParsePrefix("0.0.0.0/0")},
	}}
	f.install(t)
	return f
}

func TestReplayFromPort(t *testing.T) {
	f := replayFixture(t)
	syn := from(portA, portB.IPs[0])
	denied := syn
	denied.dport = 22
	spoofed := syn
	spoofed.src = ip("10.0.1.99")
	remote := from(portA, remoteIP)
	reply := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: portA.IPs[0], proto: fw.ProtoTCP, sport: 80, dport: 40000, flags: "SA"}
	arp := arpFrame(t, portA.MAC, 1, portA.IPs[0], ip("10.0.1.1"))

	res, err := f.d.Replay(portA.ID, ReplayFromPort, [][]byte{syn.bytes(t), denied.bytes(t), spoofed.bytes(t), remote.bytes(t), arp})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 5 {
		t.Fatalf("%d results, want 5", len(res))
	}
	if r := res[0]; r.Verdict != VerdictDeliver || r.OutPort != portB.ID || r.ConntrackHit {
		t.Fatalf("allowed SYN: %+v", r)
	}
	checkDelivered(t, res[0].Frame, portB, 64)
	// The rules that allowed it: A's egress rule (allowAll: 1001) and B's
	// rule 21 (TCP 80 in); no network ACL on the subnet.
	if a := res[0].Allowed; a == nil || *a != (AllowedBy{SGEgress: 1001, SGIngress: 21}) {
		t.Fatalf("allowed SYN allowed by %+v, want A's egress rule 1001 and B's ingress rule 21", a)
	}
	if a := res[3].Allowed; a == nil || *a != (AllowedBy{SGEgress: 1001}) {
		t.Fatalf("tunnelled SYN allowed by %+v, want A's egress rule 1001 (the other node runs the ingress side)", a)
	}
	if res[1].Allowed != nil || res[4].Allowed != nil {
		t.Fatalf("a drop or an ARP reply with allowing rules: %+v, %+v", res[1].Allowed, res[4].Allowed)
	}
	if r := res[1]; r.Verdict != VerdictDrop || r.Reason != DropSGIngress || r.DropPort != portB.ID || r.Frame != nil {
		t.Fatalf("SYN to B:22: %+v", r)
	}
	if !slices.Contains(res[1].Stages, "route: local port 2") {
		t.Fatalf("SYN to B:22: stages %q", res[1].Stages)
	}
	if last := res[1].Stages[len(res[1].Stages)-1]; !strings.HasPrefix(last, "ingress security groups: dropped (sg-ingress") {
		t.Fatalf("SYN to B:22 ends at stage %q (stages %q)", last, res[1].Stages)
	}
	if r := res[2]; r.Verdict != VerdictDrop || r.Reason != DropSpoofIP || r.DropPort != portA.ID || len(r.Stages) != 2 {
		t.Fatalf("spoofed source: %+v", r)
	}
	if r := res[3]; r.Verdict != VerdictTunnel || r.TunnelRemote != remoteNode || r.VNI != 100 || r.Gateway {
		t.Fatalf("to the remote node: %+v", r)
	}
	if r := res[4]; r.Verdict != VerdictARPReply {
		t.Fatalf("ARP request: %+v", r)
	}

	// Leaving the VPC from an address with an elastic IP: tunnelled to the
	// (only) live gateway.
	gw := ip("192.0.2.101")
	if err := f.d.SetGateways([]netip.Addr{gw}); err != nil {
		t.Fatal(err)
	}
	if err := f.d.UpsertEgress(Egress{VPC: 100, Prefix: netip.MustParsePrefix("10.0.1.10/32")}); err != nil {
		t.Fatal(err)
	}
	// The largest frame a replay takes: a SYN with Ethernet padding.
	big := append(from(portA, portB.IPs[0]).bytes(t), make([]byte, MaxReplayFrame)...)[:MaxReplayFrame]
	res, err = f.d.Replay(portA.ID, ReplayFromPort, [][]byte{from(portA, ip("203.0.113.2")).bytes(t), big})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.Verdict != VerdictTunnel || !r.Gateway || r.TunnelRemote != gw || r.VNI != 100 ||
		!slices.Contains(r.Stages, "route: outside the VPC, via gateway 192.0.2.101") {
		t.Fatalf("to the outside: %+v", r)
	}
	if r := res[1]; r.Verdict != VerdictDeliver || len(r.Frame) != MaxReplayFrame {
		t.Fatalf("%d-byte frame: verdict %v, %d bytes out", MaxReplayFrame, r.Verdict, len(r.Frame))
	}

	// The allowed SYN left a conntrack entry, as a real one would: B's
	// reply passes A's policy (which admits nothing in) as established.
	f.policies[1] = fw.SecurityGroupPolicy{ID: 1, Rules: []fw.SGRule{
		{ID: 11, Direction: fw.Egress, RemoteCIDR: netip.MustParsePrefix("0.0.0.0/0")},
	}}
	f.install(t)
	res, err = f.d.Replay(portB.ID, ReplayFromPort, [][]byte{reply.bytes(t)})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.Verdict != VerdictDeliver || r.OutPort != portA.ID || !r.ConntrackHit {
		t.Fatalf("reply of the replayed SYN: %+v", r)
	}
}

func TestReplayToPort(t *testing.T) {
	f := replayFixture(t)
	in := frame{srcMAC: mac("02:99:00:00:00:01"), src: remoteIP, dst: portB.IPs[0], proto: fw.ProtoTCP, sport: 1234, dport: 80, flags: "S", ttl: 63}
	denied := in
	denied.dport = 23
	res, err := f.d.Replay(portB.ID, ReplayToPort, [][]byte{in.bytes(t), denied.bytes(t)})
	if err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.Verdict != VerdictDeliver || r.OutPort != portB.ID {
		t.Fatalf("from the overlay, allowed: %+v", r)
	}
	if a := res[0].Allowed; a == nil || *a != (AllowedBy{SGIngress: 21}) {
		t.Fatalf("from the overlay, allowed by %+v; want B's ingress rule 21 only (the sender's node ran the egress side)", a)
	}
	if r := res[1]; r.Verdict != VerdictDrop || r.Reason != DropSGIngress || r.DropPort != portB.ID {
		t.Fatalf("from the overlay, denied: %+v", r)
	}
}

// Bad input is refused before anything runs: no counter moves.
func TestReplayBadInput(t *testing.T) {
	f := replayFixture(t)
	good := from(portA, portB.IPs[0]).bytes(t)
	cases := []struct {
		name   string
		port   uint32
		dir    ReplayDirection
		frames [][]byte
		want   string
	}{
		{"unknown port", 77, ReplayFromPort, [][]byte{good}, "port 77 is not on this node"},
		{"truncated frame after a good one", portA.ID, ReplayFromPort, [][]byte{good, good[:10]}, "packet 1 is 10 bytes"},
		{"oversized frame", portA.ID, ReplayFromPort, [][]byte{bytes.Repeat([]byte{1}, MaxReplayFrame+1)}, "packet 0 is"},
		{"no packets", portA.ID, ReplayFromPort, nil, "no packets"},
		{"bad direction", portA.ID, ReplayDirection(9), [][]byte{good}, "unknown direction"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.drops(t)
			ctBefore, err := f.d.ConntrackStats()
			if err != nil {
				t.Fatal(err)
			}
			res, err := f.d.Replay(tc.port, tc.dir, tc.frames)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("results %+v, error %v; want an error containing %q", res, err, tc.want)
			}
			ctAfter, err := f.d.ConntrackStats()
			if err != nil {
				t.Fatal(err)
			}
			if after := f.drops(t); len(after) != len(before) || ctAfter != ctBefore {
				t.Fatalf("state changed: drops %v -> %v, conntrack %+v -> %+v", before, after, ctBefore, ctAfter)
			}
			for k, v := range f.drops(t) {
				if before[k] != v {
					t.Fatalf("drop counter %+v moved", k)
				}
			}
		})
	}
}
