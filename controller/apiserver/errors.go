package apiserver

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meridian-sdn/meridian/controller/store"
)

// violations collects every problem of a request, so one round trip tells
// the caller everything to fix, not only the first mistake.
type violations struct {
	v []*errdetails.BadRequest_FieldViolation
}

func (vs *violations) add(field, format string, args ...any) {
	vs.v = append(vs.v, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

func (vs *violations) empty() bool { return len(vs.v) == 0 }

// err returns nil or an InvalidArgument status naming every offending field.
func (vs *violations) err() error {
	if len(vs.v) == 0 {
		return nil
	}
	msg := vs.v[0].Field + ": " + vs.v[0].Description
	if len(vs.v) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(vs.v)-1)
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{FieldViolations: vs.v})
	if err != nil {
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}

func invalid(field, format string, args ...any) error {
	var vs violations
	vs.add(field, format, args...)
	return vs.err()
}

func notFound(what, name string) error {
	return status.Errorf(codes.NotFound, "%s %q not found", what, name)
}

func failedPrecondition(format string, args ...any) error {
	return status.Errorf(codes.FailedPrecondition, format, args...)
}

// toStatus converts any error to a gRPC status error: statuses pass through
// (also when wrapped), context errors keep their meaning, a closed store is
// Unavailable and anything else is Internal.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Err()
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, store.ErrClosed):
		return status.Error(codes.Unavailable, "controller is shutting down")
	}
	return status.Errorf(codes.Internal, "internal error: %v", err)
}
