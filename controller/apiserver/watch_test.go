package apiserver_test

import (
	"fmt"
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/store"
)

// churn makes n ports in project p, deletes every third one, and returns
// the number of mutations made (one revision each).
func churn(t *testing.T, e *apitest.Env, p string, n int) int {
	ctx := apitest.Ctx(t)
	muts := 0
	for i := range n {
		name := fmt.Sprintf("w%d", i)
		e.Ok(e.Admin.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: p, PortId: name, Port: &v1.Port{Subnet: apitest.Subnet(p)}}))
		muts++
		if i%3 == 0 {
			e.Ok(e.Admin.Net.DeletePort(ctx, &v1.DeletePortRequest{Name: p + "/ports/" + name}))
			muts++
		}
	}
	return muts
}

func TestWatchFromARevisionDeliversEveryChangeInOrder(t *testing.T) {
	e := apitest.Seeded(t)
	from := e.Store.Revision()
	n := churn(t, e, apitest.ProjectA2, 20)
	evs := watchUntil(t, e.OrgAdmin, &v1.WatchRequest{FromRevision: from}, e.Store.Revision())
	if len(evs) != n {
		t.Fatalf("got %d events, want %d", len(evs), n)
	}
	deletes := 0
	for i, ev := range evs {
		if ev.Revision != from+int64(i)+1 {
			t.Fatalf("event %d has revision %d, want %d (gap or reorder)", i, ev.Revision, from+int64(i)+1)
		}
		if ev.Type == v1.EventType_DELETE {
			deletes++
			if ev.Resource.GetPort().GetMacAddress() == "" {
				t.Fatalf("delete event does not carry the resource as it was: %v", ev)
			}
		}
	}
	if deletes != 7 {
		t.Fatalf("%d delete events, want 7", deletes)
	}
}

func TestWatchFiltersByKindAndParent(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	from := e.Store.Revision()
	for _, p := range apitest.Projects {
		churn(t, e, p.Name, 2)
		e.Ok(e.Admin.Net.UpdateSubnet(ctx, &v1.UpdateSubnetRequest{Subnet: &v1.Subnet{Name: apitest.Subnet(p.Name), Mtu: 1400}, UpdateMask: mask("mtu")}))
	}
	last := e.Store.Revision()
	for _, tc := range []struct {
		name string
		req  *v1.WatchRequest
		want func(*v1.WatchEvent) bool
		n    int
	}{
		{"kind Port", &v1.WatchRequest{Kinds: []string{"Port"}}, func(ev *v1.WatchEvent) bool { return ev.Resource.GetPort() != nil }, 9},
		{"kind by collection name", &v1.WatchRequest{Kinds: []string{"subnets"}}, func(ev *v1.WatchEvent) bool { return ev.Resource.GetSubnet() != nil }, 3},
		{"parent a2", &v1.WatchRequest{Parent: apitest.ProjectA2}, func(ev *v1.WatchEvent) bool {
			return apitest.ProjectOf(resourceName(ev.Resource)) == apitest.ProjectA2
		}, 4},
		{"parent and kind", &v1.WatchRequest{Parent: apitest.ProjectB1, Kinds: []string{"Subnet"}}, func(ev *v1.WatchEvent) bool {
			return ev.Resource.GetSubnet().GetName() == apitest.Subnet(apitest.ProjectB1)
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.FromRevision = from
			evs := watchUntil(t, e.Admin, tc.req, last)
			if len(evs) != tc.n || slices.IndexFunc(evs, func(ev *v1.WatchEvent) bool { return !tc.want(ev) }) >= 0 {
				t.Fatalf("%d events %v, want %d matching", len(evs), evs, tc.n)
			}
		})
	}
}

func TestWatchRequestValidation(t *testing.T) {
	e := apitest.Seeded(t)
	for _, tc := range []struct {
		name  string
		req   *v1.WatchRequest
		field string
	}{
		{"unknown kind", &v1.WatchRequest{Kinds: []string{"Vpc", "Router"}}, "kinds[1]"},
		{"parent not a project", &v1.WatchRequest{Parent: apitest.VPC(a1)}, "parent"},
		{"negative revision", &v1.WatchRequest{FromRevision: -1}, "from_revision"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := e.Admin.Watch.Watch(apitest.Ctx(t), tc.req)
			if err == nil {
				_, err = s.Recv()
			}
			apitest.WantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}
}

func TestWatchFromACompactedRevisionIsOutOfRange(t *testing.T) {
	e := apitest.New(t, apitest.Options{Store: store.Options{LogRetention: 8}})
	e.Seed()
	churn(t, e, apitest.ProjectA1, 20)
	s, err := e.Admin.Watch.Watch(apitest.Ctx(t), &v1.WatchRequest{FromRevision: 1})
	if err == nil {
		_, err = s.Recv()
	}
	apitest.WantCode(t, err, codes.OutOfRange, "")
	// A recent revision is still fine.
	evs := watchUntil(t, e.Admin, &v1.WatchRequest{FromRevision: e.Store.Revision() - 2}, e.Store.Revision())
	if len(evs) != 2 {
		t.Fatalf("%d events from a retained revision, want 2", len(evs))
	}
}

func TestListPaginationAndFilter(t *testing.T) {
	e := apitest.Seeded(t)
	churn(t, e, apitest.ProjectA2, 10) // 6 ports remain besides p
	ctx := apitest.Ctx(t)
	var names []string
	token := ""
	for pages := 0; ; pages++ {
		resp := apitest.Must[*v1.ListPortsResponse](t)(e.User.Net.ListPorts(ctx, &v1.ListPortsRequest{Parent: a1, PageSize: 1, PageToken: token}))
		for _, p := range resp.Ports {
			names = append(names, p.Name)
		}
		if token = resp.NextPageToken; token == "" || pages > 10 {
			break
		}
	}
	if !slices.Equal(names, []string{apitest.Port(a1), apitest.Port2}) {
		t.Fatalf("paged listing %v", names)
	}
	resp := apitest.Must[*v1.ListPortsResponse](t)(e.Admin.Net.ListPorts(ctx, &v1.ListPortsRequest{Parent: apitest.ProjectA2, PageSize: 4}))
	if len(resp.Ports) != 4 || resp.NextPageToken == "" || resp.Revision != e.Store.Revision() {
		t.Fatalf("first page: %d ports, token %q, revision %d", len(resp.Ports), resp.NextPageToken, resp.Revision)
	}
	_, err := e.Admin.Net.ListPorts(ctx, &v1.ListPortsRequest{Parent: a1, PageToken: resp.NextPageToken})
	apitest.WantCode(t, err, codes.InvalidArgument, "page_token")
	bound := apitest.Must[*v1.ListPortsResponse](t)(e.Admin.Net.ListPorts(ctx, &v1.ListPortsRequest{Parent: a1, Filter: `node = "nodes/n1" AND subnet=` + apitest.Subnet(a1)}))
	if len(bound.Ports) != 1 || bound.Ports[0].Name != apitest.Port(a1) {
		t.Fatalf("filtered listing %v", bound.Ports)
	}
	_, err = e.Admin.Net.ListPorts(ctx, &v1.ListPortsRequest{Parent: a1, Filter: "status=ACTIVE"})
	apitest.WantCode(t, err, codes.InvalidArgument, "filter")
}
