package controller_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meridian-sdn/meridian/controller/apiserver/apitest"
	"github.com/meridian-sdn/meridian/controller/ovn/ovntest"
)

// TestControllerRealizesIntentInOVN starts the controller with an OVN
// northbound endpoint (a real ovsdb-server + ovn-northd): a VPC and a subnet
// created through the HTTP API appear as a logical router and switch, and
// deleting the subnet removes its switch.
func TestControllerRealizesIntentInOVN(t *testing.T) {
	stack := ovntest.Start(t, ovntest.Options{})
	cfg := config(t, t.TempDir())
	cfg.OVNNorthbound = stack.NB.Endpoint()
	r := start(t, cfg)
	base := "http://" + r.http
	for _, c := range []struct{ path, body string }{
		{"/v1/projects?project_id=p", `{"organization":"org-a"}`},
		{"/v1/projects/p/vpcs?vpc_id=v", `{"cidrBlocks":["10.0.0.0/16"]}`},
		{"/v1/projects/p/vpcs/v/subnets?subnet_id=s", `{"cidrBlock":"10.0.1.0/24"}`},
	} {
		if code, b := httpCall(t, "POST", base+c.path, apitest.AdminToken, c.body); code != 200 {
			t.Fatalf("POST %s: %d %v", c.path, code, b)
		}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 15 s\nrouters: %s\nswitches: %s", what, stack.NBCtl("lr-list"), stack.NBCtl("ls-list"))
			}
		}
	}
	waitFor("router and switch in NB", func() bool {
		return strings.Contains(stack.NBCtl("lr-list"), "mer-vpc-") && strings.Contains(stack.NBCtl("ls-list"), "mer-subnet-")
	})
	if code, b := httpCall(t, "DELETE", base+"/v1/projects/p/vpcs/v/subnets/s", apitest.AdminToken, ""); code != 200 {
		t.Fatalf("DELETE subnet: %d %v", code, b)
	}
	waitFor("switch gone from NB", func() bool { return !strings.Contains(stack.NBCtl("ls-list"), "mer-subnet-") })
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(m), "meridian_ovn_sync_ok 1") {
		t.Errorf("/metrics does not report a successful OVN sync")
	}
}
