package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
	"github.com/meridian-sdn/meridian/controller/apiserver"
	"github.com/meridian-sdn/meridian/controller/auth"
	"github.com/meridian-sdn/meridian/controller/ovn"
	"github.com/meridian-sdn/meridian/controller/resource"
	"github.com/meridian-sdn/meridian/controller/store"
	"github.com/meridian-sdn/meridian/controller/trace"
)

// Controller is a running controller.
type Controller struct {
	cfg     Config
	log     *slog.Logger
	st      *store.Bolt
	api     *apiserver.Server
	grpc    *grpc.Server
	http    *http.Server
	reg     *prometheus.Registry
	ready   atomic.Bool
	addrMu  sync.Mutex // guards grpcLis and httpLis: Addrs is called while Serve starts
	grpcLis net.Listener
	httpLis net.Listener
	gwLis   net.Listener
	agents  Agents
	ovn     *ovn.Reconciler
}

// Agents is the controller side of the agent protocol, plugged in by the
// caller so this package does not depend on how it is built.
type Agents interface {
	apiserver.StatusProvider
	// Register adds the agent service to the gRPC server.
	Register(g *grpc.Server)
	// Run drives the service until ctx is done.
	Run(ctx context.Context) error
	// Collectors are its metrics.
	Collectors() []prometheus.Collector
}

// AgentsFactory builds the agent side on the opened store.
type AgentsFactory func(st store.Store, log *slog.Logger) (Agents, error)

// New opens the store and builds every part; Serve starts them.
func New(cfg Config, log *slog.Logger, agents AgentsFactory) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	authn, err := auth.LoadFile(cfg.TokensFile)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	start := time.Now()
	st, err := store.Open(filepath.Join(cfg.DataDir, "meridian.db"), store.Options{LogRetention: int64(cfg.LogRetention), Logger: log})
	if err != nil {
		return nil, err
	}
	log.Info("store open", "path", filepath.Join(cfg.DataDir, "meridian.db"), "revision", st.Revision(), "took", time.Since(start))
	c := &Controller{cfg: cfg, log: log, st: st, reg: prometheus.NewRegistry()}
	c.api = apiserver.New(st, apiserver.Options{Logger: log})
	if agents != nil {
		if c.agents, err = agents(st, log); err != nil {
			st.Close()
			return nil, fmt.Errorf("agent distributor: %w", err)
		}
		c.api.SetStatusProvider(c.agents)
	}
	if cfg.OVNNorthbound != "" {
		oc := ovn.Config{NB: cfg.OVNNorthbound, Store: st, Logger: log.With("component", "ovn")}
		if cfg.OVNExternal != nil {
			ext, err := cfg.OVNExternal.Network()
			if err != nil {
				return nil, err
			}
			oc.External = &ext
		}
		if c.ovn, err = ovn.NewReconciler(oc); err != nil {
			st.Close()
			return nil, fmt.Errorf("OVN realization: %w", err)
		}
	}
	var ovnS ovnStatus
	if c.ovn != nil {
		ovnS = c.ovn
	}
	m := newMetrics(c.reg, st, ovnS)
	if c.agents != nil {
		c.reg.MustRegister(c.agents.Collectors()...)
	}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.unary, c.logUnary, authn.UnaryInterceptor),
		grpc.ChainStreamInterceptor(m.stream, authn.StreamInterceptor),
	}
	if cfg.TLSCert != "" {
		tc, err := serverTLS(cfg)
		if err != nil {
			st.Close()
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	c.grpc = grpc.NewServer(opts...)
	c.api.Register(c.grpc)
	traces := trace.NewService(st, log.With("component", "trace"))
	if cfg.OVNSouthbound != "" {
		tracer := &trace.OVNTracer{SB: cfg.OVNSouthbound}
		if cfg.OVNExternal != nil {
			tracer.ExternalSwitch = cfg.OVNExternal.Switch
			if tracer.ExternalSwitch == "" {
				tracer.ExternalSwitch = ovn.DefaultExternalSwitch
			}
		}
		traces.WithOVN(tracer)
	}
	traces.Register(c.grpc)
	if c.agents != nil {
		// Agents authenticate like everyone else; the agent service checks
		// for the system-admin role (node credentials) itself.
		c.agents.Register(c.grpc)
	}
	return c, nil
}

// listen accepts "host:port" or "unix:/path". A unix socket lets agents in
// other network namespaces of the same host reach the controller without
// any address (the e2e topologies use that).
func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		os.Remove(path)
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", addr)
}

func serverTLS(cfg Config) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.ClientCA != "" {
		pem, err := os.ReadFile(cfg.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s: no certificates found", cfg.ClientCA)
		}
		tc.ClientCAs = pool
		// Bearer tokens remain valid over TLS, so a certificate is verified
		// when presented but not required.
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// Serve listens and serves until ctx is done, then stops gracefully.
func (c *Controller) Serve(ctx context.Context) error {
	var err error
	c.addrMu.Lock()
	if c.grpcLis, err = listen(c.cfg.ListenGRPC); err != nil {
		c.addrMu.Unlock()
		return fmt.Errorf("listen gRPC: %w", err)
	}
	c.httpLis, err = net.Listen("tcp", c.cfg.ListenHTTP)
	c.addrMu.Unlock()
	if err != nil {
		return fmt.Errorf("listen HTTP: %w", err)
	}
	// The HTTP/JSON gateway reaches the gRPC services over a private unix
	// socket, so both paths share the same interceptors (authentication,
	// metrics, logging) and Watch streams work over HTTP too.
	sock := filepath.Join(c.cfg.DataDir, "gateway.sock")
	os.Remove(sock)
	if c.gwLis, err = net.Listen("unix", sock); err != nil {
		return fmt.Errorf("listen gateway socket: %w", err)
	}
	os.Chmod(sock, 0o600)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gw, err := c.gateway(ctx, sock)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", gw)
	mux.Handle("/metrics", promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !c.ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	c.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 4)
	go func() { errc <- c.grpc.Serve(c.grpcLis) }()
	go func() { errc <- c.grpc.Serve(c.gwLis) }()
	go func() {
		if err := c.http.Serve(c.httpLis); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	if c.agents != nil {
		go func() {
			if err := c.agents.Run(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("agent distributor: %w", err)
			}
		}()
	}
	if c.ovn != nil {
		go func() {
			if err := c.ovn.Run(ctx); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("OVN realization: %w", err)
			}
		}()
	}
	c.ready.Store(true)
	c.log.Info("controller serving", "grpc", c.grpcLis.Addr(), "http", c.httpLis.Addr(), "revision", c.st.Revision())
	select {
	case <-ctx.Done():
	case err = <-errc:
		c.log.Error("controller failed", "err", err)
	}
	c.ready.Store(false)
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	c.http.Shutdown(shutdown)
	stopped := make(chan struct{})
	go func() { c.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdown.Done():
		c.grpc.Stop() // watch streams do not end by themselves
	}
	cancel()
	if cerr := c.st.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// Addrs returns the listening addresses once Serve has started listening.
func (c *Controller) Addrs() (grpcAddr, httpAddr string) {
	c.addrMu.Lock()
	defer c.addrMu.Unlock()
	if c.grpcLis == nil || c.httpLis == nil {
		return "", ""
	}
	return c.grpcLis.Addr().String(), c.httpLis.Addr().String()
}

func (c *Controller) gateway(ctx context.Context, sock string) (http.Handler, error) {
	mux := runtime.NewServeMux()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	ep := "unix://" + sock
	for _, reg := range []func(context.Context, *runtime.ServeMux, string, []grpc.DialOption) error{
		v1.RegisterProjectServiceHandlerFromEndpoint, v1.RegisterNetworkServiceHandlerFromEndpoint,
		v1.RegisterSecurityServiceHandlerFromEndpoint, v1.RegisterNodeServiceHandlerFromEndpoint,
		v1.RegisterAuditServiceHandlerFromEndpoint, v1.RegisterWatchServiceHandlerFromEndpoint,
		v1.RegisterIdentityServiceHandlerFromEndpoint, v1.RegisterEdgeServiceHandlerFromEndpoint,
		v1.RegisterTraceServiceHandlerFromEndpoint, v1.RegisterLoadBalancerServiceHandlerFromEndpoint,
	} {
		if err := reg(ctx, mux, ep, opts); err != nil {
			return nil, fmt.Errorf("HTTP gateway: %w", err)
		}
	}
	return mux, nil
}

// logUnary logs every mutation and every failure; reads that succeed are
// logged at debug level only, to keep logs about what changed.
func (c *Controller) logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	subject := ""
	if id, ok := auth.FromContext(ctx); ok {
		subject = id.Subject
	}
	level := slog.LevelDebug
	if err != nil || !strings.HasPrefix(method, "Get") && !strings.HasPrefix(method, "List") && method != "WhoAmI" {
		level = slog.LevelInfo
	}
	c.log.Log(ctx, level, "api", "method", method, "subject", subject, "code", status.Code(err).String(),
		"took", time.Since(start), "err", errString(err))
	return resp, err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return status.Convert(err).Message()
}

// kindsForMetrics are the kinds whose counts are exported.
var kindsForMetrics = resource.Kinds
