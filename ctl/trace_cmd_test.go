package ctl

import (
	"bytes"
	"strings"
	"testing"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

func TestPrintOVNTrace(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   *v1.OvnTrace
		want []string
		not  []string
	}{
		{"not run", nil, nil, []string{"ovn-trace"}},
		{"agreeing drop", &v1.OvnTrace{Datapath: "mer-subnet-11", Microflow: `inport == "mer-port-5"`, Verdict: "drop at ls_out_acl priority 2000", Agrees: true},
			[]string{"ovn-trace: DROPPED: drop at ls_out_acl priority 2000 (agrees with the model)", `microflow on mer-subnet-11: inport == "mer-port-5"`}, []string{"DISAGREES"}},
		{"disagreeing output with detail", &v1.OvnTrace{Allowed: true, Verdict: "output to mer-port-9", Text: "ingress(dp=...)\n"},
			[]string{"ovn-trace: ALLOWED: output to mer-port-9 (DISAGREES with the model)", "\ningress(dp=...)\n"}, nil},
		{"failure", &v1.OvnTrace{Error: "ovn-trace on mer-subnet-11: context deadline exceeded"},
			[]string{"ovn-trace: failed: ovn-trace on mer-subnet-11: context deadline exceeded"}, []string{"microflow"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			printOVNTrace(&b, tc.in)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
			for _, w := range tc.not {
				if strings.Contains(b.String(), w) {
					t.Errorf("output has %q:\n%s", w, b.String())
				}
			}
		})
	}
}
