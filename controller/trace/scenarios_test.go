package trace_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/ctl"
	"github.com/meridian-sdn/meridian/e2e"
)

// ctlEnv is a controller serving in-process on loopback and meridianctl
// (in-process too) talking to it as the system administrator.
type ctlEnv struct {
	grpc, http string
}

func startController(t testing.TB) *ctlEnv {
	t.Helper()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(apitest.TokensYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := controller.Defaults()
	cfg.DataDir, cfg.ListenGRPC, cfg.ListenHTTP, cfg.TokensFile = filepath.Join(dir, "data"), "127.0.0.1:0", "127.0.0.1:0", tokens
	c, err := controller.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatalf("controller.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if g, h := c.Addrs(); g != "" {
			return &ctlEnv{grpc: g, http: h}
		}
		select {
		case err := <-done:
			t.Fatalf("controller stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("controller did not start listening within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// ctl runs meridianctl with args and returns its standard output.
func (e *ctlEnv) ctl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return e.ctlAs(t, apitest.AdminToken, args...)
}

func (e *ctlEnv) ctlAs(t testing.TB, token string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	full := append([]string{"--config=", "--endpoint", e.grpc, "--token", token}, args...)
	err := ctl.Run(context.Background(), full, ctl.Streams{In: strings.NewReader(""), Out: &out, Err: &errOut}, func(string) string { return "" })
	if err != nil {
		return out.String(), fmt.Errorf("meridianctl %s: %w\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), nil
}

func (e *ctlEnv) apply(t testing.TB, docs string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "apply.yaml")
	if err := os.WriteFile(f, []byte(docs), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := e.ctl(t, "apply", "-f", f); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
}

// trace runs `meridianctl trace -o json` and decodes the answer.
func (e *ctlEnv) trace(t testing.TB, args ...string) (*v1.TraceResponse, error) {
	t.Helper()
	out, err := e.ctl(t, append([]string{"-o", "json", "trace"}, args...)...)
	if err != nil {
		return nil, err
	}
	var r v1.TraceResponse
	if err := protojson.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("decode trace output: %w\n%s", err, out)
	}
	return &r, nil
}

// flowArgs turns a matrix flow into trace arguments: from the source
// workload's port to the destination's address (the matrix probes by
// address), as the probe's connection does, with its reply.
func flowArgs(sc e2e.Scenario, f e2e.Flow) ([]string, error) {
	workloads := map[string]e2e.Workload{}
	for _, w := range sc.Workloads {
		workloads[w.Name] = w
	}
	src, ok := workloads[f.From]
	if !ok {
		return nil, fmt.Errorf("source %q is not a workload (nodes as sources are not traced)", f.From)
	}
	to := f.To
	if w, ok := workloads[f.To]; ok {
		to = w.IP
		if to == "" {
			to = w.Port
		}
	} else if _, err := netip.ParseAddr(f.To); err != nil {
		return nil, fmt.Errorf("destination %q is neither a workload nor an address", f.To)
	}
	args := []string{"--from", src.Port, "--to", to, "-p", string(f.Proto), "--reply"}
	if f.Proto != e2e.ICMP {
		args = append(args, "--dport", strconv.Itoa(int(f.Port)))
	}
	return args, nil
}

// TestTraceAgreesWithScenarioMatrices loads every e2e scenario of issue
// [2] into a real controller through meridianctl apply, phase by phase,
// and traces every flow of each phase's matrix with meridianctl trace: the
// connection's verdict (the first packet, then its reply) must be the
// matrix's, which the e2e tests check against real packets on the data
// path. Any disagreement fails the test, with the flow and the stage.
func TestTraceAgreesWithScenarioMatrices(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "e2e", "testdata", "scenarios", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files found under e2e/testdata/scenarios (%v)", err)
	}
	total := 0
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			sc, err := e2e.LoadScenario(file)
			if err != nil {
				t.Fatal(err)
			}
			env := startController(t)
			underlay := map[string]netip.Addr{}
			for i, n := range sc.Nodes {
				underlay[n.Name] = netip.AddrFrom4([4]byte{192, 0, 2, byte(11 + i)})
			}
			docs, err := sc.Documents(underlay)
			if err != nil {
				t.Fatal(err)
			}
			env.apply(t, docs)
			phases := sc.Phases
			if strings.HasPrefix(filepath.Base(file), "05-port-move") {
				// What e2e TestScenarioPortMove does between its checks: the
				// port moves to node-2 and the same matrix holds.
				ph, err := sc.Phase("reachable")
				if err != nil {
					t.Fatal(err)
				}
				ph.Name, ph.Apply = "reachable-after-move", "kind: Port\nname: projects/move/ports/mover\nnode: nodes/node-2\n"
				phases = append(phases, ph)
			}
			for _, ph := range phases {
				if ph.Apply != "" {
					env.apply(t, ph.Apply)
				}
				var disagree []string
				exps := ph.Expectations()
				for _, e := range exps {
					args, err := flowArgs(sc, e.Flow)
					if err != nil {
						t.Fatalf("phase %s: %s: %v", ph.Name, e.Flow, err)
					}
					r, err := env.trace(t, args...)
					if err != nil {
						t.Fatalf("phase %s: %s: %v", ph.Name, e.Flow, err)
					}
					if r.GetAllowed() != e.Allow {
						disagree = append(disagree, fmt.Sprintf("  %s: matrix says %s, trace says %s", e.Flow, word(e.Allow), explainVerdict(r)))
					}
				}
				if ph.Name == "reachable-after-move" {
					r, err := env.trace(t, "--from", "projects/move/ports/mover", "--to", "10.0.1.11", "-p", "icmp")
					if err != nil || r.GetForward().GetStages()[0].GetNode() != "node-2" {
						t.Errorf("after the move the trace does not start on node-2: %v %v", err, r.GetForward().GetStages()[0])
					}
				}
				total += len(exps)
				if len(disagree) > 0 {
					t.Errorf("phase %s: the trace disagrees with the matrix on %d of %d flows:\n%s",
						ph.Name, len(disagree), len(exps), strings.Join(disagree, "\n"))
				}
			}
		})
	}
	t.Logf("%d flows traced in %d scenario files", total, len(files))
}

func word(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// explainVerdict says where a traced connection ended.
func explainVerdict(r *v1.TraceResponse) string {
	if r.GetAllowed() {
		return "allow"
	}
	t, which := r.GetForward(), "first packet"
	if t.GetAllowed() && r.GetReply() != nil {
		t, which = r.GetReply(), "reply"
	}
	st := t.GetStages()
	if len(st) == 0 {
		return "deny (no stage)"
	}
	last := st[len(st)-1]
	return fmt.Sprintf("deny: %s dropped at %s by %s %s (%s): %s", which, last.GetStage(), last.GetObject(), last.GetRule(), t.GetDropReason(), last.GetDetail())
}

// TestTraceCommand checks what a person sees: the table names the stage,
// the security group and the verdict; a user of another organisation may
// not trace the project's ports; a bad request is refused with the field.
func TestTraceCommand(t *testing.T) {
	sc, err := e2e.LoadScenario(filepath.Join("..", "..", "e2e", "testdata", "scenarios", "02-sg-ssh-from-subnet.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	env := startController(t)
	docs, err := sc.Documents(map[string]netip.Addr{"node-1": netip.MustParseAddr("192.0.2.11"), "node-2": netip.MustParseAddr("192.0.2.12")})
	if err != nil {
		t.Fatal(err)
	}
	env.apply(t, docs)

	out, err := env.ctl(t, "trace", "--from", "projects/ssh/ports/b-1", "--to", "projects/ssh/ports/srv", "-p", "tcp", "--dport", "22")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"forward: tcp 10.0.2.11:40000 -> 10.0.2.22:22 [SYN] (NEW)",
		"STAGE", "sg-egress", "projects/ssh/securityGroups/client",
		"sg-ingress", "projects/ssh/securityGroups/ssh",
		"verdict: DROPPED at sg-ingress by projects/ssh/securityGroups/ssh rule none (SG_INGRESS)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	t.Log("\n" + out)
	out, err = env.ctl(t, "trace", "--from", "projects/ssh/ports/a-1", "--to", "10.0.2.22", "-p", "tcp", "--dport", "22", "--reply")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"reply: tcp 10.0.2.22:22 -> 10.0.1.11:40000 [SYN,ACK] (ESTABLISHED)", "connection: ALLOWED"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	// The same over HTTP/JSON.
	body := `{"source": "projects/ssh/ports/a-1", "destination": "10.0.2.22", "protocol": "tcp", "destinationPort": 22}`
	hreq, err := http.NewRequest(http.MethodPost, "http://"+env.http+"/v1/trace", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	hreq.Header.Set("Authorization", "Bearer "+apitest.AdminToken)
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got v1.TraceResponse
	raw, _ := io.ReadAll(resp.Body)
	if err := protojson.Unmarshal(raw, &got); err != nil || resp.StatusCode != http.StatusOK || !got.GetAllowed() {
		t.Errorf("POST /v1/trace: %s %s (%v), want 200 and allowed", resp.Status, raw, err)
	}

	if _, err := env.ctlAs(t, apitest.UserToken, "trace", "--from", "projects/ssh/ports/a-1", "--to", "10.0.2.22", "-p", "icmp"); err == nil ||
		!strings.Contains(err.Error(), "another organisation") {
		t.Errorf("user of another organisation: err = %v, want permission denied", err)
	}
	if _, err := env.ctl(t, "trace", "--from", "projects/ssh/ports/a-1", "--to", "10.0.2.22", "-p", "tcp"); err == nil ||
		!strings.Contains(err.Error(), "destination_port") {
		t.Errorf("tcp without a port: err = %v, want destination_port named", err)
	}
	if _, err := env.ctl(t, "trace", "--from", "projects/ssh/ports/nope", "--to", "10.0.2.22", "-p", "icmp"); err == nil ||
		!strings.Contains(err.Error(), "no such port") {
		t.Errorf("unknown port: err = %v, want no such port", err)
	}
}
