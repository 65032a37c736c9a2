package ctl

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/proto"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// lbDetail prints a load balancer's listeners and the health of every
// backend: what serves, what does not and why.
func lbDetail(w io.Writer, m proto.Message) error {
	lb, ok := m.(*v1.LoadBalancer)
	if !ok {
		return nil
	}
	status := map[uint32]*v1.LoadBalancerListenerStatus{}
	for _, ls := range lb.GetStatus().GetListeners() {
		status[ls.GetId()] = ls
	}
	// Summaries first, then one table of every backend.
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LISTENER\tBACKEND\tADDRESS\tWEIGHT\tNODE\tSTATE\tSERVING\tSINCE\tREASON")
	for _, l := range lb.GetListeners() {
		ls := status[l.GetId()]
		check := "no health check"
		if hc := l.GetHealthCheck(); hc != nil {
			check = fmt.Sprintf("%s check every %dms", hc.GetProtocol(), hc.GetIntervalMs())
			if hc.GetProtocol() == "http" {
				check += " GET " + hc.GetPath()
			}
		}
		fmt.Fprintf(w, "listener %s %s/%d: %d of %d backends serving, %s\n", l.GetName(), l.GetProtocol(), l.GetPort(), ls.GetServing(), len(l.GetBackends()), check)
		name := fmt.Sprintf("%s %s/%d", l.GetName(), l.GetProtocol(), l.GetPort())
		if len(l.GetBackends()) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t-\n", name)
			continue
		}
		bs := map[uint32]*v1.LoadBalancerBackendStatus{}
		for _, b := range ls.GetBackends() {
			bs[b.GetId()] = b
		}
		for i, b := range l.GetBackends() {
			st := bs[b.GetId()]
			if i > 0 {
				name = ""
			}
			since := "-"
			if st.GetSince() != nil {
				since = st.GetSince().AsTime().UTC().Format(time.RFC3339)
			}
			node := strings.TrimPrefix(st.GetNode(), "nodes/")
			serving := "no"
			if st.GetServing() {
				serving = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s:%d\t%d\t%s\t%s\t%s\t%s\t%s\n", name, b.GetPort(), b.GetAddress(), b.GetTargetPort(), b.GetWeight(),
				orDash(node), orDash(st.GetState()), serving, since, orDash(st.GetReason()))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	_, err := io.WriteString(w, table.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
