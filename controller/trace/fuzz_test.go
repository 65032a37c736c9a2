package trace

import (
	"errors"
	"net/netip"
	"testing"
)

// FuzzTrace walks arbitrary packets through the crafted model: a trace
// either refuses the request (ErrInvalid) or ends in exactly one way —
// delivered with no drop reason, or dropped by its last stage with one —
// and a reply is traced only for a packet that got through.
func FuzzTrace(f *testing.F) {
	m := NewModel(fixture())
	from := []string{portA1, portS, portNo, portUB, portE, portO, portW2, "198.51.100.7", pfx + "ports/missing", ""}
	f.Add(uint8(0), uint32(0), uint32(0x0a000216), uint8(6), uint16(40000), uint16(22), uint8(0), uint8(0), true)
	f.Add(uint8(7), uint32(0), uint32(0xcb00710a), uint8(1), uint16(0), uint16(0), uint8(8), uint8(0), true)
	f.Add(uint8(5), uint32(0x0a0902ff), uint32(0x0a0001c8), uint8(17), uint16(53), uint16(53), uint8(0), uint8(0), false)
	f.Fuzz(func(t *testing.T, fi uint8, src, dst uint32, proto uint8, sport, dport uint16, typ, code uint8, reply bool) {
		req := Request{From: from[int(fi)%len(from)], To: addr(dst).String(), Protocol: proto, SrcPort: sport, DstPort: dport,
			ICMPType: typ, ICMPCode: code, Reply: reply}
		if src != 0 {
			req.SrcIP = addr(src)
		}
		res, err := m.Trace(req)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%+v: %v is not ErrInvalid", req, err)
			}
			return
		}
		check := func(what string, tr *Trace) {
			if len(tr.Stages) == 0 {
				t.Fatalf("%s %+v: no stage", what, req)
			}
			last := tr.Stages[len(tr.Stages)-1]
			for _, s := range tr.Stages[:len(tr.Stages)-1] {
				if s.Verdict == Drop || s.Verdict == Deliver {
					t.Fatalf("%s %+v: stage %s says %s before the end", what, req, s.Stage, s.Verdict)
				}
			}
			if tr.Allowed != (last.Verdict == Deliver) || tr.Allowed == (tr.Reason != "") || !tr.Allowed && last.Verdict != Drop {
				t.Fatalf("%s %+v: allowed=%v reason=%q last stage %+v", what, req, tr.Allowed, tr.Reason, last)
			}
		}
		check("forward", &res.Forward)
		if res.Reply != nil {
			if !res.Forward.Allowed {
				t.Fatalf("%+v: reply traced for a dropped packet", req)
			}
			check("reply", res.Reply)
		}
		if res.Allowed != (res.Forward.Allowed && (res.Reply == nil || res.Reply.Allowed)) {
			t.Fatalf("%+v: connection verdict %v inconsistent", req, res.Allowed)
		}
	})
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
