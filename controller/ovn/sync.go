package ovn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// errNeedFull ends a scoped pass that met something only a full pass can
// put right (a row of ours hanging from a parent outside the scope).
var errNeedFull = errors.New("ovn: a full pass is needed")

// SyncResult counts what one pass wrote.
type SyncResult struct {
	Transactions int
	Operations   int // OVSDB operations sent
	Created      int // rows inserted
	Updated      int // rows whose managed columns were rewritten
	Deleted      int // root rows deleted (children go with their last reference)
	Linked       int // references added
	Unlinked     int // references removed
}

func (r *SyncResult) add(o SyncResult) {
	r.Transactions += o.Transactions
	r.Operations += o.Operations
	r.Created += o.Created
	r.Updated += o.Updated
	r.Deleted += o.Deleted
	r.Linked += o.Linked
	r.Unlinked += o.Unlinked
}

// Writes is the number of row changes of the pass.
func (r SyncResult) Writes() int { return r.Created + r.Updated + r.Deleted + r.Linked + r.Unlinked }

// actualTable is the cache's view of the Meridian rows of one table.
type actualTable struct {
	byID   map[string]model.Model // the row kept for each meridian:id
	idOf   map[string]string      // uuid -> meridian:id, every Meridian row (duplicates too)
	extras []model.Model          // second and later rows claiming a kept row's id
}

// pass is one reconciliation of desired rows against the cache.
type pass struct {
	log    *slog.Logger
	c      client.Client
	d      *Desired
	max    int // operations per transaction
	actual map[string]*actualTable
	uuid   map[string]map[string]string // table -> meridian:id -> uuid, including rows created this pass
	parent map[string]string            // child uuid -> uuid of the Meridian parent referencing it
	gone   map[string]bool              // children unlinked this pass: OVSDB collected them
	result SyncResult
	seq    int // for named UUIDs

	created []created // rows created, to wait for in the cache
	deleted []created

	// scope limits an incremental pass to these rows (table -> meridian:id):
	// the rows whose rendering changed and the rows NB events named. nil
	// means a full pass over every row. A scoped pass reads the rows it
	// needs through the cache's meridian:id index instead of scanning.
	scope    map[string]map[string]bool
	handled  map[rowRef]bool // scoped children already reconciled under their parent
	inserted map[rowRef]bool // rows this pass created

	// verified remembers, per table and id, the desired row and the cache
	// row last found equal. Rendered rows are reused while their object is
	// unchanged, and libovsdb replaces a cached model on every update, so
	// two pointer comparisons stand in for a column-by-column comparison.
	verified, nextVerified map[verifiedKey]verifiedPair
}

type verifiedKey struct{ table, id string }

type verifiedPair struct {
	want *Row
	have model.Model
}

type created struct{ table, uuid string }

// unit is a group of operations that must share a transaction: a parent's
// mutation and the children it links, which OVSDB would otherwise
// garbage-collect at the end of their own transaction.
type unit struct {
	ops     []ovsdb.Operation
	inserts []rowRef // for each insert op, in op order: which row it creates
	counts  SyncResult
}

type rowRef struct{ table, id string }

func (p *pass) snapshot() error {
	p.actual = map[string]*actualTable{}
	p.uuid = map[string]map[string]string{}
	p.gone = map[string]bool{}
	p.inserted = map[rowRef]bool{}
	if p.scope != nil {
		return p.snapshotScope()
	}
	p.parent = make(map[string]string, p.d.Len())
	for _, s := range specs {
		rows := p.c.Cache().Table(s.name).RowsShallow()
		// Sized up front: growing maps of 50,000 entries showed in profiles.
		n := max(len(rows), len(p.d.rows[s.name]))
		at := &actualTable{byID: make(map[string]model.Model, n), idOf: make(map[string]string, n)}
		p.uuid[s.name] = make(map[string]string, n)
		for u, m := range rows {
			_, ext := s.meta(m)
			id, ok := ext[KeyID]
			if !ok {
				continue // not ours: never looked at again
			}
			at.idOf[u] = id
			kept, dup := at.byID[id]
			if dup && !p.prefer(s, id, u, m, kept) {
				at.extras = append(at.extras, m)
				continue
			}
			if dup {
				at.extras = append(at.extras, kept)
			}
			at.byID[id] = m
			p.uuid[s.name][id] = u
		}
		p.actual[s.name] = at
	}
	p.linkParents()
	return nil
}

// snapshotScope reads the rows in scope from the cache, by meridian:id.
func (p *pass) snapshotScope() error {
	p.parent = map[string]string{}
	p.handled = map[rowRef]bool{}
	for _, s := range specs {
		ids := p.scope[s.name]
		at := &actualTable{byID: make(map[string]model.Model, len(ids)), idOf: make(map[string]string, len(ids))}
		p.uuid[s.name] = make(map[string]string, len(ids))
		p.actual[s.name] = at
		for id := range ids {
			rows, err := p.lookup(s, id)
			if err != nil {
				return err
			}
			var kept model.Model
			keptUUID := ""
			for u, m := range rows {
				at.idOf[u] = id
				switch {
				case kept == nil:
					kept, keptUUID = m, u
				case p.prefer(s, id, u, m, kept):
					at.extras = append(at.extras, kept)
					kept, keptUUID = m, u
				default:
					at.extras = append(at.extras, m)
				}
			}
			if kept == nil {
				continue
			}
			at.byID[id] = kept
			p.uuid[s.name][id] = keptUUID
		}
	}
	p.linkParents()
	// A child of ours that must go (unwanted, or a duplicate) leaves by
	// being unlinked from its parent: a parent this pass must look at. It
	// always does when the change came from the model (the parent's
	// references changed too); a row moved by hand may hang elsewhere.
	for _, s := range specs {
		if s.root {
			continue
		}
		at := p.actual[s.name]
		for u, id := range at.idOf {
			kept, _ := s.meta(at.byID[id])
			if (kept != u || p.d.Row(s.name, id) == nil) && p.parent[u] == "" {
				return errNeedFull
			}
		}
	}
	return nil
}

// lookup returns the cached rows whose meridian:id is id.
func (p *pass) lookup(s *tableSpec, id string) (map[string]model.Model, error) {
	m := reflectZero(s)
	s.field(m, "external_ids").Set(reflect.ValueOf(map[string]string{KeyID: id}))
	rows, err := p.c.Cache().Table(s.name).RowsByModels([]model.Model{m})
	if err != nil {
		return nil, fmt.Errorf("look up %s %s in the cache: %w", s.name, id, err)
	}
	return rows, nil
}

// uuidOf returns the UUID of the row kept for id: created this pass, in the
// snapshot, or (in a scoped pass) looked up in the cache.
func (p *pass) uuidOf(table, id string) (string, bool) {
	if u, ok := p.uuid[table][id]; ok {
		return u, true
	}
	if p.scope == nil {
		return "", false
	}
	s := specByName[table]
	rows, err := p.lookup(s, id)
	if err != nil || len(rows) == 0 {
		return "", false
	}
	var kept model.Model
	keptUUID := ""
	for u, m := range rows {
		if kept == nil || p.prefer(s, id, u, m, kept) {
			kept, keptUUID = m, u
		}
	}
	p.uuid[table][id] = keptUUID
	return keptUUID, true
}

// ours returns the meridian:id of the row with that UUID, if it is a
// Meridian row.
func (p *pass) ours(table, uuid string) (string, bool) {
	if id, ok := p.actual[table].idOf[uuid]; ok || p.scope == nil {
		return id, ok
	}
	m := p.c.Cache().Table(table).Row(uuid)
	if m == nil {
		return "", false
	}
	_, ext := specByName[table].meta(m)
	id, ok := ext[KeyID]
	return id, ok
}

// rows returns the desired rows of a table the pass reconciles.
func (p *pass) rows(table string) []*Row {
	if p.scope == nil {
		return slices.Collect(maps.Values(p.d.rows[table]))
	}
	var out []*Row
	for id := range p.scope[table] {
		if r := p.d.Row(table, id); r != nil {
			out = append(out, r)
		}
	}
	return out
}

// memberRows returns the desired rows of a table whose memberships the
// pass reconciles: in a scoped pass, those in scope and those naming a row
// this pass created (a switch port recreated in another switch has a new
// UUID, which its port groups must learn though their rendering did not
// change).
func (p *pass) memberRows(s *tableSpec) []*Row {
	out := p.rows(s.name)
	if p.scope == nil || len(p.inserted) == 0 {
		return out
	}
	for _, ref := range s.refs {
		if ref.kind != refMembers {
			continue
		}
		for id, want := range p.d.rows[s.name] {
			if p.scope[s.name][id] {
				continue
			}
			if slices.ContainsFunc(want.Refs[ref.column], func(m string) bool { return p.inserted[rowRef{ref.table, m}] }) {
				out = append(out, want)
			}
		}
	}
	return out
}

// linkParents records, for the children of every parent in the snapshot,
// which parent holds them.
func (p *pass) linkParents() {
	for _, s := range specs {
		for _, m := range p.actual[s.name].byID {
			pu, _ := s.meta(m)
			for _, ref := range s.refs {
				if ref.kind != refChildren {
					continue
				}
				for _, cu := range s.field(m, ref.column).Interface().([]string) {
					p.parent[cu] = pu
				}
			}
		}
	}
}

// prefer reports whether row m (uuid u) should be kept for id rather than
// kept: the copy that already looks right (fewer writes), else the lower
// UUID, so the choice never flaps between passes.
func (p *pass) prefer(s *tableSpec, id, u string, m, kept model.Model) bool {
	if want := p.d.Row(s.name, id); want != nil {
		mOK, keptOK := len(s.changed(want.Model, m)) == 0, len(s.changed(want.Model, kept)) == 0
		if mOK != keptOK {
			return mOK
		}
	}
	ku, _ := s.meta(kept)
	return u < ku
}

// run reconciles in phases, each committed before the next so later
// phases can name the UUIDs earlier ones created:
//  1. root rows (routers, switches, DHCP options, address sets, port groups);
//  2. children: unlink unwanted ones, then create, update and link those
//     of root rows, then those of the children (gateway chassis);
//  3. memberships (port group ports), now that the ports exist;
//  4. delete root rows nothing wants any more.
//
// Address sets are created before and deleted after the ACLs naming them.
func (p *pass) run(ctx context.Context) error {
	start := time.Now()
	if err := p.snapshot(); err != nil {
		return err
	}
	p.log.Debug("NB snapshot", "took", time.Since(start), "scoped", p.scope != nil)
	phases := []struct {
		name string
		fn   func() ([]unit, error)
	}{
		{"roots", p.roots}, {"unlink", p.unlinkChildren}, {"children", p.children},
		{"grandchildren", p.grandchildren},
		{"members", p.members}, {"delete", p.deleteRoots},
	}
	for _, ph := range phases {
		start := time.Now()
		units, err := ph.fn()
		if err != nil {
			return fmt.Errorf("phase %s: %w", ph.name, err)
		}
		diffed := time.Since(start)
		txns := p.result.Transactions
		if err := p.commit(ctx, units); err != nil {
			return fmt.Errorf("phase %s: %w", ph.name, err)
		}
		p.log.Debug("NB phase", "phase", ph.name, "units", len(units), "transactions", p.result.Transactions-txns,
			"diff", diffed, "commit", time.Since(start)-diffed)
	}
	return nil
}

func (p *pass) roots() ([]unit, error) {
	var units []unit
	for _, s := range specs {
		if !s.root {
			continue
		}
		for _, want := range p.rows(s.name) {
			u, err := p.upsert(s, want)
			if err != nil {
				return nil, err
			}
			if u != nil {
				units = append(units, *u)
			}
		}
	}
	return units, nil
}

// upsert returns the operations creating want or bringing the existing row
// to it; nil when nothing differs. Children are created elsewhere.
func (p *pass) upsert(s *tableSpec, want *Row) (*unit, error) {
	m := s.newModel(want.Model, "")
	for _, ref := range s.refs {
		if ref.kind == refOptional {
			if ids := want.Refs[ref.column]; len(ids) > 0 {
				if u, ok := p.uuidOf(ref.table, ids[0]); ok {
					s.field(m, ref.column).Set(reflectPtr(u))
				}
			}
		}
	}
	have, ok := p.actual[s.name].byID[want.ID]
	if !ok {
		return p.insertWithChildren(s, want, m)
	}
	key := verifiedKey{s.name, want.ID}
	if v := p.verified[key]; v.want == want && v.have == have {
		p.nextVerified[key] = v
		return nil, nil
	}
	hu, _ := s.meta(have)
	cols := s.changed(m, have)
	if len(cols) == 0 {
		p.nextVerified[key] = verifiedPair{want, have}
		return nil, nil
	}
	m = s.newModel(m, hu)
	fields := make([]any, 0, len(cols))
	for _, c := range cols {
		fields = append(fields, s.fieldPtr(m, c))
	}
	ops, err := p.c.Where(m).Update(m, fields...)
	if err != nil {
		return nil, fmt.Errorf("update %s %s: %w", s.name, want.ID, err)
	}
	return &unit{ops: ops, counts: SyncResult{Updated: 1}}, nil
}

func (p *pass) insert(s *tableSpec, id string, m model.Model) (*unit, error) {
	p.seq++
	named := "mer" + strconv.Itoa(p.seq)
	m = s.newModel(m, named)
	ops, err := p.c.Create(m)
	if err != nil {
		return nil, fmt.Errorf("create %s %s: %w", s.name, id, err)
	}
	p.uuid[s.name][id] = named
	return &unit{ops: ops, inserts: []rowRef{{s.name, id}}, counts: SyncResult{Created: 1}}, nil
}

// insertWithChildren inserts a row together with its inline children
// (refSpec.inline: a meter's bands, which it cannot exist without), all in
// one unit; other children are created in the children phase.
func (p *pass) insertWithChildren(s *tableSpec, want *Row, m model.Model) (*unit, error) {
	var pre unit
	for _, ref := range s.refs {
		if !ref.inline() {
			continue
		}
		cs := specByName[ref.table]
		var uuids []string
		for _, cid := range want.Refs[ref.column] {
			crow := p.d.Row(ref.table, cid)
			if crow == nil {
				return nil, fmt.Errorf("%s %s references missing %s %s", s.name, want.ID, ref.table, cid)
			}
			u, err := p.insert(cs, cid, crow.Model)
			if err != nil {
				return nil, err
			}
			pre.ops = append(pre.ops, u.ops...)
			pre.inserts = append(pre.inserts, u.inserts...)
			pre.counts.add(u.counts)
			uuids = append(uuids, p.uuid[ref.table][cid])
		}
		s.field(m, ref.column).Set(reflect.ValueOf(uuids))
	}
	u, err := p.insert(s, want.ID, m)
	if err != nil || len(pre.ops) == 0 {
		return u, err
	}
	pre.ops = append(pre.ops, u.ops...)
	pre.inserts = append(pre.inserts, u.inserts...)
	pre.counts.add(u.counts)
	return &pre, nil
}

// wantedRefs resolves the desired references of a column to UUIDs.
func (p *pass) wantedRefs(want *Row, ref refSpec) map[string]bool {
	out := map[string]bool{}
	for _, id := range want.Refs[ref.column] {
		if u, ok := p.uuidOf(ref.table, id); ok {
			out[u] = true
		}
	}
	return out
}

// mutate is a mutation of one reference column of an existing row.
func (p *pass) mutate(s *tableSpec, rowUUID, column string, mutator ovsdb.Mutator, uuids []string) ([]ovsdb.Operation, error) {
	m := s.newModel(reflectZero(s), rowUUID)
	ops, err := p.c.Where(m).Mutate(m, model.Mutation{Field: s.fieldPtr(m, column), Mutator: mutator, Value: uuids})
	if err != nil {
		return nil, fmt.Errorf("mutate %s %s.%s: %w", s.name, rowUUID, column, err)
	}
	return ops, nil
}

// placed reports whether the existing child row kept for id is linked from
// the desired parent row.
func (p *pass) placed(table, id, parentUUID string) (string, bool) {
	u, ok := p.uuidOf(table, id)
	if !ok {
		return "", false
	}
	// A named UUID (row created this pass) is never in p.parent, which
	// the cache filled.
	return u, p.parent[u] == parentUUID
}

// unlinkChildren removes, from every Meridian parent, references to
// Meridian children it should not hold: orphans, duplicates and children
// that moved to another parent (which are recreated there in phase 2).
// Unlinked children are garbage-collected by OVSDB. This runs first so a
// moved row's name is free again before it is recreated.
func (p *pass) unlinkChildren() ([]unit, error) {
	var units []unit
	for _, s := range specs {
		for id, have := range p.actual[s.name].byID {
			pu, _ := s.meta(have)
			want := p.d.Row(s.name, id)
			for _, ref := range s.refs {
				if ref.kind != refChildren {
					continue
				}
				keep := map[string]bool{}
				if want != nil {
					for _, cid := range want.Refs[ref.column] {
						if cu, ok := p.placed(ref.table, cid, pu); ok {
							keep[cu] = true
						}
					}
				}
				var drop []string
				for _, cu := range s.field(have, ref.column).Interface().([]string) {
					cid, ours := p.ours(ref.table, cu)
					if !ours || keep[cu] {
						continue
					}
					// A parent about to be deleted takes its children
					// with it; only those wanted elsewhere must leave
					// first, to free their names.
					if want == nil && p.d.Row(ref.table, cid) == nil {
						continue
					}
					drop = append(drop, cu)
				}
				if len(drop) == 0 {
					continue
				}
				for _, cu := range drop {
					p.gone[cu] = true
				}
				ops, err := p.mutate(s, pu, ref.column, ovsdb.MutateOperationDelete, drop)
				if err != nil {
					return nil, err
				}
				units = append(units, unit{ops: ops, counts: SyncResult{Unlinked: len(drop)}})
			}
		}
	}
	return units, nil
}

// children creates missing children together with their links, and
// updates children already in place.
func (p *pass) children() ([]unit, error) { return p.childrenOf(true) }

// grandchildren does the same for the children of non-root rows (a gateway
// router port's Gateway_Chassis), once their parents, created in the
// previous phase, have real UUIDs: a parent created this pass is named by
// a named UUID, which only means something inside its own transaction,
// and the previous phase may span several.
func (p *pass) grandchildren() ([]unit, error) {
	units, err := p.childrenOf(false)
	if err != nil || p.scope == nil {
		return units, err
	}
	// Children whose content changed under a parent that did not: updated
	// in place. One that is missing needs its parent, which a full pass
	// finds.
	for _, s := range specs {
		if s.root {
			continue
		}
		for _, want := range p.rows(s.name) {
			if p.handled[rowRef{s.name, want.ID}] {
				continue
			}
			if p.actual[s.name].byID[want.ID] == nil {
				return nil, errNeedFull
			}
			u, err := p.upsert(s, want)
			if err != nil {
				return nil, err
			}
			if u != nil {
				units = append(units, *u)
			}
		}
	}
	return units, nil
}

// childrenOf reconciles the children of root parents, or of non-root ones.
func (p *pass) childrenOf(roots bool) ([]unit, error) {
	var units []unit
	for _, s := range specs {
		if s.root != roots {
			continue
		}
		for _, want := range p.rows(s.name) {
			pu, ok := p.uuid[s.name][want.ID]
			if !ok {
				return nil, fmt.Errorf("%s %s has no UUID after phase 1", s.name, want.ID)
			}
			for _, ref := range s.refs {
				if ref.kind != refChildren {
					continue
				}
				cs := specByName[ref.table]
				var link unit
				var linked []string
				for _, cid := range want.Refs[ref.column] {
					crow := p.d.Row(ref.table, cid)
					if crow == nil {
						return nil, fmt.Errorf("%s %s references missing %s %s", s.name, want.ID, ref.table, cid)
					}
					if ref.inline() && p.inserted[rowRef{ref.table, cid}] {
						// Created with its parent in phase 1.
						if p.scope != nil {
							p.handled[rowRef{ref.table, cid}] = true
						}
						continue
					}
					_, inPlace := p.placed(ref.table, cid, pu)
					if p.scope != nil {
						if inPlace && !p.scope[ref.table][cid] {
							continue // unchanged, and where it belongs
						}
						p.handled[rowRef{ref.table, cid}] = true
					}
					if !inPlace {
						// Absent, or linked elsewhere and unlinked in the
						// previous phase: make a new row here.
						delete(p.actual[ref.table].byID, cid)
					}
					u, err := p.upsert(cs, crow)
					if err != nil {
						return nil, err
					}
					if u == nil {
						continue
					}
					if len(u.inserts) == 0 {
						units = append(units, *u) // an in-place update stands alone
						continue
					}
					link.ops = append(link.ops, u.ops...)
					link.inserts = append(link.inserts, u.inserts...)
					link.counts.add(u.counts)
					linked = append(linked, p.uuid[ref.table][cid])
				}
				if len(linked) == 0 {
					continue
				}
				ops, err := p.mutate(s, pu, ref.column, ovsdb.MutateOperationInsert, linked)
				if err != nil {
					return nil, err
				}
				link.ops = append(link.ops, ops...)
				link.counts.Linked += len(linked)
				units = append(units, link)
			}
		}
	}
	return units, nil
}

// members brings membership references (port group ports) to the desired
// set. Members Meridian does not own are left in place.
func (p *pass) members() ([]unit, error) {
	var units []unit
	for _, s := range specs {
		for _, want := range p.memberRows(s) {
			pu, _ := p.uuidOf(s.name, want.ID)
			have := p.actual[s.name].byID[want.ID]
			if have == nil && p.scope != nil && pu != "" {
				have = p.c.Cache().Table(s.name).Row(pu)
			}
			for _, ref := range s.refs {
				if ref.kind != refMembers {
					continue
				}
				wanted := p.wantedRefs(want, ref)
				present := map[string]bool{}
				var drop []string
				if have != nil {
					for _, mu := range s.field(have, ref.column).Interface().([]string) {
						present[mu] = true
						// Collected rows left weak references behind only in
						// our stale snapshot: OVSDB already removed them.
						if _, ours := p.ours(ref.table, mu); ours && !wanted[mu] && !p.gone[mu] {
							drop = append(drop, mu)
						}
					}
				}
				var add []string
				for mu := range wanted {
					if !present[mu] {
						add = append(add, mu)
					}
				}
				slices.Sort(add)
				var u unit
				for _, m := range []struct {
					op    ovsdb.Mutator
					uuids []string
				}{{ovsdb.MutateOperationDelete, drop}, {ovsdb.MutateOperationInsert, add}} {
					if len(m.uuids) == 0 {
						continue
					}
					ops, err := p.mutate(s, pu, ref.column, m.op, m.uuids)
					if err != nil {
						return nil, err
					}
					u.ops = append(u.ops, ops...)
				}
				u.counts = SyncResult{Linked: len(add), Unlinked: len(drop)}
				if len(u.ops) > 0 {
					units = append(units, u)
				}
			}
		}
	}
	return units, nil
}

// deleteRoots deletes Meridian root rows nothing wants, and duplicates.
func (p *pass) deleteRoots() ([]unit, error) {
	var units []unit
	for _, s := range specs {
		if !s.root {
			continue
		}
		at := p.actual[s.name]
		doomed := slices.Clone(at.extras)
		for id, have := range at.byID {
			if p.d.Row(s.name, id) == nil {
				doomed = append(doomed, have)
			}
		}
		for _, have := range doomed {
			hu, _ := s.meta(have)
			m := s.newModel(reflectZero(s), hu)
			ops, err := p.c.Where(m).Delete()
			if err != nil {
				return nil, fmt.Errorf("delete %s %s: %w", s.name, hu, err)
			}
			units = append(units, unit{ops: ops, counts: SyncResult{Deleted: 1}})
			p.deleted = append(p.deleted, created{s.name, hu})
		}
	}
	return units, nil
}

// commit sends the units in transactions of at most p.max operations (a
// larger unit goes alone), and records the UUIDs of inserted rows.
func (p *pass) commit(ctx context.Context, units []unit) error {
	for len(units) > 0 {
		n, ops := 0, 0
		for n < len(units) && (n == 0 || ops+len(units[n].ops) <= p.max) {
			ops += len(units[n].ops)
			n++
		}
		if err := p.transact(ctx, units[:n]); err != nil {
			return err
		}
		units = units[n:]
	}
	return nil
}

func (p *pass) transact(ctx context.Context, units []unit) error {
	var ops []ovsdb.Operation
	var counts SyncResult
	var inserts []rowRef
	var insertAt []int
	for _, u := range units {
		k := 0
		for _, op := range u.ops {
			if op.Op == ovsdb.OperationInsert {
				inserts = append(inserts, u.inserts[k])
				insertAt = append(insertAt, len(ops))
				k++
			}
			ops = append(ops, op)
		}
		counts.add(u.counts)
	}
	res, err := p.c.Transact(ctx, ops...)
	if err != nil {
		return fmt.Errorf("transact %d operations: %w", len(ops), err)
	}
	if opErrs, err := ovsdb.CheckOperationResults(res, ops); err != nil {
		return fmt.Errorf("transaction of %d operations failed: %w (%v)", len(ops), err, opErrs)
	}
	for i, at := range insertAt {
		u := res[at].UUID.GoUUID
		p.uuid[inserts[i].table][inserts[i].id] = u
		p.inserted[inserts[i]] = true
		p.created = append(p.created, created{inserts[i].table, u})
	}
	counts.Transactions = 1
	counts.Operations = len(ops)
	p.result.add(counts)
	return nil
}

// settle waits until the cache shows the rows the pass created and
// deleted, so that the next pass does not see a stale cache and write the
// same rows again.
func (p *pass) settle(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pending := 0
		for _, c := range p.created {
			if !p.c.Cache().Table(c.table).HasRow(c.uuid) {
				pending++
			}
		}
		for _, c := range p.deleted {
			if p.c.Cache().Table(c.table).HasRow(c.uuid) {
				pending++
			}
		}
		if pending == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cache still misses %d committed changes after %v", pending, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}
