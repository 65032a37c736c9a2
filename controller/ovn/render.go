package ovn

import (
	"cmp"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/model"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// Row is one NB row Meridian wants. Model holds the managed columns (its
// UUID and reference columns are left empty); Refs names, by meridian:id,
// the rows each reference column must hold.
type Row struct {
	Table string
	ID    string
	Model model.Model
	Refs  map[string][]string
}

// Desired is the complete set of NB rows Meridian wants.
type Desired struct {
	rows map[string]map[string]*Row // table -> meridian:id -> row

	// What the Renderer knows of its ACL table, so that comparing with
	// the previous rendering need not visit 50,000 rows: gen numbers the
	// renderings of one Renderer (0: not from one); aclOther holds the
	// ACL rows not of security groups; aclDelta the group ACL ids that
	// differ from rendering gen-1. Group ACL rows are otherwise the very
	// rows of that rendering.
	gen      uint64
	aclOther map[string]*Row
	aclDelta map[string]bool
}

func newDesired() *Desired { return &Desired{rows: map[string]map[string]*Row{}} }

func (d *Desired) add(table, id, owner, kind string, m model.Model) *Row {
	r := newRow(table, id, owner, kind, m)
	d.put(r)
	return r
}

func newRow(table, id, owner, kind string, m model.Model) *Row {
	s := specByName[table]
	s.field(m, "external_ids").Set(reflect.ValueOf(map[string]string{KeyID: id, KeyOwner: owner, KeyKind: kind}))
	return &Row{Table: table, ID: id, Model: m, Refs: map[string][]string{}}
}

func (d *Desired) put(r *Row) {
	t := d.rows[r.Table]
	if t == nil {
		t = map[string]*Row{}
		d.rows[r.Table] = t
	}
	t[r.ID] = r
}

// Row returns the desired row of table with meridian:id id, nil if none.
func (d *Desired) Row(table, id string) *Row { return d.rows[table][id] }

// Rows returns the desired rows of a table, sorted by meridian:id.
func (d *Desired) Rows(table string) []*Row {
	out := slices.Collect(maps.Values(d.rows[table]))
	slices.SortFunc(out, func(a, b *Row) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Len returns the number of desired rows.
func (d *Desired) Len() int {
	n := 0
	for _, t := range d.rows {
		n += len(t)
	}
	return n
}

// Priorities of Meridian's ACLs. OVN 23.03 has no ACL tiers and no "pass"
// action, so the tiers are priority bands: infrastructure allows above the
// network-ACL band, which sits above the security-group allows, which sit
// above the default deny of every Meridian port.
const (
	PriorityInfra       = 32000 // ARP and DHCP to OVN's own responders
	PriorityNACLFirst   = 29999 // a network ACL's first rule; later rules count down
	PriorityNACLDefault = 20000 // a network ACL's closing deny
	PrioritySGLogged    = 1002  // logged copies of security-group allows for new connections (flowlog.go)
	PrioritySG          = 1001  // security-group allows (all equal: allows commute)
	PriorityDefaultDeny = 1000  // ports without a matching security-group rule
	maxNACLRules        = PriorityNACLFirst - PriorityNACLDefault
)

func sortedIDs[T any](m map[uint32]T) []uint32 { return slices.Sorted(maps.Keys(m)) }

// Object keys as the model spells them, used as owners.
func owner(kind string, id uint32) string { return kind + "/" + itoa(id) }

// Renderer renders repeatedly, reusing work: the ACL rows of a security
// group's rules (the bulk of all rows) are kept per group object and reused
// while the object is the same. The model replaces an object when, and only
// when, it changes, so after one rule change a render rebuilds one group's
// ACLs. Reused rows are shared between Desired values and never modified.
// A Renderer is not safe for concurrent use.
type Renderer struct {
	sgACLs map[*agentv1.SecurityGroup][]*Row
	sgLog  map[*agentv1.SecurityGroup]aclLog // how sgACLs' rows are logged (flow logs)
	ports  map[*agentv1.Port]portRow
	sizes  map[string]int // rows per table in the last rendering
	gen    uint64         // renderings so far
	// sgACLTable holds the ACL rows of every group in sgACLs; sgRows a
	// group's port group and address sets with what they were made of.
	sgACLTable map[string]*Row
	sgRows     map[*agentv1.SecurityGroup]sgRows
	ext        *ExternalNetwork // nil: no external network, so no gateway ports or NAT
}

// subnetRows is what ports need of their subnet's rendering.
type subnetRows struct {
	ls   *Row   // the switch
	dhcp string // its DHCPv4 options' meridian:id, "" if none
}

// portRow is a port's rendered switch port and the DHCP options row it
// was rendered against: reused while both are the same.
type portRow struct {
	row  *Row
	dhcp string
}

// NewRenderer returns a Renderer with nothing cached.
func NewRenderer() *Renderer {
	return &Renderer{sgACLs: map[*agentv1.SecurityGroup][]*Row{}, sgLog: map[*agentv1.SecurityGroup]aclLog{}, ports: map[*agentv1.Port]portRow{}}
}

// NewRendererFor returns a Renderer that also renders elastic IPs and NAT
// gateways, on gateway ports onto ext (see gateway.go); NewRenderer's
// renders none. A bad ext is an error.
func NewRendererFor(ext ExternalNetwork) (*Renderer, error) {
	if err := ext.validate(); err != nil {
		return nil, err
	}
	rr := NewRenderer()
	rr.ext = &ext
	return rr, nil
}

// Render renders objs from scratch; see Renderer.Render.
func Render(objs map[string]*agentv1.Object) *Desired { return NewRenderer().Render(objs) }

// Render computes the NB rows of a set of logical model objects (all of
// them, keyed by object key: every VPC, subnet, port, group, ACL and route
// table the controller holds). Objects that reference something absent are
// rendered without that part rather than not at all, failing closed: a port
// whose subnet is missing has no switch port; a rule naming an unknown
// group was already dropped by the model.
func (rr *Renderer) Render(objs map[string]*agentv1.Object) *Desired {
	x := agentv1.IndexObjects(objs)
	d := newDesired()
	// Sized like the last rendering: growing maps of 50,000 rows showed
	// as a third of the time of an incremental pass.
	for table, n := range rr.sizes {
		if table != nbdb.ACLTable { // see the security groups below
			d.rows[table] = make(map[string]*Row, n)
		}
	}
	defer func() {
		rr.sizes = make(map[string]int, len(d.rows))
		for table, rows := range d.rows {
			rr.sizes[table] = len(rows)
		}
	}()
	plan := planFlowLogs(objs, x)
	allPorts, unlogged := d.renderDefaultDeny(len(plan.denyOf) > 0)
	denyGroups := map[*agentv1.FlowLogConfig]*Row{} // flow log -> its port group of logged default denies
	for _, id := range sortedIDs(x.VPCs) {
		d.add(nbdb.LogicalRouterTable, owner("vpc", id), owner("vpc", id), "router", &nbdb.LogicalRouter{Name: RouterName(id)})
	}
	for _, id := range sortedIDs(x.Subnets) {
		d.renderSubnet(x, x.Subnets[id], plan.subnet[id])
	}
	remote := remoteGroups(x)
	members := map[uint32][]string{} // sg -> LSP ids
	cachedPorts := rr.ports
	rr.ports = make(map[*agentv1.Port]portRow, len(x.Ports))
	subnets := make(map[uint32]subnetRows, len(x.Subnets))
	allPorts.Refs["ports"] = make([]string, 0, len(x.Ports))
	for _, id := range sortedIDs(x.Ports) {
		p := x.Ports[id]
		lspID, ok := d.renderPort(x, p, subnets, cachedPorts, rr.ports)
		if !ok {
			continue
		}
		allPorts.Refs["ports"] = append(allPorts.Refs["ports"], lspID)
		if c := plan.denyOf[id]; c != nil {
			pg := denyGroups[c]
			if pg == nil {
				pg = d.renderFlowLogDeny(c)
				denyGroups[c] = pg
			}
			pg.Refs["ports"] = append(pg.Refs["ports"], lspID)
		} else if unlogged != nil {
			unlogged.Refs["ports"] = append(unlogged.Refs["ports"], lspID)
		}
		for _, g := range p.GetSecurityGroupIds() {
			members[g] = append(members[g], lspID)
		}
	}
	// The groups' ACLs are most of all rows: the table of the last
	// rendering is copied whole (much cheaper than 50,000 inserts) and
	// only the rows of groups that changed are replaced.
	cached, cachedSG, cachedLog := rr.sgACLs, rr.sgRows, rr.sgLog
	rr.sgACLs = make(map[*agentv1.SecurityGroup][]*Row, len(x.SecurityGroups))
	rr.sgLog = make(map[*agentv1.SecurityGroup]aclLog, len(x.SecurityGroups))
	rr.sgRows = make(map[*agentv1.SecurityGroup]sgRows, len(x.SecurityGroups))
	live := make(map[*agentv1.SecurityGroup]bool, len(x.SecurityGroups))
	for _, g := range x.SecurityGroups {
		live[g] = true
	}
	acl := make(map[string]*Row, len(rr.sgACLTable))
	if rr.sgACLTable != nil {
		acl = maps.Clone(rr.sgACLTable)
	}
	delta := map[string]bool{}
	for g, rows := range cached {
		if !live[g] {
			for _, r := range rows {
				if acl[r.ID] == r {
					delete(acl, r.ID)
					delta[r.ID] = true
				}
			}
		}
	}
	for _, id := range sortedIDs(x.SecurityGroups) {
		g := x.SecurityGroups[id]
		// A group's rows are rendered again when the group changed or
		// when flow logs start or stop covering one of its members.
		acls, ok := cached[g]
		if !ok || cachedLog[g] != plan.sg[id] {
			for _, r := range acls { // rows of the same group logged otherwise: the logged copies may go
				if acl[r.ID] == r {
					delete(acl, r.ID)
					delta[r.ID] = true
				}
			}
			acls = sgACLs(g, plan.sg[id])
			for _, a := range acls {
				acl[a.ID] = a
				delta[a.ID] = true
			}
		}
		rr.sgACLs[g] = acls
		rr.sgLog[g] = plan.sg[id]
		rr.sgRows[g] = d.renderSG(x, g, acls, members[id], remote[id], cachedSG[g])
	}
	rr.gen++
	d.gen, d.aclDelta, d.aclOther = rr.gen, delta, d.rows[nbdb.ACLTable]
	if rr.sgACLTable == nil {
		d.aclDelta = nil // no previous rendering to differ from
	}
	rr.sgACLTable = acl
	all := maps.Clone(acl)
	maps.Copy(all, d.rows[nbdb.ACLTable]) // default-deny and network-ACL rows, rendered earlier
	d.rows[nbdb.ACLTable] = all
	for _, id := range sortedIDs(x.RouteTables) {
		d.renderRouteTable(x, x.RouteTables[id])
	}
	o := indexOutside(objs)
	d.renderInternalLBs(x, o)
	d.renderOutside(x, o, rr.ext)
	d.renderMeters(plan)
	return d
}

// renderDefaultDeny is the port group of every Meridian port. Meridian's
// eBPF data path drops all IP traffic of a port that no security-group rule
// allows, including ports with no groups at all; these ACLs do the same in
// OVN. ARP and DHCP stay allowed because OVN answers them itself after the
// ACL stage (the eBPF path answers them before its policy stage).
//
// With flow logs logging the default deny of some ports (scoped), the
// deny rows here apply to the port group of the other ports
// (UnloggedPortsGroup, returned second) and each flow log has logged deny
// rows on a port group of its own (renderFlowLogDeny): the same priority
// on disjoint ports, so no port's verdict depends on which one OVS picks.
func (d *Desired) renderDefaultDeny(scoped bool) (all, unlogged *Row) {
	pg := d.add(nbdb.PortGroupTable, "global/ports", OwnerGlobal, "default-deny", &nbdb.PortGroup{Name: AllPortsGroup})
	in, out := "inport == @"+AllPortsGroup, "outport == @"+AllPortsGroup
	denyIn, denyOut := in, out
	if scoped {
		unlogged = d.add(nbdb.PortGroupTable, "global/ports-unlogged", OwnerGlobal, "default-deny", &nbdb.PortGroup{Name: UnloggedPortsGroup})
		unlogged.Refs["ports"] = []string{}
		denyIn, denyOut = "inport == @"+UnloggedPortsGroup, "outport == @"+UnloggedPortsGroup
	}
	acls := []struct {
		id, dir, match, action string
		prio                   int
	}{
		{"global/ports/arp-from", nbdb.ACLDirectionFromLport, in + " && arp", nbdb.ACLActionAllow, PriorityInfra},
		{"global/ports/arp-to", nbdb.ACLDirectionToLport, out + " && arp", nbdb.ACLActionAllow, PriorityInfra},
		{"global/ports/dhcp4", nbdb.ACLDirectionFromLport, in + " && ip4 && udp.src == 68 && udp.dst == 67", nbdb.ACLActionAllow, PriorityInfra},
		{"global/ports/dhcp6", nbdb.ACLDirectionFromLport, in + " && ip6 && udp.src == 546 && udp.dst == 547", nbdb.ACLActionAllow, PriorityInfra},
		{"global/ports/deny-from", nbdb.ACLDirectionFromLport, denyIn, nbdb.ACLActionDrop, PriorityDefaultDeny},
		{"global/ports/deny-to", nbdb.ACLDirectionToLport, denyOut, nbdb.ACLActionDrop, PriorityDefaultDeny},
	}
	for _, a := range acls {
		d.add(nbdb.ACLTable, a.id, OwnerGlobal, "default-deny",
			&nbdb.ACL{Direction: a.dir, Match: a.match, Action: a.action, Priority: a.prio})
		pg.Refs["acls"] = append(pg.Refs["acls"], a.id)
	}
	return pg, unlogged
}

func (d *Desired) renderSubnet(x *agentv1.Index, s *agentv1.Subnet, log aclLog) {
	id := s.GetId()
	own := owner("subnet", id)
	ls := d.add(nbdb.LogicalSwitchTable, own, own, "switch", &nbdb.LogicalSwitch{Name: SwitchName(id)})
	if x.VPCs[s.GetVpcId()] != nil {
		lr := d.Row(nbdb.LogicalRouterTable, owner("vpc", s.GetVpcId()))
		var networks []string
		if n := gatewayNetwork(s.GetGatewayIp(), s.GetCidr()); n != "" {
			networks = append(networks, n)
		}
		if v6 := s.GetIpv6Cidr(); v6 != "" {
			if p, err := netip.ParsePrefix(v6); err == nil {
				networks = append(networks, netip.PrefixFrom(p.Masked().Addr().Next(), p.Bits()).String())
			}
		}
		opts := map[string]string{}
		if rt := s.GetRouteTableId(); rt != 0 && x.RouteTables[rt] != nil {
			opts["route_table"] = RouteTableName(rt)
		}
		lrpID := own + "/router-port"
		d.add(nbdb.LogicalRouterPortTable, lrpID, own, "router-port", &nbdb.LogicalRouterPort{
			Name: RouterPortName(id), MAC: routerMAC(id), Networks: networks, Options: opts,
		})
		lr.Refs["ports"] = append(lr.Refs["ports"], lrpID)
		rtrID := own + "/switch-router-port"
		d.add(nbdb.LogicalSwitchPortTable, rtrID, own, "switch-router-port", &nbdb.LogicalSwitchPort{
			Name: SwitchRouterPortName(id), Type: "router", Addresses: []string{"router"},
			Options: map[string]string{"router-port": RouterPortName(id)},
		})
		ls.Refs["ports"] = append(ls.Refs["ports"], rtrID)
	}
	if s.GetDhcpEnabled() && s.GetCidr() != "" {
		opts := map[string]string{
			"lease_time": "3600",
			"router":     s.GetGatewayIp(),
			"server_id":  s.GetGatewayIp(),
			"server_mac": routerMAC(id),
			"mtu":        u(s.GetMtu()),
		}
		var dns []string
		for _, a := range s.GetDnsServers() {
			if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() {
				dns = append(dns, a)
			}
		}
		if len(dns) > 0 {
			opts["dns_server"] = "{" + strings.Join(dns, ", ") + "}"
		}
		if dn := s.GetDomainName(); dn != "" {
			opts["domain_name"] = strconv.Quote(dn)
		}
		d.add(nbdb.DHCPOptionsTable, own+"/dhcp4", own, "dhcp", &nbdb.DHCPOptions{Cidr: s.GetCidr(), Options: opts})
	}
	if a := x.NetworkACLs[s.GetNetworkAclId()]; a != nil {
		d.renderNetworkACL(ls, s, a, log)
	}
}

// gatewayNetwork is the router port's address in the subnet ("10.0.1.1/24").
func gatewayNetwork(gw, cidr string) string {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return ""
	}
	a, err := netip.ParseAddr(gw)
	if err != nil {
		return ""
	}
	return netip.PrefixFrom(a, p.Bits()).String()
}

// renderPort reports whether the port got a switch port: it needs its
// subnet's switch.
func (d *Desired) renderPort(x *agentv1.Index, p *agentv1.Port, subnets map[uint32]subnetRows, cache, next map[*agentv1.Port]portRow) (string, bool) {
	sr, ok := subnets[p.GetSubnetId()]
	if !ok {
		s := x.Subnets[p.GetSubnetId()]
		if s == nil {
			return "", false
		}
		own := owner("subnet", s.GetId())
		sr.ls = d.Row(nbdb.LogicalSwitchTable, own)
		if dh := d.Row(nbdb.DHCPOptionsTable, own+"/dhcp4"); dh != nil {
			sr.dhcp = dh.ID
		}
		subnets[p.GetSubnetId()] = sr
	}
	// The subnet's DHCPv4 options, which the port uses if it has an IPv4
	// address.
	dhcp := sr.dhcp
	if c, ok := cache[p]; ok && c.dhcp == dhcp {
		sr.ls.Refs["ports"] = append(sr.ls.Refs["ports"], c.row.ID)
		d.put(c.row)
		next[p] = c
		return c.row.ID, true
	}
	id := owner("port", p.GetId())
	sr.ls.Refs["ports"] = append(sr.ls.Refs["ports"], id)
	lsp := &nbdb.LogicalSwitchPort{Name: LogicalPortName(p.GetId())}
	if mac := p.GetMac(); mac != "" {
		addr := strings.Join(append([]string{mac}, p.GetIps()...), " ")
		lsp.Addresses = []string{addr}
		// Port security is the OVN form of the eBPF anti-spoofing check:
		// with source/destination checking off, only the MAC is enforced.
		lsp.PortSecurity = []string{addr}
		if !p.GetSourceDestCheck() {
			lsp.PortSecurity = []string{mac}
		}
	}
	if n := p.GetNode(); n != "" {
		// The agent of an OVN node names its chassis after the node ID.
		lsp.Options = map[string]string{"requested-chassis": n}
	}
	row := d.add(nbdb.LogicalSwitchPortTable, id, id, "port", lsp)
	if dhcp != "" && hasIPv4(p.GetIps()) {
		row.Refs["dhcpv4_options"] = []string{dhcp}
	}
	next[p] = portRow{row, dhcp}
	return id, true
}

func hasIPv4(ips []string) bool {
	return slices.ContainsFunc(ips, func(s string) bool {
		a, err := netip.ParseAddr(s)
		return err == nil && a.Is4()
	})
}

// remoteGroups returns, for every group some rule names as its remote side,
// the families it is named for.
func remoteGroups(x *agentv1.Index) map[uint32][2]bool {
	out := map[uint32][2]bool{}
	for _, g := range x.SecurityGroups {
		for _, r := range g.GetRules() {
			if rg := r.GetRemoteGroupId(); rg != 0 {
				f := out[rg]
				f[b2i(r.GetIpv6())] = true
				out[rg] = f
			}
		}
	}
	return out
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// sgACLs renders the ACLs of a group's rules, logged as log says.
func sgACLs(g *agentv1.SecurityGroup, log aclLog) []*Row {
	own := owner("sg", g.GetId())
	pg := PortGroupName(g.GetId())
	out := make([]*Row, 0, len(g.GetRules()))
	seen := make(map[string]bool, len(g.GetRules()))
	for i, r := range g.GetRules() {
		id := own + "/rule/" + itoa(r.GetId())
		if r.GetId() == 0 || seen[id] {
			id = own + "/rule-index/" + strconv.Itoa(i)
		}
		seen[id] = true
		dir, scope := nbdb.ACLDirectionFromLport, "inport == @"+pg
		if r.GetIngress() {
			dir, scope = nbdb.ACLDirectionToLport, "outport == @"+pg
		}
		match := scope + " && " + ruleMatch(r)
		out = append(out, newRow(nbdb.ACLTable, id, own, "sg-rule", &nbdb.ACL{
			Direction: dir, Action: nbdb.ACLActionAllowRelated, Priority: PrioritySG, Match: match,
		}))
		if log.on {
			// OVN 23.03 evaluates (and logs) allow ACLs for every packet
			// of a connection but its replies: a logged copy of the rule
			// that matches only new connections, one priority above,
			// logs each flow once, at its first packet; the rule itself
			// passes the rest unlogged. Allows commute, so the copy
			// changes no verdict.
			row := &nbdb.ACL{
				Direction: dir, Action: nbdb.ACLActionAllowRelated, Priority: PrioritySGLogged, Match: "ct.new && " + match,
			}
			log.set(row, SGRuleLogName(g.GetId(), r.GetId()))
			out = append(out, newRow(nbdb.ACLTable, id+"/log", own, "sg-rule-log", row))
		}
	}
	return out
}

// sgRows is a group's port group and address sets, and what they were
// rendered from: the member ports (by ID and object) and the families
// other groups name the group for.
type sgRows struct {
	acls    []*Row // the group's ACL rows (again when flow logs start or stop logging them)
	members []string
	ports   []*agentv1.Port
	remote  [2]bool
	rows    []*Row
}

func (c sgRows) same(acls []*Row, members []string, ports []*agentv1.Port, remote [2]bool) bool {
	return c.rows != nil && c.remote == remote && slices.Equal(c.acls, acls) && slices.Equal(c.members, members) && slices.Equal(c.ports, ports)
}

// renderSG adds a group's port group and address sets (its ACL rows are
// already in place), reusing last time's rows when nothing they depend on
// changed, and returns what it rendered.
func (d *Desired) renderSG(x *agentv1.Index, g *agentv1.SecurityGroup, acls []*Row, members []string, remoteFamilies [2]bool, last sgRows) sgRows {
	var ports []*agentv1.Port
	if remoteFamilies[0] || remoteFamilies[1] {
		ports = make([]*agentv1.Port, len(members))
		for i, m := range members {
			ports[i] = x.Ports[portID(m)]
		}
	}
	if last.same(acls, members, ports, remoteFamilies) {
		for _, r := range last.rows {
			d.put(r)
		}
		return last
	}
	own := owner("sg", g.GetId())
	pg := d.add(nbdb.PortGroupTable, own, own, "security-group", &nbdb.PortGroup{Name: PortGroupName(g.GetId())})
	out := sgRows{acls: acls, members: members, ports: ports, remote: remoteFamilies, rows: []*Row{pg}}
	pg.Refs["ports"] = members
	pg.Refs["acls"] = make([]string, 0, len(acls))
	for _, a := range acls {
		pg.Refs["acls"] = append(pg.Refs["acls"], a.ID)
	}
	for fam, named := range remoteFamilies {
		if !named {
			continue
		}
		v6 := fam == 1
		var addrs []string
		for _, m := range members {
			p := x.Ports[portID(m)]
			for _, ip := range p.GetIps() {
				if a, err := netip.ParseAddr(ip); err == nil && a.Is6() == v6 {
					addrs = append(addrs, ip)
				}
			}
		}
		slices.Sort(addrs)
		suffix := "/ip4"
		if v6 {
			suffix = "/ip6"
		}
		out.rows = append(out.rows, d.add(nbdb.AddressSetTable, own+suffix, own, "sg-members",
			&nbdb.AddressSet{Name: AddressSetName(g.GetId(), v6), Addresses: slices.Compact(addrs)}))
	}
	return out
}

func portID(lspID string) uint32 {
	n, _ := strconv.ParseUint(strings.TrimPrefix(lspID, "port/"), 10, 32)
	return uint32(n)
}

func (d *Desired) renderRouteTable(x *agentv1.Index, t *agentv1.RouteTable) {
	lr := d.Row(nbdb.LogicalRouterTable, owner("vpc", t.GetVpcId()))
	if lr == nil {
		return
	}
	own := owner("rt", t.GetId())
	for _, r := range t.GetRoutes() {
		nh := routeNexthop(x, r)
		id := own + "/route/" + r.GetDestination() + ">" + nh
		if d.Row(nbdb.LogicalRouterStaticRouteTable, id) != nil {
			continue // the same route twice is one route
		}
		d.add(nbdb.LogicalRouterStaticRouteTable, id, own, "route", &nbdb.LogicalRouterStaticRoute{
			IPPrefix: r.GetDestination(), Nexthop: nh, RouteTable: RouteTableName(t.GetId()),
		})
		lr.Refs["static_routes"] = append(lr.Refs["static_routes"], id)
	}
}

// routeNexthop is the OVN nexthop of a route: an address, or "discard" for
// blackholes and for next-hop ports that are gone or have no address of
// the destination's family (failing closed, as the model does).
func routeNexthop(x *agentv1.Index, r *agentv1.Route) string {
	if r.GetBlackhole() {
		return "discard"
	}
	if ip := r.GetNextHopIp(); ip != "" {
		return ip
	}
	dst, err := netip.ParsePrefix(r.GetDestination())
	if p := x.Ports[r.GetNextHopPortId()]; p != nil && err == nil {
		for _, ip := range p.GetIps() {
			if a, err := netip.ParseAddr(ip); err == nil && a.Is4() == dst.Addr().Is4() {
				return ip
			}
		}
	}
	return "discard"
}
