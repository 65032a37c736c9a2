package ctl

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestExplain(t *testing.T) {
	bad, err := status.New(codes.InvalidArgument, "vpc.cidr_blocks[0]: bad (and 1 more)").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "vpc.cidr_blocks[0]", Description: "10.0.0.1/16 has host bits set"},
			{Field: "vpc.labels", Description: "too many"},
		}})
	if err != nil {
		t.Fatal(err)
	}
	who := func() string { return "subject alice, role user" }
	for _, tc := range []struct {
		name string
		err  error
		want []string
		not  []string
	}{
		{"field violations, one per line", bad.Err(), []string{
			"create vpc v: invalid request:",
			"\n  vpc.cidr_blocks[0]: 10.0.0.1/16 has host bits set",
			"\n  vpc.labels: too many"}, []string{"and 1 more"}},
		{"permission denied names the subject", status.Error(codes.PermissionDenied, "users may not create nodes"),
			[]string{"permission denied: your token (subject alice, role user) may not create vpc v: users may not create nodes"}, nil},
		{"unavailable says how to start it", status.Error(codes.Unavailable, "connection refused"),
			[]string{"cannot reach the controller at 127.0.0.1:7443: is it running? (meridian-controller --listen-grpc 127.0.0.1:7443)", "connection refused"}, nil},
		{"unauthenticated says where tokens go", status.Error(codes.Unauthenticated, "unknown token"),
			[]string{"--token", "MERIDIAN_TOKEN", "/cfg.yaml"}, nil},
		{"aborted says to re-read", status.Error(codes.Aborted, "etag mismatch"), []string{"etag mismatch", "get it again"}, nil},
		{"not found", status.Error(codes.NotFound, `Vpc "v" not found`), []string{"create vpc v: not found"}, nil},
		{"plain error keeps context", errors.New("boom"), []string{"create vpc v: boom"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := explain(tc.err, "create vpc v", "127.0.0.1:7443", "/cfg.yaml", who)
			for _, w := range tc.want {
				if !strings.Contains(got.Error(), w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(got.Error(), n) {
					t.Errorf("%q contains %q", got, n)
				}
			}
			if st, ok := status.FromError(tc.err); ok && status.Code(got) != st.Code() {
				t.Errorf("code %v lost: %v", st.Code(), status.Code(got))
			}
		})
	}
}

func TestCommandLineMistakes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "xml", "whoami"}, "unknown output format"},
		{[]string{"vpc", "list"}, `"parent" not set`},
		{[]string{"vpc", "get"}, "accepts 1 arg"},
		{[]string{"vpc", "create"}, "give the Vpc's name"},
		{[]string{"vpc", "create", "projects/p/subnets/s"}, "is not a Vpc name"},
		{[]string{"vpc", "update", "projects/p/vpcs/v"}, "nothing to update"},
		{[]string{"vpc", "update", "projects/p/vpcs/v", "--mask", "cidrBlock"}, `did you mean "cidrBlocks"`},
		{[]string{"vpc", "create", "projects/p/vpcs/v", "--label", "novalue"}, "want KEY=VALUE"},
		{[]string{"apply"}, "-f FILE"},
		{[]string{"watch", "--kind", "vnet"}, `unknown kind "vnet"`},
	} {
		var out strings.Builder
		err := Run(t.Context(), append([]string{"--config="}, tc.args...), Streams{In: strings.NewReader(""), Out: &out, Err: &out}, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("meridianctl %s: error %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
