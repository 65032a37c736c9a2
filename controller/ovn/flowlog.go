package ovn

import (
	"cmp"
	"slices"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
)

// Flow logs on OVN (issue [6], part 5). The records are made on the node:
// ovn-controller writes an acl_log line for each packet a logged ACL
// matches (for allow-related ACLs only the first packet of a connection,
// since established traffic bypasses the ACL stage), and the agent turns
// those lines into flow-log records (dataplane/agent/ovnflowlog.go). The
// controller's part is to log exactly the ACLs that can decide the fate of
// a covered port's packets, named so that the agent can tell the rule:
//
//	security-group rule R of group G   "sg:G:R" (allow-related; logged when a member is covered by an ACCEPT or ALL flow log,
//	                                    as a copy "ct.new && <rule>" one priority above the rule: OVN 23.03 evaluates and
//	                                    logs allows for every packet but replies, the copy only for a flow's first)
//	network ACL N, rule numbered K      "acl:N:K" (drop; logged when a port of the subnet is covered by a REJECT or ALL flow log)
//	network ACL N, no rule matched      "acl:N:default"
//	no security-group rule allows       "deny:sg" (the default deny; for the ports a REJECT or ALL flow log covers, its
//	                                    own rows on its own port group "mer_fl_F", the others' on "mer_ports_unlogged")
//
// An ACL row is shared by every port it applies to (a group's members, a
// subnet's ports), so logging is per row: a row is logged when
// any port it applies to is covered, and the agent drops the lines of
// ports no flow log covers. The names are well under OVN's 63 characters.
//
// Rate limit: each flow log with a rate limit has a Meter "mer-fl-F"
// (packets per second, its burst), named by the logged rows; ovn-controller
// meters the log messages (the packets sent to it for logging) with it, so
// a flood costs the node no more than the rate in packet-ins. A row that
// applies to ports of several flow logs can name one meter only: the
// meter of the lowest-numbered of those flow logs; the agent then applies
// each flow log's own limit exactly (a token bucket per flow log), so the
// meter bounds the node's work and the agent the records.

// Names of the logged ACLs.
const (
	aclLogDenySG = "deny:sg"
	// ACLLogSeverity is the severity of every logged ACL: ovn-controller
	// writes acl_log lines to its log file at this level, which its
	// default file level (info) keeps.
	ACLLogSeverity = "info"
)

// MeterName is the NB Meter of flow log id.
func MeterName(flowLogID uint32) string { return "mer-fl-" + itoa(flowLogID) }

// SGRuleLogName, NACLRuleLogName and NACLDefaultLogName are the names of
// logged ACLs (see above).
func SGRuleLogName(sg, rule uint32) string { return "sg:" + itoa(sg) + ":" + itoa(rule) }

func NACLRuleLogName(acl, number uint32) string { return "acl:" + itoa(acl) + ":" + itoa(number) }

func NACLDefaultLogName(acl uint32) string { return "acl:" + itoa(acl) + ":default" }

// DenySGLogName is the name of the default deny (no security-group rule
// allows).
const DenySGLogName = aclLogDenySG

// aclLog says how a row is logged: meter is the NB meter's name ("" for no
// meter); on is false for a row not logged.
type aclLog struct {
	on    bool
	meter string
}

// set writes the log columns of a logged ACL: name, log, severity and
// meter. Rows not logged keep them empty, so that flow logs appearing
// rewrite only the rows they log.
func (l aclLog) set(a *nbdb.ACL, name string) {
	if !l.on {
		return
	}
	a.Name, a.Log = &name, true
	sev := nbdb.ACLSeverity(ACLLogSeverity)
	a.Severity = &sev
	if l.meter != "" {
		m := l.meter
		a.Meter = &m
	}
}

// flowLogPlan is which ACL rows to log, from the flow logs and what they
// cover.
type flowLogPlan struct {
	logs   []*agentv1.FlowLogConfig // by id
	sg     map[uint32]aclLog        // security group -> its rules' rows
	subnet map[uint32]aclLog        // subnet -> its network ACL's rows
	// denyOf: the ports whose default deny is logged, by the flow log
	// (REJECT or ALL) covering them.
	denyOf map[uint32]*agentv1.FlowLogConfig
	meters map[uint32]bool // flow logs whose meter a row names
}

// planFlowLogs finds, for every port, the flow log that logs it (the
// narrowest, then the lowest id: as the agent picks) and from that the
// rows to log; a row applying to ports of several flow logs takes the
// lowest-numbered one's meter.
func planFlowLogs(objs map[string]*agentv1.Object, x *agentv1.Index) flowLogPlan {
	p := flowLogPlan{sg: map[uint32]aclLog{}, subnet: map[uint32]aclLog{}, denyOf: map[uint32]*agentv1.FlowLogConfig{}, meters: map[uint32]bool{}}
	for _, o := range objs {
		if c := o.GetFlowLog(); c != nil && c.GetVpcId() != 0 {
			p.logs = append(p.logs, c)
		}
	}
	if len(p.logs) == 0 {
		return p
	}
	slices.SortFunc(p.logs, func(a, b *agentv1.FlowLogConfig) int { return cmp.Compare(a.GetId(), b.GetId()) })
	lower := func(cur, c *agentv1.FlowLogConfig) *agentv1.FlowLogConfig {
		if cur == nil || c.GetId() < cur.GetId() {
			return c
		}
		return cur
	}
	log := func(c *agentv1.FlowLogConfig) aclLog {
		if c == nil {
			return aclLog{}
		}
		l := aclLog{on: true}
		if c.GetRateLimit() > 0 {
			l.meter = MeterName(c.GetId())
			p.meters[c.GetId()] = true
		}
		return l
	}
	sg, subnet := map[uint32]*agentv1.FlowLogConfig{}, map[uint32]*agentv1.FlowLogConfig{}
	for id, port := range x.Ports {
		c := coveringFlowLog(p.logs, port)
		if c == nil {
			continue
		}
		if c.GetTrafficType() != "REJECT" {
			for _, g := range port.GetSecurityGroupIds() {
				sg[g] = lower(sg[g], c)
			}
		}
		if c.GetTrafficType() != "ACCEPT" {
			subnet[port.GetSubnetId()] = lower(subnet[port.GetSubnetId()], c)
			if x.Subnets[port.GetSubnetId()] != nil { // else it has no switch port
				p.denyOf[id] = c
				log(c) // its meter
			}
		}
	}
	for g, c := range sg {
		p.sg[g] = log(c)
	}
	for s, c := range subnet {
		p.subnet[s] = log(c)
	}
	return p
}

// coveringFlowLog is the flow log that logs port p: the narrowest scope
// (port, subnet, VPC), then the lowest id (logs are sorted by id).
func coveringFlowLog(logs []*agentv1.FlowLogConfig, p *agentv1.Port) *agentv1.FlowLogConfig {
	var best *agentv1.FlowLogConfig
	bestRank := 0
	for _, c := range logs {
		r := 0
		switch {
		case c.GetPortId() != 0:
			if c.GetPortId() == p.GetId() {
				r = 3
			}
		case c.GetSubnetId() != 0:
			if c.GetSubnetId() == p.GetSubnetId() {
				r = 2
			}
		case c.GetVpcId() == p.GetVpcId():
			r = 1
		}
		if r > bestRank {
			best, bestRank = c, r
		}
	}
	return best
}

// renderMeters adds the meters the logged rows name.
func (d *Desired) renderMeters(p flowLogPlan) {
	for _, c := range p.logs {
		if !p.meters[c.GetId()] {
			continue
		}
		own := owner("flowlog", c.GetId())
		m := d.add(nbdb.MeterTable, own, own, "flowlog-meter", &nbdb.Meter{Name: MeterName(c.GetId()), Unit: nbdb.MeterUnitPktps})
		band := own + "/band"
		d.add(nbdb.MeterBandTable, band, own, "flowlog-meter-band", &nbdb.MeterBand{
			Action: nbdb.MeterBandActionDrop, Rate: int(c.GetRateLimit()), BurstSize: int(c.GetBurst()),
		})
		m.Refs["bands"] = []string{band}
	}
}

// renderFlowLogDeny adds flow log c's port group, of the ports whose
// default deny it logs (members are added by Render), with the logged
// default deny on it (see renderDefaultDeny).
func (d *Desired) renderFlowLogDeny(c *agentv1.FlowLogConfig) *Row {
	own := owner("flowlog", c.GetId())
	name := FlowLogPortGroupName(c.GetId())
	pg := d.add(nbdb.PortGroupTable, own+"/ports", own, "flowlog-ports", &nbdb.PortGroup{Name: name})
	pg.Refs["ports"] = []string{}
	l := aclLog{on: true}
	if c.GetRateLimit() > 0 {
		l.meter = MeterName(c.GetId())
	}
	for _, a := range []struct{ id, dir, match string }{
		{own + "/deny-from", nbdb.ACLDirectionFromLport, "inport == @" + name},
		{own + "/deny-to", nbdb.ACLDirectionToLport, "outport == @" + name},
	} {
		row := &nbdb.ACL{Direction: a.dir, Match: a.match, Action: nbdb.ACLActionDrop, Priority: PriorityDefaultDeny}
		l.set(row, DenySGLogName)
		d.add(nbdb.ACLTable, a.id, own, "flowlog-deny", row)
		pg.Refs["acls"] = append(pg.Refs["acls"], a.id)
	}
	return pg
}
