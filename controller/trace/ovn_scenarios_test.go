package trace_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/controller"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/e2e"
)

// startOVNController is startController with the OVN realization on: the
// controller renders the model into stack's NB and runs ovn-trace against
// its SB.
func startOVNController(t *testing.T, stack *ovntest.Stack) *ctlEnv {
	t.Helper()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(apitest.TokensYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := controller.Defaults()
	cfg.DataDir, cfg.ListenGRPC, cfg.ListenHTTP, cfg.TokensFile = filepath.Join(dir, "data"), "127.0.0.1:0", "127.0.0.1:0", tokens
	cfg.OVNNorthbound, cfg.OVNSouthbound = stack.NB.Endpoint(), stack.SB.Endpoint()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
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

var syncedRevision = regexp.MustCompile(`(?m)^meridian_ovn_synced_revision (\S+)$`)

// waitOVN waits until the controller's OVN reconciler wrote revision rev
// to NB and ovn-northd turned it into logical flows.
func waitOVN(t *testing.T, env *ctlEnv, stack *ovntest.Stack, rev int64) {
	t.Helper()
	// Generous: on a loaded machine the reconciler and northd share two
	// CPUs with everything else.
	deadline := time.Now().Add(45 * time.Second)
	for {
		resp, err := http.Get("http://" + env.http + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := syncedRevision.FindSubmatch(b); m != nil {
				if v, err := strconv.ParseFloat(string(m[1]), 64); err == nil && int64(v) >= rev {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the OVN realization did not reach revision %d in 45 s (%v)", rev, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stack.WaitNorthd()
}

// TestOVNTraceAgreesWithScenarioMatrices runs the security-group,
// network-ACL and VPC-isolation scenario files of issue [2] (01, the full
// mesh, only adds allowed flows of the same kinds; it agrees too, and
// costs 13 s) on a controller whose nodes are
// all of the OVN realization, rendering into a real OVN control plane,
// and traces every flow of every phase with meridianctl trace: ovn-trace's
// verdict on ovn-northd's flows must agree with the model's on the first
// packet of each. (The model's connection verdicts are checked against the
// matrices, and so against real packets, by
// TestTraceAgreesWithScenarioMatrices.)
func TestOVNTraceAgreesWithScenarioMatrices(t *testing.T) {
	total, allowed := 0, 0
	for _, name := range []string{"02-sg-ssh-from-subnet", "03-acl-numbered-stateless", "04-vpc-isolation"} {
		t.Run(name, func(t *testing.T) {
			sc, err := e2e.LoadScenario(filepath.Join("..", "..", "e2e", "testdata", "scenarios", name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			stack := ovntest.Start(t, ovntest.Options{})
			env := startOVNController(t, stack)
			underlay := map[string]netip.Addr{}
			for i, n := range sc.Nodes {
				underlay[n.Name] = netip.AddrFrom4([4]byte{192, 0, 2, byte(11 + i)})
			}
			docs, err := sc.Documents(underlay)
			if err != nil {
				t.Fatal(err)
			}
			// Every node is an OVN node.
			docs = strings.ReplaceAll(docs, "kind: Node\n", "kind: Node\nrealization: OVN\n")
			env.apply(t, docs)
			for _, ph := range sc.Phases {
				if ph.Apply != "" {
					env.apply(t, ph.Apply)
				}
				exps := ph.Expectations()
				// One trace first, to learn the revision the OVN realization
				// must reach; then every flow, four at a time (each runs an
				// ovn-trace process, mostly waiting on its start-up).
				first, err := flowArgs(sc, exps[0].Flow)
				if err != nil {
					t.Fatalf("phase %s: %s: %v", ph.Name, exps[0].Flow, err)
				}
				r0, err := env.trace(t, first...)
				if err != nil {
					t.Fatalf("phase %s: %s: %v", ph.Name, exps[0].Flow, err)
				}
				waitOVN(t, env, stack, r0.GetRevision())
				results := make([]string, len(exps))
				errs := make([]error, len(exps))
				sem := make(chan struct{}, 4)
				var wg sync.WaitGroup
				for i, e := range exps {
					wg.Add(1)
					sem <- struct{}{}
					go func() {
						defer func() { <-sem; wg.Done() }()
						args, err := flowArgs(sc, e.Flow)
						if err != nil {
							errs[i] = err
							return
						}
						r, err := env.trace(t, args...)
						if err != nil {
							errs[i] = err
							return
						}
						o := r.GetOvn()
						switch {
						case o == nil:
							errs[i] = errors.New("no ovn-trace verdict from an OVN node")
						case o.GetError() != "":
							errs[i] = errors.New("ovn-trace: " + o.GetError())
						case !o.GetAgrees() || o.GetAllowed() != r.GetForward().GetAllowed():
							results[i] = fmt.Sprintf("  %s: the model says %s (%s), ovn-trace %s",
								e.Flow, word(r.GetForward().GetAllowed()), explainVerdict(r), o.GetVerdict())
						case o.GetAllowed():
							results[i] = "allowed"
						default:
							results[i] = "dropped"
						}
					}()
				}
				wg.Wait()
				var disagree []string
				for i, e := range exps {
					switch {
					case errs[i] != nil:
						t.Fatalf("phase %s: %s: %v", ph.Name, e.Flow, errs[i])
					case results[i] == "allowed":
						allowed++
					case results[i] != "dropped":
						disagree = append(disagree, results[i])
					}
					total++
				}
				if len(disagree) > 0 {
					t.Errorf("phase %s: ovn-trace disagrees with the model on %d of %d first packets:\n%s",
						ph.Name, len(disagree), len(exps), strings.Join(disagree, "\n"))
				}
			}
		})
	}
	t.Logf("%d first packets traced both ways, %d allowed, %d dropped", total, allowed, total-allowed)
}
