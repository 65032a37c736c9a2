package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsDir is where iproute2 (and nsenter --net) find named namespaces.
const netnsDir = "/run/netns"

// DefaultExecTimeout bounds Exec when the context has no deadline, so a
// hung command fails the test instead of hanging it.
const DefaultExecTimeout = 30 * time.Second

func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

func addNetns(ctx context.Context, name string) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// delNetns removes a named namespace; one that is already gone is fine.
func delNetns(name string) error {
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// handleAt opens a netlink handle in a named namespace; the caller closes it.
func handleAt(name string) (*netlink.Handle, netns.NsHandle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, netns.None(), fmt.Errorf("open netns %s: %w", name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, netns.None(), fmt.Errorf("netlink handle in %s: %w", name, err)
	}
	return h, ns, nil
}

// Command returns a command that runs argv inside the named namespace. It
// enters with nsenter --net rather than `ip netns exec`, which remounts /sys
// and so hides bpffs from the command.
func Command(ctx context.Context, netnsName string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netnsPath(netnsName), "--"}, argv...)...)
}

// Exec runs argv inside the named namespace and returns its combined
// output; the error includes the output too.
func Exec(ctx context.Context, netnsName string, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("exec: no command")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultExecTimeout)
		defer cancel()
	}
	out, err := Command(ctx, netnsName, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("exec in %s: %s: %w\n%s", netnsName, strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// setUp sets links up by name in h's namespace.
func setUp(h *netlink.Handle, names ...string) error {
	for _, n := range names {
		l, err := h.LinkByName(n)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("set %s up: %w", n, err)
		}
	}
	return nil
}
