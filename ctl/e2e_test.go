package ctl

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestEndToEnd drives meridianctl (in process, through the cobra root)
// against a real meridian-controller process: apply, idempotence, one-field
// edits, CRUD, errors, audit, watch and delete -f.
//
// The controller is built from ./cmd/meridian-controller, or taken from
// $MERIDIAN_CONTROLLER_BIN when that names a prebuilt binary.
func TestEndToEnd(t *testing.T) {
	dir := t.TempDir()
	grpcAddr, srv := startController(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// run executes meridianctl as the given token's identity; no config
	// file and no environment, so only the flags count.
	run := func(token string, args ...string) (string, error) {
		var out, errOut bytes.Buffer
		full := append([]string{"--config=", "--endpoint", grpcAddr, "--token", token}, args...)
		err := Run(ctx, full, Streams{In: strings.NewReader(""), Out: &out, Err: &errOut}, func(string) string { return "" })
		return out.String(), err
	}
	admin := func(args ...string) string {
		t.Helper()
		out, err := run("demo-admin-token", args...)
		if err != nil {
			t.Fatalf("meridianctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	const topology = "../examples/topology.yaml"
	docs, err := parseDocuments(kindTable(), topology, mustRead(t, topology))
	if err != nil {
		t.Fatal(err)
	}

	// Who am I.
	if out := admin("whoami"); !strings.Contains(out, "admin") || !strings.Contains(out, "system-admin") {
		t.Errorf("whoami:\n%s", out)
	}

	// First apply creates everything, in dependency order.
	out := admin("apply", "-f", topology)
	lines := expectLines(t, "first apply", out, len(docs), " created")
	if !strings.HasPrefix(lines[0], "project projects/demo ") || !strings.HasPrefix(lines[len(lines)-1], "port ") {
		t.Errorf("first apply is not in dependency order:\n%s", out)
	}

	// Second apply changes nothing.
	expectLines(t, "second apply", admin("apply", "-f", topology), len(docs), " unchanged")

	// The outside world (issue [4]) on top of it: created, then unchanged
	// (the BGP peer's write-only password included), then removed again.
	const outside = "../examples/outside.yaml"
	odocs, err := parseDocuments(kindTable(), outside, mustRead(t, outside))
	if err != nil {
		t.Fatal(err)
	}
	expectLines(t, "apply outside", admin("apply", "-f", outside), len(odocs), " created")
	expectLines(t, "apply outside again", admin("apply", "-f", outside), len(odocs), " unchanged")
	if out := admin("eip", "get", "projects/demo/elasticIps/egress", "-o", "json"); !jsonField(out, "natGateway", "projects/demo/natGateways/egress") {
		t.Errorf("the NAT gateway's elastic IP does not name it:\n%s", out)
	}
	if out := admin("bgp-peer", "get", "bgpPeers/gw-1-tor", "-o", "json"); strings.Contains(out, "demo-md5-secret") || !regexp.MustCompile(`"passwordSet":\s*true`).MatchString(out) {
		t.Errorf("bgp-peer get shows the password or not that one is set:\n%s", out)
	}
	if out := admin("pool", "list"); !strings.Contains(out, "198.51.100.0/28") {
		t.Errorf("pool list:\n%s", out)
	}
	expectLines(t, "delete outside", admin("delete", "-f", outside), len(odocs), " deleted")

	// A load balancer (issue [5]): created, unchanged on a second apply
	// (server defaults and the backend resolved from its address are not
	// differences), shown with its VIP and backend health, removed.
	const lbFile = "../examples/lb.yaml"
	ldocs, err := parseDocuments(kindTable(), lbFile, mustRead(t, lbFile))
	if err != nil {
		t.Fatal(err)
	}
	expectLines(t, "apply lb", admin("apply", "-f", lbFile), len(ldocs), " created")
	expectLines(t, "apply lb again", admin("apply", "-f", lbFile), len(ldocs), " unchanged")
	out = admin("lb", "get", "projects/demo/loadBalancers/web")
	for _, want := range []string{"198.51.100.40", "internet-facing", "LISTENER", "listener http tcp/80: 3 of 3 backends serving, http check every 1000ms GET /healthz",
		"projects/demo/ports/web-3", "10.0.1.13:8080", "unknown"} {
		if !strings.Contains(out, want) {
			t.Errorf("lb get does not show %q:\n%s", want, out)
		}
	}
	t.Logf("meridianctl lb get:\n%s", out)
	if out := admin("lb", "list", "--parent", "projects/demo"); !strings.Contains(out, "198.51.100.40") || !strings.Contains(out, "VIP") {
		t.Errorf("lb list:\n%s", out)
	}
	expectLines(t, "delete lb", admin("delete", "-f", lbFile), len(ldocs), " deleted")

	// Edit one rule: exactly that security group is updated, in its rules.
	edited := filepath.Join(dir, "edited.yaml")
	text := string(mustRead(t, topology))
	text = strings.Replace(text, "portRangeMin: 443\n  portRangeMax: 443", "portRangeMin: 8443\n  portRangeMax: 8443", 1)
	mustWrite(t, edited, text)
	// A dry run validates the change on the controller and stores nothing.
	out = admin("apply", "--dry-run", "-f", edited)
	expectOneUpdated(t, "dry run", out, len(docs), "security-group projects/demo/securityGroups/web updated (rules) (dry run)")
	out = admin("apply", "-f", edited)
	expectOneUpdated(t, "rule edit", out, len(docs), "security-group projects/demo/securityGroups/web updated (rules)")
	expectLines(t, "apply after rule edit", admin("apply", "-f", edited), len(docs), " unchanged")

	// Edit one label: exactly the VPC is updated, in its labels.
	text = strings.Replace(text, "labels:\n  env: prod", "labels:\n  env: staging", 1)
	mustWrite(t, edited, text)
	out = admin("apply", "-f", edited)
	expectOneUpdated(t, "label edit", out, len(docs), "vpc projects/demo/vpcs/prod updated (labels)")
	if out := admin("vpc", "get", "projects/demo/vpcs/prod", "-o", "json"); !jsonField(out, "env", "staging") || !strings.Contains(out, `"vni"`) {
		t.Errorf("vpc get -o json:\n%s", out)
	}

	// Listing follows page tokens.
	out = admin("port", "list", "--parent", "projects/demo", "--page-size", "1")
	if n := strings.Count(out, "projects/demo/ports/"); n != 3 {
		t.Errorf("port list with page size 1 shows %d ports, want 3:\n%s", n, out)
	}
	if !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "10.0.1.11") {
		t.Errorf("port list table:\n%s", out)
	}
	if out := admin("sg", "list", "--parent", "projects/demo", "-o", "yaml"); !strings.HasPrefix(out, "- ") || strings.Count(out, "  name: projects/demo/securityGroups/") != 2 {
		t.Errorf("sg list -o yaml:\n%s", out)
	}

	// Imperative CRUD with the convenience flags and short names.
	out = admin("vpc", "create", "projects/demo/vpcs/extra", "--cidr", "172.16.0.0/16", "--label", "team=net")
	if !strings.Contains(out, "projects/demo/vpcs/extra") || !strings.Contains(out, "172.16.0.0/16") {
		t.Errorf("vpc create:\n%s", out)
	}
	out = admin("subnet", "create", "projects/demo/vpcs/extra/subnets/a", "--cidr", "172.16.5.0/24", "--gateway", "172.16.5.254")
	if !strings.Contains(out, "172.16.5.254") {
		t.Errorf("subnet create:\n%s", out)
	}
	admin("acl", "create", "projects/demo/networkAcls/extra", "--vpc", "projects/demo/vpcs/extra")
	admin("rt", "create", "projects/demo/routeTables/extra", "--vpc", "projects/demo/vpcs/extra")
	admin("sg", "create", "projects/demo/securityGroups/extra", "--vpc", "projects/demo/vpcs/extra")
	out = admin("port", "create", "projects/demo/ports/extra", "--subnet", "projects/demo/vpcs/extra/subnets/a",
		"--ip", "172.16.5.10", "--sg", "projects/demo/securityGroups/extra", "--node", "nodes/node-1")
	if !strings.Contains(out, "172.16.5.10") || !strings.Contains(out, "nodes/node-1") {
		t.Errorf("port create:\n%s", out)
	}
	admin("node", "create", "nodes/node-3", "--underlay-ip", "192.0.2.13")
	admin("project", "create", "projects/extra", "--org", "acme")
	upd := filepath.Join(dir, "update.yaml")
	mustWrite(t, upd, "description: extra network\nlabels: {team: net, cost: '42'}\n")
	if out := admin("vpc", "update", "projects/demo/vpcs/extra", "-f", upd, "-o", "json"); !strings.Contains(out, `"extra network"`) || !jsonField(out, "cost", "42") {
		t.Errorf("vpc update:\n%s", out)
	}
	if out := admin("vpc", "update", "projects/demo/vpcs/extra", "-f", upd, "--mask", "description", "--description", "only this"); !strings.Contains(out, "projects/demo/vpcs/extra") {
		t.Errorf("vpc update --mask:\n%s", out)
	}
	// A stale etag is refused.
	if _, err := run("demo-admin-token", "vpc", "delete", "projects/demo/vpcs/extra", "--etag", "1"); !isCode(err, codes.Aborted) && !isCode(err, codes.FailedPrecondition) {
		t.Errorf("delete with a stale etag: %v", err)
	}
	for _, name := range []string{"port projects/demo/ports/extra", "subnet projects/demo/vpcs/extra/subnets/a", "sg projects/demo/securityGroups/extra",
		"rt projects/demo/routeTables/extra", "acl projects/demo/networkAcls/extra", "vpc projects/demo/vpcs/extra", "node nodes/node-3", "project projects/extra"} {
		kind, n, _ := strings.Cut(name, " ")
		if out := admin(kind, "delete", n); !strings.Contains(out, "deleted") {
			t.Errorf("%s delete: %s", kind, out)
		}
	}

	// Errors say what to fix.
	_, err = run("demo-admin-token", "vpc", "create", "projects/demo/vpcs/bad", "--cidr", "10.0.0.1/16")
	if !isCode(err, codes.InvalidArgument) || !strings.Contains(err.Error(), "cidr_blocks") || !strings.Contains(err.Error(), "\n  ") {
		t.Errorf("invalid CIDR: want InvalidArgument with a field violation line, got %v", err)
	}
	_, err = run("demo-alice-token", "node", "create", "nodes/node-9", "--underlay-ip", "192.0.2.19")
	if !isCode(err, codes.PermissionDenied) || !strings.Contains(err.Error(), "subject alice") {
		t.Errorf("alice creating a node: want PermissionDenied naming alice, got %v", err)
	}
	_, err = run("not-a-valid-token", "whoami")
	if !isCode(err, codes.Unauthenticated) || !strings.Contains(err.Error(), "MERIDIAN_TOKEN") {
		t.Errorf("bad token: want Unauthenticated with a hint, got %v", err)
	}
	// Alice sees her project.
	if out, err := run("demo-alice-token", "port", "list", "--parent", "projects/demo"); err != nil || strings.Count(out, "projects/demo/ports/") != 3 {
		t.Errorf("alice lists ports: %v\n%s", err, out)
	}

	// The audit log names who did what.
	if out := admin("audit", "list", "--project", "projects/demo"); !strings.Contains(out, "CreateVpc") || !strings.Contains(out, "admin") {
		t.Errorf("audit list:\n%s", out)
	}

	// Watch replays from revision 1 and streams until stopped.
	var watchOut syncBuffer
	wctx, wcancel := context.WithCancel(ctx)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- Run(wctx, []string{"--config=", "--endpoint", grpcAddr, "--token", "demo-admin-token", "watch", "--kind", "vpc", "--from-revision", "1"},
			Streams{In: strings.NewReader(""), Out: &watchOut, Err: &watchOut}, func(string) string { return "" })
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(watchOut.String(), "projects/demo/vpcs/extra") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	wcancel()
	if err := <-watchDone; err != nil {
		t.Errorf("watch: %v", err)
	}
	if w := watchOut.String(); !strings.Contains(w, "PUT") || !strings.Contains(w, "DELETE") || !strings.Contains(w, "projects/demo/vpcs/prod") || strings.Contains(w, "ports/") {
		t.Errorf("watch --kind vpc output:\n%s", w)
	}

	// delete -f removes everything, in reverse order; get then says NotFound.
	out = admin("delete", "-f", edited)
	lines = expectLines(t, "delete -f", out, len(docs), " deleted")
	if !strings.HasPrefix(lines[0], "port ") || !strings.HasPrefix(lines[len(lines)-1], "project projects/demo ") {
		t.Errorf("delete -f is not in reverse dependency order:\n%s", out)
	}
	_, err = run("demo-admin-token", "vpc", "get", "projects/demo/vpcs/prod")
	if !isCode(err, codes.NotFound) || !strings.Contains(err.Error(), "not found") {
		t.Errorf("get after delete: want NotFound, got %v", err)
	}
	// The controller gone, the error says where it looked and how to start it.
	srv.stop()
	_, err = run("demo-admin-token", "whoami")
	if !isCode(err, codes.Unavailable) || !strings.Contains(err.Error(), "cannot reach the controller at "+grpcAddr) {
		t.Errorf("controller down: got %v", err)
	}
}

// controller is a running meridian-controller process.
type controller struct {
	cmd    *exec.Cmd
	exited chan error
	once   sync.Once
}

// stop kills the controller and waits for it; safe to call twice.
func (c *controller) stop() {
	c.once.Do(func() {
		_ = c.cmd.Process.Kill()
		<-c.exited
	})
}

// startController runs meridian-controller on free loopback ports with the
// example tokens file and a fresh data directory, waits until its gRPC port
// accepts connections and stops it when the test ends.
func startController(t *testing.T, extraArgs ...string) (string, *controller) {
	t.Helper()
	bin := controllerBinary(t)
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	tokens, err := filepath.Abs("../examples/tokens.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	args := append([]string{"--data-dir", dataDir, "--tokens-file", tokens, "--listen-grpc", grpcAddr, "--listen-http", httpAddr}, extraArgs...)
	c := &controller{cmd: exec.Command(bin, args...), exited: make(chan error, 1)}
	c.cmd.Stdout, c.cmd.Stderr = logs, logs
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start controller: %v", err)
	}
	go func() { c.exited <- c.cmd.Wait() }()
	t.Cleanup(func() {
		c.stop()
		if t.Failed() {
			t.Logf("controller log:\n%s", logs.String())
		}
	})
	waitListening(t, grpcAddr, c.exited, logs)
	return grpcAddr, c
}

// expectLines checks that out has n lines, each containing want.
func expectLines(t *testing.T, what, out string, n int, want string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != n {
		t.Errorf("%s: %d lines, want %d:\n%s", what, len(lines), n, out)
	}
	for _, l := range lines {
		if !strings.Contains(l, want) {
			t.Errorf("%s: line %q lacks %q", what, l, want)
		}
	}
	return lines
}

// expectOneUpdated checks that exactly the line want changed something.
func expectOneUpdated(t *testing.T, what, out string, n int, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != n {
		t.Errorf("%s: %d lines, want %d:\n%s", what, len(lines), n, out)
	}
	found := 0
	for _, l := range lines {
		switch {
		case l == want:
			found++
		case !strings.HasSuffix(l, " unchanged"):
			t.Errorf("%s: unexpected line %q", what, l)
		}
	}
	if found != 1 {
		t.Errorf("%s: want exactly one %q:\n%s", what, want, out)
	}
}

// controllerBinary builds meridian-controller (or takes a prebuilt one).
func controllerBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("MERIDIAN_CONTROLLER_BIN"); bin != "" {
		return bin
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "meridian-controller")
	build := exec.Command(goTool, "build", "-o", bin, "./cmd/meridian-controller")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build meridian-controller: %v\n%s", err, out)
	}
	return bin
}

// freeAddr picks a loopback port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// waitListening waits for the controller's gRPC port, failing early if
// the process exits.
func waitListening(t *testing.T, addr string, exited chan error, logs fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("controller exited before listening: %v\n%s", err, logs.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("controller not listening on %s after 30s\n%s", addr, logs.String())
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustWrite(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// jsonField reports whether protojson output has "key": "value". protojson
// varies its whitespace on purpose, so the bytes cannot be matched.
func jsonField(out, key, value string) bool {
	return regexp.MustCompile(`"` + regexp.QuoteMeta(key) + `":\s*"` + regexp.QuoteMeta(value) + `"`).MatchString(out)
}
