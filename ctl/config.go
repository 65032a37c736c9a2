package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/yaml"
)

// DefaultEndpoint is where meridian-controller listens for gRPC by default.
const DefaultEndpoint = "127.0.0.1:7443"

// Config is the client configuration file (~/.config/meridian/config.yaml).
type Config struct {
	Endpoint string    `json:"endpoint,omitempty"`
	Token    string    `json:"token,omitempty"`
	TLS      TLSConfig `json:"tls,omitempty"`
}

// TLSConfig turns on TLS when CA is set, and mTLS when Cert and Key are too.
type TLSConfig struct {
	CA         string `json:"ca,omitempty"`         // PEM file of the CA that signed the controller's certificate
	Cert       string `json:"cert,omitempty"`       // client certificate (mTLS)
	Key        string `json:"key,omitempty"`        // its private key
	ServerName string `json:"serverName,omitempty"` // overrides the name checked in the controller's certificate
	Insecure   bool   `json:"insecure,omitempty"`   // TLS without verifying the controller (testing only)
}

func (t TLSConfig) enabled() bool { return t.CA != "" || t.Cert != "" || t.Insecure }

// defaultConfigPath is ~/.config/meridian/config.yaml (or the platform's
// equivalent), "" when the home directory is unknown.
func defaultConfigPath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "meridian", "config.yaml")
}

// loadConfig reads the file; a missing file is an empty config unless the
// user named it explicitly, in which case it is a mistake worth reporting.
func loadConfig(path string, explicit bool) (Config, error) {
	var c Config
	if path == "" {
		return c, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// resolve layers the sources: file < environment < flags.
func resolve(file Config, getenv func(string) string, flagEndpoint, flagToken string) Config {
	c := file
	if v := getenv("MERIDIAN_ENDPOINT"); v != "" {
		c.Endpoint = v
	}
	if v := getenv("MERIDIAN_TOKEN"); v != "" {
		c.Token = v
	}
	if flagEndpoint != "" {
		c.Endpoint = flagEndpoint
	}
	if flagToken != "" {
		c.Token = flagToken
	}
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint
	}
	return c
}

// dial creates the (lazy) connection. The bearer token goes in an
// interceptor rather than PerRPCCredentials because those refuse to send
// over plaintext, and a plaintext loopback controller is the common dev case.
func dial(c Config) (*grpc.ClientConn, error) {
	var creds credentials.TransportCredentials
	if c.TLS.enabled() {
		tc := &tls.Config{ServerName: c.TLS.ServerName, InsecureSkipVerify: c.TLS.Insecure, MinVersion: tls.VersionTLS12}
		if c.TLS.CA != "" {
			pem, err := os.ReadFile(c.TLS.CA)
			if err != nil {
				return nil, fmt.Errorf("read TLS CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("TLS CA %s holds no PEM certificate", c.TLS.CA)
			}
			tc.RootCAs = pool
		}
		if c.TLS.Cert != "" || c.TLS.Key != "" {
			cert, err := tls.LoadX509KeyPair(c.TLS.Cert, c.TLS.Key)
			if err != nil {
				return nil, fmt.Errorf("load TLS client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	} else {
		creds = insecure.NewCredentials()
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if c.Token != "" {
		md := func(ctx context.Context) context.Context {
			return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.Token)
		}
		opts = append(opts,
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
				return invoker(md(ctx), method, req, reply, cc, o...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
				return streamer(md(ctx), desc, cc, method, o...)
			}))
	}
	conn, err := grpc.NewClient(c.Endpoint, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", c.Endpoint, err)
	}
	return conn, nil
}
