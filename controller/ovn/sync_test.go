package ovn

import (
	"slices"
	"testing"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// assertNBMatches checks that the cache holds exactly the desired Meridian
// rows: same managed columns, references resolved to the right rows.
func assertNBMatches(t *testing.T, r *Reconciler, d *Desired) {
	t.Helper()
	for _, s := range specs {
		have := meridianRows(r, s.name)
		want := d.Rows(s.name)
		if len(have) != len(want) {
			t.Errorf("%s: %d Meridian rows, want %d (%v)", s.name, len(have), len(want), ids(want))
		}
		for _, w := range want {
			h, ok := have[w.ID]
			if !ok {
				t.Errorf("%s %s missing", s.name, w.ID)
				continue
			}
			m := s.newModel(w.Model, "")
			for _, ref := range s.refs {
				if ref.kind == refOptional {
					if ids := w.Refs[ref.column]; len(ids) > 0 {
						m = s.newModel(w.Model, "")
						u := uuidOf(r, ref.table, ids[0])
						s.field(m, ref.column).Set(reflectPtr(u))
					}
					continue
				}
				var got []string
				for _, u := range s.field(h, ref.column).Interface().([]string) {
					got = append(got, idOfUUID(r, ref.table, u))
				}
				if !equalSets(got, w.Refs[ref.column]) {
					t.Errorf("%s %s.%s = %v, want %v", s.name, w.ID, ref.column, got, w.Refs[ref.column])
				}
			}
			if cols := s.changed(m, h); len(cols) > 0 {
				t.Errorf("%s %s: columns %v differ:\n have %+v\n want %+v", s.name, w.ID, cols, h, m)
			}
		}
	}
}

func uuidOf(r *Reconciler, table, id string) string {
	for u, m := range r.Client().Cache().Table(table).RowsShallow() {
		if _, ext := specByName[table].meta(m); ext[KeyID] == id {
			return u
		}
	}
	return ""
}

func idOfUUID(r *Reconciler, table, u string) string {
	m := r.Client().Cache().Table(table).Row(u)
	if m == nil {
		return "missing:" + u
	}
	_, ext := specByName[table].meta(m)
	if id := ext[KeyID]; id != "" {
		return id
	}
	return "foreign:" + u
}

func transact(t *testing.T, c client.Client, ops ...[]ovsdb.Operation) {
	t.Helper()
	var all []ovsdb.Operation
	for _, o := range ops {
		all = append(all, o...)
	}
	res, err := c.Transact(testCtx(t), all...)
	if err == nil {
		_, err = ovsdb.CheckOperationResults(res, all)
	}
	if err != nil {
		t.Fatalf("transact: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestSyncWritesExactlyTheRenderedRows(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	res := mustSync(t, r, fixture())
	d := Render(fixture())
	assertNBMatches(t, r, d)
	if res.Created != d.Len() {
		t.Errorf("created %d rows, want %d", res.Created, d.Len())
	}
	// Roots, then children with their links, then memberships: three
	// transactions for a fresh database of this size.
	if res.Transactions != 3 {
		t.Errorf("%d transactions, want 3", res.Transactions)
	}
}

func TestResyncWithNothingChangedWritesNothing(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	mustSync(t, r, fixture())
	for i := range 3 {
		if res := mustSync(t, r, fixture()); res != (SyncResult{}) {
			t.Fatalf("resync %d wrote %+v", i, res)
		}
	}
}

func TestSmallBatchesGiveTheSameRows(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), func(c *Config) { c.MaxOps = 3 })
	res := mustSync(t, r, fixture())
	assertNBMatches(t, r, Render(fixture()))
	if res.Transactions < 8 {
		t.Errorf("%d transactions with 3 operations each at most, want more", res.Transactions)
	}
}

func port(objs map[string]*agentv1.Object, id uint32) *agentv1.Port {
	return objs[owner("port", id)].GetPort()
}

func TestUpdatesTouchOnlyWhatChanged(t *testing.T) {
	cases := []struct {
		name   string
		change func(map[string]*agentv1.Object)
		want   SyncResult // Transactions and Operations not compared
	}{
		{"a rule's port changes: one ACL rewritten", func(o map[string]*agentv1.Object) {
			r := o["sg/21"].GetSecurityGroup().Rules[0]
			r.PortMin, r.PortMax = 2222, 2222
		}, SyncResult{Updated: 1}},
		{"a port joins a group: linked into it, the group's address set rewritten", func(o map[string]*agentv1.Object) {
			port(o, 101).SecurityGroupIds = []uint32{21, 22}
		}, SyncResult{Updated: 1, Linked: 1}},
		{"a port goes: unlinked from its switch, its group's address set rewritten", func(o map[string]*agentv1.Object) {
			delete(o, "port/102")
		}, SyncResult{Updated: 1, Unlinked: 1}},
		{"a subnet's DNS servers change: its DHCP options only", func(o map[string]*agentv1.Object) {
			o["subnet/11"].GetSubnet().DnsServers = []string{"10.0.0.3"}
		}, SyncResult{Updated: 1}},
		{"a deny rule is added to a network ACL: one ACL created and linked", func(o map[string]*agentv1.Object) {
			a := o["acl/31"].GetNetworkAcl()
			a.Rules = append(a.Rules, &agentv1.Rule{Id: 9, Number: 300, Protocol: 6, IcmpType: -1, IcmpCode: -1})
		}, SyncResult{Created: 1, Linked: 1}},
		{"a group goes: its port group and address set deleted, the rule naming it unlinked", func(o map[string]*agentv1.Object) {
			delete(o, "sg/22")
			port(o, 102).SecurityGroupIds = []uint32{21}
			g := o["sg/21"].GetSecurityGroup()
			g.Rules = g.Rules[:2] // the model drops rules whose remote group is gone
		}, SyncResult{Deleted: 2, Unlinked: 1}},
		{"a route is added: one route created and linked", func(o map[string]*agentv1.Object) {
			rt := o["rt/41"].GetRouteTable()
			rt.Routes = append(rt.Routes, &agentv1.Route{Destination: "172.16.0.0/12", NextHopIp: "10.0.2.10"})
		}, SyncResult{Created: 1, Linked: 1}},
		{"a port moves to another subnet: recreated in the new switch and relinked to its groups", func(o map[string]*agentv1.Object) {
			p := port(o, 102)
			p.SubnetId, p.Ips = 12, []string{"10.0.2.11"}
		}, SyncResult{Created: 1, Unlinked: 1, Linked: 4, Updated: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := connect(t, ovntest.InMemoryNB(t), nil)
			mustSync(t, r, fixture())
			objs := fixture()
			tc.change(objs)
			got := mustSync(t, r, objs)
			got.Transactions, got.Operations = 0, 0
			if got != tc.want {
				t.Errorf("wrote %+v, want %+v", got, tc.want)
			}
			assertNBMatches(t, r, Render(objs))
			if res := mustSync(t, r, objs); res != (SyncResult{}) {
				t.Errorf("resync after the change wrote %+v", res)
			}
		})
	}
}

func TestDeletingEverythingLeavesNoMeridianRows(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	mustSync(t, r, fixture())
	mustSync(t, r, nil)
	empty := Render(nil) // only the global default-deny group stays
	assertNBMatches(t, r, empty)
	for _, s := range specs {
		if n := len(meridianRows(r, s.name)); n != len(empty.Rows(s.name)) {
			t.Errorf("%s: %d Meridian rows left", s.name, n)
		}
	}
}

// foreignRows creates rows another NB client owns: a switch with an ACL,
// and a port of its own on a Meridian switch.
func foreignRows(t *testing.T, r *Reconciler) {
	t.Helper()
	c := r.Client()
	acl := &nbdb.ACL{UUID: "facl", Direction: "to-lport", Action: "drop", Priority: 5, Match: "ip4"}
	ls := &nbdb.LogicalSwitch{UUID: "fls", Name: "theirs", ACLs: []string{"facl"}, ExternalIDs: map[string]string{"owner": "k8s"}}
	lsp := &nbdb.LogicalSwitchPort{UUID: "flsp", Name: "their-port"}
	mer := &nbdb.LogicalSwitch{UUID: uuidOf(r, nbdb.LogicalSwitchTable, "subnet/11")}
	transact(t, c, must(c.Create(acl)), must(c.Create(ls)), must(c.Create(lsp)),
		must(c.Where(mer).Mutate(mer, model.Mutation{Field: &mer.Ports, Mutator: ovsdb.MutateOperationInsert, Value: []string{"flsp"}})))
}

func TestForeignRowsAreNeverTouched(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	mustSync(t, r, fixture())
	foreignRows(t, r)
	before := r.Client().Cache().Table(nbdb.LogicalSwitchTable).Rows()
	for _, objs := range []map[string]*agentv1.Object{fixture(), nil} {
		mustSync(t, r, objs)
	}
	lsps := r.Client().Cache().Table(nbdb.LogicalSwitchPortTable).Rows()
	found := false
	for _, m := range lsps {
		found = found || m.(*nbdb.LogicalSwitchPort).Name == "their-port"
	}
	if found {
		// The Meridian switch it hung on is gone, so OVSDB collected it;
		// before that, syncing must have left it linked.
		t.Log("foreign port outlived its switch")
	}
	for u, m := range r.Client().Cache().Table(nbdb.LogicalSwitchTable).Rows() {
		ls := m.(*nbdb.LogicalSwitch)
		if ls.Name != "theirs" {
			t.Errorf("switch %s left behind", ls.Name)
			continue
		}
		if b := before[u].(*nbdb.LogicalSwitch); !slices.Equal(b.ACLs, ls.ACLs) || ls.ExternalIDs["owner"] != "k8s" {
			t.Errorf("foreign switch changed: %+v, was %+v", ls, b)
		}
	}
}

func TestForeignPortOnAMeridianSwitchStaysLinked(t *testing.T) {
	r := connect(t, ovntest.InMemoryNB(t), nil)
	mustSync(t, r, fixture())
	foreignRows(t, r)
	objs := fixture()
	delete(objs, "port/101")
	mustSync(t, r, objs)
	ls := meridianRows(r, nbdb.LogicalSwitchTable)["subnet/11"].(*nbdb.LogicalSwitch)
	var names []string
	for _, u := range ls.Ports {
		names = append(names, r.Client().Cache().Table(nbdb.LogicalSwitchPortTable).Row(u).(*nbdb.LogicalSwitchPort).Name)
	}
	slices.Sort(names)
	if want := []string{"mer-port-102", "mer-rtr-11", "their-port"}; !slices.Equal(names, want) {
		t.Errorf("switch ports = %v, want %v", names, want)
	}
}

func TestDriftIsRepaired(t *testing.T) {
	cases := []struct {
		name  string
		drift func(t *testing.T, r *Reconciler)
		want  SyncResult
	}{
		{"an ACL's match edited by hand is put back", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			a := &nbdb.ACL{UUID: uuidOf(r, nbdb.ACLTable, "sg/21/rule/1"), Match: "1"}
			transact(t, c, must(c.Where(a).Update(a, &a.Match)))
		}, SyncResult{Updated: 1}},
		{"a switch port unlinked by hand is recreated", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			ls := &nbdb.LogicalSwitch{UUID: uuidOf(r, nbdb.LogicalSwitchTable, "subnet/11")}
			transact(t, c, must(c.Where(ls).Mutate(ls, model.Mutation{Field: &ls.Ports, Mutator: ovsdb.MutateOperationDelete,
				Value: []string{uuidOf(r, nbdb.LogicalSwitchPortTable, "port/101")}})))
		}, SyncResult{Created: 1, Linked: 3}}, // its switch, its group and the default-deny group
		{"a deleted port group comes back with its ACLs and members", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			pg := &nbdb.PortGroup{UUID: uuidOf(r, nbdb.PortGroupTable, "sg/22")}
			transact(t, c, must(c.Where(pg).Delete()))
		}, SyncResult{Created: 2, Linked: 2}},
		{"a copy of a Meridian ACL is removed", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			pg := &nbdb.PortGroup{UUID: uuidOf(r, nbdb.PortGroupTable, "sg/22")}
			dup := &nbdb.ACL{UUID: "dup", Direction: "to-lport", Action: "allow-related", Priority: 1001, Match: "ip4",
				ExternalIDs: ext("sg/22/rule/4", "sg/22", "sg-rule")}
			transact(t, c, must(c.Create(dup)), must(c.Where(pg).Mutate(pg, model.Mutation{Field: &pg.ACLs,
				Mutator: ovsdb.MutateOperationInsert, Value: []string{"dup"}})))
		}, SyncResult{Unlinked: 1}},
		{"a Meridian external_id removed by hand is restored", func(t *testing.T, r *Reconciler) {
			c := r.Client()
			lr := &nbdb.LogicalRouter{UUID: uuidOf(r, nbdb.LogicalRouterTable, "vpc/1"), ExternalIDs: map[string]string{KeyID: "vpc/1"}}
			transact(t, c, must(c.Where(lr).Update(lr, &lr.ExternalIDs)))
		}, SyncResult{Updated: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := connect(t, ovntest.InMemoryNB(t), nil)
			mustSync(t, r, fixture())
			tc.drift(t, r)
			got := mustSync(t, r, fixture())
			got.Transactions, got.Operations = 0, 0
			if got != tc.want {
				t.Errorf("repair wrote %+v, want %+v", got, tc.want)
			}
			assertNBMatches(t, r, Render(fixture()))
		})
	}
}
