// Package apitest runs the API server in-process for tests: a real bbolt
// store in a temporary directory, a gRPC server over bufconn with the same
// authentication interceptors as the controller, and one client per test
// identity. It also seeds a small, fixed topology and offers the assertions
// every API test needs (gRPC code, offending field, "nothing changed").
package apitest

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/store"
)

// Bearer tokens of the test identities (see TokensYAML).
const (
	AdminToken    = "admin-token-0001"
	OrgAdminToken = "orgadmin-a-token"
	UserToken     = "user-a1-token-01"
	UserBToken    = "user-b1-token-01"
)

// Organisations and projects of the seeded topology. User (UserToken) is a
// member of ProjectA1 only; OrgAdmin administers OrgA (ProjectA1, ProjectA2);
// ProjectB1 belongs to OrgB.
const (
	OrgA      = "org-a"
	OrgB      = "org-b"
	ProjectA1 = "projects/a1"
	ProjectA2 = "projects/a2"
	ProjectB1 = "projects/b1"
)

// TokensYAML is a tokens file holding the four test identities.
const TokensYAML = `identities:
- subject: admin
  role: system-admin
  tokens: [` + AdminToken + `]
- subject: alice
  role: org-admin
  organization: ` + OrgA + `
  tokens: [` + OrgAdminToken + `]
- subject: bob
  role: user
  organization: ` + OrgA + `
  projects: [` + ProjectA1 + `]
  tokens: [` + UserToken + `]
- subject: carol
  role: user
  organization: ` + OrgB + `
  projects: [` + ProjectB1 + `]
  tokens: [` + UserBToken + `]
`

// Client holds a stub of every service, all on one authenticated connection.
type Client struct {
	Conn    *grpc.ClientConn
	Project v1.ProjectServiceClient
	Net     v1.NetworkServiceClient
	Sec     v1.SecurityServiceClient
	Node    v1.NodeServiceClient
	Edge    v1.EdgeServiceClient
	LB      v1.LoadBalancerServiceClient
	Audit   v1.AuditServiceClient
	Watch   v1.WatchServiceClient
	ID      v1.IdentityServiceClient
}

// NewClient wraps a connection.
func NewClient(cc *grpc.ClientConn) *Client {
	return &Client{Conn: cc, Project: v1.NewProjectServiceClient(cc), Net: v1.NewNetworkServiceClient(cc),
		Sec: v1.NewSecurityServiceClient(cc), Node: v1.NewNodeServiceClient(cc), Edge: v1.NewEdgeServiceClient(cc), LB: v1.NewLoadBalancerServiceClient(cc), Audit: v1.NewAuditServiceClient(cc),
		Watch: v1.NewWatchServiceClient(cc), ID: v1.NewIdentityServiceClient(cc)}
}

// Token sends a bearer token with every call (over plaintext: tests only).
type Token string

func (t Token) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (Token) RequireTransportSecurity() bool { return false }

// Dial connects to target ("passthrough:///..." or host:port) as the holder
// of token ("" sends no credentials) with extra options (a dialer).
func Dial(t testing.TB, target, token string, extra ...grpc.DialOption) *Client {
	t.Helper()
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, extra...)
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(Token(token)))
	}
	cc, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	t.Cleanup(func() { cc.Close() })
	return NewClient(cc)
}

// Options tune an Env.
type Options struct {
	Store  store.Options
	Server apiserver.Options
}

// Env is an API server on a real store, reachable over gRPC.
type Env struct {
	T      testing.TB
	Dir    string
	Store  *store.Bolt
	Server *apiserver.Server
	lis    *bufconn.Listener

	Admin, OrgAdmin, User, UserB *Client
}

// New starts an API server on a fresh store in t.TempDir and stops it when
// the test ends.
func New(t testing.TB, o Options) *Env {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "meridian.db"), o.Store)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	e := &Env{T: t, Dir: dir, Store: st}
	e.Server = apiserver.New(st, o.Server)
	e.serve(st)
	e.Admin, e.OrgAdmin, e.User, e.UserB = e.Client(AdminToken), e.Client(OrgAdminToken), e.Client(UserToken), e.Client(UserBToken)
	return e
}

// Authenticator parses TokensYAML.
func Authenticator(t testing.TB) *auth.Authenticator {
	t.Helper()
	a, err := auth.Parse([]byte(TokensYAML))
	if err != nil {
		t.Fatalf("tokens: %v", err)
	}
	return a
}

// serve builds the gRPC server the way controller.New does.
func (e *Env) serve(st *store.Bolt) {
	authn := Authenticator(e.T)
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(authn.UnaryInterceptor), grpc.ChainStreamInterceptor(authn.StreamInterceptor))
	e.Server.Register(g)
	e.lis = bufconn.Listen(1 << 20)
	go g.Serve(e.lis)
	e.T.Cleanup(func() {
		g.Stop()
		st.Close()
	})
}

// Client connects as the holder of token ("" for none).
func (e *Env) Client(token string) *Client {
	return Dial(e.T, "passthrough:///bufconn", token, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return e.lis.DialContext(ctx)
	}))
}

// Ctx is a context that ends with the test (and after 30 s at most).
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// State is what a rejected request must leave unchanged.
type State struct {
	Revision int64
	Audit    int
}

// State returns the store revision and the number of audit records.
func (e *Env) State() State { return e.StateT(e.T) }

// StateT is State reporting failures to t (inside fuzz targets, where the
// *testing.F the Env was built with must not be used).
func (e *Env) StateT(t testing.TB) State {
	return State{Revision: e.Store.Revision(), Audit: e.AuditCountT(t)}
}

// AuditCount counts audit records directly in the store.
func (e *Env) AuditCount() int { return e.AuditCountT(e.T) }

// AuditCountT is AuditCount reporting failures to t.
func (e *Env) AuditCountT(t testing.TB) int {
	var n int
	err := e.Store.View(context.Background(), func(tx store.ReadTx) error {
		var err error
		n, err = tx.Count("audit/")
		return err
	})
	if err != nil {
		t.Fatalf("count audit records: %v", err)
	}
	return n
}

// Code returns the gRPC code of err.
func Code(err error) codes.Code { return status.Code(err) }

// Fields lists the fields named by the BadRequest details of err.
func Fields(err error) []string {
	var out []string
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.FieldViolations {
				out = append(out, v.Field)
			}
		}
	}
	return out
}

// WantCode fails the test unless err has the code; for InvalidArgument
// with a non-empty field, the field must be among the violations.
func WantCode(t testing.TB, err error, want codes.Code, field string) {
	t.Helper()
	if got := Code(err); got != want {
		t.Fatalf("code = %v (%v), want %v", got, err, want)
	}
	if want == codes.InvalidArgument && field != "" && !slices.Contains(Fields(err), field) {
		t.Fatalf("violations %v (%v) do not name %q", Fields(err), err, field)
	}
}

// Must returns a function that fails the test on an error and returns the
// value otherwise: apitest.Must[*v1.Vpc](t)(c.Net.GetVpc(ctx, req)).
func Must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return v
	}
}

// Ok fails the test if err is not nil.
func (e *Env) Ok(_ any, err error) {
	e.T.Helper()
	if err != nil {
		e.T.Fatalf("unexpected error: %v", err)
	}
}

// EtagRev parses an etag as a revision.
func EtagRev(t testing.TB, etag string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(etag, 10, 64)
	if err != nil {
		t.Fatalf("etag %q: %v", etag, err)
	}
	return n
}

// IsStatus reports whether err carries a proper gRPC status (not Unknown,
// not Internal).
func IsStatus(err error) bool {
	c := Code(err)
	return err == nil || (c != codes.Unknown && c != codes.Internal && !errors.Is(err, context.DeadlineExceeded))
}
