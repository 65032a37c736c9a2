package agent

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

// ovnFlowObjects: VPC 1 with subnets 11 and 12; ports 1, 2 (subnet 11,
// group 21) and 3 (subnet 12, network ACL 31) on node n1, port 4 on n2;
// flow log 9 (ALL) on the VPC writing to path.
func ovnFlowObjects(path string, mod func(*agentv1.FlowLogConfig)) map[string]*agentv1.Object {
	fl := &agentv1.FlowLogConfig{Id: 9, Name: "projects/p/flowLogs/f", Project: "projects/p", VpcId: 1,
		TrafficType: "ALL", FilePath: path, AggregationInterval: 1}
	if mod != nil {
		mod(fl)
	}
	port := func(id, subnet uint32, mac, node string) *agentv1.Object {
		return &agentv1.Object{Key: "port/" + strconv.Itoa(int(id)), Body: &agentv1.Object_Port{Port: &agentv1.Port{
			Id: id, Name: "projects/p/ports/p" + strconv.Itoa(int(id)), VpcId: 1, SubnetId: subnet, Mac: mac, Node: node}}}
	}
	objs := []*agentv1.Object{
		{Key: "vpc/1", Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{Id: 1, Name: "projects/p/vpcs/v"}}},
		{Key: "subnet/11", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 11, VpcId: 1, Name: "projects/p/subnets/a"}}},
		{Key: "subnet/12", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 12, VpcId: 1, Name: "projects/p/subnets/b", NetworkAclId: 31}}},
		port(1, 11, "02:00:00:00:00:01", "n1"), port(2, 11, "02:00:00:00:00:02", "n1"),
		port(3, 12, "02:00:00:00:00:03", "n1"), port(4, 11, "02:00:00:00:00:04", "n2"),
		{Key: "sg/21", Body: &agentv1.Object_SecurityGroup{SecurityGroup: &agentv1.SecurityGroup{Id: 21, Name: "projects/p/securityGroups/web"}}},
		{Key: "acl/31", Body: &agentv1.Object_NetworkAcl{NetworkAcl: &agentv1.NetworkAcl{Id: 31, Name: "projects/p/networkAcls/strict"}}},
		{Key: "flowlog/9", Body: &agentv1.Object_FlowLog{FlowLog: fl}},
	}
	out := map[string]*agentv1.Object{}
	for _, o := range objs {
		out[o.Key] = o
	}
	return out
}

func readOVNRecords(t *testing.T, path string) []FlowRecord {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []FlowRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r FlowRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

func applyOVN(t *testing.T, f *ovnFlowLogs, objs map[string]*agentv1.Object) {
	t.Helper()
	f.apply(objs, agentv1.IndexObjects(objs), "n1", func(key string, err error) { t.Errorf("%s: %v", key, err) })
}

// TestOVNFlowLogRecords: acl_log lines become the records of the flow log
// covering the port, named after the rule; lines of ports no flow log
// covers (or another node's) are not logged; drops of one flow aggregate
// within the interval.
func TestOVNFlowLogRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.log")
	f := newOVNFlowLogs(slog.New(slog.NewTextHandler(io.Discard, nil)), "n1", "/nonexistent")
	applyOVN(t, f, ovnFlowObjects(path, nil))
	now := time.Now()
	f.line(aclLogICMP, now) // port 1 egress, allowed by sg 21 rule 2
	for range 3 {
		f.line(aclLogTCP, now) // port 3 ingress, denied by ACL 31 rule 100
	}
	f.line(aclLogDeny, now) // port 4: another node's
	f.line("2026-11-27T12:45:23.434Z|00001|vlog|INFO|opened log file", now)
	f.line(strings.Replace(aclLogTCP, "tp_dst=23", "tp_dst=x", 1), now)
	// The local API's stream follows the same records (port 3's only).
	fw, stopFollow := (&Agent{ovnflow: f}).followFlowLogs("", "projects/p/ports/p3")
	defer stopFollow()
	f.flush(now.Add(500*time.Millisecond), false)
	if rs := readOVNRecords(t, path); len(rs) != 0 {
		t.Fatalf("records before the interval ended: %+v", rs)
	}
	f.flush(now.Add(time.Second), false)
	rs := readOVNRecords(t, path)
	slices.SortFunc(rs, func(a, b FlowRecord) int { return strings.Compare(a.Action, b.Action) })
	if len(rs) != 2 {
		t.Fatalf("records %+v, want an ACCEPT and a REJECT", rs)
	}
	a, r := rs[0], rs[1]
	select {
	case lines := <-fw.ch:
		if len(lines) != 1 || !strings.Contains(lines[0], `"acl-rule":100`) {
			t.Errorf("follower of port 3 got %q", lines)
		}
	default:
		t.Error("the follower got no records")
	}
	if a.Action != "ACCEPT" || a.InterfaceID != "projects/p/ports/p1" || a.Direction != "egress" || a.Protocol != 1 ||
		a.SrcAddr.String() != "10.0.1.10" || a.DstAddr.String() != "10.0.1.11" || a.Packets != 1 || a.Bytes != 0 ||
		a.SecurityGroup != "projects/p/securityGroups/web" || a.SGRuleID != 2 ||
		a.Rule != "allowed by security group projects/p/securityGroups/web rule 2" || a.LogStatus != OVNLogStatus ||
		a.VPCID != "projects/p/vpcs/v" || a.SubnetID != "projects/p/subnets/a" || a.FlowLog != "projects/p/flowLogs/f" ||
		a.AccountID != "projects/p" || a.Node != "n1" || a.Start != a.End {
		t.Errorf("accept record %+v", a)
	}
	if r.Action != "REJECT" || r.InterfaceID != "projects/p/ports/p3" || r.Direction != "ingress" || r.Protocol != 6 ||
		r.SrcPort != 40000 || r.DstPort != 23 || r.Packets != 3 || r.ACL != "projects/p/networkAcls/strict" || r.ACLRule != 100 ||
		r.Rule != "denied by network ACL projects/p/networkAcls/strict rule 100" || r.DropReason != "acl-ingress" ||
		r.SubnetID != "projects/p/subnets/b" {
		t.Errorf("reject record %+v", r)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newOVNFlowLogCollector(f))
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "/" + l.GetValue()
			}
			got[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	for name, want := range map[string]float64{
		"meridian_agent_ovn_flowlog_lines_total/logged": 2, "meridian_agent_ovn_flowlog_lines_total/aggregated": 2,
		"meridian_agent_ovn_flowlog_lines_total/uncovered": 1, "meridian_agent_ovn_flowlog_lines_total/unparsable": 1,
		"meridian_agent_ovn_flowlog_records_total": 2, "meridian_agent_ovn_flowlog_tracked_flows": 0,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}

	t.Run("traffic type, default deny and network ACL default", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "flows.log")
		applyOVN(t, f, ovnFlowObjects(path, func(c *agentv1.FlowLogConfig) { c.TrafficType = "REJECT" }))
		f.line(aclLogICMP, now) // an accept: not this flow log's
		f.line(strings.Replace(aclLogDeny, "02:00:00:00:00:04", "02:00:00:00:00:02", 1), now)
		f.line(strings.Replace(aclLogIP, "02:00:00:00:00:01", "02:00:00:00:00:03", 1), now)
		f.flush(now.Add(time.Second), false)
		rs := readOVNRecords(t, path)
		slices.SortFunc(rs, func(a, b FlowRecord) int { return strings.Compare(a.Rule, b.Rule) })
		if len(rs) != 2 || rs[0].Rule != "no rule of network ACL projects/p/networkAcls/strict matches (default deny)" ||
			rs[0].DropReason != "acl-egress" || rs[0].Protocol != 47 ||
			rs[1].Rule != "no security-group rule allows it (default deny)" || rs[1].DropReason != "sg-ingress" ||
			rs[1].InterfaceID != "projects/p/ports/p2" {
			t.Errorf("records %+v", rs)
		}
	})
	t.Run("rate limit and sampling count new flows", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "flows.log")
		applyOVN(t, f, ovnFlowObjects(path, func(c *agentv1.FlowLogConfig) { c.RateLimit, c.Burst = 10, 10 }))
		for i := range 100 { // 100 flows at once: the burst is logged
			f.line(strings.Replace(aclLogTCP, "tp_src=40000", "tp_src="+strconv.Itoa(40000+i), 1), now)
		}
		f.flush(now.Add(time.Second), false)
		if rs := readOVNRecords(t, path); len(rs) != 10 {
			t.Errorf("%d records of 100 flows with a burst of 10", len(rs))
		}
		path = filepath.Join(t.TempDir(), "flows.log")
		applyOVN(t, f, ovnFlowObjects(path, func(c *agentv1.FlowLogConfig) { c.Sampling = 4 }))
		for i := range 400 {
			f.line(strings.Replace(aclLogTCP, "tp_src=40000", "tp_src="+strconv.Itoa(40000+i), 1), now)
		}
		f.flush(now.Add(time.Second), false)
		if n := len(readOVNRecords(t, path)); n < 60 || n > 140 {
			t.Errorf("%d records of 400 flows sampled 1 in 4", n)
		}
	})
}

// TestLogTail follows a file through appends, a partial line, rotation
// and truncation.
func TestLogTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ovn-controller.log")
	if err := os.WriteFile(path, []byte("old line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var got []string
	tail := &logTail{path: path}
	defer tail.close()
	poll := func() {
		t.Helper()
		if err := tail.poll(func(s string) { got = append(got, s) }); err != nil {
			t.Fatal(err)
		}
	}
	appendTo := func(s string) {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(s)
		f.Close()
	}
	poll() // from the end: the old line is not replayed
	appendTo("a\nb")
	poll()
	appendTo("c\n")
	poll()
	appendTo("before rotation\n")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendTo("after rotation\n")
	poll() // the rest of the old file, then notices the new one
	poll()
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	poll()
	appendTo("after truncation\n")
	poll()
	want := []string{"a", "bc", "before rotation", "after rotation", "after truncation"}
	if !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}

	missing := &logTail{path: filepath.Join(t.TempDir(), "later.log")}
	if err := missing.poll(func(string) {}); err == nil {
		t.Error("no error for a missing file")
	}
	os.WriteFile(missing.path, []byte("first\n"), 0o644)
	got = nil
	if err := missing.poll(func(s string) { got = append(got, s) }); err != nil || !slices.Equal(got, []string{"first"}) {
		t.Errorf("a file appearing later: %q, %v; want it read from its start", got, err)
	}
	missing.close()
}

func TestValidateOVNControllerLog(t *testing.T) {
	for _, c := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{Config{Realization: RealizationOVN, OVNControllerLog: "/var/log/ovn/ovn-controller.log"}, true},
		{Config{Realization: RealizationOVN, OVNControllerLog: "ovn-controller.log"}, false},
		{Config{Realization: RealizationEBPF, OVNControllerLog: "/var/log/ovn/ovn-controller.log"}, false},
	} {
		if err := validateOVNControllerLog(c.cfg); (err == nil) != c.ok {
			t.Errorf("validateOVNControllerLog(%+v) = %v", c.cfg, err)
		}
	}
}
