package controller_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller"
	"github.com/meridian-sdn/meridian/controller/apiserver"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/distributor"
	"github.com/meridian-sdn/meridian/controller/store"
)

// The stored population of the benchmarks: 100,000 ports in one project,
// 50,000 in each of two /16 subnets of one VPC.
const (
	benchPorts   = 100000
	benchProject = "projects/bench"
	benchVPC     = benchProject + "/vpcs/v"
)

var (
	populated     sync.Once
	populatedDir  string // holds meridian.db with benchPorts ports; removed by TestMain
	populatedErr  error
	populatedTook time.Duration
)

func TestMain(m *testing.M) {
	code := m.Run()
	if populatedDir != "" {
		os.RemoveAll(populatedDir)
	}
	os.Exit(code)
}

// populatedStore returns a copy (in b.TempDir) of a store holding
// benchPorts ports. The store is built once per test binary run: through
// one in-process apiserver.Server (no gRPC), as the system administrator,
// from 256 goroutines so that the store's group commit puts hundreds of
// CreatePort transactions into each fsync. Every port is a real API create
// (validation, IPAM, reference index, quota counter, audit record).
func populatedStore(b *testing.B) string {
	b.Helper()
	populated.Do(func() {
		start := time.Now()
		populatedDir, populatedErr = os.MkdirTemp("", "meridian-bench-100k-")
		if populatedErr == nil {
			populatedErr = populate(filepath.Join(populatedDir, "meridian.db"))
		}
		populatedTook = time.Since(start)
	})
	if populatedErr != nil {
		b.Fatalf("populate: %v", populatedErr)
	}
	b.Logf("100k-port store built once in %v", populatedTook.Round(time.Millisecond))
	dir := b.TempDir()
	src, err := os.ReadFile(filepath.Join(populatedDir, "meridian.db"))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "meridian.db"), src, 0o600)
	}
	if err != nil {
		b.Fatal(err)
	}
	return dir
}

func populate(path string) error {
	st, err := store.Open(path, store.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer st.Close()
	s := apiserver.New(st, apiserver.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx := auth.WithIdentity(context.Background(), &auth.Identity{Subject: "bench", Role: auth.RoleSystemAdmin})
	if _, err := s.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "bench", Project: &v1.Project{Organization: apitest.OrgA}}); err != nil {
		return err
	}
	if _, err := s.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: benchProject, VpcId: "v", Vpc: &v1.Vpc{CidrBlocks: []string{"10.0.0.0/8"}}}); err != nil {
		return err
	}
	for i, cidr := range []string{"10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16"} {
		if _, err := s.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: benchVPC, SubnetId: fmt.Sprintf("s%d", i), Subnet: &v1.Subnet{CidrBlock: cidr}}); err != nil {
			return err
		}
	}
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 256 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= benchPorts || firstErr.Load() != nil {
					return
				}
				_, err := s.CreatePort(ctx, &v1.CreatePortRequest{Parent: benchProject, PortId: fmt.Sprintf("p%d", i),
					Port: &v1.Port{Subnet: fmt.Sprintf("%s/subnets/s%d", benchVPC, i%2)}})
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return err
	}
	return nil
}

// benchController starts a controller on dataDir the way
// cmd/meridian-controller does, with the agent distributor (which loads
// every object at start) when withAgents, and returns it once the
// distributor's initial load is done.
func benchController(b *testing.B, dataDir string, withAgents bool) *running {
	b.Helper()
	var factory controller.AgentsFactory
	loaded := make(chan struct{})
	if withAgents {
		factory = func(st store.Store, log *slog.Logger) (controller.Agents, error) {
			d, err := distributor.New(distributor.Config{Store: st, Logger: log, Authorize: distributor.SystemAdminOnly})
			if err == nil {
				go func() { <-d.Ready(); close(loaded) }()
			}
			return d, err
		}
	} else {
		close(loaded)
	}
	r := startWith(b, config(b, dataDir), factory)
	<-loaded
	return r
}

// portsPerOp is the number of ports one benchmark iteration creates, so
// that even -benchtime 1x measures a steady state.
const portsPerOp = 2000

// BenchmarkCreatePort16Clients: 16 gRPC clients on loopback create ports
// concurrently in a controller holding 100,000 ports (portsPerOp per
// iteration). Reports ports/s and the p50/p99 latency of one CreatePort,
// with the agent distributor running (as in the binary) and without.
func BenchmarkCreatePort16Clients(b *testing.B) {
	for _, agents := range []bool{true, false} {
		b.Run(fmt.Sprintf("distributor=%v", agents), func(b *testing.B) { benchCreatePorts(b, agents) })
	}
}

func benchCreatePorts(b *testing.B, withAgents bool) {
	r := benchController(b, populatedStore(b), withAgents)
	const clients = 16
	conns := make([]*apitest.Client, clients)
	for i := range conns {
		conns[i] = apitest.Dial(b, r.grpc, apitest.AdminToken)
		if _, err := conns[i].ID.WhoAmI(context.Background(), &v1.WhoAmIRequest{}); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	lat := make([][]time.Duration, clients)
	var failed atomic.Value
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N*portsPerOp) {
					return
				}
				t0 := time.Now()
				_, err := conns[c].Net.CreatePort(context.Background(), &v1.CreatePortRequest{Parent: benchProject, PortId: fmt.Sprintf("new%d", i),
					Port: &v1.Port{Subnet: benchVPC + "/subnets/s2"}})
				lat[c] = append(lat[c], time.Since(t0))
				if err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatalf("create: %v", err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "ports/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkRestart100k: from controller.New (opening a store holding
// 100,000 ports) and Serve to the first successful GetPort over gRPC
// (s-to-first-read), and to the end of the agent distributor's initial
// load of every object (s-to-distributor-loaded, also ns/op).
func BenchmarkRestart100k(b *testing.B) {
	dir := populatedStore(b)
	var toRead, toLoaded time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		loaded := make(chan time.Time, 1)
		r := startWith(b, config(b, dir), func(st store.Store, log *slog.Logger) (controller.Agents, error) {
			d, err := distributor.New(distributor.Config{Store: st, Logger: log, Authorize: distributor.SystemAdminOnly})
			if err == nil {
				go func() { <-d.Ready(); loaded <- time.Now() }()
			}
			return d, err
		})
		c := apitest.Dial(b, r.grpc, apitest.AdminToken)
		for {
			_, err := c.Net.GetPort(context.Background(), &v1.GetPortRequest{Name: benchProject + "/ports/p99999"})
			if err == nil {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("no successful read after 30 s: %v", err)
			}
		}
		toRead += time.Since(start)
		// Timed up to the distributor's load as well, so that b.N stays
		// small: the load is seconds, the first read milliseconds.
		toLoaded += (<-loaded).Sub(start)
		b.StopTimer()
		if err := r.stop(); err != nil {
			b.Fatal(err)
		}
		c.Conn.Close()
		b.StartTimer()
	}
	b.ReportMetric(toRead.Seconds()/float64(b.N), "s-to-first-read")
	b.ReportMetric(toLoaded.Seconds()/float64(b.N), "s-to-distributor-loaded")
}
