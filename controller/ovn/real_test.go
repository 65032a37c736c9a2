package ovn

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/meridian-sdn/meridian/api/agent/v1"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
	"github.com/meridian-sdn/meridian/controller/store"
)

// staticSource is a Source whose objects the test sets.
type staticSource struct {
	mu      sync.Mutex
	objs    map[string]*agentv1.Object
	rev     int64
	changed func()
}

func (s *staticSource) Run(ctx context.Context, changed func()) error {
	s.mu.Lock()
	s.changed = changed
	s.mu.Unlock()
	changed()
	<-ctx.Done()
	return nil
}

func (s *staticSource) Objects() (map[string]*agentv1.Object, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.objs, s.rev
}

func (s *staticSource) set(objs map[string]*agentv1.Object) {
	s.mu.Lock()
	s.objs = objs
	s.rev++
	changed := s.changed
	s.mu.Unlock()
	if changed != nil {
		changed()
	}
}

// runReconciler runs a reconciler on src (or, when nil, on st) against
// endpoint until the test ends.
func runReconciler(t *testing.T, endpoint string, src Source, st store.Store) *Reconciler {
	t.Helper()
	r, err := NewReconciler(Config{NB: endpoint, Source: src, Store: st, Logger: quiet(), Debounce: 5 * time.Millisecond, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// eventually polls cond until it holds or 15 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitSynced waits for a successful pass at revision rev at least.
func waitSynced(t *testing.T, r *Reconciler, rev int64) Status {
	t.Helper()
	var st Status
	eventually(t, "the reconciler has synced", func() bool {
		st = r.Status()
		return st.Synced && st.Revision >= rev
	})
	return st
}

// TestAgainstRealOVN runs the reconciler against ovsdb-server and
// ovn-northd: the rows land as rendered, northd accepts every match and
// produces logical flows, hand edits are repaired, an idle resync writes
// nothing and an NB restart is survived. The steps share one stack to
// keep the test short; each depends on the state the previous one left.
func TestAgainstRealOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	src := &staticSource{objs: fixture(), rev: 1}
	r := runReconciler(t, stack.NB.Endpoint(), src, nil)
	waitSynced(t, r, 1)

	t.Run("rows are as rendered", func(t *testing.T) {
		assertNBMatches(t, r, Render(fixture()))
		got := stack.NBCtl("--bare", "--columns=name", "find", "Logical_Switch", "external_ids:meridian\\:kind=switch")
		if f := strings.Fields(got); len(f) != 2 || !strings.Contains(got, "mer-subnet-11") || !strings.Contains(got, "mer-subnet-12") {
			t.Errorf("Meridian switches per ovn-nbctl: %q", got)
		}
	})

	t.Run("northd produces logical flows and rejects nothing", func(t *testing.T) {
		stack.WaitNorthd()
		flows := stack.SBCtl("lflow-list", "mer-subnet-11")
		for _, want := range []string{
			"ls_in_acl", "ip4.src == 192.168.0.0/16 && tcp && tcp.dst == 22", // a security-group rule
			`inport == @mer_ports && ip4 && udp`, // a network-ACL deny
			"outport == @mer_ports",              // the default deny
			"ls_in_dhcp_options",                 // DHCP for port 101
		} {
			if !strings.Contains(flows, want) {
				t.Errorf("no logical flow with %q for mer-subnet-11", want)
			}
		}
		if routes := stack.SBCtl("lflow-list", "mer-vpc-1"); !strings.Contains(routes, "192.168.0.0/16") {
			t.Error("no logical flow for the blackhole route on mer-vpc-1")
		}
		log, err := os.ReadFile(stack.Dir + "/northd.log")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "|ERR|") || strings.Contains(line, "|WARN|") && !strings.Contains(line, "Unknown chassis") {
				t.Errorf("northd: %s", line)
			}
		}
	})

	t.Run("drift is repaired", func(t *testing.T) {
		before := r.Status().Total
		stack.NBCtl("set", "ACL", uuidOf(r, "ACL", "sg/21/rule/1"), "match=1")
		stack.NBCtl("lsp-del", "mer-port-103")
		stack.NBCtl("pg-del", "mer_sg_22")
		eventually(t, "the hand edits are undone", func() bool {
			return strings.Contains(stack.NBCtl("--bare", "--columns=match", "list", "ACL", uuidOf(r, "ACL", "sg/21/rule/1")), "tcp.dst == 22") &&
				stack.NBCtl("--bare", "--columns=name", "find", "Logical_Switch_Port", "name=mer-port-103") == "mer-port-103" &&
				stack.NBCtl("--bare", "--columns=name", "find", "Port_Group", "name=mer_sg_22") == "mer_sg_22"
		})
		waitSynced(t, r, 1)
		assertNBMatches(t, r, Render(fixture()))
		if d := r.Status().Total.Transactions - before.Transactions; d == 0 {
			t.Error("repair took no transaction")
		}
	})

	t.Run("an idle resync does no transaction", func(t *testing.T) {
		waitSynced(t, r, 1)
		before := r.Status()
		for range 3 {
			r.Trigger()
			p := r.Status().Passes
			eventually(t, "a pass ran", func() bool { return r.Status().Passes > p })
		}
		after := r.Status()
		if after.Total.Transactions != before.Total.Transactions {
			t.Errorf("idle resyncs did %d transactions", after.Total.Transactions-before.Total.Transactions)
		}
	})

	t.Run("an NB restart is survived", func(t *testing.T) {
		stack.StopNB()
		objs := fixture()
		objs["port/104"] = objects(&agentv1.Port{Id: 104, VpcId: 1, SubnetId: 12, Mac: "02:00:00:00:02:04",
			Ips: []string{"10.0.2.14"}, SecurityGroupIds: []uint32{22}, SourceDestCheck: true})["port/104"]
		src.set(objs)
		time.Sleep(200 * time.Millisecond) // a pass meets the outage
		stack.StartNB()
		waitSynced(t, r, 2)
		assertNBMatches(t, r, Render(objs))
		stack.WaitNorthd()
		if !strings.Contains(stack.SBCtl("lflow-list", "mer-subnet-12"), "10.0.2.14") {
			t.Error("no logical flow for the port added while NB was down")
		}
	})
	t.Run("an NB that comes back empty is refilled", func(t *testing.T) {
		objs, rev := src.Objects()
		stack.WipeNB()
		eventually(t, "the wiped NB is refilled", func() bool {
			return stack.NBCtl("--bare", "--columns=name", "find", "Logical_Router", "name=mer-vpc-1") == "mer-vpc-1"
		})
		waitSynced(t, r, rev)
		eventually(t, "the cache matches the rendering", func() bool {
			return len(meridianRows(r, "ACL")) == len(Render(objs).Rows("ACL"))
		})
		assertNBMatches(t, r, Render(objs))
	})
}

// TestRowsWrittenByNbctlNeedNoWrites applies a rendering with ovn-nbctl (the
// benchmark's baseline) and syncs: nothing to write, so the baseline writes
// exactly Meridian's rows and the reconciler adopts rows it finds as they
// should be.
func TestRowsWrittenByNbctlNeedNoWrites(t *testing.T) {
	sc := scale{vpcs: 2, subnetsPerVPC: 2, ports: 100, sgs: 10, rulesPerSG: 10}
	stack := ovntest.Start(t, ovntest.Options{NoNorthd: true})
	nbctlBaseline(t, stack, Render(generate(sc)), 100)
	r := connect(t, stack.NB.Endpoint(), nil)
	if res := mustSync(t, r, generate(sc)); res != (SyncResult{}) {
		t.Errorf("sync after ovn-nbctl wrote %+v", res)
	}
}
