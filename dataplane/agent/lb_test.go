package agent

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
	"github.com/meridian-sdn/meridian/dataplane/health"
)

// lbWorld is a VPC with two ports on n1 (1 plumbed as mp1, 2 not yet)
// and one on n2, and a service over all three with an HTTP check.
func lbWorld(hc *agentv1.HealthCheck) map[string]*agentv1.Object {
	port := func(id uint32, mac, ip, node string) *agentv1.Object {
		return &agentv1.Object{Key: "port/" + string(rune('0'+id)), Body: &agentv1.Object_Port{Port: &agentv1.Port{
			Id: id, VpcId: 1, SubnetId: 1, Mac: mac, Ips: []string{ip}, Node: node}}}
	}
	return objects(
		&agentv1.Object{Key: "vpc/1", Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{Id: 1, Vni: 100, Cidrs: []string{"10.0.0.0/16"}}}},
		&agentv1.Object{Key: "subnet/1", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 1, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1"}}},
		port(1, "02:00:00:00:00:01", "10.0.1.11", "n1"),
		port(2, "02:00:00:00:00:02", "10.0.1.12", "n1"),
		&agentv1.Object{Key: "lb/7", Body: &agentv1.Object_LbService{LbService: &agentv1.LbService{
			Id: 7, Name: "web/http", VpcId: 1, Vni: 100, Vip: "203.0.113.7", Port: 80, Protocol: 6, HealthCheck: hc,
			Backends: []*agentv1.LbBackend{
				{Id: 1, Address: "10.0.1.11", Port: 8080, Weight: 1, PortId: 1, PortMac: "02:00:00:00:00:01", Node: "n1", NodeIp: "192.0.2.1"},
				{Id: 2, Address: "10.0.1.12", Port: 8080, Weight: 1, PortId: 2, PortMac: "02:00:00:00:00:02", Node: "n1", NodeIp: "192.0.2.1"},
				{Id: 3, Address: "10.0.1.13", Port: 8080, Weight: 1, PortId: 3, PortMac: "02:00:00:00:00:03", Node: "n2", NodeIp: "192.0.2.2"},
			}}}},
	)
}

// TestHealthTargets: a node checks the backends it hosts and has plumbed,
// from the subnet gateway, with the check's defaults; a service without a
// check has no probes, a bad check is the service's error.
func TestHealthTargets(t *testing.T) {
	plumbed := map[uint32]string{1: "mp1"}
	desired := lbWorld(&agentv1.HealthCheck{Protocol: "http", Path: "/healthz", IntervalMs: 500})
	errs := map[string]string{}
	got := healthTargets("n1", desired, agentv1.IndexObjects(desired), plumbed, errs)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	if len(got) != 1 {
		t.Fatalf("targets %+v, want backend 1 only (2 is not plumbed, 3 is on n2)", got)
	}
	want := health.Target{Key: health.Key{Service: 7, Backend: 1}, HostIf: "mp1", RouterMAC: RouterMAC,
		Gateway: netip.MustParseAddr("10.0.1.1"), Address: netip.MustParseAddr("10.0.1.11"), Port: 8080,
		Check: health.Check{Protocol: "http", Path: "/healthz", Interval: 500 * time.Millisecond, Timeout: time.Second,
			HealthyThreshold: 2, UnhealthyThreshold: 2}}
	g := got[0]
	if g.Key != want.Key || g.HostIf != want.HostIf || g.RouterMAC.String() != want.RouterMAC.String() ||
		g.PortMAC.String() != "02:00:00:00:00:01" || g.Gateway != want.Gateway || g.Address != want.Address ||
		g.Port != want.Port || g.Check != want.Check {
		t.Errorf("target\n got %+v\nwant %+v", g, want)
	}

	if got := healthTargets("n2", desired, agentv1.IndexObjects(desired), map[uint32]string{3: "mp3"}, errs); len(got) != 0 {
		t.Errorf("n2 checks %+v, but it does not hold port 3's object", got)
	}
	noCheck := lbWorld(nil)
	if got := healthTargets("n1", noCheck, agentv1.IndexObjects(noCheck), plumbed, errs); len(got) != 0 {
		t.Errorf("targets without a health check: %+v", got)
	}
	bad := lbWorld(&agentv1.HealthCheck{Protocol: "udp"})
	errs = map[string]string{}
	if got := healthTargets("n1", bad, agentv1.IndexObjects(bad), plumbed, errs); len(got) != 0 || errs["lb/7"] == "" {
		t.Errorf("check over udp: targets %+v, errors %v; want none and an error on lb/7", got, errs)
	}
}

// TestPlanBGPAnnouncesVIPs: a gateway announces the VIPs of north-south
// listeners its load balancer serves, with their pool's attributes, once
// per address; not internal ones, not those it failed to set, not those
// of a pool that is not announced, nothing while its uplink is down.
func TestPlanBGPAnnouncesVIPs(t *testing.T) {
	lbObj := func(id uint32, vip string, port, pool uint32, internal bool) *agentv1.Object {
		return &agentv1.Object{Key: fmt.Sprintf("lb/%d", id), Body: &agentv1.Object_LbService{LbService: &agentv1.LbService{
			Id: id, Vip: vip, Port: port, Protocol: 6, PoolId: pool, Internal: internal}}}
	}
	desired := edgeFixture()
	for _, o := range []*agentv1.Object{
		lbObj(10, "198.51.100.50", 80, 1, false),
		lbObj(11, "198.51.100.50", 443, 1, false), // a second listener of the same VIP
		lbObj(12, "198.51.100.51", 80, 1, false),  // failed in the data path
		lbObj(13, "10.1.0.80", 80, 0, true),       // east-west
		lbObj(14, "203.0.113.50", 80, 2, false),   // pool not announced
	} {
		desired[o.Key] = o
	}
	under := netip.MustParseAddr("10.0.0.1")
	p := planBGP("gw1", under, desired, map[string]string{"lb/12": "no uplink"}, false)
	if len(p.Errs) != 0 {
		t.Fatalf("errors: %v", p.Errs)
	}
	rs := routeMap(p.Routes)
	r, ok := rs["198.51.100.50/32"]
	if !ok || r.MED != 10 || !slices.Equal(r.Communities, []string{"65000:100"}) {
		t.Errorf("VIP route %+v (present %v), want MED 10 and community 65000:100", r, ok)
	}
	for _, pfx := range []string{"198.51.100.51/32", "10.1.0.80/32", "203.0.113.50/32"} {
		if _, ok := rs[pfx]; ok {
			t.Errorf("%s announced", pfx)
		}
	}
	p = planBGP("gw1", under, desired, map[string]string{"gateway/gw1": "uplink ext0: not found"}, false)
	if _, ok := routeMap(p.Routes)["198.51.100.50/32"]; ok {
		t.Error("VIP announced by a gateway whose uplink is down")
	}
}

// TestReconcileNorthSouth: every listener is set in the tc pipeline; on a
// gateway the XDP load balancer is attached to the uplink beside the tc
// uplink program, serves the north-south
// listeners (counted on /metrics), drops removed ones, reports bad ones as
// their objects' errors, and leaves the uplink when the node stops being
// a gateway.
func TestReconcileNorthSouth(t *testing.T) {
	inPrivateNetns(t, func(dp *datapath.Datapath) {
		port := addVeth(t, "nport1")
		up := addVeth(t, "nup0")
		if err := netlink.LinkSetUp(up); err != nil {
			t.Fatal(err)
		}
		a := &Agent{cfg: Config{Node: "g1", UnderlayIP: netip.MustParseAddr("192.0.2.101"), BPFFS: dp.PinDir()},
			log: slog.New(slog.NewTextHandler(io.Discard, nil)), dp: dp}
		defer func() { a.nslb.close() }()
		attach := map[string]*attachment{"1": {Port: "1", PortID: 1, HostIf: port.Attrs().Name}}
		svc := func(id uint32, vip string, internal bool) *agentv1.Object {
			return &agentv1.Object{Key: fmt.Sprintf("lb/%d", id), Body: &agentv1.Object_LbService{LbService: &agentv1.LbService{
				Id: id, Name: "web/http", VpcId: 1, Vni: 100, Vip: vip, Port: 80, Protocol: 6, Internal: internal, MaglevSize: 251,
				Backends: []*agentv1.LbBackend{
					{Id: 1, Address: "10.0.1.10", Port: 8080, Weight: 1, PortId: 1, PortMac: "02:00:00:00:00:0a", Node: "g1", NodeIp: "192.0.2.101", Healthy: true},
					{Id: 2, Address: "10.0.1.20", Port: 8080, Weight: 1, PortId: 2, PortMac: "02:00:00:00:00:0b", Node: "n2", NodeIp: "192.0.2.102", Healthy: true},
				}}}}
		}
		// The underlay, where node n2 (192.0.2.102) is a neighbour.
		under := addVeth(t, "nund0")
		if err := netlink.AddrAdd(under, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{192, 0, 2, 1}, Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
		for _, l := range []string{"nund0", "nund0p"} {
			if err := netlink.LinkSetUp(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: l}}); err != nil {
				t.Fatal(err)
			}
		}
		managed := func() bool {
			t.Helper()
			ns, err := netlink.NeighList(under.Attrs().Index, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range ns {
				if n.IP.Equal(net.IP{192, 0, 2, 102}) && n.FlagsExt&netlink.NTF_EXT_MANAGED != 0 {
					return true
				}
			}
			return false
		}
		apply := func(desired map[string]*agentv1.Object) map[string]string {
			t.Helper()
			next, errs := a.reconcile(desired, attach, a.applied)
			a.applied = next
			a.reconcileNorthSouth(desired, errs)
			return errs
		}
		xdpProg := func() uint32 {
			t.Helper()
			l, err := netlink.LinkByIndex(up.Attrs().Index)
			if err != nil {
				t.Fatal(err)
			}
			if x := l.Attrs().Xdp; x != nil && x.Attached {
				return x.ProgId
			}
			return 0
		}
		a.applied = newApplied()

		w := outsideWorld("nup0", "g1", 1)
		w["lb/10"] = svc(10, "198.51.100.50", false)
		w["lb/11"] = svc(11, "10.0.1.80", true)       // east-west: not the gateway's XDP
		w["lb/12"] = svc(12, "not-an-address", false) // refused, alone
		errs := apply(w)
		if len(errs) != 1 || !strings.Contains(errs["lb/12"], "VIP") {
			t.Fatalf("errors %v, want only lb/12's VIP", errs)
		}
		if !managed() {
			t.Error("no managed neighbour entry for backend node 192.0.2.102: the load balancer's FIB lookups would fail")
		}
		// Every listener is in the tc pipeline, east-west ones too.
		if ids, err := dp.ServiceIDs(); err != nil || !slices.Equal(ids, []uint32{10, 11}) {
			t.Fatalf("services in the tc pipeline %v, %v; want 10 and 11", ids, err)
		}
		if xdpProg() == 0 || uplinkPrograms(t, up.Attrs().Index) != 1 {
			t.Fatalf("uplink: XDP program %d, %d tc programs; want both", xdpProg(), uplinkPrograms(t, up.Attrs().Index))
		}
		st, err := a.nslb.lb.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := st.Services[10]; !ok || len(st.Services) != 1 {
			t.Fatalf("services in the load balancer %v, want 10 only", st.Services)
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(newLBCollector(&a.nslb))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, mf := range mfs {
			names = append(names, mf.GetName())
			if len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetLabel()[0].GetValue() != "10" {
				t.Errorf("%s: %v, want one series for service 10", mf.GetName(), mf.GetMetric())
			}
		}
		if !slices.Equal(names, []string{"meridian_agent_lb_new_flows_total", "meridian_agent_lb_no_backend_drops_total", "meridian_agent_lb_packets_total"}) {
			t.Errorf("metrics %v", names)
		}

		// The agent restarts: its load balancer forwards meanwhile, from
		// its pins, and the next agent takes it over with its services.
		a.nslb.close()
		if xdpProg() == 0 {
			t.Fatal("the XDP program left the uplink with the agent")
		}
		a = &Agent{cfg: a.cfg, log: a.log, dp: dp, applied: a.applied}
		if errs := apply(w); len(errs) != 1 {
			t.Fatalf("errors after the restart: %v", errs)
		}
		if ids := a.nslb.lb.ServiceIDs(); !slices.Equal(ids, []uint32{10}) {
			t.Fatalf("services after the restart %v, want 10", ids)
		}

		// The same state again changes nothing; a listener goes away.
		prog := xdpProg()
		delete(w, "lb/12")
		if errs := apply(w); len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		delete(w, "lb/10")
		if errs := apply(w); len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		if ids, err := dp.ServiceIDs(); err != nil || !slices.Equal(ids, []uint32{11}) {
			t.Fatalf("services in the tc pipeline %v, %v; want 11 only", ids, err)
		}
		if st, _ := a.nslb.lb.Stats(); len(st.Services) != 0 || xdpProg() != prog {
			t.Fatalf("services %v, XDP program %d (was %d): want none, the same program", st.Services, xdpProg(), prog)
		}

		// No longer a gateway: the XDP program leaves, the tc one too.
		w = outsideWorld("nup0", "g2", 1)
		w["lb/10"] = svc(10, "198.51.100.50", false)
		delete(w, "gateway/g1")
		if errs := apply(w); len(errs) != 0 {
			t.Fatalf("errors: %v", errs)
		}
		if xdpProg() != 0 || a.nslb.lb != nil {
			t.Fatalf("XDP program %d still on the uplink of a node that is no gateway", xdpProg())
		}
		if managed() {
			t.Error("the managed neighbour entry outlived the load balancer")
		}
		if pins, _ := filepath.Glob(filepath.Join(dp.PinDir(), "lb", "links", "*")); len(pins) != 0 {
			t.Errorf("pinned links left: %v", pins)
		}
	})
}
