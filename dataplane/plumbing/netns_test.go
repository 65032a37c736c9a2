package plumbing

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// newNetns creates a namespace with a name unique to this run and removes
// it when the test ends, pass or fail.
func newNetns(t *testing.T, role string) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	name := "mplumb-" + hex.EncodeToString(b) + "-" + role
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	path := filepath.Join("/run/netns", name)
	t.Cleanup(func() {
		if _, err := os.Stat(path); os.IsNotExist(err) {
			return // the test removed it on purpose
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return path
}

// enterNetns moves the test goroutine's thread into the namespace at path
// until the test ends, standing in for an agent that runs inside its node's
// namespace. If the thread cannot be moved back it stays locked and dies
// with the test goroutine.
func enterNetns(t *testing.T, path string) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current netns: %v", err)
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("open %s: %v", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("enter %s: %v", path, err)
	}
	t.Cleanup(func() {
		defer orig.Close()
		if err := netns.Set(orig); err != nil {
			t.Errorf("restore netns: %v", err)
			return
		}
		runtime.UnlockOSThread()
	})
}

// readSysctlIn reads /proc/sys/<path> inside the namespace at nsPath.
func readSysctlIn(t *testing.T, nsPath string, path ...string) string {
	t.Helper()
	var val []byte
	err := RunInNetns(nsPath, func() error {
		var err error
		val, err = os.ReadFile(filepath.Join(append([]string{"/proc/sys"}, path...)...))
		return err
	})
	if err != nil {
		t.Fatalf("read sysctl %v in %s: %v", path, nsPath, err)
	}
	return string(val[:len(val)-1])
}
