package ovn

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/nbdb"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
)

// loggedACLs returns the logged ACL rows of a rendering: meridian:id ->
// "name meter" ("-" for no meter). It also checks that every logged row
// has the severity the agent expects and every other row no log columns.
func loggedACLs(t *testing.T, d *Desired) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, r := range d.Rows(nbdb.ACLTable) {
		a := r.Model.(*nbdb.ACL)
		if !a.Log {
			if a.Name != nil || a.Meter != nil || a.Severity != nil {
				t.Errorf("ACL %s is not logged but has name %v, meter %v, severity %v", r.ID, a.Name, a.Meter, a.Severity)
			}
			continue
		}
		if a.Name == nil || a.Severity == nil || *a.Severity != ACLLogSeverity {
			t.Errorf("logged ACL %s: name %v, severity %v", r.ID, a.Name, a.Severity)
			continue
		}
		if a.Action == nbdb.ACLActionAllowRelated {
			// A logged allow is a copy of the rule for new connections
			// only, above the rule, which stays.
			orig := d.Row(nbdb.ACLTable, strings.TrimSuffix(r.ID, "/log"))
			if !strings.HasSuffix(r.ID, "/log") || orig == nil || a.Priority != PrioritySGLogged ||
				a.Match != "ct.new && "+orig.Model.(*nbdb.ACL).Match || orig.Model.(*nbdb.ACL).Priority != PrioritySG {
				t.Errorf("logged allow %s: priority %d, match %q; rule %v", r.ID, a.Priority, a.Match, orig)
			}
		}
		m := "-"
		if a.Meter != nil {
			m = *a.Meter
		}
		out[r.ID] = *a.Name + " " + m
	}
	return out
}

// TestRenderLogsTheACLsOfCoveredPorts: the fixture's port 101 (subnet 11,
// group 21) is covered by a port flow log; port 102 (groups 21 and 22)
// and port 103 (subnet 12, no group) by none. Exactly the rows that decide
// port 101's packets are logged, named after their rules, metered by the
// flow log's meter; ACCEPT logs only allows, REJECT only drops.
func TestRenderLogsTheACLsOfCoveredPorts(t *testing.T) {
	withLog := func(c *agentv1.FlowLogConfig) map[string]*agentv1.Object {
		return mergeObjects(fixture(), objects(c))
	}
	sg21 := map[string]string{
		"sg/21/rule/1/log": "sg:21:1 mer-fl-9",
		"sg/21/rule/2/log": "sg:21:2 mer-fl-9",
		"sg/21/rule/3/log": "sg:21:3 mer-fl-9",
	}
	drops := map[string]string{
		"flowlog/9/deny-from": "deny:sg mer-fl-9",
		"flowlog/9/deny-to":   "deny:sg mer-fl-9",
	}
	// Subnet 11's network ACL rows: rule 100 (ingress, telnet), rule 110
	// (egress UDP) and the closing denies.
	for _, r := range Render(fixture()).Rows(nbdb.ACLTable) {
		if ext := r.Model.(*nbdb.ACL).ExternalIDs; ext[KeyOwner] == "acl/31" {
			name := "acl:31:default"
			switch ext[KeyKind] {
			case "nacl-rule":
				name = map[string]string{"acl/31/subnet/11/rule/5": "acl:31:100", "acl/31/subnet/11/rule/8": "acl:31:110"}[r.ID]
				if name == "" {
					t.Fatalf("unexpected network ACL row %s", r.ID)
				}
			}
			drops[r.ID] = name + " mer-fl-9"
		}
	}
	if len(drops) < 5 {
		t.Fatalf("fixture has %d drop rows, want the default deny, two rules and a closing deny", len(drops))
	}
	cases := []struct {
		name    string
		objs    map[string]*agentv1.Object
		want    map[string]string
		meterOn bool
	}{
		{"no flow log, nothing logged", fixture(), map[string]string{}, false},
		{"ALL on a port: its group's allows and its subnet's drops",
			withLog(&agentv1.FlowLogConfig{Id: 9, VpcId: 1, PortId: 101, TrafficType: "ALL", RateLimit: 100, Burst: 20}),
			merged(sg21, drops), true},
		{"ACCEPT: allows only",
			withLog(&agentv1.FlowLogConfig{Id: 9, VpcId: 1, PortId: 101, TrafficType: "ACCEPT", RateLimit: 100, Burst: 20}),
			sg21, true},
		{"REJECT: drops only",
			withLog(&agentv1.FlowLogConfig{Id: 9, VpcId: 1, PortId: 101, TrafficType: "REJECT", RateLimit: 100, Burst: 20}),
			drops, true},
		{"no rate limit, no meter",
			withLog(&agentv1.FlowLogConfig{Id: 9, VpcId: 1, PortId: 101, TrafficType: "ACCEPT"}),
			map[string]string{"sg/21/rule/1/log": "sg:21:1 -", "sg/21/rule/2/log": "sg:21:2 -", "sg/21/rule/3/log": "sg:21:3 -"}, false},
		{"a flow log of another VPC covers nothing",
			withLog(&agentv1.FlowLogConfig{Id: 9, VpcId: 2, TrafficType: "ALL", RateLimit: 100}), map[string]string{}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Render(c.objs)
			got := loggedACLs(t, d)
			if !maps.Equal(got, c.want) {
				t.Errorf("logged ACLs:\n got %v\nwant %v", got, c.want)
			}
			// The default deny: logged on the flow log's own port group of
			// the ports it covers, unlogged on the group of the others.
			deny := d.Row(nbdb.ACLTable, "global/ports/deny-to").Model.(*nbdb.ACL)
			fl, unlogged := d.Row(nbdb.PortGroupTable, "flowlog/9/ports"), d.Row(nbdb.PortGroupTable, "global/ports-unlogged")
			if _, ok := c.want["flowlog/9/deny-to"]; ok {
				if deny.Match != "outport == @"+UnloggedPortsGroup || fl == nil || unlogged == nil ||
					!slices.Equal(fl.Refs["ports"], []string{"port/101"}) || !slices.Equal(unlogged.Refs["ports"], []string{"port/102", "port/103"}) ||
					!slices.Equal(fl.Refs["acls"], []string{"flowlog/9/deny-from", "flowlog/9/deny-to"}) {
					t.Errorf("default deny %q; flow log's port group %+v, unlogged ports %+v", deny.Match, fl, unlogged)
				}
			} else if deny.Match != "outport == @"+AllPortsGroup || fl != nil || unlogged != nil {
				t.Errorf("default deny %q, port groups %+v %+v without a logged default deny", deny.Match, fl, unlogged)
			}
			meters := d.Rows(nbdb.MeterTable)
			if !c.meterOn {
				if len(meters) != 0 || len(d.Rows(nbdb.MeterBandTable)) != 0 {
					t.Errorf("meters %v, want none", ids(meters))
				}
				return
			}
			if len(meters) != 1 {
				t.Fatalf("meters %v, want mer-fl-9", ids(meters))
			}
			m := meters[0].Model.(*nbdb.Meter)
			bands := d.Rows(nbdb.MeterBandTable)
			if m.Name != "mer-fl-9" || m.Unit != nbdb.MeterUnitPktps || len(bands) != 1 ||
				!slices.Equal(meters[0].Refs["bands"], []string{bands[0].ID}) {
				t.Fatalf("meter %+v refs %v, bands %v", m, meters[0].Refs, ids(bands))
			}
			if b := bands[0].Model.(*nbdb.MeterBand); b.Rate != 100 || b.BurstSize != 20 || b.Action != nbdb.MeterBandActionDrop {
				t.Errorf("band %+v, want drop above 100/s with burst 20", b)
			}
		})
	}

	t.Run("a narrower flow log takes the port; a row shared by two flow logs has the lower one's meter", func(t *testing.T) {
		objs := mergeObjects(fixture(), objects(
			&agentv1.FlowLogConfig{Id: 9, VpcId: 1, TrafficType: "ACCEPT", RateLimit: 100}, // the VPC: every port
			&agentv1.FlowLogConfig{Id: 5, VpcId: 1, PortId: 102, TrafficType: "REJECT", RateLimit: 10},
		))
		got := loggedACLs(t, Render(objs))
		// Port 102 is logged by flow log 5 (REJECT), so group 22 (only
		// port 102's) is not logged; group 21 is, for port 101 (flow log
		// 9). The drops are flow log 5's, for port 102 in subnet 11.
		want := merged(sg21)
		for id, v := range drops {
			want[strings.Replace(id, "flowlog/9/", "flowlog/5/", 1)] = v[:len(v)-len("mer-fl-9")] + "mer-fl-5"
		}
		if !maps.Equal(got, want) {
			t.Errorf("logged ACLs:\n got %v\nwant %v", got, want)
		}
	})
}

func merged(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

// TestFlowLogRowsReachNB: the logged ACLs and their meter are written to a
// real NB, are accepted by its schema, and go away with the flow log.
func TestFlowLogRowsReachNB(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	r := connect(t, stack.NB.Endpoint(), nil)
	objs := mergeObjects(fixture(), objects(&agentv1.FlowLogConfig{Id: 9, VpcId: 1, PortId: 101, TrafficType: "ALL", RateLimit: 100, Burst: 20}))
	mustSync(t, r, objs)
	assertNBMatches(t, r, Render(objs))
	if out := stack.NBCtl("--bare", "--columns=name,unit", "list", "Meter"); out != "mer-fl-9\npktps" {
		t.Errorf("NB meters: %q", out)
	}
	if out := stack.NBCtl("--bare", "--columns=rate,burst_size", "list", "Meter_Band"); out != "100\n20" {
		t.Errorf("NB meter bands: %q", out)
	}
	if out := stack.NBCtl("--bare", "--columns=meter", "find", "ACL", "name=sg\\:21\\:1", "log=true", "severity=info"); out != "mer-fl-9" {
		t.Errorf("ACL sg:21:1 meter: %q", out)
	}
	mustSync(t, r, fixture())
	assertNBMatches(t, r, Render(fixture()))
	if out := stack.NBCtl("--bare", "--columns=name", "find", "ACL", "log=true"); out != "" {
		t.Errorf("ACLs still logged after the flow log went: %q", out)
	}
	if out := stack.NBCtl("--bare", "--columns=_uuid", "list", "Meter_Band"); out != "" {
		t.Errorf("meter bands left: %q", out)
	}
}

// TestRunFollowsFlowLogsInTheStore: a FlowLog resource written to the
// store, compiled by package model as the controller does, logs the
// covered port's ACLs with its meter; deleting it takes both away.
func TestRunFollowsFlowLogsInTheStore(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "meridian.db"), store.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	vpc := &mv1.Vpc{Name: "projects/p/vpcs/v", CidrBlocks: []string{"10.0.0.0/16"}, Id: 1, Vni: 1001}
	subnet := &mv1.Subnet{Name: "projects/p/vpcs/v/subnets/s", CidrBlock: "10.0.1.0/24", Id: 11}
	p := &mv1.Port{Name: "projects/p/ports/web", Subnet: subnet.Name, MacAddress: "02:00:00:00:01:05",
		FixedIps: []string{"10.0.1.5"}, Id: 105}
	put(t, st, vpc, subnet, p)
	r := runReconciler(t, ovntest.InMemoryNB(t), nil, st)
	waitSynced(t, r, st.Revision())

	fl := &mv1.FlowLog{Name: "projects/p/flowLogs/f", Vpc: vpc.Name, Resource: p.Name, TrafficType: "REJECT",
		RateLimit: 50, Burst: 5, AggregationInterval: 60, Id: 7}
	waitSynced(t, r, put(t, st, fl))
	m, ok := meridianRows(r, nbdb.MeterTable)["flowlog/7"].(*nbdb.Meter)
	if !ok || m.Name != "mer-fl-7" {
		t.Fatalf("meter of the flow log: %+v", m)
	}
	deny, ok := meridianRows(r, nbdb.ACLTable)["flowlog/7/deny-to"].(*nbdb.ACL)
	if !ok || !deny.Log || deny.Meter == nil || *deny.Meter != "mer-fl-7" || deny.Name == nil || *deny.Name != DenySGLogName ||
		deny.Match != "outport == @mer_fl_7" {
		t.Fatalf("logged default deny of the flow log's port: %+v", deny)
	}

	rev, err := st.Update(context.Background(), func(tx store.Tx) error {
		return tx.Delete(resource.KindFlowLog.Key(fl.Name))
	})
	if err != nil {
		t.Fatal(err)
	}
	waitSynced(t, r, rev)
	if n := len(meridianRows(r, nbdb.MeterTable)); n != 0 {
		t.Errorf("%d meters left after the flow log was deleted", n)
	}
	if deny := meridianRows(r, nbdb.ACLTable)["global/ports/deny-to"].(*nbdb.ACL); deny.Log || deny.Match != "outport == @mer_ports" {
		t.Errorf("default deny after the flow log went: %+v", deny)
	}
	if n := len(meridianRows(r, nbdb.PortGroupTable)); n != 1 {
		t.Errorf("%d port groups left, want mer_ports only", n)
	}
}
