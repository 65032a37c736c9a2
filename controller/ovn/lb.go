package ovn

import (
	"net/netip"
	"slices"
	"strings"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// Health-check defaults, as agentv1.HealthCheck documents them.
const (
	defaultHCIntervalMs = 2000
	defaultHCTimeoutMs  = 1000
	defaultHCThreshold  = 2
)

// Load balancers (issue [5]) in OVN. Row mapping:
//
//	LbService L      Load_Balancer "mer-lb-L": vips "vip:port" -> "backend:port,..." (the
//	                 backends not draining, bound to a node and healthy), protocol tcp/udp,
//	                 selection_fields ip_src (source-IP
//	                 persistence) or ip_src, ip_dst, tp_src, tp_dst (the 5-tuple)
//	internal         on every Logical_Switch of its VPC (load_balancer): translated at the
//	                 client's switch, as the eBPF path translates at the client's port; and on
//	                 the VPC's Logical_Router, which answers ARP for the VIP
//	north-south      on the VPC's Logical_Router (load_balancer), whose gateway port onto the
//	                 external network it then gets (renderOutside): translated on the active
//	                 gateway chassis
//	health check     Load_Balancer_Health_Check (vip "vip:port", interval/timeout in seconds,
//	                 success_count/failure_count) and ip_port_mappings backend address ->
//	                 "mer-port-P:<monitor source>", from which ovn-northd makes one SB
//	                 Service_Monitor per backend and ovn-controller on the backend's chassis
//	                 probes it
//
// Health is decided the OVN-native way: the health check becomes a
// Load_Balancer_Health_Check, ovn-controller on the backend's own chassis
// probes it (as the eBPF design has the backend's node check it), and
// ovn-northd leaves out of the ct_lb_mark action the backends whose
// Service_Monitor is offline, so a verdict reaches the flows without a
// trip through the controller's store and NB. vips hold the backends not
// draining, bound to a node and healthy by LbBackend.healthy, which for
// OVN nodes only says what OVN cannot see: Meridian's agents do not probe
// ports of OVN nodes (no report: resource.DecideLbHealth keeps them
// serving), but a backend whose node's agent is away past the grace period
// is unhealthy there, and OVN would keep it: the monitor of a chassis
// that died stays as its ovn-controller last wrote it.
//
// The monitor source is not the subnet gateway's address (what the eBPF
// agents use): for every source address ovn-northd installs a priority-110
// ARP responder on the backend's switch answering with the service-monitor
// MAC, above the router port's priority-50 one, and frames to that MAC go
// to ovn-controller's handle_svc_check. With the gateway's address, every
// port of the subnet would resolve its gateway to that MAC and lose its
// routed traffic (tried: in TestLoadBalancerDataPathOnRealOVN the VIP's
// replies and the backends' pings to another subnet then vanish into
// handle_svc_check). So the source is the subnet's highest host address that
// no port of the model holds (monitorSource); a port later given that
// address moves the source down on the next rendering.
//
// Differences from the eBPF realization:
//   - OVN's select groups hash to a backend without weights (23.03 has no
//     per-backend weight) and without Maglev's table: removing one of N
//     backends may move more than 1/N of new flows. The selection is a
//     hash of the configured fields, identical on every chassis.
//   - OVN probes are TCP SYN (connect) or UDP; an "http" check is a TCP
//     connect to the backend's port, and HealthCheck.port is ignored
//     (Service_Monitor probes the port of vips).
//   - North-south traffic is translated statefully on the VPC's active
//     gateway chassis, and replies return through it (no direct server
//     return; no ECMP across gateways).
//   - The client's from-lport ACLs (its security groups' egress rules) see
//     the VIP as destination (OVN's ACL stage precedes its LB stage); the
//     backend's to-lport ACLs see the backend address.
//   - Draining or an offline backend leaves established connections on
//     their conntrack entry (OVN 23.03 flushes nothing), as in eBPF.
//   - A north-south listener hangs on the router only: clients inside the
//     VPC reaching its public VIP (hairpin) are not translated at their
//     switch and are untested.
//   - With no usable backend the VIP stays with an empty backend list, so
//     OVN drops its packets instead of routing them untranslated.
func (d *Desired) renderInternalLBs(x *agentv1.Index, o *outside) {
	switches := map[uint32][]*Row{} // vpc -> its switches
	for _, id := range sortedIDs(x.Subnets) {
		s := x.Subnets[id]
		if ls := d.Row(nbdb.LogicalSwitchTable, owner("subnet", id)); ls != nil {
			switches[s.GetVpcId()] = append(switches[s.GetVpcId()], ls)
		}
	}
	mon := &monitorSources{lbs: o.lbs}
	for _, id := range sortedIDs(o.lbs) {
		svc := o.lbs[id]
		if !svc.GetInternal() || len(switches[svc.GetVpcId()]) == 0 {
			continue
		}
		lbID, ok := d.renderLB(x, svc, mon)
		if !ok {
			continue
		}
		for _, ls := range switches[svc.GetVpcId()] {
			ls.Refs["load_balancer"] = append(ls.Refs["load_balancer"], lbID)
		}
		// On the router too: it answers ARP for a VIP inside one of its
		// subnets (OVN switches answer none for load balancers), so a
		// client on the VIP's own subnet can reach it. The translation
		// still happens at the client's switch.
		if lr := d.Row(nbdb.LogicalRouterTable, owner("vpc", svc.GetVpcId())); lr != nil {
			lr.Refs["load_balancer"] = append(lr.Refs["load_balancer"], lbID)
		}
	}
}

// lbProtocol is the OVN protocol of an LbService's, "" if OVN has none.
func lbProtocol(p uint32) string {
	switch p {
	case 6:
		return nbdb.LoadBalancerProtocolTCP
	case 17:
		return nbdb.LoadBalancerProtocolUDP
	}
	return ""
}

// lbRenderable reports whether a service can be rendered: a known protocol,
// a VIP that parses and a port.
func lbRenderable(svc *agentv1.LbService) bool {
	_, err := netip.ParseAddr(svc.GetVip())
	return err == nil && lbProtocol(svc.GetProtocol()) != "" && validPort(svc.GetPort())
}

// renderLB adds a service's Load_Balancer (and its health check) and
// returns its meridian:id; false when the service cannot be rendered.
func (d *Desired) renderLB(x *agentv1.Index, svc *agentv1.LbService, mon *monitorSources) (string, bool) {
	if !lbRenderable(svc) {
		return "", false
	}
	vipAddr := netip.MustParseAddr(svc.GetVip()).Unmap()
	vip := netip.AddrPortFrom(vipAddr, uint16(svc.GetPort())).String()
	hc := svc.GetHealthCheck()
	var backends []string
	mappings := map[string]string{}
	for _, b := range svc.GetBackends() {
		a, err := netip.ParseAddr(b.GetAddress())
		if err != nil || a.Unmap().Is4() != vipAddr.Is4() || !validPort(b.GetPort()) ||
			b.GetDraining() || b.GetNode() == "" || !b.GetHealthy() {
			continue
		}
		a = a.Unmap()
		be := netip.AddrPortFrom(a, uint16(b.GetPort())).String()
		if slices.Contains(backends, be) {
			continue
		}
		backends = append(backends, be)
		if hc == nil {
			continue
		}
		// Service_Monitor needs the backend's switch port and a source
		// address on its subnet; a backend without them is not monitored,
		// and so (its status empty) always used.
		p := x.Ports[b.GetPortId()]
		if p == nil || !slices.Contains(p.GetIps(), b.GetAddress()) {
			continue
		}
		src, ok := mon.of(x, x.Subnets[p.GetSubnetId()], a.Is4())
		if !ok || d.Row(nbdb.LogicalSwitchPortTable, owner("port", p.GetId())) == nil {
			continue
		}
		key, srcText := a.String(), src.String()
		if a.Is6() {
			key, srcText = "["+key+"]", "["+srcText+"]"
		}
		mappings[key] = LogicalPortName(p.GetId()) + ":" + srcText
	}
	proto := lbProtocol(svc.GetProtocol())
	fields := []string{nbdb.LoadBalancerSelectionFieldsIPSrc}
	if !svc.GetSourceIpPersistence() {
		fields = append(fields, nbdb.LoadBalancerSelectionFieldsIPDst,
			nbdb.LoadBalancerSelectionFieldsTpSrc, nbdb.LoadBalancerSelectionFieldsTpDst)
	}
	id := owner("lb", svc.GetId())
	lb := &nbdb.LoadBalancer{
		Name: LBName(svc.GetId()), Protocol: &proto, SelectionFields: fields,
		// No backend left: the VIP stays, so its traffic is dropped rather
		// than sent on untranslated.
		Vips: map[string]string{vip: strings.Join(backends, ",")},
	}
	if len(mappings) > 0 {
		lb.IPPortMappings = mappings
	}
	row := d.add(nbdb.LoadBalancerTable, id, id, "load-balancer", lb)
	if hc != nil {
		hcID := id + "/health-check"
		d.add(nbdb.LoadBalancerHealthCheckTable, hcID, id, "health-check", &nbdb.LoadBalancerHealthCheck{
			Vip: vip, Options: healthCheckOptions(hc),
		})
		row.Refs["health_check"] = []string{hcID}
	}
	return id, true
}

// healthCheckOptions are a health check's Load_Balancer_Health_Check
// options. OVN counts interval and timeout in whole seconds: milliseconds
// round up, so a check never runs more often than asked.
func healthCheckOptions(hc *agentv1.HealthCheck) map[string]string {
	secs := func(ms, def uint32) string {
		if ms == 0 {
			ms = def
		}
		return u(max(1, (ms+999)/1000))
	}
	count := func(n uint32) string {
		if n == 0 {
			n = defaultHCThreshold
		}
		return u(n)
	}
	return map[string]string{
		"interval":      secs(hc.GetIntervalMs(), defaultHCIntervalMs),
		"timeout":       secs(hc.GetTimeoutMs(), defaultHCTimeoutMs),
		"success_count": count(hc.GetHealthyThreshold()),
		"failure_count": count(hc.GetUnhealthyThreshold()),
	}
}

// monitorSources caches the monitor source address of each subnet and
// family, and the addresses ports hold.
type monitorSources struct {
	src   map[monitorKey]netip.Addr
	taken map[netip.Addr]bool // every port address and VIP; nil until needed
	lbs   map[uint32]*agentv1.LbService
}

type monitorKey struct {
	subnet uint32
	v4     bool
}

// maxMonitorProbe bounds the search for a free address from the top of a
// subnet: a subnet whose top addresses are all taken has no monitor
// source (its backends are then not monitored).
const maxMonitorProbe = 256

// of returns the monitor source of a subnet for one family: its highest
// address that is neither the network, the broadcast (IPv4) nor the
// gateway address and that no port (or VIP) of the model holds. IPAM hands out the
// lowest free address first, so the top of a subnet is the last to be
// taken.
func (m *monitorSources) of(x *agentv1.Index, s *agentv1.Subnet, v4 bool) (netip.Addr, bool) {
	if s == nil {
		return netip.Addr{}, false
	}
	k := monitorKey{s.GetId(), v4}
	if m.src == nil {
		m.src = map[monitorKey]netip.Addr{}
	}
	if a, ok := m.src[k]; ok {
		return a, a.IsValid()
	}
	cidr := s.GetCidr()
	if !v4 {
		cidr = s.GetIpv6Cidr()
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil || p.Addr().Is4() != v4 {
		m.src[k] = netip.Addr{}
		return netip.Addr{}, false
	}
	p = p.Masked()
	if m.taken == nil {
		m.taken = map[netip.Addr]bool{}
		for _, port := range x.Ports {
			for _, ip := range port.GetIps() {
				if a, err := netip.ParseAddr(ip); err == nil {
					m.taken[a.Unmap()] = true
				}
			}
		}
		// An internal VIP is an address of one of the VPC's subnets too.
		for _, svc := range m.lbs {
			if a, err := netip.ParseAddr(svc.GetVip()); err == nil {
				m.taken[a.Unmap()] = true
			}
		}
	}
	gw, _ := netip.ParseAddr(s.GetGatewayIp())
	a := lastAddr(p)
	if v4 {
		a = a.Prev() // the broadcast address
	}
	var found netip.Addr
	for range maxMonitorProbe {
		if !a.IsValid() || !p.Contains(a) || a == p.Addr() {
			break
		}
		if !m.taken[a] && a != gw {
			found = a
			break
		}
		a = a.Prev()
	}
	m.src[k] = found
	return found, found.IsValid()
}

// lastAddr is the highest address of a prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
