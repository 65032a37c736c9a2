package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// aclLogLine is one acl_log line of ovn-controller's log: what OVN tells of
// a packet a logged ACL matched.
//
//	2026-11-27T12:45:23.434Z|00004|acl_log(ovn_pinctrl0)|INFO|name="sg:21:2", verdict=allow, severity=info,
//	direction=from-lport: icmp,vlan_tci=0x0000,dl_src=02:..:01,dl_dst=02:..:02,nw_src=10.0.1.10,nw_dst=10.0.1.11,...
type aclLogLine struct {
	Time      time.Time
	Name      string // the ACL's name; "" when unnamed
	Verdict   string // allow, drop or reject
	Direction string // from-lport or to-lport
	Protocol  uint8
	Src, Dst  netip.Addr
	// SrcPort and DstPort are the transport ports (0 for protocols
	// without them, ICMP included).
	SrcPort, DstPort uint16
	DlSrc, DlDst     string // MACs as OVS prints them (lower case)
}

// errNotACLLog says a log line is not an acl_log line (ovn-controller
// logs much else): skipped, not an error.
var errNotACLLog = errors.New("not an acl_log line")

// protocolNames are the flow-format keywords of the protocols, with their
// IP protocol numbers and whether they are IPv6.
var protocolNames = map[string]struct {
	proto uint8
	v6    bool
}{
	"ip": {0, false}, "ipv6": {0, true},
	"tcp": {6, false}, "tcp6": {6, true},
	"udp": {17, false}, "udp6": {17, true},
	"sctp": {132, false}, "sctp6": {132, true},
	"icmp": {1, false}, "icmp6": {58, true},
}

// parseACLLog parses one line of ovn-controller's log. Lines of other
// modules give errNotACLLog; an acl_log line that does not parse gives an
// error saying what is wrong with it.
func parseACLLog(line string) (aclLogLine, error) {
	var l aclLogLine
	// timestamp|sequence|module|level|message
	parts := strings.SplitN(line, "|", 5)
	if len(parts) != 5 || !strings.HasPrefix(parts[2], "acl_log") {
		return l, errNotACLLog
	}
	t, err := time.Parse("2006-01-02T15:04:05.000Z", parts[0])
	if err != nil {
		return l, fmt.Errorf("acl_log timestamp %q: %w", parts[0], err)
	}
	l.Time = t
	msg := parts[4]
	head, flow, ok := strings.Cut(msg, ": ")
	if !ok {
		return l, fmt.Errorf("acl_log message %q has no flow", msg)
	}
	// The name comes first and is quoted; it may hold ", " in principle,
	// so it is cut off by its closing quote rather than split.
	switch {
	case strings.HasPrefix(head, `name="`):
		end := strings.Index(head[len(`name="`):], `", `)
		if end < 0 {
			return l, fmt.Errorf("acl_log name in %q is not closed", head)
		}
		l.Name = head[len(`name="`) : len(`name="`)+end]
		head = head[len(`name="`)+end+len(`", `):]
	case strings.HasPrefix(head, "name=<unnamed>, "):
		head = head[len("name=<unnamed>, "):]
	default:
		return l, fmt.Errorf("acl_log message %q does not start with the ACL's name", head)
	}
	for _, kv := range strings.Split(head, ", ") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "verdict":
			l.Verdict = v
		case "direction":
			l.Direction = v
		}
	}
	switch l.Verdict {
	case "allow", "drop", "reject":
	default:
		return l, fmt.Errorf("acl_log verdict %q: want allow, drop or reject", l.Verdict)
	}
	if l.Direction != "from-lport" && l.Direction != "to-lport" {
		return l, fmt.Errorf("acl_log direction %q: want from-lport or to-lport", l.Direction)
	}
	fields := strings.Split(flow, ",")
	p, ok := protocolNames[fields[0]]
	if !ok {
		return l, fmt.Errorf("acl_log flow %q: not an IP packet", fields[0])
	}
	l.Protocol = p.proto
	var src, dst string
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "dl_src":
			l.DlSrc = strings.ToLower(v)
		case "dl_dst":
			l.DlDst = strings.ToLower(v)
		case "nw_src", "ipv6_src":
			src = v
		case "nw_dst", "ipv6_dst":
			dst = v
		case "nw_proto":
			n, err := strconv.ParseUint(v, 10, 8)
			if err != nil {
				return l, fmt.Errorf("acl_log nw_proto %q: %w", v, err)
			}
			if l.Protocol == 0 {
				l.Protocol = uint8(n)
			}
		case "tp_src", "tp_dst":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return l, fmt.Errorf("acl_log %s %q: %w", k, v, err)
			}
			if k == "tp_src" {
				l.SrcPort = uint16(n)
			} else {
				l.DstPort = uint16(n)
			}
		}
	}
	if l.Src, err = netip.ParseAddr(src); err != nil {
		return l, fmt.Errorf("acl_log source address: %w", err)
	}
	if l.Dst, err = netip.ParseAddr(dst); err != nil {
		return l, fmt.Errorf("acl_log destination address: %w", err)
	}
	if l.Src.Is6() != p.v6 || l.Dst.Is6() != p.v6 {
		return l, fmt.Errorf("acl_log flow %q with addresses %s and %s of another family", fields[0], l.Src, l.Dst)
	}
	switch l.Protocol {
	case 6, 17, 132:
	default:
		l.SrcPort, l.DstPort = 0, 0 // ICMP shows no ports, as eBPF nodes' records
	}
	return l, nil
}
