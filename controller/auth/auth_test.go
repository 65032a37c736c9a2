package auth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestParseRejectsBadTokensFiles(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"unknown key", "identities:\n- subject: a\n  rol: user\n", "unknown field"},
		{"no subject", "identities:\n- role: system-admin\n  tokens: [abcdefgh]\n", "subject is required"},
		{"unknown role", "identities:\n- subject: a\n  role: root\n  tokens: [abcdefgh]\n", "not one of"},
		{"user without organization", "identities:\n- subject: a\n  role: user\n  tokens: [abcdefgh]\n", "needs an organization"},
		{"no credentials", "identities:\n- subject: a\n  role: system-admin\n", "needs tokens or a certificate_cn"},
		{"short token", "identities:\n- subject: a\n  role: system-admin\n  tokens: [abc]\n", "at least 8"},
		{"bad sha256", "identities:\n- subject: a\n  role: system-admin\n  tokens: [\"sha256:zz\"]\n", "64 hex digits"},
		{"shared token", "identities:\n- subject: a\n  role: system-admin\n  tokens: [abcdefgh]\n- subject: b\n  role: system-admin\n  tokens: [abcdefgh]\n", "used by two"},
		{"duplicate subject", "identities:\n- subject: a\n  role: system-admin\n  tokens: [abcdefgh]\n- subject: a\n  role: system-admin\n  tokens: [abcdefgi]\n", "appears twice"},
		{"bad project", "identities:\n- subject: a\n  role: user\n  organization: o\n  projects: [p1]\n  tokens: [abcdefgh]\n", "projects/{project}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestAuthenticateByBearerToken(t *testing.T) {
	sum := sha256.Sum256([]byte("hashed-secret"))
	a, err := Parse([]byte("identities:\n- subject: root\n  role: system-admin\n  tokens: [plain-secret, \"sha256:" + hex.EncodeToString(sum[:]) + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, header string
		want         codes.Code
	}{
		{"plain token", "Bearer plain-secret", codes.OK},
		{"token given as its hash in the file", "Bearer hashed-secret", codes.OK},
		{"unknown token", "Bearer nope-nope", codes.Unauthenticated},
		{"not a bearer header", "Basic cm9vdDpwdw==", codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", tc.header))
			id, err := a.Authenticate(ctx)
			if status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && id.Subject != "root" {
				t.Fatalf("authenticated as %q", id.Subject)
			}
		})
	}
	if _, err := a.Authenticate(context.Background()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no credentials: got %v", err)
	}
}

func TestAuthorizeRoles(t *testing.T) {
	admin := &Identity{Subject: "admin", Role: RoleSystemAdmin}
	orgA := &Identity{Subject: "oa", Role: RoleOrgAdmin, Organization: "a"}
	user := &Identity{Subject: "u", Role: RoleUser, Organization: "a", Projects: []string{"projects/a1"}}
	own := Target{Kind: "Vpc", Project: "projects/a1", Organization: "a"}
	sameOrg := Target{Kind: "Vpc", Project: "projects/a2", Organization: "a"}
	otherOrg := Target{Kind: "Vpc", Project: "projects/b1", Organization: "b"}
	for _, tc := range []struct {
		name string
		id   *Identity
		verb Verb
		t    Target
		ok   bool
	}{
		{"admin anywhere", admin, VerbDelete, otherOrg, true},
		{"admin nodes", admin, VerbCreate, Target{Kind: "Node"}, true},
		{"org admin own org", orgA, VerbUpdate, sameOrg, true},
		{"org admin other org", orgA, VerbGet, otherOrg, false},
		{"org admin nodes", orgA, VerbList, Target{Kind: "Node"}, false},
		{"org admin quota", orgA, VerbUpdate, Target{Kind: "Project", Project: "projects/a2", Organization: "a", QuotaChange: true}, true},
		{"user own project", user, VerbCreate, own, true},
		{"user other project same org", user, VerbGet, sameOrg, false},
		{"user other org", user, VerbGet, otherOrg, false},
		{"user creates project", user, VerbCreate, Target{Kind: "Project", Project: "projects/a1", Organization: "a"}, false},
		{"user changes quota", user, VerbUpdate, Target{Kind: "Project", Project: "projects/a1", Organization: "a", QuotaChange: true}, false},
		{"user audit", user, VerbList, Target{Kind: "AuditRecord"}, false},
		{"user lists projects", user, VerbList, Target{Kind: "Project"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Authorize(tc.id, tc.verb, tc.t)
			if (err == nil) != tc.ok {
				t.Fatalf("Authorize = %v, want allowed=%v", err, tc.ok)
			}
			if err != nil && status.Code(err) != codes.PermissionDenied {
				t.Fatalf("denial is %v, want PermissionDenied", status.Code(err))
			}
		})
	}
}
