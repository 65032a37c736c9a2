package frrtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Where Debian's frr package puts the daemons.
const (
	zebraBin = "/usr/lib/frr/zebra"
	bgpdBin  = "/usr/lib/frr/bgpd"
)

// Options configures a router.
type Options struct {
	// Netns to run in; "" creates one (deleted at the end of the test).
	// A caller that builds a topology (a top-of-rack router with an
	// "internet" host behind it) passes its own.
	Netns    string
	ASN      uint32 // 0 = 65000
	RouterID string // "" = 10.255.255.254
	// MaximumPaths is FRR's maximum-paths for eBGP (ECMP); 0 = 8.
	MaximumPaths int
	// ExtraBGP lines go inside "router bgp", after the defaults.
	ExtraBGP []string
}

// Router is a running FRR: zebra installs into the namespace's kernel FIB
// what bgpd selects.
type Router struct {
	t     testing.TB
	netns string
	dir   string
	asn   uint32

	mu    sync.Mutex
	procs map[string]*exec.Cmd // "zebra", "bgpd": only processes started here
}

// Start runs zebra and bgpd in a namespace and waits until bgpd answers.
// Both are stopped, and the directory removed, when the test ends; on failure
// their logs are printed.
func Start(t testing.TB, opts Options) *Router {
	t.Helper()
	for _, bin := range []string{zebraBin, bgpdBin, "/usr/bin/vtysh"} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("frrtest: %s missing: install the frr package (hack/deps.sh): %v", bin, err)
		}
	}
	frr, err := user.Lookup("frr")
	if err != nil {
		t.Fatalf("frrtest: user frr missing (frr package not installed?): %v", err)
	}
	uid, _ := strconv.Atoi(frr.Uid)
	gid, _ := strconv.Atoi(frr.Gid)
	if opts.Netns == "" {
		opts.Netns = Netns(t, "frr")
	}
	if opts.ASN == 0 {
		opts.ASN = 65000
	}
	if opts.RouterID == "" {
		opts.RouterID = "10.255.255.254"
	}
	if opts.MaximumPaths == 0 {
		opts.MaximumPaths = 8
	}
	dir, err := os.MkdirTemp("", "frrtest-")
	if err != nil {
		t.Fatalf("frrtest: %v", err)
	}
	r := &Router{t: t, netns: opts.Netns, dir: dir, asn: opts.ASN, procs: map[string]*exec.Cmd{}}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			for _, d := range []string{"zebra", "bgpd"} {
				if b, err := os.ReadFile(filepath.Join(dir, d+".log")); err == nil {
					t.Logf("frrtest: %s.log:\n%s", d, tail(b, 60))
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("frrtest: %v", err)
		}
	})
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatalf("frrtest: %v", err)
	}

	// Zebra's work queue batches route installs for 10 ms; a test router
	// installs at once (see ENVIRONMENT.md, BGP).
	zebraConf := fmt.Sprintf("hostname tor\nlog file %s/zebra.log\nzebra work-queue 0\n", dir)
	bgpConf := r.bgpConfig(opts)
	for name, conf := range map[string]string{"zebra.conf": zebraConf, "bgpd.conf": bgpConf} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(conf), 0o640); err != nil {
			t.Fatalf("frrtest: %v", err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatalf("frrtest: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.startDaemon(ctx, "zebra", zebraBin); err != nil {
		t.Fatalf("frrtest: %v", err)
	}
	// bgpd connects to zebra's socket at start; wait for it to exist.
	if err := waitFor(ctx, func() bool { _, err := os.Stat(filepath.Join(dir, "zserv.api")); return err == nil }); err != nil {
		t.Fatalf("frrtest: zebra did not create its socket: %v", err)
	}
	if err := r.startDaemon(ctx, "bgpd", bgpdBin); err != nil {
		t.Fatalf("frrtest: %v", err)
	}
	var lastErr error
	if err := waitFor(ctx, func() bool {
		_, lastErr = r.Vtysh(ctx, "show bgp summary json")
		return lastErr == nil
	}); err != nil {
		t.Fatalf("frrtest: bgpd does not answer: %v (last: %v)", err, lastErr)
	}
	return r
}

func (r *Router) bgpConfig(opts Options) string {
	var b strings.Builder
	fmt.Fprintf(&b, "hostname tor\nlog file %s/bgpd.log\n", r.dir)
	fmt.Fprintf(&b, "router bgp %d\n", opts.ASN)
	fmt.Fprintf(&b, " bgp router-id %s\n", opts.RouterID)
	// FRR 8 refuses to accept or send eBGP routes without a policy.
	b.WriteString(" no bgp ebgp-requires-policy\n")
	// Gateways of one cluster may use different ASNs; still ECMP.
	b.WriteString(" bgp bestpath as-path multipath-relax\n")
	// Restarting and helper mode: keep a restarting speaker's routes.
	b.WriteString(" bgp graceful-restart\n")
	for _, l := range opts.ExtraBGP {
		fmt.Fprintf(&b, " %s\n", l)
	}
	for _, af := range []string{"ipv4", "ipv6"} {
		fmt.Fprintf(&b, " address-family %s unicast\n  maximum-paths %d\n exit-address-family\n", af, opts.MaximumPaths)
	}
	return b.String()
}

func (r *Router) startDaemon(ctx context.Context, name, bin string) error {
	cmd := Command(context.Background(), r.netns, bin,
		"-f", filepath.Join(r.dir, name+".conf"),
		"-i", filepath.Join(r.dir, name+".pid"),
		"-z", filepath.Join(r.dir, "zserv.api"),
		"--vty_socket", r.dir,
		"-P", "0", "-u", "frr", "-g", "frr")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	r.mu.Lock()
	r.procs[name] = cmd
	r.mu.Unlock()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// A daemon that dies at start (bad config) is reported here rather
	// than as a timeout later.
	select {
	case err := <-exited:
		return fmt.Errorf("%s exited at start: %v: %s", name, err, out.String())
	case <-time.After(100 * time.Millisecond):
	}
	go func() {
		<-exited
		r.mu.Lock()
		if r.procs[name] == cmd {
			delete(r.procs, name)
		}
		r.mu.Unlock()
	}()
	return nil
}

// Netns is the namespace the router runs in.
func (r *Router) Netns() string { return r.netns }

// ASN is the router's own AS number.
func (r *Router) ASN() uint32 { return r.asn }

// Vtysh runs show or exec commands against bgpd and returns the output.
func (r *Router) Vtysh(ctx context.Context, cmds ...string) (string, error) {
	args := []string{"--vty_socket", r.dir, "-d", "bgpd"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.CommandContext(ctx, "vtysh", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("vtysh %q: %w: %s", cmds, err, out)
	}
	return string(out), nil
}

// ConfigureBGP enters "router bgp" and applies lines, as an operator would.
func (r *Router) ConfigureBGP(ctx context.Context, lines ...string) error {
	cmds := append([]string{"configure terminal", fmt.Sprintf("router bgp %d", r.asn)}, lines...)
	out, err := r.Vtysh(ctx, cmds...)
	if err != nil {
		return err
	}
	// vtysh exits 0 on some rejected lines; FRR prints "%" for errors.
	if strings.Contains(out, "%") {
		return fmt.Errorf("vtysh rejected configuration %q: %s", lines, out)
	}
	return nil
}

// Neighbor is a BGP neighbour of the router (a gateway's speaker).
type Neighbor struct {
	Address  netip.Addr
	ASN      uint32
	Password string
	// Multihop > 0: the neighbour is not directly connected.
	Multihop int
	// Timers: keepalive and hold in seconds; 0 keeps FRR's defaults.
	Keepalive, Hold int
}

// AddNeighbor configures a neighbour and activates it for its address family.
func (r *Router) AddNeighbor(ctx context.Context, n Neighbor) error {
	a := n.Address.String()
	lines := []string{fmt.Sprintf("neighbor %s remote-as %d", a, n.ASN)}
	if n.Password != "" {
		lines = append(lines, fmt.Sprintf("neighbor %s password %s", a, n.Password))
	}
	if n.Multihop > 0 {
		lines = append(lines, fmt.Sprintf("neighbor %s ebgp-multihop %d", a, n.Multihop))
	}
	if n.Hold > 0 {
		lines = append(lines, fmt.Sprintf("neighbor %s timers %d %d", a, n.Keepalive, n.Hold))
	}
	// Let the speaker open the session; the speaker does not listen, and
	// FRR's own attempts would only be refused.
	lines = append(lines, fmt.Sprintf("neighbor %s passive", a))
	if n.Address.Is6() {
		lines = append(lines, "address-family ipv6 unicast", fmt.Sprintf("neighbor %s activate", a), "exit-address-family")
	}
	if err := r.ConfigureBGP(ctx, lines...); err != nil {
		return fmt.Errorf("frrtest: adding neighbor %s: %w", a, err)
	}
	return nil
}

// RemoveNeighbor deletes a neighbour (its routes go with it).
func (r *Router) RemoveNeighbor(ctx context.Context, addr netip.Addr) error {
	if err := r.ConfigureBGP(ctx, fmt.Sprintf("no neighbor %s", addr)); err != nil {
		return fmt.Errorf("frrtest: removing neighbor %s: %w", addr, err)
	}
	return nil
}

// NeighborState returns bgpd's view of a session: "Established", "Active",
// "Idle", ... and the number of prefixes received.
func (r *Router) NeighborState(ctx context.Context, addr netip.Addr) (state string, received int, err error) {
	out, err := r.Vtysh(ctx, fmt.Sprintf("show bgp neighbors %s json", addr))
	if err != nil {
		return "", 0, err
	}
	var m map[string]struct {
		BgpState string `json:"bgpState"`
		AF       map[string]struct {
			Accepted int `json:"acceptedPrefixCounter"`
		} `json:"addressFamilyInfo"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		return "", 0, fmt.Errorf("frrtest: parsing neighbors json: %w: %s", err, out)
	}
	n, ok := m[addr.String()]
	if !ok {
		return "", 0, fmt.Errorf("frrtest: no neighbor %s in %s", addr, out)
	}
	for _, af := range n.AF {
		received += af.Accepted
	}
	return n.BgpState, received, nil
}

// WaitEstablished waits until the session with addr is Established.
func (r *Router) WaitEstablished(ctx context.Context, addr netip.Addr) error {
	var last string
	err := waitFor(ctx, func() bool {
		st, _, err := r.NeighborState(ctx, addr)
		last = st
		return err == nil && st == "Established"
	})
	if err != nil {
		return fmt.Errorf("frrtest: session with %s not established (last state %q): %w", addr, last, err)
	}
	return nil
}

// Path is one BGP path bgpd holds for a prefix.
type Path struct {
	NextHop     netip.Addr
	Peer        netip.Addr // the neighbour it was learned from
	MED         uint32
	Communities []string // standard ("65000:100") then large ("1:2:3"), as FRR prints them
	Best        bool
	Multipath   bool
	Stale       bool
}

// Route returns bgpd's paths for one prefix, with their attributes.
func (r *Router) Route(ctx context.Context, prefix netip.Prefix) ([]Path, error) {
	afi := "ipv4"
	if prefix.Addr().Is6() {
		afi = "ipv6"
	}
	out, err := r.Vtysh(ctx, fmt.Sprintf("show bgp %s unicast %s json", afi, prefix))
	if err != nil {
		return nil, err
	}
	var detail struct {
		Paths []struct {
			Med       *uint32 `json:"metric"`
			Community *struct {
				String string `json:"string"`
			} `json:"community"`
			LargeCommunity *struct {
				String string `json:"string"`
			} `json:"largeCommunity"`
			Stale    bool `json:"stale"`
			Nexthops []struct {
				IP string `json:"ip"`
			} `json:"nexthops"`
			Peer struct {
				PeerID string `json:"peerId"`
			} `json:"peer"`
			Bestpath *struct {
				Overall bool `json:"overall"`
			} `json:"bestpath"`
			Multipath bool `json:"multipath"`
		} `json:"paths"`
	}
	if err := json.Unmarshal([]byte(out), &detail); err != nil {
		return nil, fmt.Errorf("frrtest: parsing %s: %w: %s", prefix, err, out)
	}
	var paths []Path
	for _, p := range detail.Paths {
		var x Path
		if p.Med != nil {
			x.MED = *p.Med
		}
		if p.Community != nil {
			x.Communities = append(x.Communities, strings.Fields(p.Community.String)...)
		}
		if p.LargeCommunity != nil {
			x.Communities = append(x.Communities, strings.Fields(p.LargeCommunity.String)...)
		}
		if len(p.Nexthops) > 0 {
			x.NextHop, _ = netip.ParseAddr(p.Nexthops[0].IP)
		}
		x.Peer, _ = netip.ParseAddr(p.Peer.PeerID)
		x.Best = p.Bestpath != nil && p.Bestpath.Overall
		x.Multipath = p.Multipath
		x.Stale = p.Stale
		paths = append(paths, x)
	}
	return paths, nil
}

// Routes returns the prefixes in bgpd's IPv4 and IPv6 unicast tables with
// the next hops of their paths.
func (r *Router) Routes(ctx context.Context) (map[netip.Prefix][]netip.Addr, error) {
	out := map[netip.Prefix][]netip.Addr{}
	for _, afi := range []string{"ipv4", "ipv6"} {
		raw, err := r.Vtysh(ctx, fmt.Sprintf("show bgp %s unicast json", afi))
		if err != nil {
			return nil, err
		}
		var table struct {
			Routes map[string][]struct {
				Nexthops []struct {
					IP string `json:"ip"`
				} `json:"nexthops"`
			} `json:"routes"`
		}
		if err := json.Unmarshal([]byte(raw), &table); err != nil {
			return nil, fmt.Errorf("frrtest: parsing show bgp %s unicast json: %w", afi, err)
		}
		for p, paths := range table.Routes {
			pfx, err := netip.ParsePrefix(p)
			if err != nil {
				return nil, fmt.Errorf("frrtest: prefix %q: %w", p, err)
			}
			var nhs []netip.Addr
			for _, path := range paths {
				for _, nh := range path.Nexthops {
					if a, err := netip.ParseAddr(nh.IP); err == nil {
						nhs = append(nhs, a)
					}
				}
			}
			slices.SortFunc(nhs, netip.Addr.Compare)
			out[pfx] = nhs
		}
	}
	return out, nil
}

// FIB returns the routes zebra installed into the namespace's kernel
// (protocol bgp), IPv4 and IPv6, each with its sorted next hops: an ECMP
// route has several.
func (r *Router) FIB(ctx context.Context) (map[netip.Prefix][]netip.Addr, error) {
	fib := map[netip.Prefix][]netip.Addr{}
	for _, fam := range []string{"-4", "-6"} {
		out, err := Exec(ctx, r.netns, "ip", "-j", fam, "route", "show", "proto", "bgp")
		if err != nil {
			return nil, fmt.Errorf("frrtest: %w: %s", err, out)
		}
		routes, err := ParseIPRouteJSON(out)
		if err != nil {
			return nil, err
		}
		for p, nhs := range routes {
			fib[p] = nhs
		}
	}
	return fib, nil
}

// ParseIPRouteJSON parses `ip -j route show` output into prefix -> sorted
// next hops, whether the route has one gateway or a multipath nexthops list.
func ParseIPRouteJSON(b []byte) (map[netip.Prefix][]netip.Addr, error) {
	var routes []struct {
		Dst      string `json:"dst"`
		Gateway  string `json:"gateway"`
		Nexthops []struct {
			Gateway string `json:"gateway"`
		} `json:"nexthops"`
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return map[netip.Prefix][]netip.Addr{}, nil
	}
	if err := json.Unmarshal(b, &routes); err != nil {
		return nil, fmt.Errorf("frrtest: parsing ip -j route: %w: %s", err, b)
	}
	out := make(map[netip.Prefix][]netip.Addr, len(routes))
	for _, rt := range routes {
		pfx, err := parseDst(rt.Dst)
		if err != nil {
			return nil, err
		}
		var nhs []netip.Addr
		gws := []string{rt.Gateway}
		for _, nh := range rt.Nexthops {
			gws = append(gws, nh.Gateway)
		}
		for _, g := range gws {
			if g == "" {
				continue
			}
			a, err := netip.ParseAddr(g)
			if err != nil {
				return nil, fmt.Errorf("frrtest: route %s: gateway %q: %w", rt.Dst, g, err)
			}
			nhs = append(nhs, a)
		}
		slices.SortFunc(nhs, netip.Addr.Compare)
		out[pfx] = nhs
	}
	return out, nil
}

// parseDst reads ip's "dst": a host route is printed without its length.
func parseDst(s string) (netip.Prefix, error) {
	if s == "default" {
		return netip.Prefix{}, errors.New("frrtest: default route in the BGP FIB is not expected here")
	}
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("frrtest: route dst %q: %w", s, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// WaitFIB waits until prefix is in (present) or out of the kernel FIB.
func (r *Router) WaitFIB(ctx context.Context, prefix netip.Prefix, present bool) error {
	return r.WaitNextHops(ctx, prefix, func(nhs []netip.Addr, ok bool) bool { return ok == present })
}

// WaitNextHops waits until cond holds for the prefix's FIB entry (ok false:
// no entry).
func (r *Router) WaitNextHops(ctx context.Context, prefix netip.Prefix, cond func(nhs []netip.Addr, ok bool) bool) error {
	var last []netip.Addr
	var lastOK bool
	var lastErr error
	err := waitFor(ctx, func() bool {
		fib, err := r.FIB(ctx)
		if err != nil {
			lastErr = err
			return false
		}
		last, lastOK = fib[prefix]
		return cond(last, lastOK)
	})
	if err != nil {
		return fmt.Errorf("frrtest: FIB entry for %s (present %v, next hops %v, last error %v): %w", prefix, lastOK, last, lastErr, err)
	}
	return nil
}

// StopBGP terminates bgpd (it sends a Cease to its peers); zebra keeps
// running, and removes bgpd's routes from the kernel.
func (r *Router) StopBGP() { r.stopDaemon("bgpd") }

// Stop terminates bgpd and zebra. Safe to call more than once.
func (r *Router) Stop() {
	r.stopDaemon("bgpd")
	r.stopDaemon("zebra")
}

func (r *Router) stopDaemon(name string) {
	r.mu.Lock()
	cmd := r.procs[name]
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		_, running := r.procs[name]
		r.mu.Unlock()
		if !running {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
}

// waitFor polls cond every 20 ms until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func tail(b []byte, lines int) string {
	var all []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		all = append(all, sc.Text())
	}
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
