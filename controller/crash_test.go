package controller_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/ipam"
	"github.com/meridian-sdn/meridian/controller/store"
)

// buildBinary compiles cmd/meridian-controller into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "meridian-controller")
	out, err := exec.Command(gobin, "build", "-o", bin, "github.com/meridian-sdn/meridian/cmd/meridian-controller").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// process is a controller running as a child process.
type process struct {
	cmd  *exec.Cmd
	grpc string
	done chan struct{}
}

// startProcess runs the binary on dataDir and waits for its "controller
// serving" log line, which carries the addresses it listens on.
func startProcess(t *testing.T, bin, dataDir, tokens string) *process {
	t.Helper()
	cmd := exec.Command(bin, "--data-dir", dataDir, "--tokens-file", tokens, "--listen-grpc", "127.0.0.1:0", "--listen-http", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if a, ok := servingAddr(sc.Bytes()); ok {
				addr <- a
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.kill() })
	select {
	case p.grpc = <-addr:
	case <-p.done:
		t.Fatalf("controller exited before serving: %v", cmd.ProcessState)
	case <-time.After(15 * time.Second):
		t.Fatal("controller did not start serving")
	}
	return p
}

// servingAddr reads the gRPC address from the JSON "controller serving" log
// line; slog writes a *net.TCPAddr as a string or as {"IP":..,"Port":..}.
func servingAddr(line []byte) (string, bool) {
	var l struct {
		Msg  string
		GRPC json.RawMessage
	}
	if json.Unmarshal(line, &l) != nil || l.Msg != "controller serving" {
		return "", false
	}
	var s string
	if json.Unmarshal(l.GRPC, &s) == nil {
		return s, true
	}
	var tcp struct {
		IP   string
		Port int
	}
	if json.Unmarshal(l.GRPC, &tcp) != nil {
		return "", false
	}
	return netip.AddrPortFrom(netip.MustParseAddr(tcp.IP), uint16(tcp.Port)).String(), true
}

func (p *process) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *process) terminate(t *testing.T) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("controller did not stop on SIGTERM")
	}
}

type acked struct{ ip, mac string }

const (
	crashProject = "projects/crash"
	crashSubnet  = crashProject + "/vpcs/v/subnets/s"
	crashCIDR    = "10.0.0.0/16"
)

// writePorts runs writers that create ports until the first error (the
// kill) and returns the acknowledged ones.
func writePorts(c *apitest.Client, round, writers int) map[string]acked {
	var mu sync.Mutex
	out := map[string]acked{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for n := 0; ; n++ {
				p, err := c.Net.CreatePort(ctx, &v1.CreatePortRequest{Parent: crashProject, PortId: fmt.Sprintf("r%d-w%d-%d", round, w, n), Port: &v1.Port{Subnet: crashSubnet}})
				if err != nil {
					return
				}
				mu.Lock()
				out[p.Name] = acked{p.FixedIps[0], p.MacAddress}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// TestCrashLosesNoAcknowledgedWrite SIGKILLs the controller binary under 8
// concurrent writers, several times, and checks after each restart that
// every acknowledged port survived with its addresses, nothing is held
// twice, and the audit log and IPAM agree exactly with the ports present.
func TestCrashLosesNoAcknowledgedWrite(t *testing.T) {
	bin := buildBinary(t)
	dataDir, tokens := t.TempDir(), writeTokens(t, t.TempDir())
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	all := map[string]acked{}

	p := startProcess(t, bin, dataDir, tokens)
	setupCrashTopology(t, apitest.Dial(t, p.grpc, apitest.AdminToken))
	rounds := 3 + rng.IntN(3)
	for round := range rounds {
		if round > 0 {
			p = startProcess(t, bin, dataDir, tokens)
		}
		c := apitest.Dial(t, p.grpc, apitest.AdminToken)
		delay := time.Duration(200+rng.IntN(600)) * time.Millisecond
		killed := time.AfterFunc(delay, p.kill)
		got := writePorts(c, round, 8)
		killed.Stop()
		p.kill()
		t.Logf("round %d: killed after %v, %d creates acknowledged", round, delay, len(got))
		for k, v := range got {
			all[k] = v
		}
	}
	p = startProcess(t, bin, dataDir, tokens)
	ports := verifyPortsAfterCrash(t, apitest.Dial(t, p.grpc, apitest.AdminToken), all)
	p.terminate(t)
	verifyStoreAfterCrash(t, filepath.Join(dataDir, "meridian.db"), ports)
}

func setupCrashTopology(t *testing.T, c *apitest.Client) {
	ctx := apitest.Ctx(t)
	for _, err := range []error{
		errOf(c.Project.CreateProject(ctx, &v1.CreateProjectRequest{ProjectId: "crash", Project: &v1.Project{Organization: apitest.OrgA}})),
		errOf(c.Net.CreateVpc(ctx, &v1.CreateVpcRequest{Parent: crashProject, VpcId: "v", Vpc: &v1.Vpc{CidrBlocks: []string{crashCIDR}}})),
		errOf(c.Net.CreateSubnet(ctx, &v1.CreateSubnetRequest{Parent: crashProject + "/vpcs/v", SubnetId: "s", Subnet: &v1.Subnet{CidrBlock: crashCIDR}})),
	} {
		if err != nil {
			t.Fatalf("setup: %v", err)
		}
	}
}

func errOf(_ any, err error) error { return err }

// verifyPortsAfterCrash checks the API view and returns the ports present.
func verifyPortsAfterCrash(t *testing.T, c *apitest.Client, all map[string]acked) map[string]acked {
	ctx := apitest.Ctx(t)
	present := map[string]acked{}
	ips, macs := map[string]string{}, map[string]string{}
	for token := ""; ; {
		resp, err := c.Net.ListPorts(ctx, &v1.ListPortsRequest{Parent: crashProject, PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("list ports: %v", err)
		}
		for _, p := range resp.Ports {
			a := acked{p.FixedIps[0], p.MacAddress}
			if other, dup := ips[a.ip]; dup {
				t.Errorf("IP %s held by %s and %s", a.ip, other, p.Name)
			}
			if other, dup := macs[a.mac]; dup {
				t.Errorf("MAC %s held by %s and %s", a.mac, other, p.Name)
			}
			ips[a.ip], macs[a.mac], present[p.Name] = p.Name, p.Name, a
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	for name, want := range all {
		if got, ok := present[name]; !ok || got != want {
			t.Errorf("acknowledged port %s %v: after restart %v (present %v)", name, want, got, ok)
		}
	}
	creates := map[string]int{}
	for token := ""; ; {
		resp, err := c.Audit.ListAuditRecords(ctx, &v1.ListAuditRecordsRequest{Project: crashProject, PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("list audit records: %v", err)
		}
		for _, r := range resp.Records {
			if r.Method == "CreatePort" {
				creates[r.Resource]++
			}
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	for name := range present {
		if creates[name] != 1 {
			t.Errorf("port %s has %d CreatePort records", name, creates[name])
		}
	}
	if len(creates) != len(present) {
		t.Errorf("%d CreatePort records for %d ports", len(creates), len(present))
	}
	sn, err := c.Net.GetSubnet(ctx, &v1.GetSubnetRequest{Name: crashSubnet})
	if err != nil {
		t.Fatal(err)
	}
	if want := int32(65533 - len(present)); sn.AvailableIps != want {
		t.Errorf("available_ips %d, want %d for %d ports", sn.AvailableIps, want, len(present))
	}
	t.Logf("%d acknowledged, %d present (creates in flight at a kill may have committed)", len(all), len(present))
	return present
}

// verifyStoreAfterCrash opens the stopped controller's store and checks
// that IPAM holds exactly the ports' addresses and MACs.
func verifyStoreAfterCrash(t *testing.T, path string, ports map[string]acked) {
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sub := ipam.Subnet{ID: crashSubnet, CIDR: netip.MustParsePrefix(crashCIDR), Gateway: netip.MustParseAddr("10.0.0.1")}
	err = st.View(context.Background(), func(tx store.ReadTx) error {
		used, _, err := ipam.Usage(tx, sub)
		if err != nil {
			return err
		}
		nmacs, err := tx.Count("ipam/mac/")
		if err != nil {
			return err
		}
		nports, err := tx.Count("res/Port/")
		if err != nil {
			return err
		}
		if int(used) != len(ports) || nmacs != len(ports) || nports != len(ports) {
			t.Errorf("IPAM holds %d IPs and %d MACs, store %d ports, API %d", used, nmacs, nports, len(ports))
		}
		for name, a := range ports {
			owner, ok, err := ipam.Owner(tx, sub, netip.MustParseAddr(a.ip))
			if err != nil || !ok || owner != name {
				t.Errorf("IP %s of %s: owner %q %v %v", a.ip, name, owner, ok, err)
			}
			kv, ok, err := tx.Get("ipam/mac/" + a.mac)
			if err != nil || !ok || !strings.Contains(string(kv.Value), name) {
				t.Errorf("MAC %s of %s: owner %q %v %v", a.mac, name, kv.Value, ok, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
