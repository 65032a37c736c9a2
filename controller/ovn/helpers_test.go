package ovn

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/model"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// objects builds a model snapshot keyed the way the model keys objects.
func objects(bodies ...proto.Message) map[string]*agentv1.Object {
	out := map[string]*agentv1.Object{}
	for _, b := range bodies {
		var o *agentv1.Object
		switch v := b.(type) {
		case *agentv1.Vpc:
			o = &agentv1.Object{Key: owner("vpc", v.Id), Body: &agentv1.Object_Vpc{Vpc: v}}
		case *agentv1.Subnet:
			o = &agentv1.Object{Key: owner("subnet", v.Id), Body: &agentv1.Object_Subnet{Subnet: v}}
		case *agentv1.Port:
			o = &agentv1.Object{Key: owner("port", v.Id), Body: &agentv1.Object_Port{Port: v}}
		case *agentv1.SecurityGroup:
			o = &agentv1.Object{Key: owner("sg", v.Id), Body: &agentv1.Object_SecurityGroup{SecurityGroup: v}}
		case *agentv1.NetworkAcl:
			o = &agentv1.Object{Key: owner("acl", v.Id), Body: &agentv1.Object_NetworkAcl{NetworkAcl: v}}
		case *agentv1.RouteTable:
			o = &agentv1.Object{Key: owner("rt", v.Id), Body: &agentv1.Object_RouteTable{RouteTable: v}}
		case *agentv1.FlowLogConfig:
			o = &agentv1.Object{Key: owner("flowlog", v.Id), Body: &agentv1.Object_FlowLog{FlowLog: v}}
		default:
			panic("objects: unsupported body")
		}
		out[o.Key] = o
	}
	return out
}

// fixture is a small topology exercising every mapping: one VPC with two
// subnets (one with DHCP, a network ACL and a route table), three ports
// (one without security groups, one without source/destination check) and
// two security groups, one naming the other as remote group.
func fixture() map[string]*agentv1.Object {
	return objects(
		&agentv1.Vpc{Id: 1, Name: "v", Vni: 1001, Cidrs: []string{"10.0.0.0/16"}},
		&agentv1.Subnet{Id: 11, VpcId: 1, Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450,
			DhcpEnabled: true, DnsServers: []string{"10.0.0.2"}, DomainName: "corp.example",
			NetworkAclId: 31, RouteTableId: 41},
		&agentv1.Subnet{Id: 12, VpcId: 1, Cidr: "10.0.2.0/24", GatewayIp: "10.0.2.1", Mtu: 1450},
		&agentv1.Port{Id: 101, VpcId: 1, SubnetId: 11, Mac: "02:00:00:00:01:01", Ips: []string{"10.0.1.10"},
			Node: "n1", SecurityGroupIds: []uint32{21}, SourceDestCheck: true},
		&agentv1.Port{Id: 102, VpcId: 1, SubnetId: 11, Mac: "02:00:00:00:01:02", Ips: []string{"10.0.1.11"},
			SecurityGroupIds: []uint32{21, 22}, SourceDestCheck: true},
		&agentv1.Port{Id: 103, VpcId: 1, SubnetId: 12, Mac: "02:00:00:00:02:01", Ips: []string{"10.0.2.10"}},
		&agentv1.SecurityGroup{Id: 21, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 1, Ingress: true, Allow: true, Protocol: 6, PortMin: 22, PortMax: 22, IcmpType: -1, IcmpCode: -1, Cidr: "192.168.0.0/16"},
			{Id: 2, Allow: true, IcmpType: -1, IcmpCode: -1},
			{Id: 3, Ingress: true, Allow: true, Protocol: 1, IcmpType: 8, IcmpCode: -1, RemoteGroupId: 22},
		}},
		&agentv1.SecurityGroup{Id: 22, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 4, Ingress: true, Allow: true, Protocol: 17, PortMin: 53, PortMax: 54, IcmpType: -1, IcmpCode: -1},
		}},
		&agentv1.NetworkAcl{Id: 31, VpcId: 1, Rules: []*agentv1.Rule{
			{Id: 5, Number: 100, Ingress: true, Protocol: 6, PortMin: 23, PortMax: 23, IcmpType: -1, IcmpCode: -1},
			{Id: 6, Number: 200, Ingress: true, Allow: true, IcmpType: -1, IcmpCode: -1},
			{Id: 7, Number: 100, Allow: true, IcmpType: -1, IcmpCode: -1, Cidr: "10.0.0.0/8"},
			{Id: 8, Number: 110, Protocol: 17, IcmpType: -1, IcmpCode: -1},
		}},
		&agentv1.RouteTable{Id: 41, VpcId: 1, Routes: []*agentv1.Route{
			{Destination: "0.0.0.0/0", NextHopPortId: 103},
			{Destination: "192.168.0.0/16", Blackhole: true},
		}},
	)
}

// connect returns a reconciler connected to endpoint.
func connect(t testing.TB, endpoint string, mod func(*Config)) *Reconciler {
	t.Helper()
	cfg := Config{NB: endpoint, Logger: quiet(), Debounce: time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	r, err := NewReconciler(cfg)
	if err != nil {
		t.Fatalf("NewReconciler: %v", err)
	}
	if err := r.Connect(testCtx(t)); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

func mustSync(t testing.TB, r *Reconciler, objs map[string]*agentv1.Object) SyncResult {
	t.Helper()
	res, err := r.Sync(testCtx(t), objs)
	if err != nil {
		t.Fatalf("Sync: %v", err)
	}
	return res
}

// meridianRows returns the cached Meridian rows of a table by meridian:id.
func meridianRows(r *Reconciler, table string) map[string]model.Model {
	s := specByName[table]
	out := map[string]model.Model{}
	for _, m := range r.Client().Cache().Table(table).RowsShallow() {
		if _, ext := s.meta(m); ext[KeyID] != "" {
			out[ext[KeyID]] = m
		}
	}
	return out
}
