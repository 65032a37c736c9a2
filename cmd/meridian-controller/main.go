// Command meridian-controller serves Meridian's tenant/compute API and the
// agent protocol on an embedded store.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/meridian-sdn/meridian/controller"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "meridian-controller:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("meridian-controller", flag.ContinueOnError)
	cfg := controller.Defaults()
	configFile := fs.String("config", "", "YAML config file (flags override it)")
	dataDir := fs.String("data-dir", "", "directory of the store file (default "+cfg.DataDir+")")
	listenGRPC := fs.String("listen-grpc", "", "gRPC API address (default "+cfg.ListenGRPC+")")
	listenHTTP := fs.String("listen-http", "", "HTTP/JSON API, /metrics and health address (default "+cfg.ListenHTTP+")")
	tokens := fs.String("tokens-file", "", "identities and bearer tokens (YAML)")
	tlsCert := fs.String("tls-cert", "", "server certificate (PEM): enables TLS on gRPC")
	tlsKey := fs.String("tls-key", "", "server key (PEM)")
	clientCA := fs.String("client-ca", "", "CA bundle for client certificates (mTLS identities)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default info)")
	ovnNB := fs.String("ovn-nb", "", "OVN northbound endpoint (unix:/path or tcp:host:port): also realize the model in OVN")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configFile != "" {
		var err error
		if cfg, err = controller.LoadConfigFile(*configFile, cfg); err != nil {
			return err
		}
	}
	for _, o := range []struct {
		flag string
		dst  *string
	}{{*dataDir, &cfg.DataDir}, {*listenGRPC, &cfg.ListenGRPC}, {*listenHTTP, &cfg.ListenHTTP}, {*tokens, &cfg.TokensFile},
		{*tlsCert, &cfg.TLSCert}, {*tlsKey, &cfg.TLSKey}, {*clientCA, &cfg.ClientCA}, {*logLevel, &cfg.LogLevel}, {*ovnNB, &cfg.OVNNorthbound}} {
		if o.flag != "" {
			*o.dst = o.flag
		}
	}
	level, err := controller.ParseLevel(cfg.LogLevel)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	c, err := controller.New(cfg, log, newAgents)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return c.Serve(ctx)
}
