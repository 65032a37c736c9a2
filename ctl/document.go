package ctl

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"
)

// Document is one resource of a topology file.
type Document struct {
	Source string // file name, for messages
	Index  int    // 1-based position among the file's documents
	Line   int    // line where the document starts
	Kind   *kindInfo
	Name   string
	Msg    proto.Message
	// Fields is the document as a JSON object without "kind": which fields
	// it sets, down to nested rules, so apply compares only those.
	Fields map[string]any
}

// where names the document in messages: "topology.yaml: document 3 (line 25)".
func (d *Document) where() string {
	return fmt.Sprintf("%s: document %d (line %d)", d.Source, d.Index, d.Line)
}

// rawDoc is one YAML document of a multi-document stream.
type rawDoc struct {
	index, line int
	text        []byte
}

// splitDocuments splits a YAML stream at "---" lines. Documents that are
// empty or only comments are skipped and not counted, so "document 3" is
// the third resource in the file; the line number pins it down exactly.
func splitDocuments(data []byte) []rawDoc {
	var docs []rawDoc
	var cur bytes.Buffer
	start, lineNo := 1, 0
	flush := func() {
		if hasContent(cur.Bytes()) {
			docs = append(docs, rawDoc{index: len(docs) + 1, line: start, text: append([]byte(nil), cur.Bytes()...)})
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if line == "---" || strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "---\t") {
			flush()
			start = lineNo + 1
			// "--- kind: Vpc" is legal YAML: keep what follows the marker.
			if rest := strings.TrimSpace(strings.TrimPrefix(line, "---")); rest != "" && !strings.HasPrefix(rest, "#") {
				cur.WriteString(rest + "\n")
				start = lineNo
			}
			continue
		}
		if !hasContent(cur.Bytes()) && !hasContent([]byte(line)) {
			start = lineNo + 1 // a document starts at its first real line
		}
		cur.WriteString(line + "\n")
	}
	flush()
	return docs
}

// hasContent reports whether YAML text has anything but blanks and comments.
func hasContent(b []byte) bool {
	for _, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return true
		}
	}
	return false
}

// ParseDocuments parses a topology: YAML documents, each "kind: X" plus the
// resource's fields in protojson names (camelCase or snake_case). All
// problems are reported, each naming its document, so one run finds them all.
func parseDocuments(ks kinds, source string, data []byte) ([]*Document, error) {
	var docs []*Document
	var errs []error
	seen := map[string]*Document{}
	for _, raw := range splitDocuments(data) {
		d, err := parseDocument(ks, source, raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		key := d.Kind.Name + " " + d.Name
		if prev, dup := seen[key]; dup {
			errs = append(errs, fmt.Errorf("%s: %s %s is already defined by document %d", d.where(), d.Kind.Name, d.Name, prev.Index))
			continue
		}
		seen[key] = d
		docs = append(docs, d)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(docs) == 0 {
		return nil, fmt.Errorf("%s: no documents", source)
	}
	return docs, nil
}

func parseDocument(ks kinds, source string, raw rawDoc) (*Document, error) {
	d := &Document{Source: source, Index: raw.index, Line: raw.line}
	j, err := yaml.YAMLToJSON(raw.text)
	if err != nil {
		return nil, fmt.Errorf("%s: invalid YAML: %s", d.where(), fileLines(err.Error(), raw.line))
	}
	var obj map[string]any
	if err := json.Unmarshal(j, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("%s: want a mapping with kind: and the resource's fields", d.where())
	}
	kind, _ := obj["kind"].(string)
	if kind == "" {
		return nil, fmt.Errorf("%s: missing kind: (one of %s)", d.where(), ks.names())
	}
	// Documents name kinds by message name only; the CLI's aliases are for
	// typing, and a file should read the same to every tool.
	for _, k := range ks {
		if k.Name == kind {
			d.Kind = k
		}
	}
	if d.Kind == nil {
		return nil, fmt.Errorf("%s: unknown kind %q (want one of %s)", d.where(), kind, ks.names())
	}
	delete(obj, "kind")
	m, err := decodeResource(d.Kind, obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", d.where(), d.Kind.Name, err)
	}
	d.Msg, d.Fields = m, obj
	d.Name = nameOf(m)
	if d.Name == "" {
		return nil, fmt.Errorf("%s: %s has no name: (want %s)", d.where(), d.Kind.Name, d.Kind.Pattern())
	}
	if _, _, err := d.Kind.ParseName(d.Name); err != nil {
		return nil, fmt.Errorf("%s: %w", d.where(), err)
	}
	return d, nil
}

var yamlLine = regexp.MustCompile(`\bline (\d+)`)

// fileLines rewrites the document-relative "line N" of a YAML error into a
// line of the file, which is what an editor jumps to.
func fileLines(msg string, start int) string {
	return yamlLine.ReplaceAllStringFunc(msg, func(m string) string {
		n, err := strconv.Atoi(strings.TrimPrefix(m, "line "))
		if err != nil {
			return m
		}
		return fmt.Sprintf("line %d", n+start-1)
	})
}

// decodeResource turns a JSON object into a message of kind k, rejecting
// unknown fields with their path and a suggestion.
func decodeResource(k *kindInfo, obj map[string]any) (proto.Message, error) {
	m := k.New()
	if err := checkFields(m.ProtoReflect().Descriptor(), obj, ""); err != nil {
		return nil, err
	}
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("re-encode: %w", err)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(j, m); err != nil {
		// protojson's positions refer to the re-encoded JSON, not the YAML.
		msg := err.Error()
		if i := strings.Index(msg, "): "); strings.HasPrefix(msg, "proto:") && i > 0 {
			msg = msg[i+3:]
		}
		return nil, errors.New(msg)
	}
	return m, nil
}

func nameOf(m proto.Message) string {
	fd := m.ProtoReflect().Descriptor().Fields().ByName("name")
	return m.ProtoReflect().Get(fd).String()
}

// lookupField finds a field by JSON name or proto name, as protojson does.
func lookupField(md protoreflect.MessageDescriptor, key string) protoreflect.FieldDescriptor {
	if fd := md.Fields().ByJSONName(key); fd != nil {
		return fd
	}
	return md.Fields().ByTextName(key)
}

// checkFields reports the first unknown field in obj, recursing into
// nested messages and lists of them (rules, routes, dhcp).
func checkFields(md protoreflect.MessageDescriptor, obj map[string]any, path string) error {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		fd := lookupField(md, key)
		if fd == nil {
			msg := fmt.Sprintf("unknown field %q", path+key)
			if s := suggest(md, key); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			return errors.New(msg)
		}
		if fd.Message() == nil || fd.IsMap() || strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.") {
			continue
		}
		switch v := obj[key].(type) {
		case map[string]any:
			if err := checkFields(fd.Message(), v, path+key+"."); err != nil {
				return err
			}
		case []any:
			for i, e := range v {
				if em, ok := e.(map[string]any); ok {
					if err := checkFields(fd.Message(), em, fmt.Sprintf("%s%s[%d].", path, key, i)); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// suggest finds the field a misspelt key probably meant.
func suggest(md protoreflect.MessageDescriptor, key string) string {
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	best, bestDist := "", 3
	for i := 0; i < md.Fields().Len(); i++ {
		name := md.Fields().Get(i).JSONName()
		if d := editDistance(norm(key), norm(name)); d < bestDist {
			best, bestDist = name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// orderDocuments sorts documents into dependency order, keeping file order
// within a kind; reverse it for deletion.
func orderDocuments(docs []*Document) []*Document {
	out := append([]*Document(nil), docs...)
	sort.SliceStable(out, func(i, j int) bool { return order(out[i].Kind) < order(out[j].Kind) })
	return out
}
