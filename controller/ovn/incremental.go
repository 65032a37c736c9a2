package ovn

import (
	"maps"
	"slices"

	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// changedRows compares a new rendering with the previous one and returns,
// by table, the meridian:ids of the rows that were added, removed or
// changed: the scope of an incremental pass. Most rows (security-group
// ACLs and port groups, switch ports) are shared between consecutive
// renderings by the Renderer and cost one pointer comparison; d keeps its
// own rows even where they equal prev's, so that the next rendering, which
// reuses them, compares by pointer again.
func changedRows(prev, d *Desired) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	mark := func(table, id string) {
		t := out[table]
		if t == nil {
			t = map[string]bool{}
			out[table] = t
		}
		t[id] = true
	}
	for table, rows := range d.rows {
		s := specByName[table]
		old := prev.rows[table]
		if table == nbdb.ACLTable && d.gen != 0 && prev.gen == d.gen-1 && d.aclDelta != nil {
			// Consecutive renderings of one Renderer share every group
			// ACL row outside aclDelta: visit only the rows that may
			// differ. Removed ones are among them too.
			ids := maps.Clone(d.aclDelta)
			for id := range prev.aclOther {
				ids[id] = true
			}
			for id := range d.aclOther {
				ids[id] = true
			}
			for id := range ids {
				r, o := rows[id], old[id]
				switch {
				case o == r:
				case o != nil && r != nil && sameRow(s, o, r):
				default:
					mark(table, id)
				}
			}
			continue
		}
		for id, r := range rows {
			o := old[id]
			switch {
			case o == r:
			case o != nil && sameRow(s, o, r):
			default:
				mark(table, id)
			}
		}
	}
	for table, rows := range prev.rows {
		if table == nbdb.ACLTable && d.gen != 0 && prev.gen == d.gen-1 && d.aclDelta != nil {
			continue // done above
		}
		now := d.rows[table]
		for id := range rows {
			if _, ok := now[id]; !ok {
				mark(table, id)
			}
		}
	}
	return out
}

// sameRow reports whether two desired rows have the same columns and
// references (rendering lists references in a stable order).
func sameRow(s *tableSpec, a, b *Row) bool {
	if len(s.changed(a.Model, b.Model)) != 0 || len(a.Refs) != len(b.Refs) {
		return false
	}
	for col, ids := range a.Refs {
		if !slices.Equal(ids, b.Refs[col]) {
			return false
		}
	}
	return true
}

// scopeSize counts the rows of a scope.
func scopeSize(scope map[string]map[string]bool) int {
	n := 0
	for _, t := range scope {
		n += len(t)
	}
	return n
}
