package agent

import (
	"encoding/json"
	"net/netip"
	"strconv"
)

// appendRecordJSON appends r as one JSON object, byte for byte what
// json.Marshal(r) writes (the same field order, names and omitempty
// fields), and no newline. encoding/json's reflection and per-record
// allocations were most of the agent's encoding work at thousands of
// records a second; FlowRecord is fixed, so its encoder can be too. A test
// compares the two on records with every optional field and with strings
// that need escaping.
func appendRecordJSON(b []byte, r *FlowRecord) []byte {
	b = append(b, `{"version":`...)
	b = strconv.AppendInt(b, int64(r.Version), 10)
	b = appendStringField(b, `,"account-id":`, r.AccountID)
	b = appendStringField(b, `,"interface-id":`, r.InterfaceID)
	b = appendAddrField(b, `,"srcaddr":`, r.SrcAddr)
	b = appendAddrField(b, `,"dstaddr":`, r.DstAddr)
	b = appendUintField(b, `,"srcport":`, uint64(r.SrcPort))
	b = appendUintField(b, `,"dstport":`, uint64(r.DstPort))
	b = appendUintField(b, `,"protocol":`, uint64(r.Protocol))
	b = appendUintField(b, `,"packets":`, r.Packets)
	b = appendUintField(b, `,"bytes":`, r.Bytes)
	b = append(b, `,"start":`...)
	b = strconv.AppendInt(b, r.Start, 10)
	b = append(b, `,"end":`...)
	b = strconv.AppendInt(b, r.End, 10)
	b = appendStringField(b, `,"action":`, r.Action)
	b = appendStringField(b, `,"log-status":`, r.LogStatus)
	b = appendStringField(b, `,"vpc-id":`, r.VPCID)
	b = appendStringField(b, `,"subnet-id":`, r.SubnetID)
	b = appendStringField(b, `,"flow-direction":`, r.Direction)
	b = appendUintField(b, `,"reverse-packets":`, r.ReversePackets)
	b = appendUintField(b, `,"reverse-bytes":`, r.ReverseBytes)
	b = appendStringField(b, `,"rule":`, r.Rule)
	if r.ACL != "" {
		b = appendStringField(b, `,"acl":`, r.ACL)
	}
	if r.ACLRule != 0 {
		b = appendUintField(b, `,"acl-rule":`, uint64(r.ACLRule))
	}
	if r.SecurityGroup != "" {
		b = appendStringField(b, `,"security-group":`, r.SecurityGroup)
	}
	if r.SGRuleID != 0 {
		b = appendUintField(b, `,"sg-rule-id":`, uint64(r.SGRuleID))
	}
	if r.DropReason != "" {
		b = appendStringField(b, `,"drop-reason":`, r.DropReason)
	}
	if r.FlowEnded {
		b = append(b, `,"flow-ended":true`...)
	}
	if r.SkippedFlows != 0 {
		b = appendUintField(b, `,"skipped-flows":`, r.SkippedFlows)
	}
	b = appendStringField(b, `,"node":`, r.Node)
	b = appendStringField(b, `,"flow-log":`, r.FlowLog)
	return append(b, '}')
}

func appendUintField(b []byte, name string, v uint64) []byte {
	return strconv.AppendUint(append(b, name...), v, 10)
}

// appendAddrField writes a as encoding/json does (its MarshalText: "" for
// the zero Addr), without the string a.String() would allocate.
func appendAddrField(b []byte, name string, a netip.Addr) []byte {
	b = append(append(b, name...), '"')
	if a.IsValid() {
		b = a.AppendTo(b)
	}
	return append(b, '"')
}

func appendStringField(b []byte, name, s string) []byte {
	return appendJSONString(append(b, name...), s)
}

// appendJSONString quotes s as encoding/json does. Names, addresses and
// rule texts are printable ASCII; anything else (control characters, the
// characters encoding/json escapes for HTML, non-ASCII) goes through
// encoding/json itself, so the output is the same whatever s is.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if jsonEscaped[s[i]] {
			q, _ := json.Marshal(s) // a string: cannot fail
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// jsonEscaped marks the bytes encoding/json writes other than as themselves
// in a string: control characters, '"', '\\', the HTML characters and every
// byte of a non-ASCII character.
var jsonEscaped = func() (t [256]bool) {
	for c := range t {
		t[c] = c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&'
	}
	return t
}()
