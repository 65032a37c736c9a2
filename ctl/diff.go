package ctl

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// outputOnly reports whether the server owns a field, so apply neither
// compares nor sends it. "id" is output-only wherever it appears (resources
// and rules alike); NetworkAcl.subnets is derived from the subnets.
func outputOnly(fd protoreflect.FieldDescriptor) bool {
	switch fd.Name() {
	case "etag", "create_time", "update_time", "id", "vni", "status", "usage", "available_ips", "password_set":
		return true
	}
	return fd.FullName() == "meridian.v1.NetworkAcl.subnets"
}

// diffFields returns, in field order, the proto names of the top-level
// fields that the document sets (keys of fields) and whose value differs in
// cur. Those names are the update mask.
//
// Nested messages, including list elements such as rules, are compared by
// the keys the document sets in them too: the server fills defaults
// (DHCP lease time, output-only rule IDs) that a document rightly omits, and
// treating those as differences would make apply never converge. Lists
// must have the same length, and maps (labels) must be equal as a whole, so
// removing a rule or a label is a change.
func diffFields(doc, cur proto.Message, fields map[string]any) []string {
	dm, cm := doc.ProtoReflect(), cur.ProtoReflect()
	md := dm.Descriptor()
	var changed []string
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		if fd.Name() == "name" || outputOnly(fd) {
			continue
		}
		node, set := keyOf(fields, fd)
		if !set {
			continue
		}
		if fd.FullName() == "meridian.v1.BgpPeer.password" {
			// Write-only: the server never returns it, only whether one is
			// set. apply sets or clears it; changing one that is set takes
			// "bgp-peer update --mask password".
			if (dm.Get(fd).String() != "") != cm.Get(cm.Descriptor().Fields().ByName("password_set")).Bool() {
				changed = append(changed, string(fd.Name()))
			}
			continue
		}
		if !fieldEqual(fd, dm, cm, node) {
			changed = append(changed, string(fd.Name()))
		}
	}
	return changed
}

// keyOf finds the document's value for fd under either of its JSON names.
func keyOf(fields map[string]any, fd protoreflect.FieldDescriptor) (any, bool) {
	if v, ok := fields[fd.JSONName()]; ok {
		return v, true
	}
	v, ok := fields[string(fd.Name())]
	return v, ok
}

// fieldEqual compares field fd of doc and cur; node is the document's JSON
// for that field, which says which nested fields matter.
func fieldEqual(fd protoreflect.FieldDescriptor, doc, cur protoreflect.Message, node any) bool {
	switch {
	case fd.IsMap():
		return doc.Get(fd).Equal(cur.Get(fd))
	case fd.IsList():
		dl, cl := doc.Get(fd).List(), cur.Get(fd).List()
		if dl.Len() != cl.Len() {
			return false
		}
		elems, _ := node.([]any)
		for i := 0; i < dl.Len(); i++ {
			if fd.Message() == nil {
				if !dl.Get(i).Equal(cl.Get(i)) {
					return false
				}
				continue
			}
			var sub map[string]any
			if i < len(elems) {
				sub, _ = elems[i].(map[string]any)
			}
			if !messageEqual(dl.Get(i).Message(), cl.Get(i).Message(), sub) {
				return false
			}
		}
		return true
	case fd.Message() != nil:
		sub, ok := node.(map[string]any)
		if !ok { // null or a well-known type written as a scalar
			return doc.Has(fd) == cur.Has(fd) && doc.Get(fd).Equal(cur.Get(fd))
		}
		return messageEqual(doc.Get(fd).Message(), cur.Get(fd).Message(), sub)
	default:
		if fd.HasPresence() && doc.Has(fd) != cur.Has(fd) {
			return false // optional icmp_type: unset differs from 0
		}
		return doc.Get(fd).Equal(cur.Get(fd))
	}
}

// messageEqual compares the fields of a nested message that keys sets.
func messageEqual(doc, cur protoreflect.Message, keys map[string]any) bool {
	md := doc.Descriptor()
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		if outputOnly(fd) {
			continue
		}
		node, set := keyOf(keys, fd)
		if !set {
			continue
		}
		if !fieldEqual(fd, doc, cur, node) {
			return false
		}
	}
	return true
}
