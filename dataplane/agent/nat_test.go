package agent

import (
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// inPrivateNetns runs fn on a locked thread in a fresh network namespace
// with a data path on a private bpffs; the namespace goes with the test.
func inPrivateNetns(t testing.TB, fn func(dp *datapath.Datapath)) {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a private bpffs (needs root): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("create netns (needs root): %v", err)
	}
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		ns.Close()
		orig.Close()
	}()
	dp, err := datapath.Open(filepath.Join(dir, "node"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { dp.Unpin(); dp.Close() }()
	fn(dp)
}

func addVeth(t testing.TB, name string) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func objects(objs ...*agentv1.Object) map[string]*agentv1.Object {
	m := map[string]*agentv1.Object{}
	for _, o := range objs {
		m[o.Key] = o
	}
	return m
}

// outsideWorld is a VPC with one port on node g1, gateways g1 and g2, an
// elastic IP on the port and a NAT gateway for its subnet owned by owner.
func outsideWorld(uplink, owner string, eipPort uint32) map[string]*agentv1.Object {
	return objects(
		&agentv1.Object{Key: "vpc/1", Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{Id: 1, Vni: 100, Cidrs: []string{"10.0.0.0/16"}}}},
		&agentv1.Object{Key: "subnet/1", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 1, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1"}}},
		&agentv1.Object{Key: "port/1", Body: &agentv1.Object_Port{Port: &agentv1.Port{Id: 1, VpcId: 1, SubnetId: 1, Mac: "02:00:00:00:00:0a",
			Ips: []string{"10.0.1.10"}, Node: "g1"}}},
		&agentv1.Object{Key: "gateway/g1", Body: &agentv1.Object_Gateway{Gateway: &agentv1.Gateway{Node: "g1", UnderlayIp: "192.0.2.101", Uplink: uplink}}},
		&agentv1.Object{Key: "gateway/g2", Body: &agentv1.Object_Gateway{Gateway: &agentv1.Gateway{Node: "g2", UnderlayIp: "192.0.2.102"}}},
		&agentv1.Object{Key: "eip/1", Body: &agentv1.Object_ElasticIp{ElasticIp: &agentv1.ElasticIp{Id: 1, Address: "198.51.100.10",
			VpcId: 1, Vni: 100, PortId: eipPort, PrivateIp: "10.0.1.10", PortMac: "02:00:00:00:00:0a", PortNode: "g1", PortNodeIp: "192.0.2.101"}}},
		&agentv1.Object{Key: "eip/2", Body: &agentv1.Object_ElasticIp{ElasticIp: &agentv1.ElasticIp{Id: 2, Address: "198.51.100.20",
			VpcId: 1, Vni: 100, NatGatewayId: 1}}},
		&agentv1.Object{Key: "ngw/1", Body: &agentv1.Object_NatGateway{NatGateway: &agentv1.NatGateway{Id: 1, VpcId: 1, Vni: 100,
			Addresses: []string{"198.51.100.20"}, SubnetIds: []uint32{1}, SnatCidrs: []string{"10.0.1.0/24"}, PortMin: 1024, PortMax: 65535,
			OwnerNode: owner, PortMappings: []*agentv1.PortMapping{{Protocol: 6, Address: "198.51.100.20", PublicPort: 8080, PortId: 1,
				PrivateIp: "10.0.1.10", PrivatePort: 80, PortMac: "02:00:00:00:00:0a", PortNode: "g1", PortNodeIp: "192.0.2.101"}}}}},
	)
}

func uplinkPrograms(t *testing.T, ifindex int) int {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatalf("query tcx programs: %v", err)
	}
	return len(res.Programs)
}

// TestReconcileOutside: the agent's reconcile turns Gateway, ElasticIp and
// NatGateway objects into the data path's egress entries and gateway
// tables, attaches the uplink program on a gateway, and removes all of it
// when the objects change or go.
func TestReconcileOutside(t *testing.T) {
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		port := addVeth(t, "nport1")
		up := addVeth(t, "nup0")
		inst := NewInstaller(dp, "g1", map[uint32]string{1: port.Attrs().Name})

		if errs := inst.Install(outsideWorld("nup0", "g1", 1)); len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		gws, err := dp.Gateways()
		if err != nil || !slices.Equal(gws, []netip.Addr{netip.MustParseAddr("192.0.2.101"), netip.MustParseAddr("192.0.2.102")}) {
			t.Fatalf("gateways %v, %v", gws, err)
		}
		eg, err := dp.Egresses()
		if err != nil {
			t.Fatal(err)
		}
		want := []datapath.Egress{
			{VPC: 100, Prefix: netip.MustParsePrefix("10.0.1.0/24"), NATOwner: netip.MustParseAddr("192.0.2.101"), NATGateway: 1},
			{VPC: 100, Prefix: netip.MustParsePrefix("10.0.1.10/32")},
		}
		if !slices.Equal(eg, want) {
			t.Fatalf("egress %+v, want %+v", eg, want)
		}
		eips, err := dp.ElasticIPs()
		if err != nil || len(eips) != 1 || eips[0].Address.String() != "198.51.100.10" || eips[0].PrivateIP.String() != "10.0.1.10" ||
			eips[0].Node.String() != "192.0.2.101" || eips[0].VPC != 100 || eips[0].PortMAC.String() != "02:00:00:00:00:0a" {
			t.Fatalf("elastic IPs %+v, %v: want 198.51.100.10 -> 10.0.1.10 on 192.0.2.101 (the NAT gateway's address is not one)", eips, err)
		}
		src, err := dp.NATSourcePrefixes()
		if err != nil || len(src) != 1 || len(src[1]) != 1 || src[1][0].String() != "10.0.1.0/24" {
			t.Fatalf("SNAT prefixes %v, %v: the owner translates 10.0.1.0/24", src, err)
		}
		if n := uplinkPrograms(t, up.Attrs().Index); n != 1 {
			t.Fatalf("%d programs on the uplink, want 1", n)
		}

		// Ownership moves to g2, the elastic IP is disassociated: g1 keeps
		// serving the NAT gateway's address and mapping, not new flows.
		if errs := inst.Install(outsideWorld("nup0", "g2", 0)); len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		if src, _ := dp.NATSourcePrefixes(); len(src) != 0 {
			t.Fatalf("SNAT prefixes %v after ownership moved away", src)
		}
		if st, _ := dp.NATStats(); len(st) != 1 || st[0].ID != 1 {
			t.Fatalf("NAT gateways %+v, want 1 still served", st)
		}
		if eips, _ := dp.ElasticIPs(); len(eips) != 0 {
			t.Fatalf("elastic IPs %+v after disassociation", eips)
		}
		eg, _ = dp.Egresses()
		if len(eg) != 1 || eg[0].NATOwner.String() != "192.0.2.102" {
			t.Fatalf("egress %+v: want only the subnet, to the new owner", eg)
		}

		// A gateway without an uplink is an error of its Gateway object.
		errs := inst.Install(outsideWorld("", "g2", 1))
		if !strings.Contains(errs["gateway/g1"], "uplink") || len(errs) != 1 {
			t.Fatalf("errors %v, want gateway/g1 without an uplink", errs)
		}

		// No longer a gateway: its tables and uplink program go.
		w := outsideWorld("nup0", "g2", 1)
		delete(w, "gateway/g1")
		if errs := inst.Install(w); len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		if st, _ := dp.NATStats(); len(st) != 0 {
			t.Fatalf("NAT gateways %+v on a node that is no gateway", st)
		}
		if eips, _ := dp.ElasticIPs(); len(eips) != 0 {
			t.Fatalf("elastic IPs %+v on a node that is no gateway", eips)
		}
		if n := uplinkPrograms(t, up.Attrs().Index); n != 0 {
			t.Fatalf("%d programs left on the uplink", n)
		}
		if gws, _ := dp.Gateways(); len(gws) != 1 {
			t.Fatalf("gateways %v, want g2 only", gws)
		}
		// its port keeps its way out through the remaining gateway
		if eg, _ := dp.Egresses(); len(eg) != 2 {
			t.Fatalf("egress %+v, want the elastic IP's /32 and the subnet", eg)
		}

		// Nothing of the outside world: nothing installed.
		for k := range w {
			if strings.HasPrefix(k, "gateway/") || strings.HasPrefix(k, "eip/") || strings.HasPrefix(k, "ngw/") {
				delete(w, k)
			}
		}
		if errs := inst.Install(w); len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		if eg, _ := dp.Egresses(); len(eg) != 0 {
			t.Fatalf("egress %+v left", eg)
		}
	})
}

func TestOutsideTranslationRejectsBadObjects(t *testing.T) {
	if _, _, err := elasticIPOf(&agentv1.ElasticIp{PortId: 1, Address: "198.51.100.1", PrivateIp: "10.0.0.1", PortMac: "zz"}); err == nil {
		t.Fatal("bad MAC accepted")
	}
	if _, ok, err := elasticIPOf(&agentv1.ElasticIp{PortId: 1, Address: "2001:db8::1"}); ok || err != nil {
		t.Fatalf("IPv6 elastic IP: ok %v err %v, want skipped", ok, err)
	}
	if _, err := natGatewayOf(&agentv1.NatGateway{Id: 1, Addresses: []string{"198.51.100.1"}, PortMax: 70000}, "g1"); err == nil {
		t.Fatal("port 70000 accepted")
	}
	g, err := natGatewayOf(&agentv1.NatGateway{Id: 1, Addresses: []string{"198.51.100.1", "2001:db8::1"}, SnatCidrs: []string{"10.0.1.0/24"}, OwnerNode: "g2"}, "g1")
	if err != nil || len(g.Addresses) != 1 || len(g.SNAT) != 0 {
		t.Fatalf("%+v, %v: want the IPv4 address only, no SNAT on a non-owner", g, err)
	}
}

// TestNATMetrics: the agent's /metrics exports each NAT gateway's active
// flows and port exhaustion.
func TestNATMetrics(t *testing.T) {
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		err := dp.UpsertNATGateway(datapath.NATGateway{ID: 9, VPC: 100, Addresses: []netip.Addr{netip.MustParseAddr("198.51.100.9")}})
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(newDropCollector(dp))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "nat_gateway" {
						got[mf.GetName()] = l.GetValue()
					}
				}
			}
		}
		if got["meridian_agent_nat_active_flows"] != "9" || got["meridian_agent_nat_port_exhausted_total"] != "9" {
			t.Fatalf("NAT metrics by family: %v, want both for NAT gateway 9", got)
		}
	})
}

// TestGatewaySetSkipsDrainingGateways: a gateway whose agent is away
// (draining) gets no elastic-IP flows while another does not drain; when
// every gateway drains, all of them are used rather than none.
func TestGatewaySetSkipsDrainingGateways(t *testing.T) {
	gw := func(node, ip string, draining bool) *agentv1.Gateway {
		return &agentv1.Gateway{Node: node, UnderlayIp: ip, Draining: draining}
	}
	cases := []struct {
		name string
		gws  []*agentv1.Gateway
		want []string
	}{
		{"none draining", []*agentv1.Gateway{gw("g1", "192.0.2.1", false), gw("g2", "192.0.2.2", false)}, []string{"192.0.2.1", "192.0.2.2"}},
		{"one draining", []*agentv1.Gateway{gw("g1", "192.0.2.1", true), gw("g2", "192.0.2.2", false)}, []string{"192.0.2.2"}},
		{"all draining", []*agentv1.Gateway{gw("g1", "192.0.2.1", true), gw("g2", "192.0.2.2", true)}, []string{"192.0.2.1", "192.0.2.2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := outsideObjects{gateways: map[string]*agentv1.Gateway{}}
			for _, g := range tc.gws {
				o.gateways[g.Node] = g
			}
			got, err := gatewaySet(o)
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, a := range got {
				s = append(s, a.String())
			}
			if !slices.Equal(s, tc.want) {
				t.Fatalf("gateway set %v, want %v", s, tc.want)
			}
		})
	}
}
