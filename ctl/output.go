package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"
)

// Output formats of -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

func checkFormat(f string) error {
	switch f {
	case formatTable, formatJSON, formatYAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q (want table, json or yaml)", f)
}

var jsonOpts = protojson.MarshalOptions{Multiline: true, Indent: "  "}

// printResources prints resources of one kind; single means a get/create
// result, printed as an object rather than a list in json and yaml.
func printResources(w io.Writer, format string, k *kindInfo, items []proto.Message, single bool) error {
	switch format {
	case formatJSON, formatYAML:
		raw := make([]json.RawMessage, len(items))
		for i, m := range items {
			b, err := protojson.Marshal(m)
			if err != nil {
				return fmt.Errorf("encode %s: %w", k.Name, err)
			}
			raw[i] = b
		}
		var v any = raw
		if single && len(raw) == 1 {
			v = raw[0]
		}
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		if format == formatYAML {
			if b, err = yaml.JSONToYAML(b); err != nil {
				return fmt.Errorf("encode output as YAML: %w", err)
			}
			_, err = w.Write(b)
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	default:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		hdr := []string{"NAME"}
		for _, c := range k.Columns {
			hdr = append(hdr, c.Header)
		}
		fmt.Fprintln(tw, strings.Join(hdr, "\t"))
		for _, m := range items {
			row := []string{fieldText(m.ProtoReflect(), "name", false)}
			for _, c := range k.Columns {
				row = append(row, fieldText(m.ProtoReflect(), c.Path, c.Count))
			}
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if single && len(items) == 1 && k.Detail != nil {
			fmt.Fprintln(w)
			return k.Detail(w, items[0])
		}
		return nil
	}
}

// printMessage prints any message (whoami, audit records) as json or yaml.
func printMessage(w io.Writer, format string, m proto.Message) error {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	if format == formatYAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return fmt.Errorf("encode output as YAML: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// fieldText renders the field at a dotted path for a table cell: lists are
// joined with commas (or counted), enums by name, unset values as "-".
func fieldText(m protoreflect.Message, path string, count bool) string {
	parts := strings.Split(path, ".")
	for i, p := range parts {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(p))
		if fd == nil {
			return "?"
		}
		if i < len(parts)-1 {
			if fd.Message() == nil || !m.Has(fd) {
				return "-"
			}
			m = m.Get(fd).Message()
			continue
		}
		v := m.Get(fd)
		switch {
		case fd.IsList():
			if count {
				return fmt.Sprint(v.List().Len())
			}
			var s []string
			for j := 0; j < v.List().Len(); j++ {
				s = append(s, scalarText(fd, v.List().Get(j)))
			}
			if len(s) == 0 {
				return "-"
			}
			return strings.Join(s, ",")
		case fd.IsMap():
			var s []string
			v.Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				s = append(s, k.String()+"="+v.String())
				return true
			})
			sort.Strings(s)
			if len(s) == 0 {
				return "-"
			}
			return strings.Join(s, ",")
		default:
			// Unset text is "-"; numbers and booleans print even when zero,
			// since 0 available IPs or "false" are facts, not absences.
			if !m.Has(fd) && (fd.Kind() == protoreflect.StringKind || fd.Message() != nil) {
				return "-"
			}
			return scalarText(fd, v)
		}
	}
	return "-"
}

func scalarText(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	if fd.Kind() == protoreflect.EnumKind {
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			// PORT_STATE_ACTIVE reads as ACTIVE in a column headed STATE.
			return strings.TrimPrefix(string(ev.Name()), enumPrefix(fd.Enum()))
		}
		return fmt.Sprint(v.Enum())
	}
	if fd.Message() != nil {
		b, err := protojson.Marshal(v.Message().Interface())
		if err != nil {
			return "?"
		}
		return string(b)
	}
	return v.String()
}

// enumPrefix is the conventional value prefix of an enum: "PORT_STATE_"
// for PortState.
func enumPrefix(ed protoreflect.EnumDescriptor) string {
	var b strings.Builder
	for i, r := range string(ed.Name()) {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String()) + "_"
}
