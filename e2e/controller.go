package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/meridian-sdn/meridian/ctl"
)

// ControllerEndpoint is the controller's gRPC address: a unix socket in the
// run directory, reachable from every namespace through the filesystem.
func (r *Run) ControllerEndpoint() string { return "unix:" + r.controllerSocket() }

func (r *Run) controllerSocket() string { return filepath.Join(r.st.RunDir, "controller.sock") }

// Token is the system-admin bearer token of the run's controller.
func (r *Run) Token() string { return r.st.Token }

func (r *Run) binary(name string) (string, error) {
	p := filepath.Join(r.st.BinDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s: %w (build it with `make build` or e2e.Build)", name, err)
	}
	return p, nil
}

// startController starts the run's controller in the root namespace, on a
// unix socket for gRPC, and applies the topology's documents.
func (r *Run) startController(ctx context.Context, topo Topology) error {
	bin, err := r.binary("meridian-controller")
	if err != nil {
		return err
	}
	dir := r.st.RunDir
	tokens := filepath.Join(dir, "tokens.yaml")
	ident := fmt.Sprintf("identities:\n- subject: e2e-admin\n  role: system-admin\n  tokens: [%q]\n", r.st.Token)
	if err := os.WriteFile(tokens, []byte(ident), 0o600); err != nil {
		return fmt.Errorf("write tokens file: %w", err)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return fmt.Errorf("controller data directory: %w", err)
	}
	httpAddr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	if err := r.record(func(st *State) { st.HTTP = httpAddr }); err != nil {
		return err
	}
	argv := []string{bin, "--data-dir", data, "--tokens-file", tokens, "--listen-grpc", r.ControllerEndpoint(),
		"--listen-http", httpAddr, "--log-level", "debug"}
	argv = append(argv, r.ovnControllerArgs()...)
	if err := r.spawn(ctx, "controller", r.controllerSocket(), argv); err != nil {
		return err
	}
	docs, err := topo.Documents(r.State().underlay())
	if err != nil {
		return err
	}
	if err := r.Apply(ctx, docs); err != nil {
		return err
	}
	return r.record(func(st *State) { st.Applied = true })
}

// freeLoopbackAddr picks a free TCP port on 127.0.0.1. Another process may
// take it before the controller binds it; the controller then fails to
// start and says so.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Ctl runs meridianctl (in process) against the run's controller as its
// system admin and returns its output.
func (r *Run) Ctl(ctx context.Context, args ...string) (string, error) {
	var out, errOut bytes.Buffer
	full := append([]string{"--config=", "--endpoint", r.ControllerEndpoint(), "--token", r.st.Token}, args...)
	// No environment: only the flags above count.
	err := ctl.Run(ctx, full, ctl.Streams{In: strings.NewReader(""), Out: &out, Err: &errOut}, func(string) string { return "" })
	if err != nil {
		return out.String(), fmt.Errorf("meridianctl %s: %w\n%s%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String(), nil
}

// Apply applies meridianctl documents to the run's controller.
func (r *Run) Apply(ctx context.Context, docs string) error {
	f, err := os.CreateTemp(r.st.RunDir, "apply-*.yaml")
	if err != nil {
		return fmt.Errorf("write documents: %w", err)
	}
	_, werr := f.WriteString(docs)
	if err := errors.Join(werr, f.Close()); err != nil {
		return fmt.Errorf("write documents: %w", err)
	}
	out, err := r.Ctl(ctx, "apply", "-f", f.Name())
	if err != nil {
		return err
	}
	r.log.Debug("applied", "file", f.Name(), "output", out)
	return r.record(func(st *State) { st.Intent = f.Name() })
}
