package datapath

import (
	"math"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// buildWith compiles bpf/c/meridian.c with defines and loads its
// meridian_from_port on d's maps; its global variables are its own.
func buildWith(b *testing.B, d *Datapath, defines ...string) *ebpf.Collection {
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
		if name != "meridian_from_port" {
			delete(spec.Programs, name)
		}
	}
	repl := map[string]*ebpf.Map{}
	v := reflect.ValueOf(d.objs.MeridianMaps)
	for i := range v.NumField() {
		if m, ok := v.Field(i).Interface().(*ebpf.Map); ok && spec.Maps[v.Type().Field(i).Tag.Get("ebpf")] != nil {
			repl[v.Type().Field(i).Tag.Get("ebpf")] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		b.Fatalf("load %s: %v", obj, err)
	}
	b.Cleanup(func() { coll.Close() })
	return coll
}

// BenchmarkDropCaptureOff measures what capturing drops of every reason
// costs a dropped packet of meridian_from_port, in ns/packet (kernel
// test-run time), against the same source built with policy drop events
// only (-DMERIDIAN_NO_DROP_CAPTURE, the data path before drop capture of
// every reason), on the same maps:
//
//   - baseline: policy drop events only;
//   - off: no drop capture runs (drop_capture 0: what every node pays);
//   - on: a drop capture runs: each drop goes through the per-CPU budget,
//     which lets an event through now and then and holds back the rest;
//
// for a spoofed-source frame (dropped before parsing: the cheapest drop,
// where a fixed cost weighs most) and a security-group drop (a policy
// drop: its event as before, whatever the mode). Rounds alternate and each
// subject keeps its best round, as in BenchmarkLiveTraceOff. Reported:
// ns/packet of each, off/baseline and on/baseline.
func BenchmarkDropCaptureOff(b *testing.B) {
	const rounds = 10
	for _, mode := range []string{"spoofed-ip", "sg-ingress"} {
		b.Run(mode, func(b *testing.B) {
			f := benchFixture(b, 10, false)
			fr := from(portA, portC.IPs[0]) // denied by C's ingress security group
			if mode == "spoofed-ip" {
				fr.src = portC.IPs[0]
			}
			if err := f.d.objs.PortByIfindex.Put(uint32(0), portA.ID); err != nil {
				b.Fatal(err)
			}
			data := fr.bytes(b)
			base := buildWith(b, f.d, "-DMERIDIAN_NO_DROP_CAPTURE")
			live := buildWith(b, f.d)
			capture := live.Variables["drop_capture"]
			if capture == nil {
				b.Fatal("live build has no drop_capture variable")
			}
			names := []string{"baseline", "off", "on"}
			progs := []*ebpf.Program{base.Programs["meridian_from_port"], live.Programs["meridian_from_port"], live.Programs["meridian_from_port"]}
			best := make([]time.Duration, len(names))
			for i := range best {
				best[i] = time.Duration(math.MaxInt64)
			}
			for i, p := range progs {
				if ret, _, err := p.Benchmark(data, 1, nil); err != nil || ret != actShot {
					b.Fatalf("%s: verdict %d (%v), want drop", names[i], ret, err)
				}
			}
			b.ResetTimer()
			for range rounds {
				for i, p := range progs {
					on := uint32(0)
					if names[i] == "on" {
						on = 1
					}
					if err := capture.Set(on); err != nil {
						b.Fatal(err)
					}
					ret, per, err := p.Benchmark(data, max(b.N/rounds, 100000), nil)
					if err != nil || ret != actShot {
						b.Fatalf("%s: verdict %d (%v), want drop", names[i], ret, err)
					}
					best[i] = min(best[i], per)
				}
			}
			b.StopTimer()
			if err := capture.Set(uint32(0)); err != nil {
				b.Fatal(err)
			}
			for i, n := range names {
				b.ReportMetric(float64(best[i])/float64(time.Nanosecond), "ns/packet-"+n)
			}
			b.ReportMetric(float64(best[1])/float64(best[0]), "ratio-off/baseline")
			b.ReportMetric(float64(best[2])/float64(best[0]), "ratio-on/baseline")
			b.ReportMetric(0, "ns/op")
		})
	}
}
