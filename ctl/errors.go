package ctl

import (
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rpcError is an RPC failure explained for a person: Error says what went
// wrong and what to do; Unwrap keeps the gRPC status for programs
// (status.Code(err) still works).
type rpcError struct {
	msg string
	err error
}

func (e *rpcError) Error() string { return e.msg }
func (e *rpcError) Unwrap() error { return e.err }

// identity describes the caller for PermissionDenied messages; it is looked
// up only when needed, since it costs a round trip.
type identity func() string

// explain turns an error of an RPC into one that says what to fix. op is
// what the user asked for ("create vpc projects/p/vpcs/v"), endpoint and
// configPath name the settings a connection or auth problem points at.
func explain(err error, op, endpoint, configPath string, who identity) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	msg := st.Message()
	var b strings.Builder
	switch st.Code() {
	case codes.InvalidArgument:
		vs := fieldViolations(st)
		if len(vs) == 0 {
			fmt.Fprintf(&b, "%s: invalid request: %s", op, msg)
		} else {
			// The status message only summarises the violations (the first
			// one and a count): list them all instead, one per line.
			fmt.Fprintf(&b, "%s: invalid request:", op)
		}
		for _, v := range vs {
			fmt.Fprintf(&b, "\n  %s: %s", v.GetField(), v.GetDescription())
		}
	case codes.NotFound:
		fmt.Fprintf(&b, "%s: not found: %s", op, msg)
	case codes.AlreadyExists:
		fmt.Fprintf(&b, "%s: already exists: %s (use update, or apply to converge it)", op, msg)
	case codes.Aborted:
		fmt.Fprintf(&b, "%s: conflict: %s (it changed since you read it: get it again and retry with the new etag)", op, msg)
	case codes.FailedPrecondition:
		fmt.Fprintf(&b, "%s: cannot be done in the current state: %s", op, msg)
		for _, d := range st.Details() {
			if pf, ok := d.(*errdetails.PreconditionFailure); ok {
				for _, v := range pf.GetViolations() {
					fmt.Fprintf(&b, "\n  %s %s: %s", v.GetType(), v.GetSubject(), v.GetDescription())
				}
			}
		}
	case codes.ResourceExhausted:
		fmt.Fprintf(&b, "%s: quota or limit exceeded: %s", op, msg)
		for _, d := range st.Details() {
			if qf, ok := d.(*errdetails.QuotaFailure); ok {
				for _, v := range qf.GetViolations() {
					fmt.Fprintf(&b, "\n  %s: %s", v.GetSubject(), v.GetDescription())
				}
			}
		}
	case codes.PermissionDenied:
		subject := "your token"
		if who != nil {
			if s := who(); s != "" {
				subject = "your token (" + s + ")"
			}
		}
		fmt.Fprintf(&b, "permission denied: %s may not %s: %s", subject, op, msg)
	case codes.Unauthenticated:
		fmt.Fprintf(&b, "%s: the controller at %s did not accept your credentials: %s\n  pass --token, set MERIDIAN_TOKEN, or put token: in %s", op, endpoint, msg, configPath)
	case codes.Unavailable:
		fmt.Fprintf(&b, "%s: cannot reach the controller at %s: is it running? (meridian-controller --listen-grpc %s); or set --endpoint / MERIDIAN_ENDPOINT / endpoint: in %s\n  %s", op, endpoint, endpoint, configPath, msg)
	case codes.DeadlineExceeded:
		fmt.Fprintf(&b, "%s: the controller at %s did not answer in time: %s", op, endpoint, msg)
	case codes.OutOfRange:
		fmt.Fprintf(&b, "%s: %s (list again and watch from the revision the listing returns)", op, msg)
	case codes.Unimplemented:
		fmt.Fprintf(&b, "%s: the controller at %s does not implement this call (is it an older version?): %s", op, endpoint, msg)
	case codes.Canceled:
		fmt.Fprintf(&b, "%s: canceled", op)
	default:
		fmt.Fprintf(&b, "%s: %s: %s", op, st.Code(), msg)
	}
	return &rpcError{msg: b.String(), err: err}
}

// fieldViolations returns the BadRequest details of an InvalidArgument.
func fieldViolations(st *status.Status) []*errdetails.BadRequest_FieldViolation {
	var out []*errdetails.BadRequest_FieldViolation
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			out = append(out, br.GetFieldViolations()...)
		}
	}
	return out
}
