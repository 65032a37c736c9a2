package ovn

import (
	"maps"
	"slices"
	"testing"

	"github.com/ovn-kubernetes/libovsdb/model"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// lbFixture is fixture() with two more ports on subnet 12 (node n2) and
// two internal listeners: TCP 10.0.1.100:80 with a health check over a
// backend on each subnet, one draining and one on an unbound port; UDP
// 10.0.1.101:53 with source-IP persistence and no health check, over a
// healthy and an unhealthy backend.
func lbFixture() map[string]*agentv1.Object {
	o := fixture()
	// Group 23 lets the listeners' traffic reach the backends.
	o["port/101"].GetPort().SecurityGroupIds = append(o["port/101"].GetPort().SecurityGroupIds, 23)
	return withOutside(o,
		&agentv1.SecurityGroup{Id: 23, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 9, Ingress: true, Allow: true, Protocol: 6, PortMin: 8080, PortMax: 8080, IcmpType: -1, IcmpCode: -1, Cidr: "10.0.0.0/16"},
			{Id: 10, Ingress: true, Allow: true, Protocol: 6, PortMin: 8443, PortMax: 8443, IcmpType: -1, IcmpCode: -1, Cidr: "0.0.0.0/0"},
			{Id: 11, Ingress: true, Allow: true, Protocol: 17, PortMin: 53, PortMax: 53, IcmpType: -1, IcmpCode: -1, Cidr: "10.0.0.0/16"},
		}},
		&agentv1.Port{Id: 104, VpcId: 1, SubnetId: 12, Mac: "02:00:00:00:02:02", Ips: []string{"10.0.2.11"},
			Node: "n2", SecurityGroupIds: []uint32{21, 23}, SourceDestCheck: true},
		&agentv1.Port{Id: 105, VpcId: 1, SubnetId: 12, Mac: "02:00:00:00:02:03", Ips: []string{"10.0.2.254"},
			Node: "n2", SecurityGroupIds: []uint32{21}, SourceDestCheck: true},
		&agentv1.LbService{Id: 7, LoadBalancerId: 1, Name: "web/http", VpcId: 1, Vni: 1001, Vip: "10.0.1.100", Port: 80,
			Protocol: 6, Internal: true, MaglevSize: 251,
			Backends: []*agentv1.LbBackend{
				{Id: 1, Address: "10.0.1.10", Port: 8080, Weight: 1, PortId: 101, Node: "n1", Healthy: true},
				{Id: 2, Address: "10.0.2.11", Port: 8080, Weight: 1, PortId: 104, Node: "n2", Healthy: true},
				{Id: 3, Address: "10.0.2.254", Port: 8080, Weight: 1, PortId: 105, Node: "n2", Healthy: true, Draining: true},
				{Id: 4, Address: "10.0.1.11", Port: 8080, Weight: 1, PortId: 102, Healthy: true}, // unbound
			},
			HealthCheck: &agentv1.HealthCheck{Protocol: "tcp", IntervalMs: 1500}},
		&agentv1.LbService{Id: 8, LoadBalancerId: 1, Name: "web/dns", VpcId: 1, Vni: 1001, Vip: "10.0.1.101", Port: 53,
			Protocol: 17, Internal: true, SourceIpPersistence: true,
			Backends: []*agentv1.LbBackend{
				{Id: 5, Address: "10.0.2.11", Port: 53, Weight: 1, PortId: 104, Node: "n2", Healthy: true},
				{Id: 6, Address: "10.0.2.254", Port: 53, Weight: 1, PortId: 105, Node: "n2"},
			}},
	)
}

func lbSvc(objs map[string]*agentv1.Object, id uint32) *agentv1.LbService {
	return objs[owner("lb", id)].GetLbService()
}

func TestRenderLoadBalancerGivesExactRows(t *testing.T) {
	d := Render(lbFixture())
	tcp, udp := "tcp", "udp"
	cases := []struct {
		name  string
		table string
		want  model.Model
		refs  map[string][]string
	}{
		{"a health-checked TCP listener: backends not draining and bound, monitored from the subnet's top free address",
			nbdb.LoadBalancerTable, &nbdb.LoadBalancer{
				Name: "mer-lb-7", Protocol: &tcp,
				Vips:            map[string]string{"10.0.1.100:80": "10.0.1.10:8080,10.0.2.11:8080"},
				SelectionFields: []string{"ip_src", "ip_dst", "tp_src", "tp_dst"},
				// 10.0.2.254 is port 105's, so subnet 12's source is .253.
				IPPortMappings: map[string]string{"10.0.1.10": "mer-port-101:10.0.1.254", "10.0.2.11": "mer-port-104:10.0.2.253"},
				ExternalIDs:    ext("lb/7", "lb/7", "load-balancer"),
			}, map[string][]string{"health_check": {"lb/7/health-check"}}},
		{"its health check, in whole seconds with the default thresholds", nbdb.LoadBalancerHealthCheckTable,
			&nbdb.LoadBalancerHealthCheck{Vip: "10.0.1.100:80",
				Options:     map[string]string{"interval": "2", "timeout": "1", "success_count": "2", "failure_count": "2"},
				ExternalIDs: ext("lb/7/health-check", "lb/7", "health-check")}, nil},
		{"a UDP listener without checks: healthy backends only, hashed on the source address",
			nbdb.LoadBalancerTable, &nbdb.LoadBalancer{
				Name: "mer-lb-8", Protocol: &udp,
				Vips:            map[string]string{"10.0.1.101:53": "10.0.2.11:53"},
				SelectionFields: []string{"ip_src"},
				ExternalIDs:     ext("lb/8", "lb/8", "load-balancer"),
			}, map[string][]string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := specByName[tc.table]
			_, e := s.meta(tc.want)
			r := d.Row(tc.table, e[KeyID])
			if r == nil {
				t.Fatalf("no %s %s", tc.table, e[KeyID])
			}
			if cols := s.changed(tc.want, r.Model); len(cols) > 0 {
				t.Errorf("columns %v differ:\n got %+v\nwant %+v", cols, r.Model, tc.want)
			}
			if tc.refs != nil && !maps.EqualFunc(r.Refs, tc.refs, slices.Equal) {
				t.Errorf("refs = %v, want %v", r.Refs, tc.refs)
			}
		})
	}
	t.Run("internal listeners hang on every switch and the router of their VPC", func(t *testing.T) {
		for _, r := range []*Row{d.Row(nbdb.LogicalSwitchTable, "subnet/11"), d.Row(nbdb.LogicalSwitchTable, "subnet/12"),
			d.Row(nbdb.LogicalRouterTable, "vpc/1")} {
			if got := r.Refs["load_balancer"]; !slices.Equal(got, []string{"lb/7", "lb/8"}) {
				t.Errorf("%s load_balancer = %v, want [lb/7 lb/8]", r.ID, got)
			}
		}
	})
}

func TestRenderLoadBalancerHealthChecks(t *testing.T) {
	render := func(mod func(*agentv1.LbService)) *nbdb.LoadBalancer {
		o := lbFixture()
		mod(lbSvc(o, 7))
		return Render(o).Row(nbdb.LoadBalancerTable, "lb/7").Model.(*nbdb.LoadBalancer)
	}
	t.Run("thresholds and timings are carried, milliseconds rounded up", func(t *testing.T) {
		o := lbFixture()
		lbSvc(o, 7).HealthCheck = &agentv1.HealthCheck{Protocol: "http", Path: "/health", IntervalMs: 500, TimeoutMs: 2001,
			HealthyThreshold: 3, UnhealthyThreshold: 5}
		hc := Render(o).Row(nbdb.LoadBalancerHealthCheckTable, "lb/7/health-check").Model.(*nbdb.LoadBalancerHealthCheck)
		want := map[string]string{"interval": "1", "timeout": "3", "success_count": "3", "failure_count": "5"}
		if !maps.Equal(hc.Options, want) {
			t.Errorf("options = %v, want %v", hc.Options, want)
		}
	})
	t.Run("without a health check nothing is monitored", func(t *testing.T) {
		lb := render(func(s *agentv1.LbService) { s.HealthCheck = nil; s.Backends[1].Healthy = false })
		if got := lb.Vips["10.0.1.100:80"]; got != "10.0.1.10:8080" {
			t.Errorf("backends = %q, want only the healthy 10.0.1.10:8080", got)
		}
		if len(lb.IPPortMappings) != 0 || len(lb.HealthCheck) != 0 {
			t.Errorf("mappings %v / health check %v without a health check", lb.IPPortMappings, lb.HealthCheck)
		}
	})
	t.Run("with a health check, a backend the model finds unhealthy (its node away) is left out too", func(t *testing.T) {
		lb := render(func(s *agentv1.LbService) { s.Backends[1].Healthy = false })
		if got := lb.Vips["10.0.1.100:80"]; got != "10.0.1.10:8080" {
			t.Errorf("backends = %q, want only 10.0.1.10:8080", got)
		}
		if _, ok := lb.IPPortMappings["10.0.2.11"]; ok {
			t.Errorf("a backend left out is still monitored: %v", lb.IPPortMappings)
		}
	})
	t.Run("the monitor source is never the gateway or a port's address", func(t *testing.T) {
		o := lbFixture()
		// A /30 has the gateway .1 and one more host .2: held by port 101.
		o["subnet/11"].GetSubnet().Cidr = "10.0.1.0/30"
		o["port/101"].GetPort().Ips = []string{"10.0.1.2"}
		lbSvc(o, 7).Backends[0].Address = "10.0.1.2"
		lb := Render(o).Row(nbdb.LoadBalancerTable, "lb/7").Model.(*nbdb.LoadBalancer)
		if m, ok := lb.IPPortMappings["10.0.1.2"]; ok {
			t.Errorf("backend on a full subnet is monitored from %q", m)
		}
		if got := lb.Vips["10.0.1.100:80"]; got != "10.0.1.2:8080,10.0.2.11:8080" {
			t.Errorf("an unmonitored backend must still be used: backends %q", got)
		}
	})
	t.Run("nor a VIP", func(t *testing.T) {
		o := lbFixture()
		lbSvc(o, 8).Vip = "10.0.1.254"
		lb := Render(o).Row(nbdb.LoadBalancerTable, "lb/7").Model.(*nbdb.LoadBalancer)
		if got := lb.IPPortMappings["10.0.1.10"]; got != "mer-port-101:10.0.1.253" {
			t.Errorf("mapping %q, want the source below the VIP 10.0.1.254", got)
		}
	})
	t.Run("no backend left keeps the VIP, with none", func(t *testing.T) {
		lb := render(func(s *agentv1.LbService) {
			for _, b := range s.Backends {
				b.Draining = true
			}
		})
		if got, ok := lb.Vips["10.0.1.100:80"]; !ok || got != "" {
			t.Errorf("vips = %v, want the VIP with no backends", lb.Vips)
		}
	})
}

func TestRenderLoadBalancerFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*agentv1.LbService)
	}{
		{"a protocol OVN has no load balancer for", func(s *agentv1.LbService) { s.Protocol = 1 }},
		{"a VIP that does not parse", func(s *agentv1.LbService) { s.Vip = "10.0.1" }},
		{"no port", func(s *agentv1.LbService) { s.Port = 0 }},
		{"a VPC without subnets", func(s *agentv1.LbService) { s.VpcId = 9 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := lbFixture()
			tc.mod(lbSvc(o, 7))
			d := Render(o)
			if d.Row(nbdb.LoadBalancerTable, "lb/7") != nil || d.Row(nbdb.LoadBalancerHealthCheckTable, "lb/7/health-check") != nil {
				t.Errorf("lb/7 rendered")
			}
			if got := d.Row(nbdb.LogicalSwitchTable, "subnet/11").Refs["load_balancer"]; !slices.Equal(got, []string{"lb/8"}) {
				t.Errorf("switch load_balancer = %v, want [lb/8]", got)
			}
		})
	}
	t.Run("a backend of the other family is left out", func(t *testing.T) {
		o := lbFixture()
		lbSvc(o, 7).Backends[0].Address = "fd00::10"
		lb := Render(o).Row(nbdb.LoadBalancerTable, "lb/7").Model.(*nbdb.LoadBalancer)
		if got := lb.Vips["10.0.1.100:80"]; got != "10.0.2.11:8080" {
			t.Errorf("backends = %q", got)
		}
	})
}

// nsFixture is outsideFixture() without elastic IPs and NAT gateways, and
// with a north-south listener 172.16.0.80:443 over port 101.
func nsFixture() map[string]*agentv1.Object {
	o := outsideFixture()
	delete(o, "eip/1")
	delete(o, "eip/2")
	delete(o, "eip/4")
	delete(o, "ngw/3")
	return withOutside(o, &agentv1.LbService{Id: 9, LoadBalancerId: 2, Name: "pub/https", VpcId: 1, Vni: 1001,
		Vip: "172.16.0.80", Port: 443, Protocol: 6, PoolId: 1,
		Backends: []*agentv1.LbBackend{
			{Id: 1, Address: "10.0.1.10", Port: 8443, Weight: 1, PortId: 101, Node: "n1", Healthy: true},
		},
		HealthCheck: &agentv1.HealthCheck{Protocol: "tcp"}})
}

func TestRenderNorthSouthLoadBalancer(t *testing.T) {
	d := renderExt(t, nsFixture())
	lb := d.Row(nbdb.LoadBalancerTable, "lb/9")
	if lb == nil {
		t.Fatal("no north-south load balancer")
	}
	if got := lb.Model.(*nbdb.LoadBalancer).Vips; !maps.Equal(got, map[string]string{"172.16.0.80:443": "10.0.1.10:8443"}) {
		t.Errorf("vips = %v", got)
	}
	if got := d.Row(nbdb.LogicalRouterTable, "vpc/1").Refs["load_balancer"]; !slices.Equal(got, []string{"lb/9"}) {
		t.Errorf("router load_balancer = %v, want [lb/9]", got)
	}
	if d.Row(nbdb.LogicalRouterPortTable, "vpc/1/gateway-port") == nil {
		t.Error("a VPC with a north-south listener gets no gateway port")
	}
	for _, id := range []string{"subnet/11", "subnet/12"} {
		if got := d.Row(nbdb.LogicalSwitchTable, id).Refs["load_balancer"]; len(got) != 0 {
			t.Errorf("%s load_balancer = %v: a north-south VIP is translated on the gateway", id, got)
		}
	}
	// Without an external network or gateway nodes there is nowhere to
	// translate it: nothing is rendered.
	if d := Render(nsFixture()); d.Row(nbdb.LoadBalancerTable, "lb/9") != nil {
		t.Error("north-south listener rendered without an external network")
	}
	o := nsFixture()
	delete(o, "gateway/gw1")
	delete(o, "gateway/gw2")
	if d := renderExt(t, o); d.Row(nbdb.LoadBalancerTable, "lb/9") != nil || d.Row(nbdb.LogicalRouterPortTable, "vpc/1/gateway-port") != nil {
		t.Error("north-south listener rendered without gateway nodes")
	}
}
