package ovntest

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestStackTranslatesNBIntoLogicalFlows(t *testing.T) {
	s := Start(t, Options{})
	s.NBCtl("ls-add", "sw0", "--", "lsp-add", "sw0", "p1", "--", "lsp-set-addresses", "p1", "00:00:00:00:00:01 10.0.0.2")
	s.WaitNorthd()
	if flows := s.SBCtl("lflow-list", "sw0"); !strings.Contains(flows, "ls_in_check_port_sec") {
		t.Fatalf("no logical flows for sw0:\n%s", flows)
	}
}

func TestStackSurvivesNBRestartWithItsData(t *testing.T) {
	s := Start(t, Options{NoNorthd: true})
	s.NBCtl("ls-add", "sw0")
	s.StopNB()
	if _, err := s.Ctl("ovn-nbctl", s.NB, "--timeout=1", "ls-list"); err == nil {
		t.Fatal("ovn-nbctl succeeded while NB was stopped")
	}
	s.StartNB()
	if got := s.NBCtl("--bare", "--columns=name", "list", "Logical_Switch"); got != "sw0" {
		t.Fatalf("after restart, switches = %q, want sw0", got)
	}
}

func TestStopLeavesNoProcessesOrSockets(t *testing.T) {
	s := Start(t, Options{})
	pids := []int{s.NB.srv.cmd.Process.Pid, s.SB.srv.cmd.Process.Pid, s.northd.cmd.Process.Pid}
	s.Stop()
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Errorf("pid %d still exists after Stop", pid)
		}
	}
	s.Stop() // idempotent: Cleanup calls it again
}
