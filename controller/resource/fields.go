package resource

import (
	"strings"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// FieldName is the snake_case field name under which requests carry a
// resource of the kind ("security_group").
func FieldName(k *Kind) string {
	var b strings.Builder
	for i, c := range k.Name {
		if c >= 'A' && c <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			c += 'a' - 'A'
		}
		b.WriteRune(c)
	}
	return b.String()
}

// outputOnly are fields the server computes; input values are ignored.
var outputOnly = []protoreflect.Name{"etag", "create_time", "update_time", "id", "vni", "status", "usage", "available_ips", "source_dest_check", "password_set"}

// ClearOutputOnly drops the output-only fields of a resource, including the
// IDs of its rules, so a client cannot choose what the server assigns.
// The etag is kept: it is the client's precondition.
func ClearOutputOnly(m proto.Message) {
	r := m.ProtoReflect()
	fs := r.Descriptor().Fields()
	for _, n := range outputOnly {
		if n == "etag" {
			continue
		}
		if f := fs.ByName(n); f != nil {
			r.Clear(f)
		}
	}
	if r.Descriptor().Name() == "NetworkAcl" {
		r.Clear(fs.ByName("subnets"))
	}
	if lb, ok := m.(*v1.LoadBalancer); ok {
		// Listener and backend IDs are the server's: it keeps them across
		// updates by matching names and ports, never by trusting input.
		for _, l := range lb.GetListeners() {
			l.Id = 0
			for _, b := range l.GetBackends() {
				b.Id = 0
			}
		}
	}
	if f := fs.ByName("rules"); f != nil {
		l := r.Get(f).List()
		for i := 0; i < l.Len(); i++ {
			rule := l.Get(i).Message()
			rule.Clear(rule.Descriptor().Fields().ByName("id"))
		}
	}
}

// IsOutputOnly reports whether a top-level field of the kind is computed by
// the server.
func IsOutputOnly(k *Kind, field string) bool {
	for _, n := range outputOnly {
		if string(n) == field {
			return true
		}
	}
	return k == KindNetworkAcl && field == "subnets"
}

// CopyFields sets the named top-level fields of dst to their values in src
// (clearing those unset in src): the semantics of an update mask.
func CopyFields(dst, src proto.Message, paths []string) {
	d, s := dst.ProtoReflect(), src.ProtoReflect()
	fs := d.Descriptor().Fields()
	for _, p := range paths {
		f := fs.ByName(protoreflect.Name(p))
		if f == nil {
			f = fs.ByJSONName(p)
		}
		if f == nil {
			continue
		}
		if s.Has(f) {
			d.Set(f, s.Get(f))
		} else {
			d.Clear(f)
		}
	}
}

// NormalizePaths turns field-mask paths given as JSON names ("cidrBlocks",
// as grpc-gateway and JSON clients send them) into proto names.
func NormalizePaths(k *Kind, paths []string) []string {
	fs := k.New().ProtoReflect().Descriptor().Fields()
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		if f := fs.ByJSONName(p); f != nil && fs.ByName(protoreflect.Name(p)) == nil {
			p = string(f.Name())
		}
		out = append(out, p)
	}
	return out
}
