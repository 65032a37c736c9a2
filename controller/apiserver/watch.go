package apiserver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// Watch streams resource changes from the store's change log, filtered to
// the kinds and project asked for and to what the caller may see.
func (s *Server) Watch(r *v1.WatchRequest, stream v1.WatchService_WatchServer) error {
	ctx := stream.Context()
	caller, err := identity(ctx)
	if err != nil {
		return err
	}
	var kinds []*resource.Kind
	var vs violations
	for i, n := range r.Kinds {
		k, ok := resource.ByName(n)
		if !ok {
			vs.add(fmt.Sprintf("kinds[%d]", i), "unknown kind %q", n)
		}
		kinds = append(kinds, k)
	}
	if r.Parent != "" {
		if _, _, err := resource.KindProject.ParseName(r.Parent); err != nil {
			vs.add("parent", "%v", err)
		}
	}
	if r.FromRevision < 0 {
		vs.add("from_revision", "must not be negative")
	}
	if err := vs.err(); err != nil {
		return err
	}
	orgOf := func(project string) (string, error) {
		var org string
		err := s.st.View(ctx, func(tx store.ReadTx) error {
			t, err := target(tx, resource.KindProject, project, nil)
			org = t.Organization
			return err
		})
		return org, err
	}
	if r.Parent != "" {
		org, err := orgOf(r.Parent)
		if err != nil {
			return toStatus(err)
		}
		if err := auth.Authorize(caller, auth.VerbList, auth.Target{Kind: "Project", Project: r.Parent, Organization: org}); err != nil {
			return err
		}
	}
	from := r.FromRevision
	if from == 0 {
		from = s.st.Revision()
	}
	ch, err := s.st.Watch(ctx, "res/", from)
	if errors.Is(err, store.ErrCompacted) {
		return status.Errorf(codes.OutOfRange, "revision %d is older than the retained history: list again and watch from the listing's revision", r.FromRevision)
	}
	if err != nil {
		return toStatus(err)
	}
	visible := map[string]bool{} // project → may the caller see it (cached per stream)
	for resp := range ch {
		if resp.Err != nil {
			if errors.Is(resp.Err, store.ErrCompacted) {
				return status.Error(codes.OutOfRange, "watch fell behind the retained history: list again and watch from the listing's revision")
			}
			return toStatus(resp.Err)
		}
		for _, ev := range resp.Events {
			// A project's own event says its organisation at that point of
			// the stream (also when the watch filters projects out): judge
			// the project anew, so a replayed history is judged by the
			// organisation of the time, a deletion is delivered, and a name
			// re-created in another organisation is not shown on.
			if name, ok := strings.CutPrefix(ev.KV.Key, resource.KindProject.Prefix()); ok {
				p := &v1.Project{}
				if err := proto.Unmarshal(ev.KV.Value, p); err != nil {
					return toStatus(fmt.Errorf("decode %s: %w", ev.KV.Key, err))
				}
				visible[name] = auth.CanSee(caller, name, p.Organization)
			}
			we, ok, err := s.watchEvent(ev, kinds, r.Parent)
			if err != nil {
				return toStatus(err)
			}
			if !ok {
				continue
			}
			name := resource.Name(resourceMessage(we.Resource))
			project := resource.ProjectOf(name)
			see, cached := visible[project]
			if !cached {
				if project == "" {
					// Top-level kinds: judged per kind (pools are public,
					// nodes and BGP peers are not); not cached by project.
					kind := string(resourceMessage(we.Resource).ProtoReflect().Descriptor().Name())
					if auth.Authorize(caller, auth.VerbGet, auth.Target{Kind: kind}) != nil {
						continue
					}
					if err := stream.Send(we); err != nil {
						return err
					}
					continue
				} else {
					org, err := orgOf(project)
					if err != nil {
						return toStatus(err)
					}
					if org == "" && ev.Type == store.EventDelete {
						if p, ok := resourceMessage(we.Resource).(*v1.Project); ok {
							org = p.Organization // the project itself was deleted
						}
					}
					see = auth.CanSee(caller, project, org)
				}
				visible[project] = see
			}
			if !see {
				continue
			}
			if err := stream.Send(we); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

func (s *Server) watchEvent(ev store.Event, kinds []*resource.Kind, parent string) (*v1.WatchEvent, bool, error) {
	kindName, name, ok := strings.Cut(strings.TrimPrefix(ev.KV.Key, "res/"), "/")
	if !ok {
		return nil, false, nil
	}
	k, ok := resource.ByName(kindName)
	if !ok {
		return nil, false, nil
	}
	if len(kinds) > 0 && !containsKind(kinds, k) {
		return nil, false, nil
	}
	if parent != "" && name != parent && !strings.HasPrefix(name, parent+"/") {
		return nil, false, nil
	}
	m := k.New()
	if err := proto.Unmarshal(ev.KV.Value, m); err != nil {
		return nil, false, fmt.Errorf("decode %s: %w", ev.KV.Key, err)
	}
	resource.SetEtag(m, strconv.FormatInt(ev.KV.ModRevision, 10))
	redact(m)
	we := &v1.WatchEvent{Type: v1.EventType_PUT, Revision: ev.KV.ModRevision, Resource: Wrap(m)}
	if ev.Type == store.EventDelete {
		we.Type = v1.EventType_DELETE
	}
	return we, true, nil
}

func containsKind(ks []*resource.Kind, k *resource.Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

// Wrap puts a resource message into the Resource oneof.
func Wrap(m proto.Message) *v1.Resource {
	switch t := m.(type) {
	case *v1.Project:
		return &v1.Resource{Kind: &v1.Resource_Project{Project: t}}
	case *v1.Vpc:
		return &v1.Resource{Kind: &v1.Resource_Vpc{Vpc: t}}
	case *v1.Subnet:
		return &v1.Resource{Kind: &v1.Resource_Subnet{Subnet: t}}
	case *v1.Port:
		return &v1.Resource{Kind: &v1.Resource_Port{Port: t}}
	case *v1.SecurityGroup:
		return &v1.Resource{Kind: &v1.Resource_SecurityGroup{SecurityGroup: t}}
	case *v1.NetworkAcl:
		return &v1.Resource{Kind: &v1.Resource_NetworkAcl{NetworkAcl: t}}
	case *v1.RouteTable:
		return &v1.Resource{Kind: &v1.Resource_RouteTable{RouteTable: t}}
	case *v1.Node:
		return &v1.Resource{Kind: &v1.Resource_Node{Node: t}}
	case *v1.PublicAddressPool:
		return &v1.Resource{Kind: &v1.Resource_PublicAddressPool{PublicAddressPool: t}}
	case *v1.BgpPeer:
		return &v1.Resource{Kind: &v1.Resource_BgpPeer{BgpPeer: t}}
	case *v1.ElasticIp:
		return &v1.Resource{Kind: &v1.Resource_ElasticIp{ElasticIp: t}}
	case *v1.NatGateway:
		return &v1.Resource{Kind: &v1.Resource_NatGateway{NatGateway: t}}
	case *v1.LoadBalancer:
		return &v1.Resource{Kind: &v1.Resource_LoadBalancer{LoadBalancer: t}}
	}
	return nil
}

// resourceMessage unwraps the Resource oneof.
func resourceMessage(r *v1.Resource) proto.Message {
	rr := r.ProtoReflect()
	od := rr.Descriptor().Oneofs().ByName("kind")
	if f := rr.WhichOneof(od); f != nil {
		return rr.Get(f).Message().Interface()
	}
	return nil
}

// ListAuditRecords returns audit records, newest last, filtered to what the
// caller administers.
func (s *Server) ListAuditRecords(ctx context.Context, r *v1.ListAuditRecordsRequest) (*v1.ListAuditRecordsResponse, error) {
	caller, err := identity(ctx)
	if err != nil {
		return nil, err
	}
	if r.Project != "" {
		if _, _, err := resource.KindProject.ParseName(r.Project); err != nil {
			return nil, invalid("project", "%v", err)
		}
	}
	size := int(r.PageSize)
	if size <= 0 {
		size = defaultPageSize
	}
	size = min(size, maxPageSize)
	after := ""
	if r.PageToken != "" {
		seq, err := strconv.ParseUint(r.PageToken, 10, 64)
		if err != nil {
			return nil, invalid("page_token", "is not a page token of this listing")
		}
		after = fmt.Sprintf("%s%020d", auditPrefix, seq)
	}
	out := &v1.ListAuditRecordsResponse{}
	err = s.st.View(ctx, func(tx store.ReadTx) error {
		t := auth.Target{Kind: "AuditRecord", Project: r.Project}
		if r.Project != "" {
			pt, err := target(tx, resource.KindProject, r.Project, nil)
			if err != nil {
				return err
			}
			t.Organization = pt.Organization
		}
		if err := auth.Authorize(caller, auth.VerbList, t); err != nil {
			return err
		}
		orgs := map[string]string{}
		for {
			kvs, err := tx.List(auditPrefix, after, size+1)
			if err != nil {
				return err
			}
			for _, kv := range kvs {
				if len(out.Records) == size {
					out.NextPageToken = strings.TrimLeft(strings.TrimPrefix(after, auditPrefix), "0")
					return nil
				}
				after = kv.Key
				rec := &v1.AuditRecord{}
				if err := proto.Unmarshal(kv.Value, rec); err != nil {
					return fmt.Errorf("decode %s: %w", kv.Key, err)
				}
				if r.Project != "" && rec.Project != r.Project {
					continue
				}
				if caller.Role != auth.RoleSystemAdmin {
					org, ok := orgs[rec.Project]
					if !ok && rec.Project != "" {
						pt, err := target(tx, resource.KindProject, rec.Project, nil)
						if err != nil {
							return err
						}
						org = pt.Organization
						if org == "" { // the project is gone: its creation record knows the organisation
							org = orgFromRecord(rec)
						}
						orgs[rec.Project] = org
					}
					if rec.Project == "" || org != caller.Organization {
						continue
					}
				}
				out.Records = append(out.Records, rec)
			}
			if len(kvs) <= size {
				return nil
			}
		}
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return out, nil
}

func orgFromRecord(rec *v1.AuditRecord) string {
	for _, j := range []string{rec.Before, rec.After} {
		p := &v1.Project{}
		if j != "" && strings.Contains(rec.Method, "Project") && protojsonUnmarshal(j, p) == nil {
			return p.Organization
		}
	}
	return ""
}

// WhoAmI tells callers how the controller sees them.
func (s *Server) WhoAmI(ctx context.Context, _ *v1.WhoAmIRequest) (*v1.WhoAmIResponse, error) {
	id, err := identity(ctx)
	if err != nil {
		return nil, err
	}
	return &v1.WhoAmIResponse{Subject: id.Subject, Role: string(id.Role), Organization: id.Organization, Projects: id.Projects}, nil
}

func protojsonUnmarshal(s string, m proto.Message) error { return protojson.Unmarshal([]byte(s), m) }
