package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCommands drives a fabric-only run through every command: up prints
// the run, status/exec/probe find it through the current-run link, and down
// leaves no namespace behind.
func TestCommands(t *testing.T) {
	// A private TMPDIR: the run directory and the current-run link of this
	// test must not replace those of a run someone is working with.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	topo := filepath.Join(tmp, "topo.yaml")
	if err := os.WriteFile(topo, []byte("nodes: [{name: a}, {name: b}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var runID, upID string // upID survives down, for the final check
	t.Cleanup(func() {
		if runID != "" {
			_, _ = run(t.Context(), []string{"down"}, &bytes.Buffer{}) // after a failure half-way
		}
	})
	steps := []struct {
		name     string
		args     []string
		wantCode int
		want     string
	}{
		{"up builds the fabric", []string{"up", "-f", topo, "--until", "fabric", "--log-level", "warn"}, 0, "NODE"},
		{"status lists the nodes", []string{"status"}, 0, "me2e-"},
		{"probe between nodes gets through", []string{"probe", "a", "b", "udp/9"}, 0, "a -> b udp/9: allow"},
		{"probe with a bad port is a usage error", []string{"probe", "a", "b", "tcp/x"}, 2, ""},
		{"exec returns the command's exit code", []string{"exec", "b", "--", "sh", "-c", "exit 3"}, 3, ""},
		{"unknown command is a usage error", []string{"frob"}, 2, ""},
		{"down removes the run", []string{"down"}, 0, "removed"},
	}
	for _, s := range steps {
		var out bytes.Buffer
		code, err := run(t.Context(), s.args, &out)
		if code != s.wantCode || (s.wantCode == 0 && err != nil) {
			t.Fatalf("%s: code %d, err %v, want code %d\n%s", s.name, code, err, s.wantCode, out.String())
		}
		if !strings.Contains(out.String(), s.want) {
			t.Errorf("%s: output lacks %q:\n%s", s.name, s.want, out.String())
		}
		if s.args[0] == "up" {
			runID = strings.Fields(out.String())[1]
			upID = runID
		}
		if s.args[0] == "down" {
			runID = ""
		}
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil || upID == "" || strings.Contains(string(out), "-"+upID+"-") {
		t.Errorf("ip netns list after down: %v\n%s", err, out)
	}
}
