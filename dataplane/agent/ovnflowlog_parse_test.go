package agent

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Lines as ovn-controller 23.03 writes them (the first two copied from a
// real chassis' log).
const (
	aclLogICMP = `2026-11-27T12:45:23.434Z|00004|acl_log(ovn_pinctrl0)|INFO|name="sg:21:2", verdict=allow, severity=info, direction=from-lport: icmp,vlan_tci=0x0000,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,nw_src=10.0.1.10,nw_dst=10.0.1.11,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0`
	aclLogDeny = `2026-11-27T12:45:23.859Z|00011|acl_log(ovn_pinctrl0)|INFO|name="deny:sg", verdict=drop, severity=info, direction=to-lport: icmp,vlan_tci=0x0000,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:04,nw_src=10.0.1.10,nw_dst=10.0.1.12,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=8,icmp_code=0`
	aclLogTCP  = `2026-11-27T12:45:24.001Z|00012|acl_log(ovn_pinctrl0)|INFO|name="acl:31:100", verdict=drop, severity=info, direction=to-lport: tcp,vlan_tci=0x0000,dl_src=0A:4D:52:00:00:01,dl_dst=02:00:00:00:00:03,nw_src=10.0.1.10,nw_dst=10.0.2.10,nw_tos=0,nw_ecn=0,nw_ttl=63,nw_frag=no,tp_src=40000,tp_dst=23,tcp_flags=syn`
	aclLogUDP6 = `2026-11-27T12:45:24.002Z|00013|acl_log(ovn_pinctrl0)|INFO|name=<unnamed>, verdict=reject, severity=warning, direction=from-lport: udp6,vlan_tci=0x0000,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,ipv6_src=fd00::10,ipv6_dst=fd00::11,ipv6_label=0x00000,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,tp_src=5353,tp_dst=53`
	aclLogIP   = `2026-11-27T12:45:24.003Z|00014|acl_log(ovn_pinctrl0)|INFO|name="acl:31:default", verdict=drop, severity=info, direction=from-lport: ip,vlan_tci=0x0000,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,nw_src=10.0.1.10,nw_dst=10.0.1.11,nw_proto=47,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no`
)

func TestParseACLLog(t *testing.T) {
	ts := func(s string) time.Time { x, _ := time.Parse(time.RFC3339Nano, s); return x }
	a := netip.MustParseAddr
	for _, c := range []struct {
		line string
		want aclLogLine
	}{
		{aclLogICMP, aclLogLine{Time: ts("2026-11-27T12:45:23.434Z"), Name: "sg:21:2", Verdict: "allow", Direction: "from-lport",
			Protocol: 1, Src: a("10.0.1.10"), Dst: a("10.0.1.11"), DlSrc: "02:00:00:00:00:01", DlDst: "02:00:00:00:00:02"}},
		{aclLogDeny, aclLogLine{Time: ts("2026-11-27T12:45:23.859Z"), Name: "deny:sg", Verdict: "drop", Direction: "to-lport",
			Protocol: 1, Src: a("10.0.1.10"), Dst: a("10.0.1.12"), DlSrc: "02:00:00:00:00:01", DlDst: "02:00:00:00:00:04"}},
		{aclLogTCP, aclLogLine{Time: ts("2026-11-27T12:45:24.001Z"), Name: "acl:31:100", Verdict: "drop", Direction: "to-lport",
			Protocol: 6, Src: a("10.0.1.10"), Dst: a("10.0.2.10"), SrcPort: 40000, DstPort: 23, DlSrc: "0a:4d:52:00:00:01", DlDst: "02:00:00:00:00:03"}},
		{aclLogUDP6, aclLogLine{Time: ts("2026-11-27T12:45:24.002Z"), Verdict: "reject", Direction: "from-lport",
			Protocol: 17, Src: a("fd00::10"), Dst: a("fd00::11"), SrcPort: 5353, DstPort: 53, DlSrc: "02:00:00:00:00:01", DlDst: "02:00:00:00:00:02"}},
		{aclLogIP, aclLogLine{Time: ts("2026-11-27T12:45:24.003Z"), Name: "acl:31:default", Verdict: "drop", Direction: "from-lport",
			Protocol: 47, Src: a("10.0.1.10"), Dst: a("10.0.1.11"), DlSrc: "02:00:00:00:00:01", DlDst: "02:00:00:00:00:02"}},
	} {
		got, err := parseACLLog(c.line)
		if err != nil || got != c.want {
			t.Errorf("parseACLLog(%.60q...)\n got %+v, %v\nwant %+v", c.line, got, err, c.want)
		}
	}

	for _, line := range []string{
		"2026-11-27T12:45:23.434Z|00001|vlog|INFO|opened log file /tmp/ovn-controller.log",
		"2026-11-27T12:45:23.434Z|00002|reconnect|INFO|unix:/tmp/db.sock: connected",
		"",
		"garbage",
	} {
		if _, err := parseACLLog(line); !errors.Is(err, errNotACLLog) {
			t.Errorf("parseACLLog(%q): %v, want errNotACLLog", line, err)
		}
	}
	for name, line := range map[string]string{
		"bad time":         strings.Replace(aclLogICMP, "2026-11-27T12:45:23.434Z", "yesterday", 1),
		"unclosed name":    strings.Replace(aclLogICMP, `"sg:21:2", `, `"sg:21:2 `, 1),
		"bad verdict":      strings.Replace(aclLogICMP, "verdict=allow", "verdict=maybe", 1),
		"bad direction":    strings.Replace(aclLogICMP, "direction=from-lport", "direction=sideways", 1),
		"no flow":          strings.Replace(aclLogICMP, ": icmp,", " icmp,", 1),
		"not IP":           strings.Replace(aclLogICMP, ": icmp,", ": arp,", 1),
		"bad address":      strings.Replace(aclLogICMP, "nw_src=10.0.1.10", "nw_src=10.0.1", 1),
		"no address":       strings.Replace(aclLogICMP, "nw_dst=10.0.1.11,", "", 1),
		"family mismatch":  strings.Replace(aclLogUDP6, "ipv6_src=fd00::10", "ipv6_src=10.0.0.1", 1),
		"bad port":         strings.Replace(aclLogTCP, "tp_dst=23", "tp_dst=70000", 1),
		"bad protocol":     strings.Replace(aclLogIP, "nw_proto=47", "nw_proto=x", 1),
		"name not first":   strings.Replace(aclLogICMP, `name="sg:21:2", `, "", 1),
		"verdict missing":  strings.Replace(aclLogICMP, "verdict=allow, ", "", 1),
		"truncated header": aclLogICMP[:60],
	} {
		if _, err := parseACLLog(line); err == nil || errors.Is(err, errNotACLLog) {
			t.Errorf("%s: parseACLLog gave %v, want an error about the line", name, err)
		}
	}
}

// FuzzParseACLLog: any line either parses into a consistent packet or is
// refused; it never panics.
func FuzzParseACLLog(f *testing.F) {
	for _, s := range []string{aclLogICMP, aclLogDeny, aclLogTCP, aclLogUDP6, aclLogIP, "", "a|b|acl_log|d|e",
		`2026-11-27T12:45:23.434Z|1|acl_log|INFO|name="", verdict=drop, direction=to-lport: tcp,nw_src=1.2.3.4,nw_dst=1.2.3.5`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		l, err := parseACLLog(line)
		if err != nil {
			return
		}
		if l.Verdict != "allow" && l.Verdict != "drop" && l.Verdict != "reject" {
			t.Fatalf("verdict %q accepted", l.Verdict)
		}
		if l.Direction != "from-lport" && l.Direction != "to-lport" {
			t.Fatalf("direction %q accepted", l.Direction)
		}
		if !l.Src.IsValid() || !l.Dst.IsValid() || l.Src.Is6() != l.Dst.Is6() {
			t.Fatalf("addresses %v %v accepted", l.Src, l.Dst)
		}
		if (l.SrcPort != 0 || l.DstPort != 0) && l.Protocol != 6 && l.Protocol != 17 && l.Protocol != 132 {
			t.Fatalf("ports %d %d for protocol %d", l.SrcPort, l.DstPort, l.Protocol)
		}
	})
}
