package model

// Flow logs (issue [6], part 5). A FlowLog goes to every node with a bound
// port in its VPC (key "flowlog/<id>"), whatever its scope: the agent picks
// the local ports in scope (a port, a subnet's ports or the VPC's), so a
// port moving in or out of a subnet changes nothing here. The object names
// its scope by ID; the VPC, subnet and port are dependencies so that a
// renumbering recompiles it.

import (
	"strconv"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/resource"
)

func flowLogKey(id uint32) string { return "flowlog/" + strconv.FormatUint(uint64(id), 10) }

func (m *Model) compileFlowLog(f *mv1.FlowLog) (*agentv1.Object, []string) {
	vpc := m.vpcs[f.Vpc]
	if vpc == nil || vpc.GetId() == 0 {
		return nil, []string{f.Vpc}
	}
	c := &agentv1.FlowLogConfig{
		Id: f.Id, Name: f.Name, Project: resource.ProjectOf(f.Name), VpcId: vpc.GetId(),
		TrafficType: f.TrafficType, FilePath: f.FilePath, MaxFileBytes: f.MaxFileBytes, Sampling: f.Sampling,
		RateLimit: f.RateLimit, Burst: f.Burst, AggregationInterval: f.AggregationInterval,
	}
	deps := []string{f.Vpc}
	switch collectionOf(f.Resource) {
	case "subnets":
		if c.SubnetId = m.subnetID(f.Resource); c.SubnetId == 0 {
			return nil, append(deps, f.Resource)
		}
		deps = append(deps, f.Resource)
	case "ports":
		if c.PortId = m.portID(f.Resource); c.PortId == 0 {
			return nil, append(deps, f.Resource)
		}
		deps = append(deps, f.Resource)
	}
	return &agentv1.Object{Key: flowLogKey(f.Id), Body: &agentv1.Object_FlowLog{FlowLog: c}}, deps
}

// indexFlowLog keeps vpcFlowLogs, which says which nodes hold a flow log.
func (m *Model) indexFlowLog(name string, setOp func(map[string]set, string, string), c *changeSet) {
	f := m.flowLogs[name]
	if f == nil {
		return
	}
	setOp(m.vpcFlowLogs, f.Vpc, name)
	c.check(m.resKey[name])
}

// flowLogNodeKeys adds the flow logs of node n's VPCs to its desired state.
func (m *Model) flowLogNodeKeys(n string, put func(string)) {
	for vpc := range m.nodeVpcs[n] {
		for f := range m.vpcFlowLogs[vpc] {
			put(f)
		}
	}
}

func (m *Model) holdsFlowLog(n, ref string) bool {
	return m.nodeVpcs[n][m.flowLogs[ref].GetVpc()] > 0
}

func (m *Model) candidatesFlowLog(ref string, out set) {
	for n := range m.vpcNodes[m.flowLogs[ref].GetVpc()] {
		out[n] = struct{}{}
	}
}
