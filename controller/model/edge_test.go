package model

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

const (
	poolP  = "publicAddressPools/pub"
	eipWeb = p1 + "/elasticIps/web"
	eipNat = p1 + "/elasticIps/nat"
	ngwA   = p1 + "/natGateways/out"
	peerG1 = "bgpPeers/g1-tor"
)

func gateway(id, ip string) *mv1.Node {
	n := node(id, ip)
	n.Roles = []mv1.NodeRole{mv1.NodeRole_GATEWAY}
	return n
}

// edgeFixture is fixture plus gateways g1, g2, a pool, an elastic IP on port
// a1 (bound to n1), a NAT gateway for subnet A with one port mapping to a2
// (on n2) and a BGP peer of g1.
func edgeFixture(t *testing.T) *memTx {
	tx := fixture(t)
	for _, msg := range []proto.Message{
		gateway("g1", "192.0.2.101"), gateway("g2", "192.0.2.102"),
		&mv1.PublicAddressPool{Name: poolP, Id: 5, Cidrs: []string{"203.0.113.0/24", "2001:db8::/64"}, Communities: []string{"65000:2", "65000:1"}, Med: 7},
		&mv1.ElasticIp{Name: eipWeb, Id: 1, Pool: poolP, Address: "203.0.113.10", Port: p1 + "/ports/a1", PrivateIp: "10.0.1.10"},
		&mv1.ElasticIp{Name: eipNat, Id: 2, Pool: poolP, Address: "203.0.113.11", NatGateway: ngwA},
		&mv1.NatGateway{Name: ngwA, Id: 3, Vpc: vpcA, ElasticIps: []string{eipNat}, Subnets: []string{subA}, PortMin: 2000,
			PortMappings: []*mv1.NatGatewayPortMapping{{Protocol: "tcp", ElasticIp: eipNat, PublicPort: 443, Port: p1 + "/ports/a2", PrivatePort: 8443, PrivateIp: "10.0.1.11"}}},
		&mv1.BgpPeer{Name: peerG1, Id: 4, Node: "nodes/g1", LocalAsn: 65001, PeerAsn: 65000, PeerAddress: "192.0.2.254", Password: "pw"},
	} {
		tx.put(t, msg)
	}
	return tx
}

func TestEdgeCompile(t *testing.T) {
	tx := edgeFixture(t)
	m := loadModel(t, tx)
	owner := m.Object("ngw/3").GetNatGateway().GetOwnerNode()
	if owner != "g1" && owner != "g2" {
		t.Fatalf("owner %q is not a gateway", owner)
	}
	for key, want := range map[string]*agentv1.Object{
		"gateway/g1": {Key: "gateway/g1", Body: &agentv1.Object_Gateway{Gateway: &agentv1.Gateway{Node: "g1", UnderlayIp: "192.0.2.101"}}},
		"pool/5": {Key: "pool/5", Body: &agentv1.Object_PublicPool{PublicPool: &agentv1.PublicPool{Id: 5, Name: poolP,
			Cidrs: []string{"2001:db8::/64", "203.0.113.0/24"}, Communities: []string{"65000:1", "65000:2"}, Med: 7, Announce: true}}},
		"eip/1": {Key: "eip/1", Body: &agentv1.Object_ElasticIp{ElasticIp: &agentv1.ElasticIp{Id: 1, Name: eipWeb, Address: "203.0.113.10",
			PoolId: 5, VpcId: 1, Vni: 1001, PortId: 1, PrivateIp: "10.0.1.10", PortMac: "02:00:00:00:00:01", PortNode: "n1", PortNodeIp: "192.0.2.1"}}},
		"eip/2": {Key: "eip/2", Body: &agentv1.Object_ElasticIp{ElasticIp: &agentv1.ElasticIp{Id: 2, Name: eipNat, Address: "203.0.113.11",
			PoolId: 5, VpcId: 1, Vni: 1001, NatGatewayId: 3}}},
		"ngw/3": {Key: "ngw/3", Body: &agentv1.Object_NatGateway{NatGateway: &agentv1.NatGateway{Id: 3, Name: ngwA, VpcId: 1, Vni: 1001,
			Addresses: []string{"203.0.113.11"}, SubnetIds: []uint32{1}, SnatCidrs: []string{"10.0.1.0/24"},
			PortMappings: []*agentv1.PortMapping{{Protocol: 6, Address: "203.0.113.11", PublicPort: 443, PortId: 2, PrivateIp: "10.0.1.11",
				PrivatePort: 8443, PortMac: "02:00:00:00:00:01", PortNode: "n2", PortNodeIp: "192.0.2.2"}},
			PortMin: 2000, PortMax: 65535, OwnerNode: owner}}},
		"bgp/4": {Key: "bgp/4", Body: &agentv1.Object_BgpPeer{BgpPeer: &agentv1.BgpPeer{Id: 4, Name: peerG1, Node: "g1", LocalAsn: 65001,
			PeerAsn: 65000, PeerAddress: "192.0.2.254", GracefulRestart: true, Password: "pw"}}},
	} {
		if got := m.Object(key); !proto.Equal(got, want) {
			t.Errorf("%s:\n got: %v\nwant: %v", key, prototext.Format(got), prototext.Format(want))
		}
	}
}

func TestEdgePlacement(t *testing.T) {
	m := loadModel(t, edgeFixture(t))
	edge := func(n string) []string {
		var out []string
		for _, k := range keysOf(m.NodeState(n)) {
			if kind, _, _ := strings.Cut(k, "/"); slices.Contains([]string{"gateway", "eip", "ngw", "pool", "bgp"}, kind) {
				out = append(out, k)
			}
		}
		return out
	}
	for n, want := range map[string][]string{
		"g1": {"bgp/4", "eip/1", "eip/2", "gateway/g1", "gateway/g2", "ngw/3", "pool/5"},
		"g2": {"eip/1", "eip/2", "gateway/g1", "gateway/g2", "ngw/3", "pool/5"},
		"n1": {"eip/1", "gateway/g1", "gateway/g2", "ngw/3"}, // its port's elastic IP; VPC A's NAT gateway
		"n2": {"gateway/g1", "gateway/g2", "ngw/3"},
		"n3": {"gateway/g1", "gateway/g2"}, // VPC B has no NAT gateway
		"n4": {"gateway/g1", "gateway/g2"}, // registered, hosts nothing
	} {
		if got := edge(n); !slices.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", n, got, want)
		}
	}
}

// TestAnnounceVpcPrefixesBringsVpcs: a gateway whose BGP peer announces
// VPC prefixes holds every VPC object, and loses them with the flag.
func TestAnnounceVpcPrefixesBringsVpcs(t *testing.T) {
	tx := edgeFixture(t)
	m := loadModel(t, tx)
	if m.NodeObject("g1", "vpc/1") != nil {
		t.Fatal("g1 holds VPC A without announcing VPC prefixes")
	}
	peer := &mv1.BgpPeer{Name: peerG1, Id: 4, Node: "nodes/g1", LocalAsn: 65001, PeerAsn: 65000, PeerAddress: "192.0.2.254", AnnounceVpcPrefixes: true}
	ch := m.Apply(tx.put(t, peer))
	if m.NodeObject("g1", "vpc/1") == nil || m.NodeObject("g1", "vpc/2") == nil || m.NodeObject("g2", "vpc/1") != nil {
		t.Fatalf("VPCs not on g1 alone after announce_vpc_prefixes: changes %v", ch)
	}
	peer.AnnounceVpcPrefixes = false
	m.Apply(tx.put(t, peer))
	if m.NodeObject("g1", "vpc/1") != nil {
		t.Fatal("g1 kept VPC A after the flag went")
	}
	assertSameAsFull(t, m, tx)
}

// TestNatGatewayOwnerFailover: marking the owner down or deleting it moves
// the NAT gateway to the other gateway and tells every holder; marking the
// other gateway down moves nothing.
func TestNatGatewayOwnerFailover(t *testing.T) {
	tx := edgeFixture(t)
	m := loadModel(t, tx)
	owner := func() string { return m.Object("ngw/3").GetNatGateway().GetOwnerNode() }
	first := owner()
	other := map[string]string{"g1": "g2", "g2": "g1"}[first]
	down := func(n string, d bool) Changes {
		if d {
			return m.Apply(tx.putRaw(GatewayDownKey(n)))
		}
		ev, _ := tx.del(GatewayDownKey(n))
		return m.Apply(ev)
	}
	// The owner's agent going away drains its Gateway object at once and
	// moves no NAT gateway; coming back undrains it.
	ch := m.Apply(tx.putRaw(GatewayAwayKey(first)))
	if !m.Object("gateway/"+first).GetGateway().GetDraining() || owner() != first {
		t.Fatalf("away owner: draining %v, owner %s", m.Object("gateway/"+first).GetGateway().GetDraining(), owner())
	}
	for n, keys := range ch {
		if _, ok := keys["gateway/"+first]; !ok || len(keys) != 1 {
			t.Fatalf("an owner going away changed %v on %s, want only gateway/%s", keys, n, first)
		}
	}
	assertSameAsFull(t, m, tx)
	ev, _ := tx.del(GatewayAwayKey(first))
	m.Apply(ev)
	if m.Object("gateway/" + first).GetGateway().GetDraining() {
		t.Fatalf("gateway back still draining")
	}
	// A non-owner going down moves no NAT gateway; only its Gateway
	// object leaves every node (workloads stop sending to it).
	ch0 := down(other, true)
	for n, keys := range ch0 {
		if _, ok := keys["gateway/"+other]; !ok || len(keys) != 1 {
			t.Fatalf("a non-owner going down changed %v on %s, want only gateway/%s", keys, n, other)
		}
	}
	if owner() != first || m.Object("gateway/"+other) != nil {
		t.Fatalf("a non-owner going down: owner %s, gateway object %v", owner(), m.Object("gateway/"+other))
	}
	down(other, false)
	ch = down(first, true)
	if owner() != other {
		t.Fatalf("owner %s after %s went down", owner(), first)
	}
	for _, n := range []string{"g1", "g2", "n1", "n2"} {
		if _, ok := ch[n]["ngw/3"]; !ok {
			t.Errorf("%s not told of the new owner: %v", n, ch)
		}
	}
	assertSameAsFull(t, m, tx)
	down(first, false)
	if owner() != first {
		t.Fatalf("owner %s after %s came back, want it back", owner(), first)
	}
	ev, _ = tx.del(storeKey(t, node(first, "")))
	m.Apply(ev)
	if owner() != other {
		t.Fatalf("owner %s after %s was deleted", owner(), first)
	}
	assertSameAsFull(t, m, tx)
}

// TestElasticIpFollowsItsPort: moving the port moves its elastic IP
// between workload nodes and updates where gateways forward to.
func TestElasticIpFollowsItsPort(t *testing.T) {
	tx := edgeFixture(t)
	m := loadModel(t, tx)
	ch := m.Apply(tx.put(t, port(p1+"/ports/a1", 1, subA, "nodes/n4", "10.0.1.10", sgA)))
	if m.NodeObject("n1", "eip/1") != nil || m.NodeObject("n4", "eip/1") == nil {
		t.Fatalf("eip/1 did not move from n1 to n4")
	}
	if got := m.Object("eip/1").GetElasticIp(); got.PortNode != "n4" || got.PortNodeIp != "192.0.2.4" {
		t.Fatalf("eip/1 forwards to %s/%s", got.PortNode, got.PortNodeIp)
	}
	for _, n := range []string{"g1", "g2", "n1", "n4"} {
		if _, ok := ch[n]["eip/1"]; !ok {
			t.Errorf("%s not told about eip/1: %v", n, ch)
		}
	}
	// The node's new underlay address reaches the elastic IP too.
	m.Apply(tx.put(t, node("n4", "192.0.2.44")))
	if got := m.Object("eip/1").GetElasticIp().PortNodeIp; got != "192.0.2.44" {
		t.Fatalf("port node IP %s after the node moved", got)
	}
	assertSameAsFull(t, m, tx)
}
