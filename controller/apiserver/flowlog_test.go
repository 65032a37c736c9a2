package apiserver_test

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
)

// TestFlowLogAPI: a flow log on a subnet is created with the defaults
// filled in and its VPC resolved, can be read, listed and updated (not its
// scope), keeps its subnet from being deleted, and is authorised by
// project; every bad request is refused with the field named and changes
// nothing.
func TestFlowLogAPI(t *testing.T) {
	e := apitest.Seeded(t)
	ctx := apitest.Ctx(t)
	fl := v1.NewFlowLogServiceClient(e.Admin.Conn)
	user := v1.NewFlowLogServiceClient(e.Client(apitest.UserToken).Conn)
	userB := v1.NewFlowLogServiceClient(e.Client(apitest.UserBToken).Conn)

	created, err := user.CreateFlowLog(ctx, &v1.CreateFlowLogRequest{Parent: a1, FlowLogId: "web",
		FlowLog: &v1.FlowLog{Resource: apitest.Subnet(a1), FilePath: "/var/log/meridian/web.jsonl", Sampling: 10, AggregationInterval: 10}})
	if err != nil {
		t.Fatal(err)
	}
	if created.Name != a1+"/flowLogs/web" || created.Id == 0 || created.Vpc != apitest.VPC(a1) || created.TrafficType != "ALL" ||
		created.RateLimit != 1000 || created.Burst != 1000 || created.MaxFileBytes != 100<<20 || created.Sampling != 10 ||
		created.AggregationInterval != 10 {
		t.Fatalf("created %+v", created)
	}
	got, err := user.GetFlowLog(ctx, &v1.GetFlowLogRequest{Name: created.Name})
	if err != nil || got.Etag != created.Etag {
		t.Fatalf("get: %+v, %v", got, err)
	}
	list, err := user.ListFlowLogs(ctx, &v1.ListFlowLogsRequest{Parent: a1})
	if err != nil || len(list.FlowLogs) != 1 {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if _, err := userB.GetFlowLog(ctx, &v1.GetFlowLogRequest{Name: created.Name}); apitest.Code(err) != codes.PermissionDenied && apitest.Code(err) != codes.NotFound {
		t.Fatalf("another project's user read it: %v", err)
	}
	upd, err := user.UpdateFlowLog(ctx, &v1.UpdateFlowLogRequest{FlowLog: &v1.FlowLog{Name: created.Name, TrafficType: "reject"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"traffic_type"}}})
	if err != nil || upd.TrafficType != "REJECT" || upd.Sampling != 10 {
		t.Fatalf("update: %+v, %v", upd, err)
	}
	// The subnet is referenced: it cannot go while the flow log names it.
	if _, err := e.Admin.Net.DeleteSubnet(ctx, &v1.DeleteSubnetRequest{Name: apitest.Subnet(a1)}); err == nil {
		t.Fatal("subnet named by a flow log deleted")
	}

	bad := []struct {
		name  string
		f     *v1.FlowLog
		field string
	}{
		{"no resource", &v1.FlowLog{}, "flow_log.resource"},
		{"resource not a scope", &v1.FlowLog{Resource: apitest.SG(a1)}, "flow_log.resource"},
		{"missing subnet", &v1.FlowLog{Resource: apitest.VPC(a1) + "/subnets/nope"}, "flow_log.resource"},
		{"other project's VPC", &v1.FlowLog{Resource: apitest.VPC(apitest.ProjectA2)}, "flow_log.resource"},
		{"traffic type", &v1.FlowLog{Resource: apitest.VPC(a1), TrafficType: "SOME"}, "flow_log.traffic_type"},
		{"relative path", &v1.FlowLog{Resource: apitest.VPC(a1), FilePath: "flows.jsonl"}, "flow_log.file_path"},
		{"unclean path", &v1.FlowLog{Resource: apitest.VPC(a1), FilePath: "/var/log/../etc/x"}, "flow_log.file_path"},
		{"tiny file", &v1.FlowLog{Resource: apitest.VPC(a1), MaxFileBytes: 100}, "flow_log.max_file_bytes"},
		{"sampling", &v1.FlowLog{Resource: apitest.VPC(a1), Sampling: 70000}, "flow_log.sampling"},
		{"rate", &v1.FlowLog{Resource: apitest.VPC(a1), RateLimit: 2000000}, "flow_log.rate_limit"},
		{"interval", &v1.FlowLog{Resource: apitest.Port(a1), AggregationInterval: 601}, "flow_log.aggregation_interval"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			before := e.State()
			_, err := user.CreateFlowLog(ctx, &v1.CreateFlowLogRequest{Parent: a1, FlowLogId: "x", FlowLog: tc.f})
			apitest.WantCode(t, err, codes.InvalidArgument, tc.field)
			if after := e.State(); after != before {
				t.Fatalf("refused request changed the store: %+v -> %+v", before, after)
			}
		})
	}
	t.Run("scope change", func(t *testing.T) {
		before := e.State()
		_, err := user.UpdateFlowLog(ctx, &v1.UpdateFlowLogRequest{FlowLog: &v1.FlowLog{Name: created.Name, Resource: apitest.VPC(a1)},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"resource"}}})
		if err == nil {
			t.Fatal("scope changed")
		}
		if after := e.State(); after != before {
			t.Fatalf("refused update changed the store: %+v -> %+v", before, after)
		}
	})
	t.Run("another project", func(t *testing.T) {
		before := e.State()
		_, err := userB.CreateFlowLog(ctx, &v1.CreateFlowLogRequest{Parent: a1, FlowLogId: "y", FlowLog: &v1.FlowLog{Resource: apitest.VPC(a1)}})
		if c := apitest.Code(err); c != codes.PermissionDenied && c != codes.NotFound {
			t.Fatalf("user of b1 created a flow log in a1: %v", err)
		}
		if after := e.State(); after != before {
			t.Fatalf("refused request changed the store: %+v -> %+v", before, after)
		}
	})
	if _, err := fl.DeleteFlowLog(ctx, &v1.DeleteFlowLogRequest{Name: created.Name}); err != nil {
		t.Fatal(err)
	}
}
