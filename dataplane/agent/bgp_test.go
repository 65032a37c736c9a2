package agent

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/bgp"
)

func objs(list ...*agentv1.Object) map[string]*agentv1.Object {
	m := map[string]*agentv1.Object{}
	for _, o := range list {
		m[o.Key] = o
	}
	return m
}

func eipObj(id uint32, addr string, pool, port, ngw uint32) *agentv1.Object {
	return &agentv1.Object{Key: fmt.Sprintf("eip/%d", id), Body: &agentv1.Object_ElasticIp{ElasticIp: &agentv1.ElasticIp{
		Id: id, Address: addr, PoolId: pool, PortId: port, NatGatewayId: ngw}}}
}

func edgeFixture() map[string]*agentv1.Object {
	return objs(
		&agentv1.Object{Key: "gateway/gw1", Body: &agentv1.Object_Gateway{Gateway: &agentv1.Gateway{Node: "gw1", UnderlayIp: "10.0.0.1"}}},
		&agentv1.Object{Key: "bgp/1", Body: &agentv1.Object_BgpPeer{BgpPeer: &agentv1.BgpPeer{
			Id: 1, Node: "gw1", LocalAsn: 65001, PeerAsn: 65000, PeerAddress: "172.16.0.1", HoldTime: 9, GracefulRestart: true}}},
		&agentv1.Object{Key: "pool/1", Body: &agentv1.Object_PublicPool{PublicPool: &agentv1.PublicPool{
			Id: 1, Cidrs: []string{"198.51.100.0/24"}, Communities: []string{"65000:100"}, Med: 10, Announce: true}}},
		&agentv1.Object{Key: "pool/2", Body: &agentv1.Object_PublicPool{PublicPool: &agentv1.PublicPool{
			Id: 2, Cidrs: []string{"203.0.113.0/24"}, Announce: false}}},
		eipObj(1, "198.51.100.5", 1, 7, 0), // associated with a port
		eipObj(2, "198.51.100.6", 1, 0, 3), // a NAT gateway's address
		eipObj(3, "198.51.100.7", 1, 0, 0), // allocated only
		eipObj(4, "203.0.113.9", 2, 8, 0),  // pool not announced
		eipObj(5, "2001:db8::5", 1, 9, 0),  // IPv6: a /128
		&agentv1.Object{Key: "ngw/3", Body: &agentv1.Object_NatGateway{NatGateway: &agentv1.NatGateway{
			Id: 3, Addresses: []string{"198.51.100.6"}, OwnerNode: "gw2"}}},
		&agentv1.Object{Key: "vpc/4", Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{Id: 4, Cidrs: []string{"10.1.0.0/16"}}}},
	)
}

func routeMap(rs []bgp.Route) map[string]bgp.Route {
	m := map[string]bgp.Route{}
	for _, r := range rs {
		m[r.Prefix.String()] = r
	}
	return m
}

func TestPlanBGP(t *testing.T) {
	under := netip.MustParseAddr("10.0.0.1")
	p := planBGP("gw1", under, edgeFixture(), nil, true)
	if len(p.Errs) != 0 {
		t.Fatalf("errors: %v", p.Errs)
	}
	if p.ASN != 65001 || p.RouterID != under || len(p.Peers) != 1 || !p.Peers[0].GracefulRestart || p.Peers[0].HoldTime.Seconds() != 9 {
		t.Fatalf("config: ASN %d router ID %v peers %+v", p.ASN, p.RouterID, p.Peers)
	}
	rs := routeMap(p.Routes)
	want := map[string]uint32{"198.51.100.5/32": 10, "198.51.100.6/32": 10 + backupMED, "2001:db8::5/128": 10}
	if len(rs) != len(want) {
		t.Fatalf("routes %v, want the prefixes of %v", p.Routes, want)
	}
	for pfx, med := range want {
		r, ok := rs[pfx]
		if !ok || r.MED != med || !slices.Equal(r.Communities, []string{"65000:100"}) {
			t.Errorf("route %s: %+v (present %v), want MED %d and community 65000:100", pfx, r, ok, med)
		}
	}

	// The owner announces its NAT gateway's address with the pool's MED.
	d := edgeFixture()
	d["ngw/3"].GetNatGateway().OwnerNode = "gw1"
	if r := routeMap(planBGP("gw1", under, d, nil, true).Routes)["198.51.100.6/32"]; r.MED != 10 {
		t.Errorf("owner's NAT address MED %d, want 10", r.MED)
	}

	// What the data path failed on is not announced.
	p = planBGP("gw1", under, edgeFixture(), map[string]string{"eip/1": "boom", "ngw/3": "boom"}, true)
	if rs := routeMap(p.Routes); len(rs) != 1 || rs["2001:db8::5/128"].Prefix.Bits() != 128 {
		t.Errorf("with failures: routes %v, want only the IPv6 one", p.Routes)
	}

	// A gateway whose uplink failed announces no address.
	if p := planBGP("gw1", under, edgeFixture(), map[string]string{"gateway/gw1": "uplink ext0: not found"}, true); len(p.Routes) != 0 || len(p.Peers) != 1 {
		t.Errorf("uplink down: routes %v peers %v, want no route and the session kept", p.Routes, p.Peers)
	}

	// A realization without IPv6 translation does not announce /128s.
	if _, ok := routeMap(planBGP("gw1", under, edgeFixture(), nil, false).Routes)["2001:db8::5/128"]; ok {
		t.Error("IPv6 elastic IP announced by an IPv4-only data path")
	}

	// VPC prefixes when a peer asks.
	d = edgeFixture()
	d["bgp/1"].GetBgpPeer().AnnounceVpcPrefixes = true
	if _, ok := routeMap(planBGP("gw1", under, d, nil, true).Routes)["10.1.0.0/16"]; !ok {
		t.Error("announce_vpc_prefixes: VPC CIDR not announced")
	}

	// Not a gateway (role removed), or no peer: nothing at all.
	d = edgeFixture()
	delete(d, "gateway/gw1")
	if p := planBGP("gw1", under, d, nil, true); len(p.Peers)+len(p.Routes) != 0 {
		t.Errorf("without the gateway role: %+v", p)
	}
	if p := planBGP("gw2", under, edgeFixture(), nil, true); len(p.Peers)+len(p.Routes) != 0 {
		t.Errorf("another node's peer was used: %+v", p)
	}

	// A second peer with another local ASN is an error of its own; the
	// first keeps working.
	d = edgeFixture()
	d["bgp/2"] = &agentv1.Object{Key: "bgp/2", Body: &agentv1.Object_BgpPeer{BgpPeer: &agentv1.BgpPeer{
		Id: 2, Node: "gw1", LocalAsn: 65002, PeerAsn: 65000, PeerAddress: "172.16.0.2"}}}
	p = planBGP("gw1", under, d, nil, true)
	if p.Errs["bgp/2"] == "" || len(p.Peers) != 1 || len(p.Routes) != 3 {
		t.Errorf("mismatched ASN: errs %v peers %v routes %d", p.Errs, p.Peers, len(p.Routes))
	}

	// A pool with a malformed community fails its addresses, not the rest.
	d = edgeFixture()
	d["pool/1"].GetPublicPool().Communities = []string{"not-a-community"}
	p = planBGP("gw1", under, d, nil, true)
	if p.Errs["eip/1"] == "" || len(p.Routes) != 0 {
		t.Errorf("bad community: errs %v routes %v", p.Errs, p.Routes)
	}
}
