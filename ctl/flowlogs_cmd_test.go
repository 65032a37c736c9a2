package ctl

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
)

type fakeFlowLogAgent struct {
	agentv1.UnimplementedFlowLogLocalServiceServer
	got chan *agentv1.FollowFlowLogsRequest
}

func (f *fakeFlowLogAgent) FollowFlowLogs(r *agentv1.FollowFlowLogsRequest, st agentv1.FlowLogLocalService_FollowFlowLogsServer) error {
	f.got <- r
	st.Send(&agentv1.FollowFlowLogsResponse{Records: []*agentv1.FlowRecord{{Json: `{"action":"ACCEPT"}`}, {Json: `{"action":"REJECT"}`}}})
	return st.Send(&agentv1.FollowFlowLogsResponse{Records: []*agentv1.FlowRecord{{Json: `{"action":"ACCEPT","n":2}`}}, Dropped: 3})
}

// TestFollowFlowLogs: meridianctl flowlogs --follow passes its filters to
// the agent's socket and prints each record as one JSON line, saying on
// stderr how many it missed.
func TestFollowFlowLogs(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	fake := &fakeFlowLogAgent{got: make(chan *agentv1.FollowFlowLogsRequest, 1)}
	agentv1.RegisterFlowLogLocalServiceServer(g, fake)
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	cmd := newFlowLogsCmd()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs([]string{"--follow", "--agent-socket", sock, "--port", "projects/p/ports/web", "--flow-log", "projects/p/flowLogs/f"})
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	r := <-fake.got
	if r.Port != "projects/p/ports/web" || r.FlowLog != "projects/p/flowLogs/f" {
		t.Fatalf("agent got %+v", r)
	}
	want := `{"action":"ACCEPT"}` + "\n" + `{"action":"REJECT"}` + "\n" + `{"action":"ACCEPT","n":2}` + "\n"
	if out.String() != want {
		t.Fatalf("stdout %q, want %q", out.String(), want)
	}
	if !strings.Contains(errb.String(), "3 records missed") {
		t.Fatalf("stderr %q", errb.String())
	}
	cmd = newFlowLogsCmd()
	cmd.SetArgs([]string{"--agent-socket", sock})
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	if err := cmd.Execute(); err == nil {
		t.Fatal("flowlogs without --follow accepted")
	}
}
