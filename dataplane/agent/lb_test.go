package agent

import (
	"net/netip"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
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
