package trace_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	mv1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/trace"
)

// TestServiceFollowsTheStore: after changes in the store, the service's
// model (caught up from the change log) traces like a model built afresh,
// and the change shows in the verdict.
func TestServiceFollowsTheStore(t *testing.T) {
	st := scaleStore(t, 2, 40)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx := auth.WithIdentity(context.Background(), &auth.Identity{Subject: "t", Role: auth.RoleSystemAdmin})
	svc := trace.NewService(st, log)
	// q0 (groups g0, g7) to q1 (g1, g8): rule 3 of g1 is ingress tcp/1002
	// from 10.2.0.0/16, which q0's address is not in; the change makes it
	// from anywhere.
	req := &mv1.TraceRequest{Source: "projects/p1/ports/q0", Destination: "projects/p1/ports/q1", Protocol: "tcp", DestinationPort: 1002}
	before, err := svc.Trace(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if before.GetAllowed() {
		t.Fatalf("before the change: allowed, want denied: %v", before.GetForward())
	}
	openRule(t, st, "projects/p1/securityGroups/g1")
	changeRule(t, st, "projects/p0/securityGroups/g3", 7) // an unrelated change after it
	after, err := svc.Trace(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !after.GetAllowed() || after.GetRevision() != st.Revision() {
		t.Fatalf("after the change: allowed=%v at revision %d (store %d), want allowed at the store's revision: %v",
			after.GetAllowed(), after.GetRevision(), st.Revision(), after.GetForward())
	}
	if strings.Contains(logs.String(), "catch-up failed") {
		t.Errorf("the service rebuilt its model instead of applying the changes:\n%s", logs.String())
	}
	fresh, _, err := trace.Load(ctx, st, log)
	if err != nil {
		t.Fatal(err)
	}
	caught, _, err := svc.Model(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []trace.Request{
		{From: "projects/p1/ports/q0", To: "projects/p1/ports/q1", Protocol: 6, SrcPort: 40000, DstPort: 1002, Reply: true},
		{From: "projects/p0/ports/q5", To: "projects/p0/ports/q3", Protocol: 6, SrcPort: 40000, DstPort: 7, Reply: true},
		{From: "projects/p0/ports/q9", To: "10.0.0.77", Protocol: 1, ICMPType: 8},
	} {
		a, errA := caught.Trace(req)
		b, errB := fresh.Trace(req)
		if errA != nil || errB != nil {
			t.Fatalf("%+v: %v / %v", req, errA, errB)
		}
		if !proto.Equal(a.Forward.Proto(), b.Forward.Proto()) {
			t.Errorf("%+v: the caught-up model traces\n%v\na fresh one\n%v", req, a.Forward.Proto(), b.Forward.Proto())
		}
	}
}
