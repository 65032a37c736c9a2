package controller

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/meridian-sdn/meridian/controller/ovn"
	"github.com/meridian-sdn/meridian/controller/store"
)

type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// ovnStatus is what the metrics need of the OVN reconciler.
type ovnStatus interface{ Status() ovn.Status }

func newMetrics(reg *prometheus.Registry, st store.Store, o ovnStatus) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meridian_api_requests_total", Help: "API requests by method and gRPC code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "meridian_api_request_duration_seconds", Help: "API request latency by method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"method"}),
	}
	reg.MustRegister(m.requests, m.latency,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meridian_store_revision", Help: "Current store revision."},
			func() float64 { return float64(st.Revision()) }))
	if o != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meridian_ovn_synced_revision", Help: "Store revision the OVN northbound last matched."},
				func() float64 { return float64(o.Status().Revision) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meridian_ovn_sync_ok", Help: "1 if the last OVN sync pass succeeded."},
				func() float64 {
					if o.Status().Synced {
						return 1
					}
					return 0
				}))
	}
	for _, k := range kindsForMetrics() {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meridian_objects", Help: "Stored resources by kind.", ConstLabels: prometheus.Labels{"kind": k.Name},
		}, func() float64 {
			var n int
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			st.View(ctx, func(tx store.ReadTx) error {
				var err error
				n, err = tx.Count(k.Prefix())
				return err
			})
			return float64(n)
		}))
	}
	return m
}

func (m *metrics) observe(method string, start time.Time, err error) {
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

func (m *metrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.observe(info.FullMethod, start, err)
	return resp, err
}

func (m *metrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	m.observe(info.FullMethod, start, err)
	return err
}
