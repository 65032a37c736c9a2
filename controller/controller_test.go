package controller_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/controller"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
)

// running is a controller serving in-process on loopback.
type running struct {
	c          *controller.Controller
	grpc, http string // addresses
	stop       func() error
}

// writeTokens writes the test identities to a tokens file in dir.
func writeTokens(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(path, []byte(apitest.TokensYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// config is a configuration on dataDir listening on ephemeral loopback ports.
func config(t testing.TB, dataDir string) controller.Config {
	cfg := controller.Defaults()
	cfg.DataDir, cfg.ListenGRPC, cfg.ListenHTTP = dataDir, "127.0.0.1:0", "127.0.0.1:0"
	cfg.TokensFile = writeTokens(t, t.TempDir())
	return cfg
}

// start builds and serves a controller (without agent distributor) and
// waits until it listens.
func start(t testing.TB, cfg controller.Config) *running {
	t.Helper()
	return startWith(t, cfg, nil)
}

// startWith is start with an agent distributor factory.
func startWith(t testing.TB, cfg controller.Config, agents controller.AgentsFactory) *running {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := controller.New(cfg, log, agents)
	if err != nil {
		t.Fatalf("controller.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	r := &running{c: c}
	var once bool
	r.stop = func() error {
		if once {
			return nil
		}
		once = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { r.stop() })
	deadline := time.Now().Add(10 * time.Second)
	for r.grpc == "" {
		select {
		case err := <-done:
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("controller did not start listening")
		}
		r.grpc, r.http = c.Addrs()
		time.Sleep(time.Millisecond)
	}
	return r
}

// httpCall sends a JSON request with a bearer token ("" for none) and
// returns the status code and decoded JSON body.
func httpCall(t *testing.T, method, url, token, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(b) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, url, b, err)
		}
	} else {
		out = map[string]any{"text": string(b)}
	}
	return resp.StatusCode, out
}

// TestHTTPJSONGateway drives the REST mapping end to end with net/http and
// checks grpc-gateway's status mapping of every error the API returns.
func TestHTTPJSONGateway(t *testing.T) {
	r := start(t, config(t, t.TempDir()))
	base := "http://" + r.http
	var etag string
	steps := []struct {
		name, method, path, token, body string
		want                            int
		check                           func(t *testing.T, body map[string]any)
	}{
		{"create project", "POST", "/v1/projects?project_id=h", apitest.AdminToken, `{"organization":"org-a"}`, 200, func(t *testing.T, b map[string]any) {
			if b["name"] != "projects/h" || b["etag"] == "" {
				t.Fatalf("body %v", b)
			}
		}},
		{"create project again", "POST", "/v1/projects?project_id=h", apitest.AdminToken, `{"organization":"org-a"}`, 409, nil},
		{"create vpc", "POST", "/v1/projects/h/vpcs?vpc_id=v", apitest.OrgAdminToken, `{"cidrBlocks":["10.0.0.0/16"],"description":"one"}`, 200, func(t *testing.T, b map[string]any) {
			etag, _ = b["etag"].(string)
			if b["vni"] == nil {
				t.Fatalf("no VNI allocated: %v", b)
			}
		}},
		{"invalid vpc is 400 with field violations", "POST", "/v1/projects/h/vpcs?vpc_id=w", apitest.AdminToken, `{"cidrBlocks":["10.0.0.1/16"]}`, 400, func(t *testing.T, b map[string]any) {
			if !strings.Contains(mustJSON(t, b["details"]), `"field":"vpc.cidr_blocks[0]"`) {
				t.Fatalf("no field violation in %v", b)
			}
		}},
		{"get vpc", "GET", "/v1/projects/h/vpcs/v", apitest.AdminToken, "", 200, func(t *testing.T, b map[string]any) {
			if b["description"] != "one" {
				t.Fatalf("body %v", b)
			}
		}},
		{"list vpcs", "GET", "/v1/projects/h/vpcs?page_size=10", apitest.AdminToken, "", 200, func(t *testing.T, b map[string]any) {
			if vs, _ := b["vpcs"].([]any); len(vs) != 1 {
				t.Fatalf("body %v", b)
			}
		}},
		{"patch with the current etag", "PATCH", "/v1/projects/h/vpcs/v", apitest.AdminToken, `{"description":"two","etag":"$ETAG"}`, 200, func(t *testing.T, b map[string]any) {
			if b["description"] != "two" || len(b["cidrBlocks"].([]any)) != 1 {
				t.Fatalf("patch changed more than the body's fields: %v", b)
			}
		}},
		{"patch with a stale etag", "PATCH", "/v1/projects/h/vpcs/v", apitest.AdminToken, `{"description":"three","etag":"$ETAG"}`, 409, nil},
		{"patch of an immutable field", "PATCH", "/v1/projects/h/vpcs/v/subnets/s?update_mask=cidr_block", apitest.AdminToken, `{"cidrBlock":"10.0.0.0/24"}`, 400, nil},
		{"get missing", "GET", "/v1/projects/h/vpcs/nope", apitest.AdminToken, "", 404, nil},
		{"load balancer with a bad listener is 400", "POST", "/v1/projects/h/loadBalancers?load_balancer_id=lb", apitest.AdminToken,
			`{"vpc":"projects/h/vpcs/v","scheme":"internal","subnet":"projects/h/vpcs/v/subnets/nope","listeners":[{"name":"x","protocol":"tcp","port":0}]}`, 400, nil},
		{"list load balancers", "GET", "/v1/projects/h/loadBalancers", apitest.AdminToken, "", 200, nil},
		{"user of another project", "GET", "/v1/projects/h/vpcs/v", apitest.UserToken, "", 403, nil},
		{"no token", "GET", "/v1/projects/h/vpcs/v", "", "", 401, nil},
		{"unknown token", "GET", "/v1/projects/h/vpcs/v", "nobody-knows-me", "", 401, nil},
		{"delete project still holding a vpc (FailedPrecondition)", "DELETE", "/v1/projects/h", apitest.AdminToken, "", 400, nil},
		{"delete vpc with a stale etag", "DELETE", "/v1/projects/h/vpcs/v?etag=1", apitest.AdminToken, "", 409, nil},
		{"delete vpc", "DELETE", "/v1/projects/h/vpcs/v", apitest.AdminToken, "", 200, nil},
		{"whoami", "GET", "/v1/whoami", apitest.UserToken, "", 200, func(t *testing.T, b map[string]any) {
			if b["subject"] != "bob" || b["role"] != "user" {
				t.Fatalf("body %v", b)
			}
		}},
		{"audit records", "GET", "/v1/auditRecords", apitest.AdminToken, "", 200, func(t *testing.T, b map[string]any) {
			if rs, _ := b["records"].([]any); len(rs) != 4 {
				t.Fatalf("want 4 records (project, vpc create, patch, delete): %v", b)
			}
		}},
		{"healthz", "GET", "/healthz", "", "", 200, nil},
		{"readyz", "GET", "/readyz", "", "", 200, nil},
		{"metrics", "GET", "/metrics", "", "", 200, func(t *testing.T, b map[string]any) {
			text, _ := b["text"].(string)
			for _, want := range []string{`meridian_api_requests_total{code="OK",method="/meridian.v1.NetworkService/CreateVpc"} 1`,
				`meridian_api_requests_total{code="Unauthenticated"`, `meridian_objects{kind="Project"} 1`} {
				if !strings.Contains(text, want) {
					t.Fatalf("/metrics lacks %s", want)
				}
			}
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			body := strings.ReplaceAll(s.body, "$ETAG", etag)
			code, b := httpCall(t, s.method, base+s.path, s.token, body)
			if code != s.want {
				t.Fatalf("%s %s: HTTP %d %v, want %d", s.method, s.path, code, b, s.want)
			}
			if s.check != nil {
				s.check(t, b)
			}
		})
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestControllerStopsGracefullyAndKeepsData: a stopped controller releases
// the store, and a new one on the same data dir serves what was written.
func TestControllerStopsGracefullyAndKeepsData(t *testing.T) {
	dir := t.TempDir()
	r := start(t, config(t, dir))
	base := "http://" + r.http
	if code, b := httpCall(t, "POST", base+"/v1/projects?project_id=keep", apitest.AdminToken, `{"organization":"org-b"}`); code != 200 {
		t.Fatalf("create: %d %v", code, b)
	}
	if err := r.stop(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v", err)
	}
	r = start(t, config(t, dir))
	if code, b := httpCall(t, "GET", "http://"+r.http+"/v1/projects/keep", apitest.UserBToken, ""); code != 403 {
		t.Fatalf("user of org-b without membership: %d %v", code, b)
	}
	if code, b := httpCall(t, "GET", "http://"+r.http+"/v1/projects/keep", apitest.AdminToken, ""); code != 200 || b["organization"] != "org-b" {
		t.Fatalf("after restart: %d %v", code, b)
	}
}
