package datapath

import (
	"net/netip"
	"testing"

	"github.com/meridian-sdn/meridian/fw"
)

// TestConntrackEchoRequestIsNoReply: conntrack must tell an echo reply from
// an echo request going the other way with the same identifier. A may ping
// B and B may answer, but B's policy lets nothing of its own out, so B's
// own echo request to A is dropped however its identifier was chosen.
func TestConntrackEchoRequestIsNoReply(t *testing.T) {
	f := newFixture(t)
	vpcNet := netip.MustParsePrefix("10.0.0.0/16")
	echoReq := &fw.ICMPMatch{Type: 8, AnyCode: true}
	f.policies[1] = fw.SecurityGroupPolicy{ID: 1, Rules: []fw.SGRule{
		{ID: 11, Direction: fw.Egress, Protocol: fw.ProtoICMP, ICMP: echoReq, RemoteCIDR: vpcNet},
	}}
	f.policies[2] = fw.SecurityGroupPolicy{ID: 2, Rules: []fw.SGRule{
		{ID: 21, Direction: fw.Ingress, Protocol: fw.ProtoICMP, ICMP: echoReq, RemoteCIDR: vpcNet},
	}}
	f.install(t)

	for _, id := range []uint16{7, 0, 0xffff} {
		req := frame{srcMAC: portA.MAC, src: portA.IPs[0], dst: portB.IPs[0], proto: fw.ProtoICMP, icmpType: 8, icmpID: id}
		f.expectDeliver(t, portA, req.bytes(t), portB, 64)
		reply := frame{srcMAC: portB.MAC, src: portB.IPs[0], dst: portA.IPs[0], proto: fw.ProtoICMP, icmpType: 0, icmpID: id}
		f.expectDeliver(t, portB, reply.bytes(t), portA, 64)
		// The same ping's next request is still its flow.
		f.expectDeliver(t, portA, req.bytes(t), portB, 64)
		back := reply
		back.icmpType = 8
		f.expectDrop(t, portB, back.bytes(t), portB.ID, DropSGEgress)
	}
}
