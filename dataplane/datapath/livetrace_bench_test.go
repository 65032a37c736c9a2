package datapath

import (
	"math"
	"net/netip"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/meridian-sdn/meridian/fw"
)

// buildProg compiles bpf/c/meridian.c with clang (as bpf2go does, plus
// defines) and loads its program prog on d's maps, so that it runs the
// same tables as d's own programs.
func buildProg(b *testing.B, d *Datapath, prog string, defines ...string) *ebpf.Program {
	b.Helper()
	_, self, _, _ := runtime.Caller(0)
	src := filepath.Join(filepath.Dir(self), "..", "..", "bpf", "c", "meridian.c")
	obj := filepath.Join(b.TempDir(), "meridian.o")
	args := append([]string{"-O2", "-g", "-Wall", "-Wno-unused-function", "-target", "bpfel", "-c", src, "-o", obj}, defines...)
	if out, err := exec.Command("clang", args...).CombinedOutput(); err != nil {
		b.Fatalf("compile %s (the benchmark needs clang, as `go generate ./bpf/...` does): %v\n%s", src, err, out)
	}
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		b.Fatal(err)
	}
	for name := range spec.Programs {
		if name != prog {
			delete(spec.Programs, name)
		}
	}
	// d's maps by name, from the bpf2go struct's tags.
	maps := map[string]*ebpf.Map{}
	v := reflect.ValueOf(d.objs.MeridianMaps)
	for i := range v.NumField() {
		if m, ok := v.Field(i).Interface().(*ebpf.Map); ok {
			maps[v.Type().Field(i).Tag.Get("ebpf")] = m
		}
	}
	repl := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if m := maps[name]; m != nil {
			repl[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		b.Fatalf("load %s: %v", obj, err)
	}
	b.Cleanup(func() { coll.Close() })
	return coll.Programs[prog]
}

// BenchmarkLiveTraceOff measures what the live-trace hooks cost a packet
// of meridian_from_port, in ns/packet (kernel test-run time), against the
// same source built without them (-DMERIDIAN_NO_LIVETRACE), all on the same
// maps (10 rules, as BenchmarkPortIngress's smallest size, where a fixed
// cost weighs most):
//
//   - baseline: no hooks;
//   - off: hooks, no filter installed (what every node pays);
//   - on-other: a trace runs for another port: every packet looks at the
//     filters and its hooks look up this CPU's trace state;
//
// for a new flow through every stage (A -> C, dropped by the last lookup)
// and an established one (A -> B, redirected); and, for
// meridian_from_uplink, a gateway's packet from the fabric to an elastic
// IP (gateway-in: DNAT, tunnel to the port's node; on-other there also
// parses the packet again to compare it with the filters). Rounds
// alternate and each subject keeps its best round, as in
// BenchmarkPortIngress. Reported: ns/packet of each and the ratios
// off/baseline and on-other/baseline.
func BenchmarkLiveTraceOff(b *testing.B) {
	const rounds = 10
	for _, mode := range []string{"new-flow", "established", "gateway-in"} {
		b.Run(mode, func(b *testing.B) {
			f := benchFixture(b, 10, mode == "established")
			fr := from(portA, portC.IPs[0])
			want := uint32(actShot)
			prog := "meridian_from_port"
			switch mode {
			case "gateway-in":
				// A test run repeats the program on one packet, which
				// would be translated once and then not be an elastic IP's:
				// this one maps to its own address (the same path, no
				// bytes change), and the TTL it loses at each run is
				// restored by running at most gatewayRepeat times.
				prog = "meridian_from_uplink"
				if err := f.d.UpsertElasticIP(ElasticIP{Address: eipA, VPC: 100, PrivateIP: eipA, PortMAC: portA.MAC, Node: nodeA}); err != nil {
					b.Fatal(err)
				}
				fr = frame{srcMAC: outsideMAC, dstMAC: uplinkMAC, src: outsideHost, dst: eipA, proto: fw.ProtoTCP, sport: 5555, dport: 80, flags: "A", ttl: 255}
				want = actRedirect
			case "established":
				fr = from(portA, portB.IPs[0])
				fr.srcMAC = routerMAC
				fr.flags = "A"
				want = actRedirect
				a := portA
				a.MAC = routerMAC
				if err := f.d.UpsertPort(a); err != nil {
					b.Fatal(err)
				}
			}
			if err := f.d.objs.PortByIfindex.Put(uint32(0), portA.ID); err != nil {
				b.Fatal(err)
			}
			data := fr.bytes(b)
			base := buildProg(b, f.d, prog, "-DMERIDIAN_NO_LIVETRACE")
			live := buildProg(b, f.d, prog)
			names := []string{"baseline", "off", "on-other"}
			progs := []*ebpf.Program{base, live, live}
			best := make([]time.Duration, len(names))
			for i := range best {
				best[i] = time.Duration(math.MaxInt64)
			}
			// The live build has its own lt_active and lt_filters (not d's):
			// turn its trace on and off through its maps.
			info, err := live.Info()
			if err != nil {
				b.Fatal(err)
			}
			ids, _ := info.MapIDs()
			var bss, filters *ebpf.Map
			for _, id := range ids {
				m, err := ebpf.NewMapFromID(id)
				if err != nil {
					b.Fatal(err)
				}
				mi, _ := m.Info()
				switch {
				case mi.Name == "lt_filters":
					filters = m
				case len(mi.Name) >= 4 && mi.Name[len(mi.Name)-4:] == ".bss":
					bss = m
				default:
					m.Close()
					continue
				}
				b.Cleanup(func() { m.Close() })
			}
			if bss == nil || filters == nil {
				b.Fatalf("live build: .bss %v, lt_filters %v", bss, filters)
			}
			setActive := func(n uint32) {
				if err := bss.Update(uint32(0), n, ebpf.UpdateAny); err != nil {
					b.Fatal(err)
				}
			}
			other, err := TraceFilter{ID: 1, Port: portB.ID, Dst: netip.MustParsePrefix("10.9.0.0/16")}.raw(1)
			if err != nil {
				b.Fatal(err)
			}
			if err := filters.Update(uint32(0), &other, ebpf.UpdateAny); err != nil {
				b.Fatal(err)
			}
			// measure is the kernel's time per run of p over n runs, in
			// runs of one packet (the gateway's: at most gatewayRepeat).
			measure := func(name string, p *ebpf.Program, n int) time.Duration {
				const gatewayRepeat = 250
				step := n
				if mode == "gateway-in" {
					step = gatewayRepeat
				}
				var total time.Duration
				runs := 0
				for runs < n {
					ret, per, err := p.Benchmark(data, step, nil)
					if err != nil || ret != want {
						b.Fatalf("%s: verdict %d (%v), want %d", name, ret, err, want)
					}
					total += per * time.Duration(step)
					runs += step
				}
				return total / time.Duration(runs)
			}
			for i, p := range progs {
				measure(names[i], p, 1)
			}
			b.ResetTimer()
			for range rounds {
				for i, p := range progs {
					active := uint32(0)
					if names[i] == "on-other" {
						active = 1
					}
					setActive(active)
					// At least 100,000 runs a round, so that `make bench`
					// (-benchtime 1x) measures something too.
					best[i] = min(best[i], measure(names[i], p, max(b.N/rounds, 100000)))
				}
			}
			b.StopTimer()
			setActive(0)
			for i, n := range names {
				b.ReportMetric(float64(best[i])/float64(time.Nanosecond), "ns/packet-"+n)
			}
			b.ReportMetric(float64(best[1])/float64(best[0]), "ratio-off/baseline")
			b.ReportMetric(float64(best[2])/float64(best[0]), "ratio-on-other/baseline")
			b.ReportMetric(0, "ns/op")
		})
	}
}
