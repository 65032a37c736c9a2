// Package frrtest runs FRR (zebra + bgpd) as a real BGP router for tests: in a
// network namespace of the caller's or one of its own, started without
// systemd, configured from Go, and torn down in t.Cleanup (only the processes
// it started, only the namespaces and directories it created). It also has
// the few namespace helpers such tests need: unique namespaces, veth pairs
// between them, and running a command inside one.
//
// Typical use by an end-to-end test: create the top-of-rack namespace (Netns),
// wire it to the gateways and to an "internet" host (Veth, AddAddress), start
// FRR in it (Start with Options.Netns), declare each gateway a neighbour
// (AddNeighbor), then assert on what the router installed (FIB, WaitFIB,
// WaitNextHops) and on what did not change (WatchFIB).
//
// It needs root and the frr package (zebra, bgpd, vtysh in /usr/lib/frr and
// /usr/bin); a missing prerequisite fails the test with a clear message.
package frrtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Unique returns prefix followed by the PID and a random suffix, short enough
// for an interface name when prefix is at most 4 bytes (IFNAMSIZ is 16).
func Unique(prefix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s%d%s", prefix, os.Getpid()%100000, hex.EncodeToString(b[:]))
}

// Netns creates a network namespace with a unique name starting with prefix,
// brings its loopback up, and deletes it when the test ends.
func Netns(t testing.TB, prefix string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("frrtest: network namespaces need root")
	}
	name := Unique(prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("frrtest: ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("frrtest: ip netns del %s: %v: %s", name, err, out)
		}
	})
	if out, err := Exec(ctx, name, "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatalf("frrtest: loopback up in %s: %v: %s", name, err, out)
	}
	return name
}

// Exec runs a command in a namespace and returns its combined output. It uses
// nsenter rather than `ip netns exec`, which remounts /sys.
func Exec(ctx context.Context, netns string, args ...string) ([]byte, error) {
	cmd := Command(ctx, netns, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("in netns %s: %s: %w", netns, strings.Join(args, " "), err)
	}
	return out, nil
}

// Command prepares a command to run in a namespace ("" = the caller's).
func Command(ctx context.Context, netns string, args ...string) *exec.Cmd {
	if netns == "" {
		return exec.CommandContext(ctx, args[0], args[1:]...)
	}
	full := append([]string{"--net=/run/netns/" + netns, "--"}, args...)
	return exec.CommandContext(ctx, "nsenter", full...)
}

// End is one side of a veth pair.
type End struct {
	Netns string   // "" is not allowed: tests stay out of the host's namespace
	Name  string   // interface name, at most 15 bytes
	Addrs []string // CIDRs, e.g. "10.0.0.1/24"
}

// Veth connects two namespaces with a veth pair, assigns the addresses and
// brings both ends up. The pair goes away with its namespaces.
func Veth(t testing.TB, a, b End) {
	t.Helper()
	if a.Netns == "" || b.Netns == "" {
		t.Fatal("frrtest: Veth needs a namespace on both ends")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := Exec(ctx, a.Netns, "ip", "link", "add", a.Name, "type", "veth", "peer", "name", b.Name, "netns", b.Netns); err != nil {
		t.Fatalf("frrtest: veth %s/%s - %s/%s: %v: %s", a.Netns, a.Name, b.Netns, b.Name, err, out)
	}
	for _, e := range []End{a, b} {
		for _, addr := range e.Addrs {
			args := []string{"ip", "addr", "add", addr, "dev", e.Name}
			if strings.Contains(addr, ":") {
				// No duplicate address detection: the address is usable
				// (and a BGP session can bind to it) at once.
				args = append(args, "nodad")
			}
			if out, err := Exec(ctx, e.Netns, args...); err != nil {
				t.Fatalf("frrtest: %v: %s", err, out)
			}
		}
		if out, err := Exec(ctx, e.Netns, "ip", "link", "set", e.Name, "up"); err != nil {
			t.Fatalf("frrtest: %v: %s", err, out)
		}
	}
}

// AddAddress adds an address (CIDR) to an interface in a namespace, e.g. a
// second address on a router's link, or an "internet" host's address.
func AddAddress(t testing.TB, netns, ifname, cidr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := []string{"ip", "addr", "add", cidr, "dev", ifname}
	if strings.Contains(cidr, ":") {
		args = append(args, "nodad")
	}
	if out, err := Exec(ctx, netns, args...); err != nil {
		t.Fatalf("frrtest: %v: %s", err, out)
	}
}
