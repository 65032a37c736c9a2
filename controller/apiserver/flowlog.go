package apiserver

// Flow logs (issue [6], part 5): a FlowLog names a VPC, a subnet or a port of
// its project whose flows each node hosting ports in scope logs (see
// controller/model/flowlog.go and dataplane/agent/flowlog.go).
//
// Decisions worth knowing:
//   - The scope (resource) is immutable: a flow log's records all mean the
//     same thing. Another scope is another flow log.
//   - The flow log references its resource, so the VPC, subnet or port
//     cannot be deleted while a flow log names it.
//   - Defaults are filled in on create and update, so a read shows what
//     the nodes apply: ALL traffic, sampling 1, 1000 flows/s, burst = rate,
//     60 s intervals, 100 MiB files.

import (
	"context"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/resource"
)

const (
	flowLogDefaultRate     = 1000
	flowLogMaxRate         = 1000000
	flowLogDefaultInterval = 60
	flowLogMaxInterval     = 600
	flowLogMaxSampling     = 65535
	flowLogDefaultFile     = 100 << 20
	flowLogMinFile         = 64 << 10
)

func (s *Server) flowLogHooks(hs map[*resource.Kind]*hooks) {
	hs[resource.KindFlowLog] = &hooks{
		mutable: []string{"labels", "description", "traffic_type", "file_path", "max_file_bytes", "sampling",
			"rate_limit", "burst", "aggregation_interval"},
		prepare: prepareFlowLog,
		refs:    func(m proto.Message) []string { return []string{m.(*v1.FlowLog).Resource} },
	}
}

func prepareFlowLog(c *txc, old, obj proto.Message) error {
	f := obj.(*v1.FlowLog)
	project := resource.ProjectOf(f.Name)
	if old != nil {
		o := old.(*v1.FlowLog)
		if f.Resource != "" && f.Resource != o.Resource {
			c.vs.add("flow_log.resource", "the scope of a flow log cannot change (from %s to %s): create another flow log", o.Resource, f.Resource)
		}
		f.Id, f.Resource, f.Vpc = o.Id, o.Resource, o.Vpc
	} else {
		vpc, err := flowLogScope(c, f.Resource, project)
		if err != nil {
			return err
		}
		f.Vpc = vpc
	}
	f.TrafficType = strings.ToUpper(f.TrafficType)
	switch f.TrafficType {
	case "":
		f.TrafficType = "ALL"
	case "ACCEPT", "REJECT", "ALL":
	default:
		c.vs.add("flow_log.traffic_type", "%q: want ACCEPT, REJECT or ALL", f.TrafficType)
	}
	if f.FilePath != "" {
		if !filepath.IsAbs(f.FilePath) || filepath.Clean(f.FilePath) != f.FilePath || strings.HasSuffix(f.FilePath, "/") {
			c.vs.add("flow_log.file_path", "%q must be a clean absolute path of a file (like /var/log/meridian/flows.jsonl)", f.FilePath)
		}
		if strings.ContainsAny(f.FilePath, "\x00\n") {
			c.vs.add("flow_log.file_path", "the path contains a NUL or newline")
		}
	}
	switch {
	case f.MaxFileBytes == 0:
		f.MaxFileBytes = flowLogDefaultFile
	case f.MaxFileBytes < flowLogMinFile:
		c.vs.add("flow_log.max_file_bytes", "%d is below the minimum of %d bytes", f.MaxFileBytes, flowLogMinFile)
	}
	switch {
	case f.Sampling == 0:
		f.Sampling = 1
	case f.Sampling > flowLogMaxSampling:
		c.vs.add("flow_log.sampling", "1 in %d: at most 1 in %d", f.Sampling, flowLogMaxSampling)
	}
	switch {
	case f.RateLimit == 0:
		f.RateLimit = flowLogDefaultRate
	case f.RateLimit > flowLogMaxRate:
		c.vs.add("flow_log.rate_limit", "%d flows/s: at most %d", f.RateLimit, flowLogMaxRate)
	}
	switch {
	case f.Burst == 0:
		f.Burst = f.RateLimit
	case f.Burst > flowLogMaxRate:
		c.vs.add("flow_log.burst", "%d: at most %d", f.Burst, flowLogMaxRate)
	}
	switch {
	case f.AggregationInterval == 0:
		f.AggregationInterval = flowLogDefaultInterval
	case f.AggregationInterval > flowLogMaxInterval:
		c.vs.add("flow_log.aggregation_interval", "%d s: want 1..%d", f.AggregationInterval, flowLogMaxInterval)
	}
	if old == nil && c.vs.empty() {
		var err error
		if f.Id, err = ipam.NextID(c.tx, "flowlog"); err != nil {
			return err
		}
	}
	return nil
}

// flowLogScope checks the flow log's resource (a VPC, subnet or port of
// project) and returns its VPC.
func flowLogScope(c *txc, ref, project string) (string, error) {
	const field = "flow_log.resource"
	if ref == "" {
		c.vs.add(field, "required: the VPC, subnet or port whose flows to log")
		return "", nil
	}
	var k *resource.Kind
	for _, cand := range []*resource.Kind{resource.KindSubnet, resource.KindVpc, resource.KindPort} {
		if _, _, err := cand.ParseName(ref); err == nil {
			k = cand
			break
		}
	}
	if k == nil {
		c.vs.add(field, "%q is not the name of a VPC, subnet or port", ref)
		return "", nil
	}
	m, ok, err := loadRef(c, k, field, ref, project)
	if err != nil || !ok {
		return "", err
	}
	switch r := m.(type) {
	case *v1.Vpc:
		return r.Name, nil
	case *v1.Subnet:
		return vpcOfSubnet(r.Name), nil
	case *v1.Port:
		return vpcOfSubnet(r.Subnet), nil
	}
	return "", nil
}

// flowLogService is the FlowLogService (its own type: the Server's
// services are each a generated interface with a mustEmbed method).
type flowLogService struct {
	v1.UnimplementedFlowLogServiceServer
	s *Server
}

func (f *flowLogService) CreateFlowLog(ctx context.Context, r *v1.CreateFlowLogRequest) (*v1.FlowLog, error) {
	return typed[*v1.FlowLog](f.s.create(ctx, resource.KindFlowLog, r.Parent, r.FlowLogId, r.FlowLog, r.ValidateOnly))
}

func (f *flowLogService) GetFlowLog(ctx context.Context, r *v1.GetFlowLogRequest) (*v1.FlowLog, error) {
	return typed[*v1.FlowLog](f.s.get(ctx, resource.KindFlowLog, r.Name))
}

func (f *flowLogService) ListFlowLogs(ctx context.Context, r *v1.ListFlowLogsRequest) (*v1.ListFlowLogsResponse, error) {
	items, next, rev, err := f.s.list(ctx, resource.KindFlowLog, r.Parent, r.PageSize, r.PageToken, r.Filter)
	if err != nil {
		return nil, err
	}
	return &v1.ListFlowLogsResponse{FlowLogs: listOf[*v1.FlowLog](items), NextPageToken: next, Revision: rev}, nil
}

func (f *flowLogService) UpdateFlowLog(ctx context.Context, r *v1.UpdateFlowLogRequest) (*v1.FlowLog, error) {
	return typed[*v1.FlowLog](f.s.update(ctx, resource.KindFlowLog, r.FlowLog, r.UpdateMask.GetPaths(), r.ValidateOnly))
}

func (f *flowLogService) DeleteFlowLog(ctx context.Context, r *v1.DeleteFlowLogRequest) (*v1.DeleteFlowLogResponse, error) {
	if err := f.s.delete(ctx, resource.KindFlowLog, r.Name, r.Etag, r.ValidateOnly); err != nil {
		return nil, err
	}
	return &v1.DeleteFlowLogResponse{}, nil
}
