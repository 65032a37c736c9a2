package agent

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/dataplane/datapath"
)

// This file turns the logical model the controller sends into the inputs of
// package fw (the rule conversions themselves are fw.SGRulesOf and
// fw.ACLOf, shared with the model trace). It is pure: no kernel, no I/O, so
// it is tested on its own.

// policyID names the security-group policy of a set of groups. Ports with
// the same groups share it. It is a hash of the sorted set, so it is the
// same after an agent restart without any saved state; taken records
// collisions, resolved by probing in a deterministic order.
func policyID(groups []uint32, taken map[uint32]string) uint32 {
	g := slices.Clone(groups)
	slices.Sort(g)
	key := fmt.Sprint(g)
	h := fnv.New32a()
	h.Write([]byte(key))
	id := h.Sum32()
	for {
		if id == 0 {
			id = 1
		}
		if owner, ok := taken[id]; !ok || owner == key {
			taken[id] = key
			return id
		}
		id++
	}
}

// ipv4s parses a port's addresses, keeping the IPv4 ones.
func ipv4s(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// serviceOf translates a load-balancer listener for node's data path; ok
// is false for one it cannot serve (an IPv6 VIP: the data path is IPv4).
// Unbound backends (no node) and IPv6 ones are left out; a backend whose
// port is on node is Local, with its port's MAC (north-south packets
// arrive encapsulated to that MAC). Weight 0 means the default, 1.
func serviceOf(s *agentv1.LbService, node string) (datapath.Service, bool, error) {
	vip, err := netip.ParseAddr(s.GetVip())
	if err != nil {
		return datapath.Service{}, false, fmt.Errorf("VIP %q: %w", s.GetVip(), err)
	}
	if !vip.Is4() {
		return datapath.Service{}, false, nil
	}
	if s.GetPort() == 0 || s.GetPort() > 65535 {
		return datapath.Service{}, false, fmt.Errorf("port %d not in 1..65535", s.GetPort())
	}
	if s.GetProtocol() != 6 && s.GetProtocol() != 17 {
		return datapath.Service{}, false, fmt.Errorf("protocol %d is neither TCP (6) nor UDP (17)", s.GetProtocol())
	}
	out := datapath.Service{ID: s.GetId(), VPC: s.GetVni(), VIP: vip, Port: uint16(s.GetPort()), Protocol: uint8(s.GetProtocol()),
		Internal: s.GetInternal(), SourceIPPersistence: s.GetSourceIpPersistence(), TableSize: s.GetMaglevSize()}
	for _, b := range s.GetBackends() {
		if b.GetNode() == "" {
			continue
		}
		addr, err := netip.ParseAddr(b.GetAddress())
		if err != nil {
			return datapath.Service{}, false, fmt.Errorf("backend %d: address %q: %w", b.GetId(), b.GetAddress(), err)
		}
		if !addr.Is4() {
			continue
		}
		if b.GetPort() == 0 || b.GetPort() > 65535 {
			return datapath.Service{}, false, fmt.Errorf("backend %d: port %d not in 1..65535", b.GetId(), b.GetPort())
		}
		db := datapath.Backend{ID: b.GetId(), Address: addr, Port: uint16(b.GetPort()), Weight: max(b.GetWeight(), 1),
			Healthy: b.GetHealthy(), Draining: b.GetDraining(), Local: b.GetNode() == node}
		if db.Local {
			if db.PortMAC, err = parseMAC(b.GetPortMac()); err != nil {
				return datapath.Service{}, false, fmt.Errorf("backend %d: port %w", b.GetId(), err)
			}
		}
		out.Backends = append(out.Backends, db)
	}
	return out, true, nil
}
