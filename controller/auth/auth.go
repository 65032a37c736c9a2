// Package auth authenticates API callers and decides what they may do.
//
// Identities come from a tokens file (bearer tokens) and from mTLS client
// certificates (the certificate's common name names an identity in the same
// file). There are the three roles of the seed document: the system
// administrator (nodes, address pools, every project), the organisation
// administrator (the projects of its organisation and their quotas) and the
// user (the resources of its own projects). The package decides; it does not
// look anything up in the store: callers pass the organisation of the
// project a request touches.
package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"
)

// Role is one of the three roles.
type Role string

const (
	RoleSystemAdmin Role = "system-admin"
	RoleOrgAdmin    Role = "org-admin"
	RoleUser        Role = "user"
)

// Identity is an authenticated caller.
type Identity struct {
	Subject       string   `json:"subject"`
	Role          Role     `json:"role"`
	Organization  string   `json:"organization,omitempty"`
	Projects      []string `json:"projects,omitempty"` // "projects/p", for users
	Tokens        []string `json:"tokens,omitempty"`   // plain, or "sha256:<hex>"
	CertificateCN string   `json:"certificate_cn,omitempty"`
}

type file struct {
	Identities []Identity `json:"identities"`
}

// Authenticator maps credentials to identities. It is immutable once built.
type Authenticator struct {
	byTokenHash map[[32]byte]*Identity
	byCN        map[string]*Identity
}

// LoadFile reads a tokens file. Every identity needs a subject, a known role,
// an organisation unless it is a system administrator, and at least one
// credential; a token or CN used twice is an error.
func LoadFile(path string) (*Authenticator, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read tokens file: %w", err)
	}
	a, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s: %w", path, err)
	}
	return a, nil
}

// Parse builds an Authenticator from the YAML or JSON text of a tokens file.
func Parse(b []byte) (*Authenticator, error) {
	var f file
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	a := &Authenticator{byTokenHash: map[[32]byte]*Identity{}, byCN: map[string]*Identity{}}
	seen := map[string]bool{}
	for i := range f.Identities {
		id := &f.Identities[i]
		where := fmt.Sprintf("identities[%d]", i)
		if id.Subject == "" {
			return nil, fmt.Errorf("%s: subject is required", where)
		}
		if seen[id.Subject] {
			return nil, fmt.Errorf("%s: subject %q appears twice", where, id.Subject)
		}
		seen[id.Subject] = true
		switch id.Role {
		case RoleSystemAdmin:
		case RoleOrgAdmin, RoleUser:
			if id.Organization == "" {
				return nil, fmt.Errorf("%s (%s): role %s needs an organization", where, id.Subject, id.Role)
			}
		default:
			return nil, fmt.Errorf("%s (%s): role %q is not one of system-admin, org-admin, user", where, id.Subject, id.Role)
		}
		for _, p := range id.Projects {
			if !strings.HasPrefix(p, "projects/") || strings.Count(p, "/") != 1 {
				return nil, fmt.Errorf("%s (%s): project %q must look like projects/{project}", where, id.Subject, p)
			}
		}
		if len(id.Tokens) == 0 && id.CertificateCN == "" {
			return nil, fmt.Errorf("%s (%s): needs tokens or a certificate_cn", where, id.Subject)
		}
		for _, t := range id.Tokens {
			h, err := tokenHash(t)
			if err != nil {
				return nil, fmt.Errorf("%s (%s): %w", where, id.Subject, err)
			}
			if _, dup := a.byTokenHash[h]; dup {
				return nil, fmt.Errorf("%s (%s): a token is used by two identities", where, id.Subject)
			}
			a.byTokenHash[h] = id
		}
		if cn := id.CertificateCN; cn != "" {
			if _, dup := a.byCN[cn]; dup {
				return nil, fmt.Errorf("%s (%s): certificate_cn %q is used twice", where, id.Subject, cn)
			}
			a.byCN[cn] = id
		}
		id.Tokens = nil // never keep secrets where they could be logged
	}
	return a, nil
}

// tokenHash accepts a plain token or "sha256:<hex>" so files need not hold secrets.
func tokenHash(t string) ([32]byte, error) {
	if hexsum, ok := strings.CutPrefix(t, "sha256:"); ok {
		var h [32]byte
		b, err := hex.DecodeString(hexsum)
		if err != nil || len(b) != 32 {
			return h, errors.New("token sha256:<hex> must carry 64 hex digits")
		}
		copy(h[:], b)
		return h, nil
	}
	if len(t) < 8 {
		return [32]byte{}, errors.New("tokens must be at least 8 characters")
	}
	return sha256.Sum256([]byte(t)), nil
}

// Authenticate finds the caller's identity from a bearer token in the
// request metadata or, failing that, from a verified TLS client certificate.
func (a *Authenticator) Authenticate(ctx context.Context) (*Identity, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get("authorization") {
			tok, ok := strings.CutPrefix(v, "Bearer ")
			if !ok {
				return nil, status.Error(codes.Unauthenticated, "authorization metadata must be \"Bearer <token>\"")
			}
			// Looking up the token's SHA-256 rather than the token itself means
			// timing reveals nothing about how close a guess was.
			if id, ok := a.byTokenHash[sha256.Sum256([]byte(tok))]; ok {
				return id, nil
			}
			return nil, status.Error(codes.Unauthenticated, "unknown bearer token")
		}
	}
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
			cn := ti.State.VerifiedChains[0][0].Subject.CommonName
			if id, ok := a.byCN[cn]; ok {
				return id, nil
			}
			return nil, status.Errorf(codes.Unauthenticated, "client certificate CN %q is not in the tokens file", cn)
		}
	}
	return nil, status.Error(codes.Unauthenticated, "no credentials: send \"authorization: Bearer <token>\" or a client certificate")
}

type ctxKey struct{}

// WithIdentity returns a context carrying the identity.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity that the interceptors attached.
func FromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(*Identity)
	return id, ok
}

// UnaryInterceptor authenticates every unary call.
func (a *Authenticator) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	id, err := a.Authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return h(WithIdentity(ctx, id), req)
}

// StreamInterceptor authenticates every streaming call.
func (a *Authenticator) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	id, err := a.Authenticate(ss.Context())
	if err != nil {
		return err
	}
	return h(srv, &identityStream{ServerStream: ss, ctx: WithIdentity(ss.Context(), id)})
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// Verb is what a request does.
type Verb string

const (
	VerbCreate Verb = "create"
	VerbGet    Verb = "get"
	VerbList   Verb = "list"
	VerbUpdate Verb = "update"
	VerbDelete Verb = "delete"
)

// Target is what a request touches.
type Target struct {
	Kind         string // "Project", "Vpc", "Node", "AuditRecord", ...
	Project      string // "projects/p" for project resources and projects themselves
	Organization string // the organisation of Project
	// QuotaChange: the request sets or changes a project's quota, which only
	// administrators may do.
	QuotaChange bool
}

// Authorize decides whether id may do verb on target, returning a
// PermissionDenied status that says why not.
func Authorize(id *Identity, verb Verb, t Target) error {
	if id == nil {
		return status.Error(codes.Unauthenticated, "no identity")
	}
	if id.Role == RoleSystemAdmin {
		return nil
	}
	deny := func(why string) error {
		return status.Errorf(codes.PermissionDenied, "%s (%s) may not %s %s: %s", id.Subject, id.Role, verb, t.describe(), why)
	}
	switch t.Kind {
	case "Node":
		// Nodes are infrastructure: tenants bind ports to them by name, but
		// only system administrators register, change or list them.
		return deny("nodes are managed by system administrators")
	case "BgpPeer":
		return deny("BGP peers are managed by system administrators")
	case "PublicAddressPool":
		// Tenants pick a pool by name for their elastic IPs.
		if verb == VerbGet || verb == VerbList {
			return nil
		}
		return deny("address pools are managed by system administrators")
	case "AuditRecord":
		if id.Role == RoleOrgAdmin && (t.Project == "" || t.Organization == id.Organization) {
			return nil // an org-wide listing is filtered to the organisation by the caller
		}
		return deny("audit records are for administrators")
	}
	if t.Project == "" {
		// Listing projects or watching everything: allowed, the caller
		// filters the results to what the identity may see.
		if verb == VerbList {
			return nil
		}
		return deny("no project named")
	}
	if t.Organization != id.Organization {
		return deny("the project belongs to another organisation")
	}
	if id.Role == RoleOrgAdmin {
		return nil
	}
	// RoleUser.
	if t.Kind == "Project" && (verb == VerbCreate || verb == VerbDelete) {
		return deny("projects are created and deleted by administrators")
	}
	if t.QuotaChange {
		return deny("quotas are set by administrators")
	}
	if !slices.Contains(id.Projects, t.Project) {
		return deny("not a member of the project")
	}
	return nil
}

// CanSee reports whether id may read resources of the project (for
// filtering lists and watches).
func CanSee(id *Identity, project, organization string) bool {
	return Authorize(id, VerbGet, Target{Kind: "Project", Project: project, Organization: organization}) == nil
}

func (t Target) describe() string {
	if t.Project != "" {
		return t.Kind + " in " + t.Project
	}
	return t.Kind
}
