package ovn

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/ovn-kubernetes/libovsdb/model"

	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// refKind says how the reconciler maintains a reference column.
type refKind int

const (
	// refChildren: strong references to non-root rows that exist only as
	// this parent's children (router ports, switch ports, ACLs, routes).
	// OVSDB garbage-collects an unreferenced non-root row at commit, so a
	// child is created in the same transaction as the mutation that links
	// it, and deleted by unlinking it.
	refChildren refKind = iota
	// refMembers: references to rows that live on their own (a port
	// group's ports). Linked after the members exist.
	refMembers
	// refOptional: an optional single reference, compared and written like
	// any other column once the target's UUID is known.
	refOptional
)

type refSpec struct {
	column string
	table  string
	kind   refKind
}

// inline reports whether the children are created in the same insert as a
// new parent, in phase 1, because the parent cannot exist without one (a
// Meter's bands: at least one). Later changes to them are made in the
// children phase like any child's.
func (r refSpec) inline() bool { return r.kind == refChildren && r.table == nbdb.MeterBandTable }

// tableSpec is what the reconciler manages in one NB table. Columns not
// listed (status columns northd writes, references to tables Meridian does
// not use yet) are never compared or written.
type tableSpec struct {
	name    string
	root    bool
	columns []string // managed columns other than references
	refs    []refSpec
	typ     reflect.Type   // the nbdb struct type
	fields  map[string]int // column -> struct field index
}

// The managed tables, in the order of their phase: roots before the
// children that reference them.
var specs = []*tableSpec{
	{name: nbdb.LogicalRouterTable, root: true, typ: reflect.TypeFor[nbdb.LogicalRouter](),
		columns: []string{"name", "external_ids", "options"},
		refs: []refSpec{
			{"ports", nbdb.LogicalRouterPortTable, refChildren},
			{"static_routes", nbdb.LogicalRouterStaticRouteTable, refChildren},
			{"nat", nbdb.NATTable, refChildren},
			// Weak references to root rows: linked once both exist.
			{"load_balancer", nbdb.LoadBalancerTable, refMembers},
		}},
	{name: nbdb.LogicalSwitchTable, root: true, typ: reflect.TypeFor[nbdb.LogicalSwitch](),
		columns: []string{"name", "external_ids", "other_config"},
		refs: []refSpec{
			{"ports", nbdb.LogicalSwitchPortTable, refChildren},
			{"acls", nbdb.ACLTable, refChildren},
			{"load_balancer", nbdb.LoadBalancerTable, refMembers},
		}},
	{name: nbdb.DHCPOptionsTable, root: true, typ: reflect.TypeFor[nbdb.DHCPOptions](),
		columns: []string{"cidr", "options", "external_ids"}},
	{name: nbdb.AddressSetTable, root: true, typ: reflect.TypeFor[nbdb.AddressSet](),
		columns: []string{"name", "addresses", "external_ids"}},
	{name: nbdb.PortGroupTable, root: true, typ: reflect.TypeFor[nbdb.PortGroup](),
		columns: []string{"name", "external_ids"},
		refs: []refSpec{
			{"acls", nbdb.ACLTable, refChildren},
			{"ports", nbdb.LogicalSwitchPortTable, refMembers},
		}},
	{name: nbdb.LoadBalancerTable, root: true, typ: reflect.TypeFor[nbdb.LoadBalancer](),
		columns: []string{"name", "vips", "protocol", "options", "ip_port_mappings", "selection_fields", "external_ids"},
		refs:    []refSpec{{"health_check", nbdb.LoadBalancerHealthCheckTable, refChildren}}},
	// Flow-log meters (flowlog.go); ACLs name them by name, not by
	// reference.
	{name: nbdb.MeterTable, root: true, typ: reflect.TypeFor[nbdb.Meter](),
		columns: []string{"name", "unit", "fair", "external_ids"},
		refs:    []refSpec{{"bands", nbdb.MeterBandTable, refChildren}}},
	{name: nbdb.LogicalRouterPortTable, typ: reflect.TypeFor[nbdb.LogicalRouterPort](),
		columns: []string{"name", "mac", "networks", "options", "external_ids"},
		// Children of children: a new gateway port's chassis are linked by
		// the port's named UUID, so they must land in the transaction that
		// creates the port (they follow it in spec order). When the
		// children phase spans several transactions (more than MaxOps
		// operations) they may not: ovsdb-server then matches no port,
		// collects the unlinked chassis rows, the pass times out waiting
		// for them and the next pass creates them. Committing children of
		// children after their parents' transactions would fix it.
		refs: []refSpec{{"gateway_chassis", nbdb.GatewayChassisTable, refChildren}}},
	{name: nbdb.LogicalRouterStaticRouteTable, typ: reflect.TypeFor[nbdb.LogicalRouterStaticRoute](),
		columns: []string{"ip_prefix", "nexthop", "route_table", "policy", "options", "external_ids"}},
	{name: nbdb.LogicalSwitchPortTable, typ: reflect.TypeFor[nbdb.LogicalSwitchPort](),
		columns: []string{"name", "type", "addresses", "port_security", "options", "external_ids"},
		refs:    []refSpec{{"dhcpv4_options", nbdb.DHCPOptionsTable, refOptional}}},
	{name: nbdb.ACLTable, typ: reflect.TypeFor[nbdb.ACL](),
		columns: []string{"action", "direction", "match", "priority", "name", "log", "severity", "meter", "options", "external_ids"}},
	{name: nbdb.NATTable, typ: reflect.TypeFor[nbdb.NAT](),
		columns: []string{"type", "external_ip", "logical_ip", "external_port_range", "external_mac", "logical_port", "options", "external_ids"}},
	{name: nbdb.GatewayChassisTable, typ: reflect.TypeFor[nbdb.GatewayChassis](),
		columns: []string{"name", "chassis_name", "priority", "options", "external_ids"}},
	{name: nbdb.LoadBalancerHealthCheckTable, typ: reflect.TypeFor[nbdb.LoadBalancerHealthCheck](),
		columns: []string{"vip", "options", "external_ids"}},
	{name: nbdb.MeterBandTable, typ: reflect.TypeFor[nbdb.MeterBand](),
		columns: []string{"action", "rate", "burst_size", "external_ids"}},
}

var specByName = func() map[string]*tableSpec {
	m := map[string]*tableSpec{}
	for _, s := range specs {
		s.fields = map[string]int{}
		for i := range s.typ.NumField() {
			if tag := s.typ.Field(i).Tag.Get("ovsdb"); tag != "" {
				s.fields[tag] = i
			}
		}
		for _, c := range s.columns {
			if _, ok := s.fields[c]; !ok {
				panic(fmt.Sprintf("ovn: table %s has no column %q", s.name, c))
			}
		}
		m[s.name] = s
	}
	return m
}()

// Tables returns the NB tables the reconciler manages.
func Tables() []string {
	out := make([]string, 0, len(specs))
	for _, s := range specs {
		out = append(out, s.name)
	}
	return out
}

// field returns the addressable field of a model's column.
func (s *tableSpec) field(m model.Model, column string) reflect.Value {
	return reflect.ValueOf(m).Elem().Field(s.fields[column])
}

func (s *tableSpec) fieldPtr(m model.Model, column string) any {
	return s.field(m, column).Addr().Interface()
}

// newModel returns a copy of desired (a pointer to an nbdb struct) with the
// given UUID. Maps and slices are shared: models handed to libovsdb are
// only read.
func (s *tableSpec) newModel(desired model.Model, uuid string) model.Model {
	v := reflect.New(s.typ)
	v.Elem().Set(reflect.ValueOf(desired).Elem())
	v.Elem().Field(s.fields["_uuid"]).SetString(uuid)
	return v.Interface().(model.Model)
}

// changed returns the managed columns (and optional references) whose
// values differ between want and have.
func (s *tableSpec) changed(want, have model.Model) []string {
	var out []string
	for _, c := range s.columns {
		if !equalColumn(s.field(want, c), s.field(have, c)) {
			out = append(out, c)
		}
	}
	for _, r := range s.refs {
		if r.kind == refOptional && !equalColumn(s.field(want, r.column), s.field(have, r.column)) {
			out = append(out, r.column)
		}
	}
	return out
}

// equalColumn compares OVSDB column values: sets are unordered, and an
// empty set or map is the same as a missing one.
func equalColumn(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		if a.Len() == 0 {
			return true
		}
		as, aok := a.Interface().([]string)
		bs, bok := b.Interface().([]string)
		if aok && bok {
			return equalSets(as, bs)
		}
	case reflect.Map:
		if a.Len() == 0 && b.Len() == 0 {
			return true
		}
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

func equalSets(a, b []string) bool {
	if slices.Equal(a, b) {
		return true
	}
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// meta returns a row's UUID and external_ids.
func (s *tableSpec) meta(m model.Model) (uuid string, ext map[string]string) {
	v := reflect.ValueOf(m).Elem()
	return v.Field(s.fields["_uuid"]).String(), v.Field(s.fields["external_ids"]).Interface().(map[string]string)
}
