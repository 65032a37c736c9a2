package apiserver

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/meridian-sdn/meridian/controller/resource"
)

// filter is a conjunction of field=value terms over top-level fields (and
// labels.<key>). Deliberately small: it covers what a compute layer asks
// ("ports of this subnet", "ports on this node") without a query language.
type filter []term

type term struct {
	field protoreflect.FieldDescriptor
	label string // for labels.<key>
	value string
}

func parseFilter(k *resource.Kind, text string) (filter, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, nil
	}
	fs := k.New().ProtoReflect().Descriptor().Fields()
	var f filter
	for _, part := range strings.Split(text, " AND ") {
		name, value, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return nil, fmt.Errorf("term %q: want field=value, terms joined by \" AND \"", part)
		}
		name, value = strings.TrimSpace(name), strings.Trim(strings.TrimSpace(value), `"`)
		if key, ok := strings.CutPrefix(name, "labels."); ok {
			f = append(f, term{field: fs.ByName("labels"), label: key, value: value})
			continue
		}
		fd := fs.ByName(protoreflect.Name(name))
		if fd == nil {
			fd = fs.ByJSONName(name)
		}
		if fd == nil || fd.Kind() == protoreflect.MessageKind || fd.IsMap() {
			return nil, fmt.Errorf("%s has no filterable field %q", k.Name, name)
		}
		f = append(f, term{field: fd, value: value})
	}
	return f, nil
}

func (f filter) match(m proto.Message) bool {
	r := m.ProtoReflect()
	for _, t := range f {
		v := r.Get(t.field)
		switch {
		case t.label != "":
			lv := v.Map().Get(protoreflect.ValueOfString(t.label).MapKey())
			if !lv.IsValid() || lv.String() != t.value {
				return false
			}
		case t.field.IsList():
			l := v.List()
			var vals []string
			for i := 0; i < l.Len(); i++ {
				vals = append(vals, scalar(t.field, l.Get(i)))
			}
			if !slices.Contains(vals, t.value) {
				return false
			}
		default:
			if !strings.EqualFold(scalar(t.field, v), t.value) {
				return false
			}
		}
	}
	return true
}

func scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return strconv.Itoa(int(v.Enum()))
	case protoreflect.StringKind:
		return v.String()
	}
	return fmt.Sprint(v.Interface())
}
