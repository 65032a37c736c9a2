// Package apiserver implements Meridian's tenant and compute API (meridian.v1)
// on top of the store: authorisation, validation, allocation, audit and
// watch. Every mutation is one store transaction that checks, allocates,
// writes the resource, its reference index, its quota counter and its audit
// record together, so a rejected request changes nothing and an accepted one
// is complete. It does not compile the logical model or talk to agents.
package apiserver

import (
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// StatusProvider tells the live status of nodes and ports (from the agent
// distributor); the store holds intent, not status.
type StatusProvider interface {
	NodeStatus(node string) *v1.NodeStatus
	PortStatus(p *v1.Port) *v1.PortStatus
}

// DefaultQuota applies where a project's quota leaves a field at zero.
func DefaultQuota() *v1.Quota {
	return &v1.Quota{
		Vpcs: 50, Subnets: 500, Ports: 200000, SecurityGroups: 2500, SecurityGroupRules: 1000,
		NetworkAcls: 200, NetworkAclRules: 256, RouteTables: 200, Routes: 1000,
		ElasticIps: 50, NatGateways: 20,
		// A listener's Maglev table (65537 entries) balances within ~1% up
		// to a few hundred backends; 256 keeps well inside that.
		LoadBalancers: 20, LoadBalancerListeners: 50, LoadBalancerBackends: 256,
	}
}

// Options configure a Server.
type Options struct {
	Logger *slog.Logger
	Status StatusProvider // may be nil
	Quota  *v1.Quota      // defaults; nil: DefaultQuota()
	Now    func() time.Time
}

// Server serves the meridian.v1 services.
type Server struct {
	v1.UnimplementedProjectServiceServer
	v1.UnimplementedNetworkServiceServer
	v1.UnimplementedSecurityServiceServer
	v1.UnimplementedNodeServiceServer
	v1.UnimplementedEdgeServiceServer
	v1.UnimplementedLoadBalancerServiceServer
	v1.UnimplementedAuditServiceServer
	v1.UnimplementedWatchServiceServer
	v1.UnimplementedIdentityServiceServer

	st     store.Store
	log    *slog.Logger
	status StatusProvider
	quotaD *v1.Quota
	now    func() time.Time
	hooks  map[*resource.Kind]*hooks
}

// New returns a Server on the store.
func New(st store.Store, o Options) *Server {
	s := &Server{st: st, log: o.Logger, status: o.Status, quotaD: o.Quota, now: o.Now}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.quotaD == nil {
		s.quotaD = DefaultQuota()
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.hooks = s.buildHooks()
	return s
}

// SetStatusProvider installs the status source once it exists (the
// distributor is built after the server in some wirings).
func (s *Server) SetStatusProvider(p StatusProvider) { s.status = p }

// Register adds every service to a gRPC server.
func (s *Server) Register(g *grpc.Server) {
	v1.RegisterProjectServiceServer(g, s)
	v1.RegisterNetworkServiceServer(g, s)
	v1.RegisterSecurityServiceServer(g, s)
	v1.RegisterNodeServiceServer(g, s)
	v1.RegisterEdgeServiceServer(g, s)
	v1.RegisterLoadBalancerServiceServer(g, s)
	v1.RegisterAuditServiceServer(g, s)
	v1.RegisterWatchServiceServer(g, s)
	v1.RegisterIdentityServiceServer(g, s)
	v1.RegisterFlowLogServiceServer(g, &flowLogService{s: s}) // flowlog.go
}

// quota returns the project's effective quota: its own values, defaults where zero.
func (s *Server) quota(tx store.ReadTx, project string) (*v1.Quota, error) {
	q := proto.Clone(s.quotaD).(*v1.Quota)
	if project == "" {
		return q, nil
	}
	m, _, ok, err := load(tx, resource.KindProject, project)
	if err != nil || !ok {
		return q, err
	}
	own := m.(*v1.Project).Quota
	if own == nil {
		return q, nil
	}
	pick := func(own, def int32) int32 {
		if own > 0 {
			return own
		}
		return def
	}
	return &v1.Quota{
		Vpcs: pick(own.Vpcs, q.Vpcs), Subnets: pick(own.Subnets, q.Subnets), Ports: pick(own.Ports, q.Ports),
		SecurityGroups: pick(own.SecurityGroups, q.SecurityGroups), SecurityGroupRules: pick(own.SecurityGroupRules, q.SecurityGroupRules),
		NetworkAcls: pick(own.NetworkAcls, q.NetworkAcls), NetworkAclRules: pick(own.NetworkAclRules, q.NetworkAclRules),
		RouteTables: pick(own.RouteTables, q.RouteTables), Routes: pick(own.Routes, q.Routes),
		ElasticIps: pick(own.ElasticIps, q.ElasticIps), NatGateways: pick(own.NatGateways, q.NatGateways),
		LoadBalancers: pick(own.LoadBalancers, q.LoadBalancers), LoadBalancerListeners: pick(own.LoadBalancerListeners, q.LoadBalancerListeners),
		LoadBalancerBackends: pick(own.LoadBalancerBackends, q.LoadBalancerBackends),
	}, nil
}

func (s *Server) checkQuota(c *txc, k *resource.Kind, project string) error {
	if project == "" || k == resource.KindProject {
		return nil
	}
	q, err := s.quota(c.tx, project)
	if err != nil {
		return err
	}
	var limit int32
	switch k {
	case resource.KindVpc:
		limit = q.Vpcs
	case resource.KindSubnet:
		limit = q.Subnets
	case resource.KindPort:
		limit = q.Ports
	case resource.KindSecurityGroup:
		limit = q.SecurityGroups
	case resource.KindNetworkAcl:
		limit = q.NetworkAcls
	case resource.KindRouteTable:
		limit = q.RouteTables
	case resource.KindElasticIp:
		limit = q.ElasticIps
	case resource.KindNatGateway:
		limit = q.NatGateways
	case resource.KindLoadBalancer:
		limit = q.LoadBalancers
	default:
		return nil
	}
	n, err := readCount(c.tx, countKey(project, k))
	if err != nil {
		return err
	}
	if n >= int64(limit) {
		return failedPrecondition("quota exceeded: %s already has %d of %d %s allowed; ask an administrator to raise quota.%s",
			project, n, limit, k.Collection, resource.FieldName(k)+"s")
	}
	return nil
}
