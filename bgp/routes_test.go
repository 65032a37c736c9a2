package bgp

import (
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"google.golang.org/protobuf/proto"
)

func TestRoutesFor(t *testing.T) {
	pool := &agentv1.PublicPool{Id: 1, Communities: []string{"65000:100", "65000:1:2"}, Med: 20, Announce: true}
	quiet := &agentv1.PublicPool{Id: 2, Announce: false} // routed by other means
	eip := func(id uint32, addr string, pool uint32, port uint32, node string, natgw uint32) *agentv1.ElasticIp {
		return &agentv1.ElasticIp{Id: id, Address: addr, PoolId: pool, PortId: port, PortNode: node, NatGatewayId: natgw}
	}
	natgw := &agentv1.NatGateway{Id: 7, Addresses: []string{"203.0.113.70"}, OwnerNode: "gw-a"}
	base := Objects{
		Node:  "gw-a",
		Pools: []*agentv1.PublicPool{pool, quiet},
		ElasticIPs: []*agentv1.ElasticIp{
			eip(1, "203.0.113.10", 1, 5, "node-1", 0),  // associated and bound
			eip(2, "203.0.113.11", 1, 0, "", 0),        // allocated, not associated
			eip(3, "203.0.113.12", 1, 6, "", 0),        // associated, port unbound
			eip(4, "203.0.113.13", 2, 7, "node-1", 0),  // pool not announced
			eip(5, "2001:db8::10", 1, 8, "node-2", 0),  // IPv6
			eip(6, "203.0.113.70", 1, 0, "", natgw.Id), // the NAT gateway's
		},
		NATGateways: []*agentv1.NatGateway{natgw},
		VPCs:        []*agentv1.Vpc{{Id: 1, Cidrs: []string{"10.1.0.0/16"}}},
	}
	withPool := func(p string, med uint32) Route {
		return Route{Prefix: pfx(p), Communities: []string{"65000:100", "65000:1:2"}, MED: med}
	}
	owner := []Route{withPool("203.0.113.10/32", 20), withPool("203.0.113.70/32", 20), withPool("2001:db8::10/128", 20)}

	other := base
	other.Node = "gw-b"
	vpcs := base
	vpcs.AnnounceVPCPrefixes = true

	for _, tc := range []struct {
		name string
		in   Objects
		want []Route
	}{
		{"owner of the NAT gateway", base, owner},
		{"another gateway announces the NAT gateway with a worse MED",
			other, []Route{withPool("203.0.113.10/32", 20), withPool("203.0.113.70/32", 120), withPool("2001:db8::10/128", 20)}},
		{"VPC prefixes when the peer asks", vpcs,
			[]Route{{Prefix: pfx("10.1.0.0/16")}, withPool("203.0.113.10/32", 20), withPool("203.0.113.70/32", 20), withPool("2001:db8::10/128", 20)}},
		{"nothing", Objects{Node: "gw-a"}, []Route{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RoutesFor(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}

	t.Run("bad objects are left out and reported, the rest still announced", func(t *testing.T) {
		bad := vpcs
		bad.ElasticIPs = append(slices.Clone(base.ElasticIPs),
			eip(9, "not-an-ip", 1, 9, "node-1", 0),
			eip(10, "203.0.113.99", 42, 9, "node-1", 0),
			eip(11, "203.0.113.10", 1, 9, "node-1", 0))
		bad.Pools = append(slices.Clone(base.Pools), &agentv1.PublicPool{Id: 3, Announce: true, Communities: []string{"bogus"}})
		bad.ElasticIPs = append(bad.ElasticIPs, eip(12, "203.0.113.98", 3, 9, "node-1", 0))
		bad.VPCs = append(slices.Clone(base.VPCs), &agentv1.Vpc{Id: 2, Cidrs: []string{"10.2.0.1/16"}})
		got, err := RoutesFor(bad)
		if !reflect.DeepEqual(got, append([]Route{{Prefix: pfx("10.1.0.0/16")}}, owner...)) {
			t.Errorf("routes = %v", got)
		}
		for _, want := range []string{"elastic IP 9", "pool 42 unknown", "already announced", "community", "host bits"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v does not mention %q", err, want)
			}
		}
	})
}

func TestPeerFromProto(t *testing.T) {
	p, err := PeerFromProto(&agentv1.BgpPeer{Id: 1, PeerAsn: 65000, PeerAddress: "10.0.0.1", HoldTime: 9, GracefulRestart: true, RestartTime: 30, Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	want := Peer{Address: netip.MustParseAddr("10.0.0.1"), ASN: 65000, HoldTime: 9 * time.Second, GracefulRestart: true, RestartTime: 30 * time.Second, Password: "s3cret"}
	if p != want {
		t.Errorf("got %+v, want %+v", p, want)
	}
	for _, bad := range []*agentv1.BgpPeer{
		{Id: 2, PeerAsn: 65000, PeerAddress: "nope"},
		{Id: 3, PeerAddress: "10.0.0.1"},
		{Id: 4, PeerAsn: 65000, PeerAddress: "10.0.0.1", HoldTime: 2},
	} {
		if _, err := PeerFromProto(bad); err == nil {
			t.Errorf("PeerFromProto(%v) accepted", bad)
		}
	}
}

func TestPeerStateProto(t *testing.T) {
	since := time.Unix(1700000000, 500)
	got := PeerState{Address: netip.MustParseAddr("10.0.0.1"), State: "established", Since: since, Advertised: 3, Received: 1, LastError: "x"}.Proto(9)
	want := &agentv1.BgpPeerState{PeerId: 9, PeerAddress: "10.0.0.1", State: "established", SinceUnix: 1700000000, Advertised: 3, Received: 1, LastError: "x"}
	if !proto.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
