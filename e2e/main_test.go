package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// testBins holds binaries built once for this test binary from the current
// source, so no test runs a stale bin/. Set by TestMain only.
var testBins string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "meridian-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e tests:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The agent is built by the test that needs it: the other tests must
	// not depend on it compiling.
	if err := Build(ctx, dir, "./cmd/meridian-controller"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e tests:", err)
		return 1
	}
	testBins = dir
	return m.Run()
}
