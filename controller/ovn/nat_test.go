package ovn

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// testExternal: the fabric's router at .1, VPC routers from .128 up.
func testExternal() ExternalNetwork {
	return ExternalNetwork{
		CIDR:        netip.MustParsePrefix("172.16.0.0/24"),
		RouterRange: netip.MustParsePrefix("172.16.0.128/25"),
		NextHop:     netip.MustParseAddr("172.16.0.1"),
	}
}

func extRenderer(t testing.TB) *Renderer {
	t.Helper()
	rr, err := NewRendererFor(testExternal())
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

func renderExt(t testing.TB, objs map[string]*agentv1.Object) *Desired {
	t.Helper()
	return extRenderer(t).Render(objs)
}

// withOutside adds outside-world objects to a snapshot, keyed like the
// model keys them ("gateway/<node>", "eip/<id>", "ngw/<id>").
func withOutside(objs map[string]*agentv1.Object, bodies ...proto.Message) map[string]*agentv1.Object {
	for _, b := range bodies {
		var o *agentv1.Object
		switch v := b.(type) {
		case *agentv1.Gateway:
			o = &agentv1.Object{Key: "gateway/" + v.Node, Body: &agentv1.Object_Gateway{Gateway: v}}
		case *agentv1.ElasticIp:
			o = &agentv1.Object{Key: owner("eip", v.Id), Body: &agentv1.Object_ElasticIp{ElasticIp: v}}
		case *agentv1.NatGateway:
			o = &agentv1.Object{Key: owner("ngw", v.Id), Body: &agentv1.Object_NatGateway{NatGateway: v}}
		case *agentv1.LbService:
			o = &agentv1.Object{Key: owner("lb", v.Id), Body: &agentv1.Object_LbService{LbService: v}}
		default:
			objs = mergeObjects(objs, objects(b))
			continue
		}
		objs[o.Key] = o
	}
	return objs
}

func mergeObjects(a, b map[string]*agentv1.Object) map[string]*agentv1.Object {
	for k, v := range b {
		a[k] = v
	}
	return a
}

// outsideFixture is fixture() with two gateway nodes, an elastic IP on
// port 101, one on NAT gateway 3, one unassociated, and NAT gateway 3
// translating both subnets, with a TCP and a UDP port mapping, owned by
// gw2.
func outsideFixture() map[string]*agentv1.Object {
	return withOutside(fixture(),
		&agentv1.Gateway{Node: "gw1", UnderlayIp: "192.0.2.1"},
		&agentv1.Gateway{Node: "gw2", UnderlayIp: "192.0.2.2"},
		&agentv1.ElasticIp{Id: 1, Address: "172.16.0.50", VpcId: 1, Vni: 1001, PortId: 101, PrivateIp: "10.0.1.10",
			PortMac: "02:00:00:00:01:01", PortNode: "n1"},
		&agentv1.ElasticIp{Id: 2, Address: "172.16.0.60", VpcId: 1, Vni: 1001, NatGatewayId: 3},
		&agentv1.ElasticIp{Id: 4, Address: "172.16.0.70"},
		&agentv1.NatGateway{Id: 3, VpcId: 1, Vni: 1001, Addresses: []string{"172.16.0.60"}, SubnetIds: []uint32{11, 12},
			SnatCidrs: []string{"10.0.1.0/24", "10.0.2.0/24"}, PortMin: 20000, PortMax: 30000, OwnerNode: "gw2",
			PortMappings: []*agentv1.PortMapping{
				{Protocol: 6, Address: "172.16.0.60", PublicPort: 8080, PortId: 102, PrivateIp: "10.0.1.11", PrivatePort: 80},
				{Protocol: 17, Address: "172.16.0.60", PublicPort: 5353, PortId: 103, PrivateIp: "10.0.2.10", PrivatePort: 53},
			}},
	)
}

func natgw(objs map[string]*agentv1.Object, id uint32) *agentv1.NatGateway {
	return objs[owner("ngw", id)].GetNatGateway()
}

func TestRenderOutsideGivesExactRows(t *testing.T) {
	d := renderExt(t, outsideFixture())
	tcp, udp := "tcp", "udp"
	cases := []struct {
		name  string
		table string
		want  model.Model
		refs  map[string][]string
	}{
		{"the VPC router gets its gateway port, NAT rows, port mappings and default route", nbdb.LogicalRouterTable,
			&nbdb.LogicalRouter{Name: "mer-vpc-1", ExternalIDs: ext("vpc/1", "vpc/1", "router")},
			map[string][]string{
				"ports":         {"subnet/11/router-port", "subnet/12/router-port", "vpc/1/gateway-port"},
				"static_routes": {"rt/41/route/0.0.0.0/0>10.0.2.10", "rt/41/route/192.168.0.0/16>discard", "vpc/1/gateway-route/0.0.0.0/0"},
				"nat":           {"eip/1", "ngw/3/snat/10.0.1.0/24", "ngw/3/snat/10.0.2.0/24"},
				"load_balancer": {"ngw/3/port-mappings/tcp", "ngw/3/port-mappings/udp"},
			}},
		{"the gateway port has the VPC's address in the router range", nbdb.LogicalRouterPortTable,
			&nbdb.LogicalRouterPort{Name: "mer-gw-1", MAC: "02:4e:00:00:00:01", Networks: []string{"172.16.0.129/24"},
				ExternalIDs: ext("vpc/1/gateway-port", "vpc/1", "gateway-port")},
			map[string][]string{"gateway_chassis": {"vpc/1/gateway-chassis/gw1", "vpc/1/gateway-chassis/gw2"}}},
		{"the NAT gateway's owner is the preferred gateway chassis", nbdb.GatewayChassisTable,
			&nbdb.GatewayChassis{Name: "mer-gw-1-gw2", ChassisName: "gw2", Priority: GatewayPriorityPreferred,
				ExternalIDs: ext("vpc/1/gateway-chassis/gw2", "vpc/1", "gateway-chassis")},
			nil},
		{"other gateways stand by", nbdb.GatewayChassisTable,
			&nbdb.GatewayChassis{Name: "mer-gw-1-gw1", ChassisName: "gw1", Priority: GatewayPriorityStandby,
				ExternalIDs: ext("vpc/1/gateway-chassis/gw1", "vpc/1", "gateway-chassis")},
			nil},
		{"the default route goes to the fabric's router", nbdb.LogicalRouterStaticRouteTable,
			&nbdb.LogicalRouterStaticRoute{IPPrefix: "0.0.0.0/0", Nexthop: "172.16.0.1",
				ExternalIDs: ext("vpc/1/gateway-route/0.0.0.0/0", "vpc/1", "gateway-route")},
			nil},
		{"the external switch holds the localnet port and the routers' peers", nbdb.LogicalSwitchTable,
			&nbdb.LogicalSwitch{Name: "meridian-ext", ExternalIDs: ext("global/external", OwnerGlobal, "external-switch")},
			map[string][]string{"ports": {"global/external/localnet", "vpc/1/external-switch-port"}}},
		{"the localnet port names the physical network", nbdb.LogicalSwitchPortTable,
			&nbdb.LogicalSwitchPort{Name: "meridian-ext-localnet", Type: "localnet", Addresses: []string{"unknown"},
				Options: map[string]string{"network_name": "physnet"}, ExternalIDs: ext("global/external/localnet", OwnerGlobal, "localnet")},
			nil},
		{"the external switch peers with the gateway port and announces its NAT addresses", nbdb.LogicalSwitchPortTable,
			&nbdb.LogicalSwitchPort{Name: "mer-ext-1", Type: "router", Addresses: []string{"router"},
				Options:     map[string]string{"router-port": "mer-gw-1", "nat-addresses": "router"},
				ExternalIDs: ext("vpc/1/external-switch-port", "vpc/1", "external-switch-port")},
			nil},
		{"an elastic IP on a port is a dnat_and_snat on the gateway chassis", nbdb.NATTable,
			&nbdb.NAT{Type: "dnat_and_snat", ExternalIP: "172.16.0.50", LogicalIP: "10.0.1.10",
				ExternalIDs: ext("eip/1", "eip/1", "elastic-ip")},
			nil},
		{"a NAT gateway translates each subnet to its first address, ports from its range", nbdb.NATTable,
			&nbdb.NAT{Type: "snat", ExternalIP: "172.16.0.60", LogicalIP: "10.0.2.0/24", ExternalPortRange: "20000-30000",
				ExternalIDs: ext("ngw/3/snat/10.0.2.0/24", "ngw/3", "snat")},
			nil},
		{"TCP port mappings are a TCP load balancer's VIPs", nbdb.LoadBalancerTable,
			&nbdb.LoadBalancer{Name: "mer-natgw-3-tcp", Protocol: &tcp, Vips: map[string]string{"172.16.0.60:8080": "10.0.1.11:80"},
				ExternalIDs: ext("ngw/3/port-mappings/tcp", "ngw/3", "port-mappings")},
			nil},
		{"UDP port mappings are a UDP load balancer's VIPs", nbdb.LoadBalancerTable,
			&nbdb.LoadBalancer{Name: "mer-natgw-3-udp", Protocol: &udp, Vips: map[string]string{"172.16.0.60:5353": "10.0.2.10:53"},
				ExternalIDs: ext("ngw/3/port-mappings/udp", "ngw/3", "port-mappings")},
			nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := specByName[tc.table]
			_, e := s.meta(tc.want)
			got := d.Row(tc.table, e[KeyID])
			if got == nil {
				t.Fatalf("no %s row %s; have %v", tc.table, e[KeyID], ids(d.Rows(tc.table)))
			}
			if cols := s.changed(tc.want, got.Model); len(cols) > 0 {
				t.Errorf("columns %v differ:\n got %+v\nwant %+v", cols, got.Model, tc.want)
			}
			for col, want := range tc.refs {
				if g := got.Refs[col]; !equalSets(g, want) {
					t.Errorf("%s = %v, want %v", col, g, want)
				}
			}
		})
	}
	// Nothing else: elastic IPs on a NAT gateway or on nothing have no row
	// of their own.
	for table, n := range map[string]int{nbdb.NATTable: 3, nbdb.LoadBalancerTable: 2, nbdb.GatewayChassisTable: 2} {
		if got := len(d.Rows(table)); got != n {
			t.Errorf("%d %s rows, want %d: %v", got, table, n, ids(d.Rows(table)))
		}
	}
}

// outsideRows are the ids of every row the outside objects add.
func outsideRows(d *Desired) []string {
	var out []string
	for _, table := range []string{nbdb.NATTable, nbdb.LoadBalancerTable, nbdb.GatewayChassisTable,
		nbdb.LogicalRouterPortTable, nbdb.LogicalSwitchTable, nbdb.LogicalSwitchPortTable, nbdb.LogicalRouterStaticRouteTable} {
		for _, r := range d.Rows(table) {
			if k := r.Model; k != nil {
				_, e := specByName[table].meta(k)
				switch e[KeyKind] {
				case "elastic-ip", "snat", "port-mappings", "gateway-chassis", "gateway-port", "external-switch",
					"localnet", "external-switch-port", "gateway-route":
					out = append(out, table+" "+r.ID)
				}
			}
		}
	}
	return out
}

func TestRenderOutsideFailsClosed(t *testing.T) {
	cases := []struct {
		name   string
		render func() *Desired
		want   []string // the outside rows left, "table id"
	}{
		{"without an external network nothing is rendered", func() *Desired { return Render(outsideFixture()) }, nil},
		{"without gateway nodes nothing is rendered", func() *Desired {
			o := outsideFixture()
			delete(o, "gateway/gw1")
			delete(o, "gateway/gw2")
			return renderExt(t, o)
		}, nil},
		{"a VPC with nothing to translate gets no gateway port", func() *Desired {
			o := outsideFixture()
			delete(o, "eip/1")
			delete(o, "ngw/3")
			return renderExt(t, o)
		}, nil},
		{"an elastic IP of another family than the external network's is not rendered", func() *Desired {
			o := outsideFixture()
			delete(o, "ngw/3")
			e := o["eip/1"].GetElasticIp()
			e.Address, e.PrivateIp = "2001:db8::50", "fd00::10"
			return renderExt(t, o)
		}, nil},
		{"a NAT gateway of an unknown VPC is not rendered", func() *Desired {
			o := outsideFixture()
			delete(o, "eip/1")
			natgw(o, 3).VpcId = 9
			return renderExt(t, o)
		}, nil},
		{"a VPC beyond the router range gets no gateway port", func() *Desired {
			o := outsideFixture()
			delete(o, "eip/1")
			delete(o, "ngw/3")
			o = withOutside(o, &agentv1.Vpc{Id: 126}, &agentv1.Vpc{Id: 127}, &agentv1.Vpc{Id: 128},
				&agentv1.ElasticIp{Id: 5, Address: "172.16.0.51", VpcId: 126, PortId: 9, PrivateIp: "10.1.0.9"},
				&agentv1.ElasticIp{Id: 6, Address: "172.16.0.52", VpcId: 127, PortId: 8, PrivateIp: "10.2.0.8"},
				&agentv1.ElasticIp{Id: 7, Address: "172.16.0.53", VpcId: 128, PortId: 7, PrivateIp: "10.3.0.7"})
			d := renderExt(t, o)
			if lrp := d.Row(nbdb.LogicalRouterPortTable, "vpc/126/gateway-port"); lrp == nil ||
				lrp.Model.(*nbdb.LogicalRouterPort).Networks[0] != "172.16.0.254/24" {
				t.Errorf("VPC 126's gateway port: %+v, want one at 172.16.0.254/24", lrp)
			}
			delete(o, "eip/5")
			// VPC 127 would be 172.16.0.255, the broadcast address; VPC 128
			// is past the range.
			return renderExt(t, o)
		}, nil},
		{"bad port mappings and CIDRs are left out, the rest stays", func() *Desired {
			o := outsideFixture()
			delete(o, "eip/1")
			g := natgw(o, 3)
			g.SnatCidrs = []string{"10.0.1.0/24", "bogus", "fd00::/64"}
			g.PortMappings = []*agentv1.PortMapping{
				{Protocol: 6, Address: "172.16.0.99", PublicPort: 1, PrivateIp: "10.0.1.11", PrivatePort: 1}, // not its address
				{Protocol: 1, Address: "172.16.0.60", PublicPort: 1, PrivateIp: "10.0.1.11", PrivatePort: 1}, // not TCP or UDP
				{Protocol: 6, Address: "172.16.0.60", PublicPort: 0, PrivateIp: "10.0.1.11", PrivatePort: 1}, // no port
			}
			return renderExt(t, o)
		}, []string{
			"NAT ngw/3/snat/10.0.1.0/24", "Gateway_Chassis vpc/1/gateway-chassis/gw1", "Gateway_Chassis vpc/1/gateway-chassis/gw2",
			"Logical_Router_Port vpc/1/gateway-port", "Logical_Switch global/external", "Logical_Switch_Port global/external/localnet",
			"Logical_Switch_Port vpc/1/external-switch-port", "Logical_Router_Static_Route vpc/1/gateway-route/0.0.0.0/0",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := outsideRows(tc.render())
			if !equalSets(got, tc.want) {
				t.Errorf("outside rows:\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestRenderOutsideGatewayChoice(t *testing.T) {
	o := outsideFixture()
	delete(o, "ngw/3")
	o = withOutside(o, &agentv1.Gateway{Node: "gw3"})
	prio := func(d *Desired) map[string]int {
		out := map[string]int{}
		for _, r := range d.Rows(nbdb.GatewayChassisTable) {
			gc := r.Model.(*nbdb.GatewayChassis)
			out[gc.ChassisName] = gc.Priority
		}
		return out
	}
	// No NAT gateway: VPC 1 prefers gateways[1 % 3].
	want := map[string]int{"gw1": GatewayPriorityStandby, "gw2": GatewayPriorityPreferred, "gw3": GatewayPriorityStandby}
	if got := prio(renderExt(t, o)); !mapsEqual(got, want) {
		t.Errorf("elastic IPs only: priorities %v, want %v", got, want)
	}
	// A NAT gateway's owner wins.
	o = withOutside(o, &agentv1.NatGateway{Id: 3, VpcId: 1, Addresses: []string{"172.16.0.60"}, OwnerNode: "gw3"})
	want = map[string]int{"gw1": GatewayPriorityStandby, "gw2": GatewayPriorityStandby, "gw3": GatewayPriorityPreferred}
	if got := prio(renderExt(t, o)); !mapsEqual(got, want) {
		t.Errorf("NAT gateway owned by gw3: priorities %v, want %v", got, want)
	}
}

func TestNatGatewayTranslatesToItsFirstAddressOfTheNetworkFamily(t *testing.T) {
	o := outsideFixture()
	natgw(o, 3).Addresses = []string{"2001:db8::60", "203.0.113.60", "203.0.113.61"}
	natgw(o, 3).SnatCidrs = []string{"10.0.1.0/24", "fd00:1::/64"}
	d := renderExt(t, o)
	var got []string
	for _, r := range d.Rows(nbdb.NATTable) {
		if n := r.Model.(*nbdb.NAT); n.Type == nbdb.NATTypeSNAT {
			got = append(got, n.LogicalIP+">"+n.ExternalIP)
		}
	}
	if want := []string{"10.0.1.0/24>203.0.113.60"}; !slices.Equal(got, want) {
		t.Errorf("snat rows %v, want %v", got, want)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestExternalNetworkValidation(t *testing.T) {
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	cases := []struct {
		name string
		ext  ExternalNetwork
		want string // in the error; "" = valid
	}{
		{"valid", testExternal(), ""},
		{"no next hop is valid: no default route", ExternalNetwork{CIDR: pfx("172.16.0.0/24"), RouterRange: pfx("172.16.0.128/25")}, ""},
		{"IPv6", ExternalNetwork{CIDR: pfx("2001:db8::/64"), RouterRange: pfx("2001:db8::1:0/112"), NextHop: addr("2001:db8::1")}, ""},
		{"no CIDR", ExternalNetwork{RouterRange: pfx("172.16.0.128/25")}, "CIDR is required"},
		{"no router range", ExternalNetwork{CIDR: pfx("172.16.0.0/24")}, "RouterRange is required"},
		{"router range outside", ExternalNetwork{CIDR: pfx("172.16.0.0/24"), RouterRange: pfx("172.17.0.0/25")}, "not inside"},
		{"router range wider", ExternalNetwork{CIDR: pfx("172.16.0.0/24"), RouterRange: pfx("172.16.0.0/16")}, "not inside"},
		{"next hop outside", ExternalNetwork{CIDR: pfx("172.16.0.0/24"), RouterRange: pfx("172.16.0.128/25"), NextHop: addr("10.0.0.1")}, "not in"},
		{"next hop among the routers", ExternalNetwork{CIDR: pfx("172.16.0.0/24"), RouterRange: pfx("172.16.0.128/25"), NextHop: addr("172.16.0.200")}, "inside the router range"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rr, err := NewRendererFor(tc.ext)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one saying %q", err, tc.want)
			case tc.want != "" && rr != nil:
				t.Error("a renderer for a bad network")
			}
		})
	}
	// IPv6 routers are numbered like IPv4 ones.
	rr, _ := NewRendererFor(cases[2].ext)
	if a, ok := rr.ext.routerAddress(7); !ok || a != addr("2001:db8::1:7") {
		t.Errorf("IPv6 router address of VPC 7 = %v, %v", a, ok)
	}
}

// syncExt syncs objs rendered for the test external network.
func syncExt(t *testing.T, r *Reconciler, objs map[string]*agentv1.Object) SyncResult {
	t.Helper()
	res, err := r.SyncDesired(testCtx(t), renderExt(t, objs))
	if err != nil {
		t.Fatalf("SyncDesired: %v", err)
	}
	return res
}

func TestSyncOutsideWritesExactlyTheRenderedRows(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	res := syncExt(t, r, outsideFixture())
	d := renderExt(t, outsideFixture())
	assertNBMatches(t, r, d)
	if res.Created != d.Len() {
		t.Errorf("created %d rows, want %d", res.Created, d.Len())
	}
	if res := syncExt(t, r, outsideFixture()); res != (SyncResult{}) {
		t.Errorf("resync wrote %+v", res)
	}
}

func TestSyncOutsideUpdatesTouchOnlyWhatChanged(t *testing.T) {
	cases := []struct {
		name   string
		change func(map[string]*agentv1.Object)
		want   SyncResult // Transactions and Operations not compared
	}{
		{"an elastic IP is disassociated: its NAT row unlinked, nothing else", func(o map[string]*agentv1.Object) {
			e := o["eip/1"].GetElasticIp()
			e.VpcId, e.PortId, e.PrivateIp, e.PortMac, e.PortNode = 0, 0, "", "", ""
		}, SyncResult{Unlinked: 1}},
		{"an elastic IP moves to another port: its NAT row rewritten", func(o map[string]*agentv1.Object) {
			e := o["eip/1"].GetElasticIp()
			e.PortId, e.PrivateIp = 102, "10.0.1.11"
		}, SyncResult{Updated: 1}},
		{"an elastic IP is released: its NAT row unlinked", func(o map[string]*agentv1.Object) {
			delete(o, "eip/1")
		}, SyncResult{Unlinked: 1}},
		{"a port mapping's private port changes: its load balancer rewritten", func(o map[string]*agentv1.Object) {
			natgw(o, 3).PortMappings[0].PrivatePort = 8000
		}, SyncResult{Updated: 1}},
		{"a subnet leaves the NAT gateway: one snat row unlinked", func(o map[string]*agentv1.Object) {
			g := natgw(o, 3)
			g.SubnetIds, g.SnatCidrs = []uint32{11}, []string{"10.0.1.0/24"}
		}, SyncResult{Unlinked: 1}},
		{"the NAT gateway's port range changes: its snat rows rewritten", func(o map[string]*agentv1.Object) {
			natgw(o, 3).PortMax = 40000
		}, SyncResult{Updated: 2}},
		{"the NAT gateway's owner changes: two gateway chassis reprioritised", func(o map[string]*agentv1.Object) {
			natgw(o, 3).OwnerNode = "gw1"
		}, SyncResult{Updated: 2}},
		{"a gateway node joins: one gateway chassis created and linked", func(o map[string]*agentv1.Object) {
			withOutside(o, &agentv1.Gateway{Node: "gw3"})
		}, SyncResult{Created: 1, Linked: 1}},
		{"the UDP mapping goes: its load balancer unlinked and deleted", func(o map[string]*agentv1.Object) {
			g := natgw(o, 3)
			g.PortMappings = g.PortMappings[:1]
		}, SyncResult{Unlinked: 1, Deleted: 1}},
	}
	// Full passes over rendered rows, and the reconciler's own passes,
	// which after the first are incremental (scoped to the rows whose
	// rendering changed).
	modes := []struct {
		name string
		sync func(t *testing.T, r *Reconciler, objs map[string]*agentv1.Object) SyncResult
	}{
		{"full", syncExt},
		{"incremental", func(t *testing.T, r *Reconciler, objs map[string]*agentv1.Object) SyncResult {
			t.Helper()
			return mustSync(t, r, objs)
		}},
	}
	for _, mode := range modes {
		for _, tc := range cases {
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				r := connect(t, ovntest.InMemoryNB(t), nil)
				r.renderer = extRenderer(t)
				mode.sync(t, r, outsideFixture())
				objs := outsideFixture()
				tc.change(objs)
				got := mode.sync(t, r, objs)
				got.Transactions, got.Operations = 0, 0
				if got != tc.want {
					t.Errorf("wrote %+v, want %+v", got, tc.want)
				}
				assertNBMatches(t, r, renderExt(t, objs))
				if res := mode.sync(t, r, objs); res != (SyncResult{}) {
					t.Errorf("resync after the change wrote %+v", res)
				}
			})
		}
	}
}

// TestSyncOutsideRemovalLeavesNoOrphans: taking the outside objects away
// removes every row they brought, in the NB itself (not only in the
// Meridian-owned view): no NAT, load balancer, gateway chassis, gateway
// port or external switch row survives.
func TestSyncOutsideRemovalLeavesNoOrphans(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	syncExt(t, r, outsideFixture())
	objs := fixture()
	syncExt(t, r, objs)
	assertNBMatches(t, r, renderExt(t, objs))
	for _, table := range []string{nbdb.NATTable, nbdb.LoadBalancerTable, nbdb.GatewayChassisTable} {
		if n := len(r.Client().Cache().Table(table).RowsShallow()); n != 0 {
			t.Errorf("%s: %d rows left", table, n)
		}
	}
	for _, m := range r.Client().Cache().Table(nbdb.LogicalRouterPortTable).RowsShallow() {
		if n := m.(*nbdb.LogicalRouterPort).Name; strings.HasPrefix(n, "mer-gw-") {
			t.Errorf("gateway port %s left", n)
		}
	}
	for _, m := range r.Client().Cache().Table(nbdb.LogicalSwitchTable).RowsShallow() {
		if n := m.(*nbdb.LogicalSwitch).Name; n == DefaultExternalSwitch {
			t.Errorf("external switch left")
		}
	}
	lr := meridianRows(r, nbdb.LogicalRouterTable)["vpc/1"].(*nbdb.LogicalRouter)
	if len(lr.Nat) != 0 || len(lr.LoadBalancer) != 0 || slices.ContainsFunc(lr.StaticRoutes, func(u string) bool {
		return idOfUUID(r, nbdb.LogicalRouterStaticRouteTable, u) == "vpc/1/gateway-route/0.0.0.0/0"
	}) {
		t.Errorf("router still references outside rows: %+v", lr)
	}
}

// TestOutsideDriftIsRepaired: hand edits of the outside rows are undone by
// the reconciler's next (incremental) pass, and only they.
func TestOutsideDriftIsRepaired(t *testing.T) {
	cases := []struct {
		name  string
		drift func(t *testing.T, r *Reconciler)
		want  SyncResult
	}{
		{"an elastic IP's NAT row edited by hand is put back", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			n := &nbdb.NAT{UUID: uuidOf(r, nbdb.NATTable, "eip/1"), LogicalIP: "10.0.1.99"}
			transact(t, c, must(c.Where(n).Update(n, &n.LogicalIP)))
		}, SyncResult{Updated: 1}},
		{"a gateway chassis unlinked by hand is recreated", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			lrp := &nbdb.LogicalRouterPort{UUID: uuidOf(r, nbdb.LogicalRouterPortTable, "vpc/1/gateway-port")}
			transact(t, c, must(c.Where(lrp).Mutate(lrp, model.Mutation{Field: &lrp.GatewayChassis, Mutator: ovsdb.MutateOperationDelete,
				Value: []string{uuidOf(r, nbdb.GatewayChassisTable, "vpc/1/gateway-chassis/gw2")}})))
		}, SyncResult{Created: 1, Linked: 1}},
		{"a port-mapping load balancer unlinked from the router by hand is linked again", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			lr := &nbdb.LogicalRouter{UUID: uuidOf(r, nbdb.LogicalRouterTable, "vpc/1")}
			transact(t, c, must(c.Where(lr).Mutate(lr, model.Mutation{Field: &lr.LoadBalancer, Mutator: ovsdb.MutateOperationDelete,
				Value: []string{uuidOf(r, nbdb.LoadBalancerTable, "ngw/3/port-mappings/tcp")}})))
		}, SyncResult{Linked: 1}},
		{"a gateway port deleted by hand comes back with its chassis", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			lr := &nbdb.LogicalRouter{UUID: uuidOf(r, nbdb.LogicalRouterTable, "vpc/1")}
			transact(t, c, must(c.Where(lr).Mutate(lr, model.Mutation{Field: &lr.Ports, Mutator: ovsdb.MutateOperationDelete,
				Value: []string{uuidOf(r, nbdb.LogicalRouterPortTable, "vpc/1/gateway-port")}})))
		}, SyncResult{Created: 3, Linked: 3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := connect(t, ovntest.InMemoryNB(t), nil)
			r.renderer = extRenderer(t)
			mustSync(t, r, outsideFixture())
			tc.drift(t, r)
			got := mustSync(t, r, outsideFixture())
			got.Transactions, got.Operations = 0, 0
			if got != tc.want {
				t.Errorf("repair wrote %+v, want %+v", got, tc.want)
			}
			assertNBMatches(t, r, renderExt(t, outsideFixture()))
		})
	}
}

// TestSmallBatchesCarryGatewayChassis splits every phase into tiny
// transactions: a gateway port's chassis rows, children of a row created
// in an earlier transaction, must still be linked to it.
func TestSmallBatchesCarryGatewayChassis(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), func(c *Config) { c.MaxOps = 2 })
	res := syncExt(t, r, outsideFixture())
	assertNBMatches(t, r, renderExt(t, outsideFixture()))
	if res.Transactions < 10 {
		t.Errorf("%d transactions with 2 operations each at most, want more", res.Transactions)
	}
	if got := len(meridianRows(r, nbdb.GatewayChassisTable)); got == 0 {
		t.Errorf("no Gateway_Chassis rows")
	}
}
