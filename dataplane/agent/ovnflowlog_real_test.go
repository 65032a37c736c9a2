package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/dataplane/plumbing"
)

// ovnFlowLogTopology: VPC 1; port 1 in subnet 11, port 2 in subnet 12,
// both on node n1 and in group 21 (TCP 8080 in, everything out). Subnet
// 12's network ACL 31 denies telnet in as rule number 100 and allows the
// rest; flow log 9 logs the VPC (ALL, 100 new flows/s, 1 s interval).
func ovnFlowLogTopology(path string) map[string]*agentv1.Object {
	rule := func(id, number uint32, allow, ingress bool, proto, port uint32) *agentv1.Rule {
		return &agentv1.Rule{Id: id, Number: number, Allow: allow, Ingress: ingress, Protocol: proto,
			PortMin: port, PortMax: port, IcmpType: -1, IcmpCode: -1}
	}
	port := func(id, subnet uint32, ip string) *agentv1.Port {
		return &agentv1.Port{Id: id, Name: "projects/p/ports/p" + strconv.Itoa(int(id)), VpcId: 1, SubnetId: subnet,
			Mac: "02:00:00:00:00:0" + strconv.Itoa(int(id)), Ips: []string{ip}, Node: "n1", SecurityGroupIds: []uint32{21}, SourceDestCheck: true}
	}
	bodies := []*agentv1.Object{
		{Key: "vpc/1", Body: &agentv1.Object_Vpc{Vpc: &agentv1.Vpc{Id: 1, Name: "projects/p/vpcs/v", Vni: 1001, Cidrs: []string{"10.0.0.0/16"}}}},
		{Key: "subnet/11", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 11, VpcId: 1, Name: "projects/p/subnets/a",
			Cidr: "10.0.1.0/24", GatewayIp: "10.0.1.1", Mtu: 1450}}},
		{Key: "subnet/12", Body: &agentv1.Object_Subnet{Subnet: &agentv1.Subnet{Id: 12, VpcId: 1, Name: "projects/p/subnets/b",
			Cidr: "10.0.2.0/24", GatewayIp: "10.0.2.1", Mtu: 1450, NetworkAclId: 31}}},
		{Key: "port/1", Body: &agentv1.Object_Port{Port: port(1, 11, "10.0.1.10")}},
		{Key: "port/2", Body: &agentv1.Object_Port{Port: port(2, 12, "10.0.2.10")}},
		{Key: "sg/21", Body: &agentv1.Object_SecurityGroup{SecurityGroup: &agentv1.SecurityGroup{Id: 21, VpcId: 1,
			Name: "projects/p/securityGroups/web", Rules: []*agentv1.Rule{rule(1, 0, true, true, 6, 8080), rule(2, 0, true, false, 0, 0)}}}},
		{Key: "acl/31", Body: &agentv1.Object_NetworkAcl{NetworkAcl: &agentv1.NetworkAcl{Id: 31, VpcId: 1, Name: "projects/p/networkAcls/strict",
			Rules: []*agentv1.Rule{rule(5, 100, false, true, 6, 23), rule(6, 200, true, true, 0, 0), rule(7, 100, true, false, 0, 0)}}}},
		{Key: "flowlog/9", Body: &agentv1.Object_FlowLog{FlowLog: &agentv1.FlowLogConfig{Id: 9, Name: "projects/p/flowLogs/f",
			Project: "projects/p", VpcId: 1, TrafficType: "ALL", FilePath: path, AggregationInterval: 1, RateLimit: 100}}},
	}
	out := map[string]*agentv1.Object{}
	for _, o := range bodies {
		out[o.Key] = o
	}
	return out
}

// TestFlowLogOnOVN runs flow logs on a real chassis: the controller's
// rendering in a real NB, ovn-controller and userspace ovs-vswitchd
// logging the ACLs, and the agent's OVN flow logs following
// ovn-controller's log. A real TCP connection gives ACCEPT records naming
// the security-group rules at both ports; a telnet attempt a REJECT record
// naming network ACL rule 100; a flood of 1,000 rejected UDP packets is
// cut by the flow log's meter (100/s) to about that, and every packet OVN
// logged is counted in the flood's record.
func TestFlowLogOnOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	hv := stack.StartChassis("n1")
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	objs := ovnFlowLogTopology(path)

	r, err := ovn.NewReconciler(ovn.Config{NB: stack.NB.Endpoint(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Debounce: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()
	if err := r.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Sync(ctx, objs); err != nil {
		t.Fatal(err)
	}
	w1 := hv.Plug(ovn.LogicalPortName(1), "02:00:00:00:00:01", "10.0.1.10/24", "10.0.1.1")
	w2 := hv.Plug(ovn.LogicalPortName(2), "02:00:00:00:00:02", "10.0.2.10/24", "10.0.2.1")
	hv.WaitUp(ovn.LogicalPortName(1))
	hv.WaitUp(ovn.LogicalPortName(2))
	stack.NBCtl("--wait=hv", "sync")

	ctlLog := filepath.Join(hv.Dir, "ovn-controller.log")
	f := newOVNFlowLogs(slog.New(slog.NewTextHandler(io.Discard, nil)), "n1", ctlLog)
	f.apply(objs, agentv1.IndexObjects(objs), "n1", func(key string, err error) { t.Errorf("%s: %v", key, err) })
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.run(runCtx) }()
	defer func() { stop(); <-done }()
	// The follower opens the log at its end: until it has, what OVN logs
	// is not read. A marker line it counts (an acl_log line it cannot
	// parse), written until it is counted, says it has.
	marker := fmt.Sprintf("%s|00001|acl_log(ovn_pinctrl0)|INFO|test marker, not an ACL log\n", time.Now().UTC().Format("2006-01-02T15:04:05.000Z"))
	for deadline := time.Now().Add(10 * time.Second); ; {
		lf, err := os.OpenFile(ctlLog, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		lf.WriteString(marker)
		lf.Close()
		time.Sleep(ovnLogPoll)
		f.mu.Lock()
		seen := f.unparsable
		f.mu.Unlock()
		if seen > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the OVN flow-log follower read nothing of ovn-controller's log in 10 s")
		}
	}

	// waitFor polls the flow-log file until a record matches.
	waitFor := func(what string, match func(FlowRecord) bool) (FlowRecord, time.Time) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			for _, rec := range readOVNRecords(t, path) {
				if match(rec) {
					return rec, time.Now()
				}
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(path)
				t.Fatalf("no %s record after 10 s; flow log:\n%s", what, b)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// A real TCP connection, allowed by group 21's rules.
	ln := listenIn(t, w2.Netns, "tcp4", "10.0.2.10:8080")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	var conn net.Conn
	var syn time.Time
	deadline := time.Now().Add(10 * time.Second)
	for {
		syn = time.Now()
		err = plumbing.RunInNetns("/run/netns/"+w1.Netns, func() error {
			var err error
			conn, err = net.DialTimeout("tcp4", "10.0.2.10:8080", time.Second)
			return err
		})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TCP 10.0.1.10 -> 10.0.2.10:8080: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	clientPort := uint16(conn.LocalAddr().(*net.TCPAddr).Port)
	conn.Close()
	isConn := func(rec FlowRecord) bool {
		return rec.Protocol == 6 && rec.SrcPort == clientPort && rec.DstPort == 8080 &&
			rec.SrcAddr.String() == "10.0.1.10" && rec.DstAddr.String() == "10.0.2.10"
	}
	in, seen := waitFor("ACCEPT at port 2", func(rec FlowRecord) bool { return isConn(rec) && rec.Direction == "ingress" })
	t.Logf("SYN to its record in the flow-log file: %v (aggregation interval 1 s)", seen.Sub(syn).Round(time.Millisecond))
	if in.Action != "ACCEPT" || in.InterfaceID != "projects/p/ports/p2" || in.SecurityGroup != "projects/p/securityGroups/web" ||
		in.SGRuleID != 1 || in.Rule != "allowed by security group projects/p/securityGroups/web rule 1" ||
		in.Packets != 1 || in.Bytes != 0 || in.LogStatus != OVNLogStatus || in.SubnetID != "projects/p/subnets/b" ||
		in.VPCID != "projects/p/vpcs/v" || in.FlowLog != "projects/p/flowLogs/f" || in.Node != "n1" {
		t.Errorf("ingress ACCEPT record %+v", in)
	}
	out, _ := waitFor("ACCEPT at port 1", func(rec FlowRecord) bool { return isConn(rec) && rec.Direction == "egress" })
	if out.Action != "ACCEPT" || out.InterfaceID != "projects/p/ports/p1" || out.SGRuleID != 2 || out.Packets != 1 {
		t.Errorf("egress ACCEPT record %+v", out)
	}

	// Telnet is denied by network ACL 31 rule 100 (SYNs retried: one
	// record of their packets).
	_ = plumbing.RunInNetns("/run/netns/"+w1.Netns, func() error {
		c, err := net.DialTimeout("tcp4", "10.0.2.10:23", 1500*time.Millisecond)
		if err == nil {
			c.Close()
			t.Errorf("telnet to port 2 connected through network ACL rule 100")
		}
		return nil
	})
	rej, _ := waitFor("REJECT of telnet", func(rec FlowRecord) bool { return rec.DstPort == 23 && rec.Action == "REJECT" })
	if rej.InterfaceID != "projects/p/ports/p2" || rej.ACL != "projects/p/networkAcls/strict" || rej.ACLRule != 100 ||
		rej.Rule != "denied by network ACL projects/p/networkAcls/strict rule 100" || rej.DropReason != "acl-ingress" ||
		rej.Direction != "ingress" || rej.Packets < 1 {
		t.Errorf("REJECT record %+v", rej)
	}

	// A flood: 1,000 UDP packets of one flow, which no rule lets in.
	const flood = 1000
	var sent time.Duration
	err = plumbing.RunInNetns("/run/netns/"+w1.Netns, func() error {
		c, err := net.Dial("udp4", "10.0.2.10:9999")
		if err != nil {
			return err
		}
		defer c.Close()
		start := time.Now()
		for range flood {
			if _, err := c.Write([]byte("flood")); err != nil {
				return err
			}
		}
		sent = time.Since(start)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	isFlood := func(rec FlowRecord) bool {
		return rec.Protocol == 17 && rec.DstPort == 9999 && rec.Direction == "ingress"
	}
	fl, _ := waitFor("REJECT of the flood", isFlood)
	// The flood's last log lines reach a record at the next flush: wait
	// until the records count every flood line ovn-controller wrote (the
	// checks below say what differs if they never do).
	var logged, lines uint64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		logged, lines = 0, 0
		for _, rec := range readOVNRecords(t, path) {
			if isFlood(rec) {
				logged += rec.Packets
			}
		}
		b, err := os.ReadFile(ctlLog)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "acl_log") && strings.Contains(l, "direction=to-lport: udp") && strings.Contains(l, "tp_dst=9999") {
				lines++
			}
		}
		if (logged > 0 && logged == lines) || time.Now().After(deadline) {
			break
		}
	}
	limit := uint64(100*max(1, sent.Seconds()+0.5)) + 100 // the rate over the flood, and a burst's worth
	t.Logf("flood of %d packets sent in %v: OVN logged %d of them, the flow log counted %d", flood, sent.Round(time.Millisecond), lines, logged)
	if fl.Action != "REJECT" || fl.Rule != "no security-group rule allows it (default deny)" || fl.InterfaceID != "projects/p/ports/p2" {
		t.Errorf("flood record %+v", fl)
	}
	if logged == 0 || logged > limit {
		t.Errorf("the flood's records count %d packets, want 1..%d (the meter's 100/s)", logged, limit)
	}
	if logged != lines {
		t.Errorf("the records count %d packets, ovn-controller logged %d", logged, lines)
	}
	if lines > flood/2 {
		t.Errorf("ovn-controller logged %d of %d packets: the meter (100/s) did not cut the flood", lines, flood)
	}
}

// listenIn listens on addr in namespace ns until the test ends.
func listenIn(t *testing.T, ns, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	err := plumbing.RunInNetns("/run/netns/"+ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
