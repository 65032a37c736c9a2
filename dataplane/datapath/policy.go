package datapath

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/meridian-sdn/meridian/bpf"
	"github.com/meridian-sdn/meridian/fw"
)

// Policy tables are replaced by "write the new entries, then delete what is
// no longer wanted": a packet in between sees the old or the new entry for
// each key, never a gap for a key present in both. Identities are stable
// across compilations (fw), so unchanged rules keep their keys.

func sgKey(e fw.SGEntry) bpf.MeridianSgKey {
	return bpf.MeridianSgKey{Policy: e.Policy, Identity: e.Identity, Dir: uint8(e.Direction), Proto: e.Protocol}
}

func sgValue(e fw.SGEntry) (bpf.MeridianSgValue, error) {
	v := bpf.MeridianSgValue{Rule: e.Rule, PortSet: e.PortSet, Nranges: uint16(len(e.Spans))}
	if len(e.Spans) > len(v.Lo) {
		return v, fmt.Errorf("%d port spans inline, the data path holds %d", len(e.Spans), len(v.Lo))
	}
	for i, s := range e.Spans {
		v.Lo[i], v.Hi[i] = s.Lo, s.Hi
	}
	return v, nil
}

func sgPortKey(e fw.SGPortSetEntry) bpf.MeridianSgPortKey {
	return bpf.MeridianSgPortKey{Prefixlen: 64 + uint32(e.Port.Bits), Policy: e.Policy, Set: e.Set,
		Port: [2]byte{byte(e.Port.Value >> 8), byte(e.Port.Value)}}
}

// ApplySecurityGroups makes the installed security-group state of c.VPC and
// of the policies in c equal to c.
func (d *Datapath) ApplySecurityGroups(c *fw.CompiledSG) error {
	m := &d.objs.MeridianMaps
	// Port sets before the entries that refer to them.
	wantSet := make(map[bpf.MeridianSgPortKey]bool, len(c.PortSets))
	for _, e := range c.PortSets {
		k := sgPortKey(e)
		wantSet[k] = true
		if err := m.SgPorts.Update(k, uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("apply security groups of vpc %d: policy %d port set %d: %w", c.VPC, e.Policy, e.Set, err)
		}
	}
	wantSG := make(map[bpf.MeridianSgKey]bool, len(c.Entries))
	for _, e := range c.Entries {
		k := sgKey(e)
		wantSG[k] = true
		v, err := sgValue(e)
		if err != nil {
			return fmt.Errorf("apply security groups of vpc %d: policy %d: %w", c.VPC, e.Policy, err)
		}
		if err := m.SgPolicy.Update(k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("apply security groups of vpc %d: policy %d entry: %w", c.VPC, e.Policy, err)
		}
	}
	// Identities last: entries for new identities exist before any address
	// maps to them.
	if err := d.writeIPCache(c.VPC, c.IPIntervals()); err != nil {
		return fmt.Errorf("apply security groups of vpc %d: %w", c.VPC, err)
	}
	if err := deleteWhere(m.SgPolicy, func(k bpf.MeridianSgKey) bool {
		_, ours := slices.BinarySearch(c.Policies, k.Policy)
		return ours && !wantSG[k]
	}); err != nil {
		return fmt.Errorf("apply security groups of vpc %d: prune policies: %w", c.VPC, err)
	}
	if err := deleteWhere(m.SgPorts, func(k bpf.MeridianSgPortKey) bool {
		_, ours := slices.BinarySearch(c.Policies, k.Policy)
		return ours && !wantSet[k]
	}); err != nil {
		return fmt.Errorf("apply security groups of vpc %d: prune port sets: %w", c.VPC, err)
	}
	return nil
}

// DeleteSecurityGroupPolicy removes every entry of a policy.
func (d *Datapath) DeleteSecurityGroupPolicy(id uint32) error {
	if err := deleteWhere(d.objs.SgPolicy, func(k bpf.MeridianSgKey) bool { return k.Policy == id }); err != nil {
		return fmt.Errorf("delete security-group policy %d: %w", id, err)
	}
	if err := deleteWhere(d.objs.SgPorts, func(k bpf.MeridianSgPortKey) bool { return k.Policy == id }); err != nil {
		return fmt.Errorf("delete port sets of security-group policy %d: %w", id, err)
	}
	return nil
}

// DeleteSecurityGroupsOfVPC removes the remote-address identities of a VPC
// (its policies are deleted one by one).
func (d *Datapath) DeleteSecurityGroupsOfVPC(vpc uint32) error {
	if err := deleteIgnoreMissing(d.objs.IpcacheVpcs, vpc); err != nil {
		return fmt.Errorf("delete security groups of vpc %d: %w", vpc, err)
	}
	return nil
}

// writeIPCache stores a VPC's intervals in a free slice of ipcache_slots and
// then points the VPC at it in one map update, so packets see the old
// slice or the new one, never a half-written one. The old slice becomes
// free by no longer being referenced: the allocator's state is the
// ipcache_vpcs map itself, which survives agent restarts. A single writer
// (the agent) is assumed.
func (d *Datapath) writeIPCache(vpc uint32, ivs []fw.IPInterval) error {
	m := &d.objs.MeridianMaps
	capacity := m.IpcacheSlots.MaxEntries()
	type extent struct{ off, end uint32 }
	var used []extent
	var k uint32
	var r bpf.MeridianIpcacheRange
	it := m.IpcacheVpcs.Iterate()
	for it.Next(&k, &r) {
		used = append(used, extent{r.Offset, r.Offset + r.Count})
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list ipcache slices: %w", err)
	}
	slices.SortFunc(used, func(a, b extent) int { return cmp.Compare(a.off, b.off) })
	need := uint32(len(ivs))
	off, found := uint32(0), false
	for _, u := range used {
		if u.off >= off+need {
			found = true
			break
		}
		off = max(off, u.end)
	}
	if !found && off+need > capacity {
		return fmt.Errorf("ipcache full: %d intervals do not fit in %d slots", need, capacity)
	}
	for i, iv := range ivs {
		slot := bpf.MeridianIpcacheSlot{Start: iv.Start, Identity: iv.Identity}
		if err := m.IpcacheSlots.Update(off+uint32(i), &slot, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write ipcache slot %d: %w", off+uint32(i), err)
		}
	}
	if err := m.IpcacheVpcs.Update(vpc, bpf.MeridianIpcacheRange{Offset: off, Count: need}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("publish ipcache slice: %w", err)
	}
	return nil
}

func bitmap(b fw.Bitmap) bpf.MeridianAclBitmap { return bpf.MeridianAclBitmap{W: b} }

// ApplyACL makes the installed state of ACL c.ID equal to c.
func (d *Datapath) ApplyACL(c *fw.CompiledACL) error {
	m := &d.objs.MeridianMaps
	wantInterval := map[bpf.MeridianAclIntervalKey]bool{}
	wantProto := map[bpf.MeridianAclProtoKey]bool{}
	wantRule := map[bpf.MeridianAclRuleKey]bool{}
	// Bitmaps and rules first, then the interval tables that index them.
	for _, dir := range c.Directions {
		for field, iv := range map[uint32]fw.ACLIntervals{aclFieldIP: dir.IPs, aclFieldPort: dir.Ports} {
			for i, rules := range iv.Rules {
				k := bpf.MeridianAclIntervalKey{Acl: c.ID, Dir: uint32(dir.Direction), Field: field, Index: uint32(i)}
				wantInterval[k] = true
				if err := m.AclIntervals.Update(k, bitmap(rules), ebpf.UpdateAny); err != nil {
					return fmt.Errorf("apply acl %d: interval %d of field %d: %w", c.ID, i, field, err)
				}
			}
		}
	}
	for _, e := range c.Protocols {
		k := bpf.MeridianAclProtoKey{Acl: c.ID, Dir: uint32(e.Direction), Proto: uint32(e.Protocol)}
		wantProto[k] = true
		if err := m.AclProto.Update(k, bitmap(e.Rules), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("apply acl %d: protocol %d: %w", c.ID, e.Protocol, err)
		}
	}
	for _, e := range c.Rules {
		k := bpf.MeridianAclRuleKey{Acl: c.ID, Dir: uint32(e.Direction), Index: e.Index}
		wantRule[k] = true
		if err := m.AclRules.Update(k, bpf.MeridianAclRule{Rule: e.Rule, Allow: uint32(e.Action)}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("apply acl %d: rule %d: %w", c.ID, e.Rule, err)
		}
	}
	for _, dir := range c.Directions {
		var meta bpf.MeridianAclMeta
		if len(dir.IPs.Starts) > len(meta.IpStart) || len(dir.Ports.Starts) > len(meta.PortStart) {
			return fmt.Errorf("apply acl %d: %d address and %d port intervals, the data path holds %d",
				c.ID, len(dir.IPs.Starts), len(dir.Ports.Starts), len(meta.IpStart))
		}
		meta.N_ip, meta.N_port = uint32(len(dir.IPs.Starts)), uint32(len(dir.Ports.Starts))
		copy(meta.IpStart[:], dir.IPs.Starts)
		for i, s := range dir.Ports.Starts {
			meta.PortStart[i] = uint16(s)
		}
		k := bpf.MeridianAclKey{Acl: c.ID, Dir: uint32(dir.Direction)}
		if err := m.AclMetas.Update(k, &meta, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("apply acl %d: %v intervals: %w", c.ID, dir.Direction, err)
		}
	}
	return d.pruneACL(c.ID, wantInterval, wantProto, wantRule)
}

// DeleteACL removes an ACL. Subnets still naming it deny everything.
func (d *Datapath) DeleteACL(id uint32) error {
	m := &d.objs.MeridianMaps
	if err := deleteWhere(m.AclMetas, func(k bpf.MeridianAclKey) bool { return k.Acl == id }); err != nil {
		return fmt.Errorf("delete acl %d: %w", id, err)
	}
	return d.pruneACL(id, nil, nil, nil)
}

func (d *Datapath) pruneACL(id uint32, interval map[bpf.MeridianAclIntervalKey]bool, proto map[bpf.MeridianAclProtoKey]bool,
	rule map[bpf.MeridianAclRuleKey]bool) error {
	m := &d.objs.MeridianMaps
	if err := deleteWhere(m.AclIntervals, func(k bpf.MeridianAclIntervalKey) bool { return k.Acl == id && !interval[k] }); err != nil {
		return fmt.Errorf("prune acl %d intervals: %w", id, err)
	}
	if err := deleteWhere(m.AclProto, func(k bpf.MeridianAclProtoKey) bool { return k.Acl == id && !proto[k] }); err != nil {
		return fmt.Errorf("prune acl %d protocols: %w", id, err)
	}
	if err := deleteWhere(m.AclRules, func(k bpf.MeridianAclRuleKey) bool { return k.Acl == id && !rule[k] }); err != nil {
		return fmt.Errorf("prune acl %d rules: %w", id, err)
	}
	return nil
}

// deleteWhere deletes the keys of m selected by stale. Keys are collected
// first: deleting while iterating restarts iteration on hash maps.
func deleteWhere[K comparable](m *ebpf.Map, stale func(K) bool) error {
	var keys []K
	var k K
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, v) {
		if stale(k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %v: %w", m, err)
	}
	for _, k := range keys {
		if err := deleteIgnoreMissing(m, k); err != nil {
			return fmt.Errorf("delete from %v: %w", m, err)
		}
	}
	return nil
}
