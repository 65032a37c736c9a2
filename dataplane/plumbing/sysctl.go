package plumbing

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
)

// sysctl is one /proc/sys key below net/, split into path elements because
// interface names may contain dots.
type sysctl struct {
	path  []string
	value string
	// optional keys are skipped when absent, e.g. IPv6 keys on a kernel
	// booted with ipv6.disable=1.
	optional bool
}

func (s sysctl) String() string { return filepath.Join(s.path...) + "=" + s.value }

// hostPortSysctls are what the data path needs on a device that carries its
// programs but no address of its own: no reverse-path filter, because
// redirected packets arrive on devices the kernel's routing would never
// choose for their source; no IPv6, so the device gets no link-local
// address and never sends router or neighbour solicitations.
func hostPortSysctls(ifName string) []sysctl {
	return []sysctl{
		{path: []string{"net", "ipv4", "conf", ifName, "rp_filter"}, value: "0"},
		{path: []string{"net", "ipv6", "conf", ifName, "disable_ipv6"}, value: "1", optional: true},
	}
}

// workloadSysctls keep a workload's interface quiet on IPv6 unless the port
// has IPv6 addresses; then only router advertisements are ignored, since
// the controller, not the network, assigns addresses.
func workloadSysctls(ifName string, ipv6 bool) []sysctl {
	if ipv6 {
		return []sysctl{{path: []string{"net", "ipv6", "conf", ifName, "accept_ra"}, value: "0"}}
	}
	return []sysctl{{path: []string{"net", "ipv6", "conf", ifName, "disable_ipv6"}, value: "1", optional: true}}
}

// EnsureNodeSysctls sets the node-wide keys the data path relies on in the
// calling thread's namespace. The kernel applies the larger of the "all"
// and the per-device rp_filter, so the per-device zero alone is not enough.
func EnsureNodeSysctls() (changes []string, err error) {
	return ensureSysctls([]sysctl{{path: []string{"net", "ipv4", "conf", "all", "rp_filter"}, value: "0"}})
}

// EnsureForwarding lets ifName forward IPv4 in the calling thread's
// namespace. A gateway needs it on its overlay device: the data path sends
// translated packets out by bpf_fib_lookup as if forwarded from there, and
// the kernel refuses lookups for devices that do not forward. Nothing else
// changes: the node does not become a router for other devices.
func EnsureForwarding(ifName string) ([]string, error) {
	if err := validIfName(ifName); err != nil {
		return nil, fmt.Errorf("forwarding: %w", err)
	}
	return ensureSysctls([]sysctl{{path: []string{"net", "ipv4", "conf", ifName, "forwarding"}, value: "1"}})
}

// ensureSysctls writes the keys whose value differs and reports them. It
// acts in the calling thread's namespace: /proc/sys/net follows the thread.
func ensureSysctls(keys []sysctl) ([]string, error) {
	var changes []string
	for _, k := range keys {
		p := filepath.Join(append([]string{"/proc/sys"}, k.path...)...)
		cur, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) && k.optional {
			continue
		}
		if err != nil {
			return changes, fmt.Errorf("read sysctl %s: %w", k, err)
		}
		if string(bytes.TrimSpace(cur)) == k.value {
			continue
		}
		if err := os.WriteFile(p, []byte(k.value), 0o644); err != nil {
			return changes, fmt.Errorf("write sysctl %s: %w", k, err)
		}
		changes = append(changes, "sysctl "+k.String())
	}
	return changes, nil
}

// inNetns runs fn on a fresh locked thread switched into ns, so the caller's
// thread never changes namespace. If the thread cannot be switched back it
// stays locked, and the runtime retires it with the goroutine instead of
// reusing it in the wrong namespace.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// RunInNetns runs fn on a locked thread inside the namespace at path (e.g.
// /run/netns/web-1) and returns its error. Sockets fn creates stay in that
// namespace after it returns, which is how tests open listeners and probes
// in workload namespaces without a process per namespace.
func RunInNetns(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	if err := inNetns(ns, fn); err != nil {
		return fmt.Errorf("in netns %s: %w", path, err)
	}
	return nil
}
