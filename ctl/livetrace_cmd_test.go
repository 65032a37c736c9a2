package ctl

import (
	"strings"
	"testing"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// TestCompareLive: a traced packet agrees with the model when it drops at
// the same stage, by the same object, rule (an ACL rule by its number) and
// reason, or when both let it through; any other outcome says DIFFERS.
func TestCompareLive(t *testing.T) {
	model := func(stage, object, rule, reason string) *v1.PacketTrace {
		m := &v1.PacketTrace{Stages: []*v1.TraceStage{{Stage: "source", Verdict: "pass"}}}
		if stage != "" {
			m.Stages = append(m.Stages, &v1.TraceStage{Stage: stage, Object: object, Rule: rule, Verdict: "drop"})
			m.DropReason = reason
		} else {
			m.Allowed = true
			m.Stages = append(m.Stages, &v1.TraceStage{Stage: "deliver", Verdict: "deliver"})
		}
		return m
	}
	live := func(stage, object, rule, reason string) *agentv1.LiveTracePacket {
		p := &agentv1.LiveTracePacket{Stages: []*agentv1.LiveTraceStage{{Stage: "source", Verdict: "pass"}}, Verdict: "DELIVERED"}
		if stage != "" {
			p.Stages = append(p.Stages, &agentv1.LiveTraceStage{Stage: stage, Object: object, Rule: rule, Verdict: "drop"})
			p.Verdict, p.DropReason = "DROPPED", reason
		}
		return p
	}
	acl := "projects/p/networkAcls/web"
	for _, c := range []struct {
		name string
		m    *v1.PacketTrace
		l    *agentv1.LiveTracePacket
		want string
	}{
		{"same ACL rule", model("acl-egress", acl, "100: deny tcp 23 to 0.0.0.0/0", "ACL_EGRESS"), live("acl-egress", acl, "100", "ACL_EGRESS"), "rule 100 (ACL_EGRESS), the data plane agrees"},
		{"other ACL rule", model("acl-egress", acl, "100: deny tcp 23", "ACL_EGRESS"), live("acl-egress", acl, "200", "ACL_EGRESS"), "DIFFERS: at acl-egress by " + acl + " rule 200"},
		{"no SG rule", model("sg-ingress", "g", "none", "SG_INGRESS"), live("sg-ingress", "g", "none", "SG_INGRESS"), "the data plane agrees"},
		{"both allow", model("", "", "", ""), live("", "", "", ""), "ALLOWED, the data plane agrees"},
		{"model allows", model("", "", "", ""), live("sg-ingress", "g", "none", "SG_INGRESS"), "ALLOWED; the data plane DIFFERS: dropped at sg-ingress"},
		{"model drops", model("sg-ingress", "g", "none", "SG_INGRESS"), live("", "", "", ""), "the data plane DIFFERS: delivered here"},
	} {
		if got := CompareLive(c.m, c.l); !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want it to contain %q", c.name, got, c.want)
		}
	}
}

// TestPrintLivePacketGateway: a packet traced on a gateway prints its
// gateway, nat and uplink stages with their objects, where it came from,
// and a verdict that says where it went; a drop at the gateway names the
// NAT gateway and the reason.
func TestPrintLivePacketGateway(t *testing.T) {
	ngw := "projects/p/natGateways/out"
	out := &agentv1.LiveTracePacket{Node: "gw1", Packet: "tcp 10.0.2.20:40000 -> 203.0.113.2:443 [SYN]", Entered: "overlay", Verdict: "TO_FABRIC",
		Stages: []*agentv1.LiveTraceStage{
			{Stage: "source", Verdict: "pass", Detail: "arrived over VXLAN (VNI 100) on node gw1"},
			{Stage: "nat", Verdict: "pass", Object: ngw, Rule: "10.0.2.20:40000 -> 198.51.100.20:61234", Detail: "source rewritten"},
			{Stage: "uplink", Verdict: "deliver", Object: "eth1", Rule: "next hop 203.0.113.254", Detail: "leaves toward the fabric"},
		}}
	in := &agentv1.LiveTracePacket{Node: "gw1", Packet: "tcp 203.0.113.2:5555 -> 198.51.100.20:9999 [SYN]", Entered: "uplink", Verdict: "DROPPED",
		DropReason: "NAT_NO_FLOW", Stages: []*agentv1.LiveTraceStage{
			{Stage: "source", Verdict: "pass", Object: "203.0.113.2"},
			{Stage: "gateway", Verdict: "pass", Object: ngw, Rule: "NAT gateway address 198.51.100.20"},
			{Stage: "gateway", Verdict: "drop", Object: ngw, Detail: "dropped at the gateway: nat-no-flow"},
		}}
	var b strings.Builder
	printLivePacket(&b, out, nil)
	printLivePacket(&b, in, nil)
	got := b.String()
	for _, want := range []string{
		"(from overlay)",
		"nat     pass     " + ngw + "  10.0.2.20:40000 -> 198.51.100.20:61234",
		"uplink  deliver  eth1",
		"live verdict: TO_FABRIC (left the gateway toward the fabric: beyond Meridian from here)",
		"(from uplink)",
		"live verdict: DROPPED at gateway by " + ngw + " rule - (NAT_NO_FLOW)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
}
