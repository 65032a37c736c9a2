package trace

// The load-balancer stage (issue [5]): an east-west VIP is translated at
// the client's port, before conntrack and policy, as meridian_from_port
// does (bpf/c/service.h). The backend is chosen exactly as the data path
// chooses a new flow's: lb/maglev.Table over the healthy, non-draining,
// bound backends keyed "address:port" with their weights (what the agent
// installs, dataplane/agent serviceOf and datapath.Service.Table), indexed
// by lb/maglev.FlowHash of the original tuple (the addresses only with
// source-IP persistence).

import (
	"fmt"
	"net/netip"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/fw"
	"github.com/meridian-sdn/meridian/lb/maglev"
)

// listener is {VPC, VIP, port, protocol}.
type listener struct {
	vpc   uint32
	vip   netip.Addr
	port  uint16
	proto uint8
}

func (m *Model) addService(s *agentv1.LbService) {
	vip, err := netip.ParseAddr(s.GetVip())
	if err != nil || !vip.Is4() || s.GetPort() > 65535 || s.GetProtocol() > 255 {
		return // the agent does not install it either
	}
	if m.services == nil {
		m.services = map[listener]*agentv1.LbService{}
	}
	m.services[listener{s.GetVpcId(), vip, uint16(s.GetPort()), uint8(s.GetProtocol())}] = s
}

// lbChoice is a translation done by the load-balancer stage.
type lbChoice struct {
	service  *agentv1.LbService
	vip      netip.Addr
	vport    uint16
	backend  netip.Addr
	bport    uint16
	portName string
}

// tableBackend is a backend of the Maglev table.
type tableBackend struct {
	b    *agentv1.LbBackend
	addr netip.Addr
}

// maglevChoice returns the backend a new flow pkt (to the VIP) goes to,
// the slot and the table size; ok is false if no backend takes new flows.
func maglevChoice(s *agentv1.LbService, pkt Packet) (tableBackend, uint32, uint32, bool, error) {
	var tbs []tableBackend
	var mbs []maglev.Backend
	for _, b := range s.GetBackends() {
		a, err := netip.ParseAddr(b.GetAddress())
		if err != nil || !a.Is4() || b.GetNode() == "" || !b.GetHealthy() || b.GetDraining() || b.GetPort() == 0 || b.GetPort() > 65535 {
			continue
		}
		tbs = append(tbs, tableBackend{b: b, addr: a})
		mbs = append(mbs, maglev.Backend{Key: netip.AddrPortFrom(a, uint16(b.GetPort())).String(), Weight: max(b.GetWeight(), 1)})
	}
	if len(tbs) == 0 {
		return tableBackend{}, 0, 0, false, nil
	}
	size := s.GetMaglevSize()
	if size == 0 {
		size = maglev.DefaultSize
	}
	table, err := maglev.Table(mbs, size)
	if err != nil {
		return tableBackend{}, 0, 0, false, err
	}
	var h uint32
	if s.GetSourceIpPersistence() {
		h, err = maglev.FlowHash(pkt.Src, pkt.Dst, 0, 0, 0)
	} else {
		h, err = maglev.FlowHash(pkt.Src, pkt.Dst, pkt.SrcPort, pkt.DstPort, pkt.Protocol)
	}
	if err != nil {
		return tableBackend{}, 0, 0, false, err
	}
	slot := h % size
	return tbs[table[slot]], slot, size, true, nil
}

// loadBalance is the load-balancer stage of a packet a port sends: a new
// flow to an east-west VIP of its VPC gets its backend and is translated
// to it; everything else passes untouched, with no stage.
func (w *walk) loadBalance(node string, src *agentv1.Port, pkt Packet) (Packet, bool) {
	if pkt.Protocol != fw.ProtoTCP && pkt.Protocol != fw.ProtoUDP {
		return pkt, true
	}
	s := w.m.services[listener{src.GetVpcId(), pkt.Dst, pkt.DstPort, pkt.Protocol}]
	if s == nil || !s.GetInternal() {
		return pkt, true
	}
	st := Stage{Stage: "load-balancer", Node: node, Object: s.GetName()}
	b, slot, size, ok, err := maglevChoice(s, pkt)
	if err != nil {
		st.Detail = fmt.Sprintf("the service's Maglev table cannot be built (%v): the agent does not install it", err)
		w.drop(st, "NO_ROUTE")
		return pkt, false
	}
	if !ok {
		st.Detail = fmt.Sprintf("VIP %s:%d: no healthy, non-draining backend takes new flows", pkt.Dst, pkt.DstPort)
		w.drop(st, "LB_NO_BACKEND")
		return pkt, false
	}
	c := &lbChoice{service: s, vip: pkt.Dst, vport: pkt.DstPort, backend: b.addr, bport: uint16(b.b.GetPort())}
	if p := w.m.x.Ports[b.b.GetPortId()]; p != nil {
		c.portName = p.GetName()
	}
	how := "Maglev over the flow's addresses and ports"
	if s.GetSourceIpPersistence() {
		how = "Maglev over the client and VIP addresses (source-IP persistence)"
	}
	st.Verdict = Pass
	st.Rule = fmt.Sprintf("backend %d %s:%d", b.b.GetId(), b.addr, b.b.GetPort())
	st.Detail = fmt.Sprintf("backend chosen: %s:%d (port %s) by %s, slot %d of %d; destination %s:%d rewritten to it, "+
		"policy sees the backend's address and port; an established flow stays on its backend while it is healthy",
		b.addr, b.b.GetPort(), c.portName, how, slot, size, pkt.Dst, pkt.DstPort)
	w.add(st)
	w.lb = c
	pkt.Dst, pkt.DstPort = c.backend, c.bport
	return pkt, true
}

// unLoadBalance shows the reverse translation of a delivered reply: the
// conntrack entry of the translated flow gives it the VIP's source back
// just before delivery to the client.
func (w *walk) unLoadBalance(c *lbChoice) {
	n := len(w.t.Stages)
	if c == nil || n == 0 || w.t.Stages[n-1].Verdict != Deliver {
		return
	}
	last := w.t.Stages[n-1]
	w.t.Stages[n-1] = Stage{Stage: "load-balancer", Node: last.Node, Object: c.service.GetName(), Verdict: Pass,
		Detail: fmt.Sprintf("reply of a translated flow: source %s:%d rewritten back to the VIP %s:%d", c.backend, c.bport, c.vip, c.vport)}
	w.t.Stages = append(w.t.Stages, last)
}
