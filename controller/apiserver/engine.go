package apiserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// Store keys the server keeps beside the resources themselves. They are
// written in the same transaction as the resource, so they can never
// disagree with it.
const (
	refPrefix   = "ref/"   // ref/<target>|<referrer>: who uses what, to refuse deletes
	countPrefix = "cnt/"   // cnt/<project>/<Kind>: resources per project, for quotas
	auditPrefix = "audit/" // audit/<seq>: one record per mutation
	auditSeqKey = "seq/audit"
)

// errValidateOnly aborts the transaction of a validate_only request after
// every check passed, so nothing is written.
var errValidateOnly = errors.New("validate only")

// txc is what the per-kind hooks get: the transaction and the caller.
type txc struct {
	s   *Server
	tx  store.Tx
	id  *auth.Identity
	vs  violations
	now *timestamppb.Timestamp
}

// load reads and decodes a resource; ok=false if it does not exist.
func load(tx store.ReadTx, k *resource.Kind, name string) (proto.Message, int64, bool, error) {
	kv, ok, err := tx.Get(k.Key(name))
	if err != nil || !ok {
		return nil, 0, false, err
	}
	m := k.New()
	if err := proto.Unmarshal(kv.Value, m); err != nil {
		return nil, 0, false, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	resource.SetEtag(m, strconv.FormatInt(kv.ModRevision, 10))
	return m, kv.ModRevision, true, nil
}

func put(tx store.Tx, k *resource.Kind, m proto.Message) error {
	m = proto.Clone(m)
	resource.SetEtag(m, "") // the etag is the key's revision, not stored data
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", resource.Name(m), err)
	}
	return tx.Put(k.Key(resource.Name(m)), b)
}

// target says what authorisation needs to know about a resource name: its
// project and that project's organisation (looked up in the store).
func target(tx store.ReadTx, k *resource.Kind, name string, obj proto.Message) (auth.Target, error) {
	t := auth.Target{Kind: k.Name}
	switch k {
	case resource.KindNode, resource.KindPublicAddressPool, resource.KindBgpPeer:
		return t, nil
	case resource.KindProject:
		t.Project = name
		if p, ok := obj.(*v1.Project); ok && p != nil && p.Organization != "" {
			t.Organization = p.Organization
			return t, nil
		}
	default:
		t.Project = resource.ProjectOf(name)
	}
	if t.Project == "" {
		return t, nil
	}
	p, _, ok, err := load(tx, resource.KindProject, t.Project)
	if err != nil {
		return t, err
	}
	if ok {
		t.Organization = p.(*v1.Project).Organization
	}
	return t, nil
}

func identity(ctx context.Context) (*auth.Identity, error) {
	id, ok := auth.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no identity")
	}
	return id, nil
}

func (s *Server) create(ctx context.Context, k *resource.Kind, parent, id string, in proto.Message, validateOnly bool) (proto.Message, error) {
	caller, err := identity(ctx)
	if err != nil {
		return nil, err
	}
	snake := resource.FieldName(k)
	var vs violations
	if in == nil || !in.ProtoReflect().IsValid() {
		vs.add(snake, "is required")
	}
	if err := resource.ValidID(id); err != nil {
		vs.add(snake+"_id", "%v", err)
	}
	if k.Parent == nil && parent != "" {
		vs.add("parent", "%s is a top-level collection: leave parent empty", k.Collection)
	}
	if k.Parent != nil {
		if _, _, err := k.Parent.ParseName(parent); err != nil {
			vs.add("parent", "%v", err)
		}
	}
	if !vs.empty() {
		return nil, vs.err()
	}
	name := k.NameOf(parent, id)
	var out proto.Message
	_, err = s.st.Update(ctx, func(tx store.Tx) error {
		obj := proto.Clone(in)
		resource.ClearOutputOnly(obj)
		resource.SetName(obj, name)
		t, err := target(tx, k, name, obj)
		if err != nil {
			return err
		}
		t.QuotaChange = k == resource.KindProject && obj.(*v1.Project).Quota != nil
		if err := auth.Authorize(caller, auth.VerbCreate, t); err != nil {
			return err
		}
		if _, ok, err := tx.Get(k.Key(name)); err != nil {
			return err
		} else if ok {
			return status.Errorf(codes.AlreadyExists, "%s %q already exists", k.Name, name)
		}
		if k.Parent != nil {
			if _, _, ok, err := load(tx, k.Parent, parent); err != nil {
				return err
			} else if !ok {
				return notFound(k.Parent.Name, parent)
			}
		}
		c := &txc{s: s, tx: tx, id: caller, now: timestamppb.New(s.now())}
		if err := s.checkQuota(c, k, t.Project); err != nil {
			return err
		}
		if err := s.write(c, k, t.Project, parent, nil, obj); err != nil {
			return err
		}
		out = obj
		if validateOnly {
			return errValidateOnly
		}
		return nil
	})
	return s.finish(ctx, k, name, out, err)
}

func (s *Server) get(ctx context.Context, k *resource.Kind, name string) (proto.Message, error) {
	caller, err := identity(ctx)
	if err != nil {
		return nil, err
	}
	if _, _, err := k.ParseName(name); err != nil {
		return nil, invalid("name", "%v", err)
	}
	var out proto.Message
	err = s.st.View(ctx, func(tx store.ReadTx) error {
		t, err := target(tx, k, name, nil)
		if err != nil {
			return err
		}
		if err := auth.Authorize(caller, auth.VerbGet, t); err != nil {
			return err
		}
		m, _, ok, err := load(tx, k, name)
		if err != nil {
			return err
		}
		if !ok {
			return notFound(k.Name, name)
		}
		if d := s.hooks[k].decorate; d != nil {
			if err := d(s, tx, m); err != nil {
				return err
			}
		}
		out = m
		return nil
	})
	return out, toStatus(err)
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func (s *Server) list(ctx context.Context, k *resource.Kind, parent string, pageSize int32, pageToken, filterText string) (items []proto.Message, next string, rev int64, err error) {
	caller, err := identity(ctx)
	if err != nil {
		return nil, "", 0, err
	}
	var vs violations
	if k.Parent == nil && parent != "" {
		vs.add("parent", "%s is a top-level collection: leave parent empty", k.Collection)
	}
	if k.Parent != nil {
		if _, _, err := k.Parent.ParseName(parent); err != nil {
			vs.add("parent", "%v", err)
		}
	}
	if pageSize < 0 {
		vs.add("page_size", "must not be negative")
	}
	f, ferr := parseFilter(k, filterText)
	if ferr != nil {
		vs.add("filter", "%v", ferr)
	}
	prefix := k.Prefix() + k.NameOf(parent, "")
	after := ""
	if pageToken != "" {
		b, derr := base64.RawURLEncoding.DecodeString(pageToken)
		if derr != nil || !strings.HasPrefix(string(b), prefix) {
			vs.add("page_token", "is not a page token of this listing")
		}
		after = string(b)
	}
	if !vs.empty() {
		return nil, "", 0, vs.err()
	}
	switch {
	case pageSize == 0:
		pageSize = defaultPageSize
	case pageSize > maxPageSize:
		pageSize = maxPageSize
	}
	err = s.st.View(ctx, func(tx store.ReadTx) error {
		rev = tx.Revision()
		var t auth.Target
		if parent != "" {
			var err error
			if t, err = target(tx, k, parent+"/x", nil); err != nil {
				return err
			}
		} else {
			t = auth.Target{Kind: k.Name}
		}
		if err := auth.Authorize(caller, auth.VerbList, t); err != nil {
			return err
		}
		for {
			kvs, err := tx.List(prefix, after, int(pageSize)+1)
			if err != nil {
				return err
			}
			for _, kv := range kvs {
				if len(items) == int(pageSize) {
					next = base64.RawURLEncoding.EncodeToString([]byte(after))
					return nil
				}
				after = kv.Key
				m := k.New()
				if err := proto.Unmarshal(kv.Value, m); err != nil {
					return fmt.Errorf("decode %s: %w", kv.Key, err)
				}
				resource.SetEtag(m, strconv.FormatInt(kv.ModRevision, 10))
				if p, ok := m.(*v1.Project); ok && !auth.CanSee(caller, p.Name, p.Organization) {
					continue
				}
				if d := s.hooks[k].decorate; d != nil {
					if err := d(s, tx, m); err != nil {
						return err
					}
				}
				if !f.match(m) {
					continue
				}
				items = append(items, m)
			}
			if len(kvs) <= int(pageSize) {
				return nil
			}
		}
	})
	return items, next, rev, toStatus(err)
}

func (s *Server) update(ctx context.Context, k *resource.Kind, in proto.Message, mask []string, validateOnly bool) (proto.Message, error) {
	caller, err := identity(ctx)
	if err != nil {
		return nil, err
	}
	snake := resource.FieldName(k)
	if in == nil || !in.ProtoReflect().IsValid() {
		return nil, invalid(snake, "is required")
	}
	name := resource.Name(in)
	parent, _, err := k.ParseName(name)
	if err != nil {
		return nil, invalid(snake+".name", "%v", err)
	}
	h := s.hooks[k]
	explicit := len(mask) > 0
	mask = resource.NormalizePaths(k, mask)
	// name and etag identify the resource and carry the precondition; they
	// are never updated. grpc-gateway derives a PATCH's mask from the JSON
	// body, so a body carrying its etag (as the API asks) puts "etag" in it.
	mask = slices.DeleteFunc(mask, func(p string) bool { return p == "etag" || p == "name" })
	if len(mask) == 0 && !explicit {
		// Write-only fields read back empty: a read-modify-write with an
		// empty mask must not clear them.
		mask = slices.DeleteFunc(slices.Clone(h.mutable), func(p string) bool { return slices.Contains(h.explicitOnly, p) })
	}
	var vs violations
	for _, p := range mask {
		if !slices.Contains(h.mutable, p) {
			vs.add("update_mask", "field %q of %s cannot be updated (immutable or output only); updatable: %s", p, k.Name, strings.Join(h.mutable, ", "))
		}
	}
	if !vs.empty() {
		return nil, vs.err()
	}
	var out proto.Message
	_, err = s.st.Update(ctx, func(tx store.Tx) error {
		old, rev, ok, err := load(tx, k, name)
		if err != nil {
			return err
		}
		t, err := target(tx, k, name, nil)
		if err != nil {
			return err
		}
		// ok first: old is nil for a missing project, and the assertion
		// below would panic (and take the whole process down with it).
		t.QuotaChange = ok && k == resource.KindProject && slices.Contains(mask, "quota") &&
			!proto.Equal(old.(*v1.Project).GetQuota(), in.(*v1.Project).GetQuota())
		if err := auth.Authorize(caller, auth.VerbUpdate, t); err != nil {
			return err
		}
		if !ok {
			return notFound(k.Name, name)
		}
		if err := checkEtag(resource.Etag(in), rev, name); err != nil {
			return err
		}
		src := proto.Clone(in)
		resource.ClearOutputOnly(src)
		obj := proto.Clone(old)
		resource.CopyFields(obj, src, mask)
		if h.echo != nil {
			h.echo(in, old, obj)
		}
		if proto.Equal(obj, old) {
			out = old // nothing changes: no write, no revision, no audit record
			return nil
		}
		c := &txc{s: s, tx: tx, id: caller, now: timestamppb.New(s.now())}
		if err := s.write(c, k, t.Project, parent, old, obj); err != nil {
			return err
		}
		out = obj
		if validateOnly {
			return errValidateOnly
		}
		return nil
	})
	return s.finish(ctx, k, name, out, err)
}

// write is what create and update share once the caller is authorised:
// the kind's validation and allocations, then the resource with its
// reference index, quota counter and audit record, in the caller's
// transaction. old is nil for a create.
func (s *Server) write(c *txc, k *resource.Kind, project, parent string, old, obj proto.Message) error {
	h := s.hooks[k]
	if err := h.prepare(c, old, obj); err != nil {
		return err
	}
	if err := c.vs.err(); err != nil {
		return err
	}
	setTimes(obj, c.now, old == nil)
	if err := put(c.tx, k, obj); err != nil {
		return err
	}
	name := resource.Name(obj)
	method, before := "Create", []string(nil)
	if old != nil {
		method, before = "Update", h.references(old, parent)
	}
	if err := s.updateRefs(c, name, before, h.references(obj, parent)); err != nil {
		return err
	}
	if old == nil {
		if err := s.count(c, k, project, +1); err != nil {
			return err
		}
	}
	return s.audit(c, method+k.Name, name, project, old, obj)
}

// finish turns a mutation's transaction result into the API's answer: the
// would-be resource for validate_only, else the stored one as a Get sees it.
func (s *Server) finish(ctx context.Context, k *resource.Kind, name string, out proto.Message, err error) (proto.Message, error) {
	if errors.Is(err, errValidateOnly) {
		redact(out)
		return out, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return s.get(ctx, k, name)
}

func (s *Server) delete(ctx context.Context, k *resource.Kind, name, etag string, validateOnly bool) error {
	caller, err := identity(ctx)
	if err != nil {
		return err
	}
	parent, _, err := k.ParseName(name)
	if err != nil {
		return invalid("name", "%v", err)
	}
	h := s.hooks[k]
	_, err = s.st.Update(ctx, func(tx store.Tx) error {
		t, err := target(tx, k, name, nil)
		if err != nil {
			return err
		}
		if err := auth.Authorize(caller, auth.VerbDelete, t); err != nil {
			return err
		}
		old, rev, ok, err := load(tx, k, name)
		if err != nil {
			return err
		}
		if !ok {
			return notFound(k.Name, name)
		}
		if err := checkEtag(etag, rev, name); err != nil {
			return err
		}
		users, err := tx.List(refPrefix+name+"|", "", 1)
		if err != nil {
			return err
		}
		if len(users) > 0 {
			user := strings.TrimPrefix(users[0].Key, refPrefix+name+"|")
			n, _ := tx.Count(refPrefix + name + "|")
			return failedPrecondition("%s %s is still used by %s (%d user(s) in all): delete or detach them first", k.Name, name, user, n)
		}
		c := &txc{s: s, tx: tx, id: caller, now: timestamppb.New(s.now())}
		if h.release != nil {
			if err := h.release(c, old); err != nil {
				return err
			}
		}
		if err := tx.Delete(k.Key(name)); err != nil {
			return err
		}
		if err := s.updateRefs(c, name, h.references(old, parent), nil); err != nil {
			return err
		}
		if err := s.count(c, k, t.Project, -1); err != nil {
			return err
		}
		if err := s.audit(c, "Delete"+k.Name, name, t.Project, old, nil); err != nil {
			return err
		}
		if validateOnly {
			return errValidateOnly
		}
		return nil
	})
	if errors.Is(err, errValidateOnly) {
		return nil
	}
	return toStatus(err)
}

func checkEtag(etag string, rev int64, name string) error {
	if etag != "" && etag != strconv.FormatInt(rev, 10) {
		return status.Errorf(codes.Aborted, "%s changed since you read it (etag %s, now %d): get it again and retry", name, etag, rev)
	}
	return nil
}

func setTimes(m proto.Message, now *timestamppb.Timestamp, create bool) {
	r := m.ProtoReflect()
	fs := r.Descriptor().Fields()
	if create {
		r.Set(fs.ByName("create_time"), protoreflect.ValueOfMessage(now.ProtoReflect()))
	}
	r.Set(fs.ByName("update_time"), protoreflect.ValueOfMessage(proto.Clone(now).ProtoReflect()))
}

// updateRefs records which names a resource references, so that deleting a
// referenced resource can be refused, in O(1) and without scanning.
func (s *Server) updateRefs(c *txc, name string, before, after []string) error {
	for _, r := range before {
		if !slices.Contains(after, r) {
			if err := c.tx.Delete(refPrefix + r + "|" + name); err != nil {
				return err
			}
		}
	}
	for _, r := range after {
		if !slices.Contains(before, r) {
			if err := c.tx.Put(refPrefix+r+"|"+name, nil); err != nil {
				return err
			}
		}
	}
	return nil
}

func countKey(project string, k *resource.Kind) string {
	return countPrefix + project + "/" + k.Name
}

func readCount(tx store.ReadTx, key string) (int64, error) {
	kv, ok, err := tx.Get(key)
	if err != nil || !ok {
		return 0, err
	}
	return strconv.ParseInt(string(kv.Value), 10, 64)
}

func (s *Server) count(c *txc, k *resource.Kind, project string, delta int64) error {
	key := countKey(project, k)
	n, err := readCount(c.tx, key)
	if err != nil {
		return err
	}
	n += delta
	if n <= 0 {
		return c.tx.Delete(key)
	}
	return c.tx.Put(key, []byte(strconv.FormatInt(n, 10)))
}

// audit writes one record of a mutation in the same transaction, so the log
// has exactly the mutations that happened, no more and no fewer.
func (s *Server) audit(c *txc, method, name, project string, before, after proto.Message) error {
	seq, err := readCount(c.tx, auditSeqKey)
	if err != nil {
		return err
	}
	seq++
	if err := c.tx.Put(auditSeqKey, []byte(strconv.FormatInt(seq, 10))); err != nil {
		return err
	}
	rec := &v1.AuditRecord{
		Revision: c.tx.Revision() + 1,
		Time:     c.now,
		Subject:  c.id.Subject,
		Role:     string(c.id.Role),
		Method:   method,
		Resource: name,
		Project:  project,
	}
	if before != nil {
		before = proto.Clone(before)
		redact(before)
		rec.Before = compactJSON(before)
	}
	if after != nil {
		// The etag of the state written is this mutation's revision; after
		// still carries the one it was read (or created) with.
		after = proto.Clone(after)
		redact(after)
		resource.SetEtag(after, strconv.FormatInt(rec.Revision, 10))
		rec.After = compactJSON(after)
	}
	b, err := proto.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode audit record: %w", err)
	}
	return c.tx.Put(fmt.Sprintf("%s%020d", auditPrefix, seq), b)
}

// compactJSON renders a resource for the audit log. protojson.Format
// indents, which costs a visible share of a create's CPU at high rates.
func compactJSON(m proto.Message) string {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Sprintf("unrenderable: %v", err)
	}
	return string(b)
}
