// Package controller wires Meridian's controller together: the store, the
// API server (gRPC and HTTP/JSON), the agent distributor, metrics and
// health endpoints. The pieces live in the sub-packages; this package only
// configures, starts and stops them.
package controller

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/meridian-sdn/meridian/controller/ovn"
)

// Config is the controller's configuration. The config file (YAML) uses the
// json names; command-line flags override it.
type Config struct {
	DataDir    string `json:"data_dir"`    // holds the store file
	ListenGRPC string `json:"listen_grpc"` // tenant/compute API and agent protocol: host:port or unix:/path
	ListenHTTP string `json:"listen_http"` // HTTP/JSON API, /metrics, /healthz, /readyz
	TokensFile string `json:"tokens_file"` // identities and bearer tokens
	TLSCert    string `json:"tls_cert"`    // server certificate (enables TLS on gRPC)
	TLSKey     string `json:"tls_key"`
	ClientCA   string `json:"client_ca"` // CA for client certificates (enables mTLS identities)
	LogLevel   string `json:"log_level"` // debug, info, warn, error
	// OVNNorthbound, when set, also realizes the model in OVN: the NB
	// endpoint ("unix:/run/ovn/ovnnb_db.sock", "tcp:127.0.0.1:6641").
	OVNNorthbound string `json:"ovn_northbound"`
	// OVNExternal, with OVNNorthbound, is the external network OVN's
	// gateway router ports attach to; without it elastic IPs and NAT
	// gateways are not realized in OVN.
	OVNExternal *OVNExternal `json:"ovn_external,omitempty"`
	// OVNSouthbound, with OVNNorthbound, is the OVN southbound endpoint
	// ("unix:/run/ovn/ovnsb_db.sock", "tcp:127.0.0.1:6642"; several,
	// comma-separated, for a cluster): traces from ports on OVN nodes then
	// also show ovn-trace's verdict (the controller runs ovn-trace, which
	// must be installed, against it).
	OVNSouthbound string `json:"ovn_southbound"`
	// LogRetention is how many store revisions of history watchers and
	// reconnecting agents can resume from.
	LogRetention int `json:"log_retention"`
}

// OVNExternal describes the external network of the OVN realization (see
// ovn.ExternalNetwork).
type OVNExternal struct {
	CIDR            string `json:"cidr"`         // the network's prefix ("203.0.113.0/24")
	RouterRange     string `json:"router_range"` // VPC routers' own addresses, inside cidr
	NextHop         string `json:"next_hop"`     // the fabric router ("" = no default route)
	Switch          string `json:"switch"`       // external Logical_Switch name ("" = default)
	PhysicalNetwork string `json:"physical_network"`
}

// Network parses the configuration into the OVN renderer's form.
func (e OVNExternal) Network() (ovn.ExternalNetwork, error) {
	n := ovn.ExternalNetwork{Switch: e.Switch, PhysicalNetwork: e.PhysicalNetwork}
	var err error
	if n.CIDR, err = netip.ParsePrefix(e.CIDR); err != nil {
		return n, fmt.Errorf("ovn_external.cidr: %w", err)
	}
	if n.RouterRange, err = netip.ParsePrefix(e.RouterRange); err != nil {
		return n, fmt.Errorf("ovn_external.router_range: %w", err)
	}
	if e.NextHop != "" {
		if n.NextHop, err = netip.ParseAddr(e.NextHop); err != nil {
			return n, fmt.Errorf("ovn_external.next_hop: %w", err)
		}
	}
	if _, err := ovn.NewRendererFor(n); err != nil {
		return n, fmt.Errorf("ovn_external: %w", err)
	}
	return n, nil
}

// Defaults returns the configuration used when nothing is set.
func Defaults() Config {
	return Config{
		DataDir:      "/var/lib/meridian",
		ListenGRPC:   "127.0.0.1:7443",
		ListenHTTP:   "127.0.0.1:7080",
		LogLevel:     "info",
		LogRetention: 100000,
	}
}

// LoadConfigFile reads a YAML config file over base; unknown keys are errors
// so a misspelt option is never silently ignored.
func LoadConfigFile(path string, base Config) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return base, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &base); err != nil {
		return base, fmt.Errorf("config %s: %w", path, err)
	}
	return base, nil
}

// Validate checks the configuration and says what to fix.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is required"))
	}
	for name, addr := range map[string]string{"listen_grpc": c.ListenGRPC, "listen_http": c.ListenHTTP} {
		if name == "listen_grpc" && strings.HasPrefix(addr, "unix:/") {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want host:port: %w", name, addr, err))
		}
	}
	if c.TokensFile == "" && c.ClientCA == "" {
		errs = append(errs, errors.New("tokens_file (or client_ca with a tokens file naming certificate CNs) is required: every request is authenticated"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls_cert and tls_key go together"))
	}
	if c.ClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("client_ca needs tls_cert and tls_key"))
	}
	if _, err := ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.OVNExternal != nil {
		if c.OVNNorthbound == "" {
			errs = append(errs, errors.New("ovn_external needs ovn_northbound"))
		}
		if _, err := c.OVNExternal.Network(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.OVNSouthbound != "" {
		if c.OVNNorthbound == "" {
			errs = append(errs, errors.New("ovn_southbound needs ovn_northbound"))
		}
		if err := validOVSDBRemotes(c.OVNSouthbound); err != nil {
			errs = append(errs, fmt.Errorf("ovn_southbound: %w", err))
		}
	}
	if c.LogRetention < 1000 {
		errs = append(errs, fmt.Errorf("log_retention %d: keep at least 1000 revisions", c.LogRetention))
	}
	return errors.Join(errs...)
}

// validOVSDBRemotes checks a comma-separated list of OVSDB endpoints of
// the forms ovn-trace can use without certificates: unix:/path or
// tcp:host:port.
func validOVSDBRemotes(s string) error {
	for _, ep := range strings.Split(s, ",") {
		ep = strings.TrimSpace(ep)
		switch {
		case strings.HasPrefix(ep, "unix:"):
			if !strings.HasPrefix(ep, "unix:/") {
				return fmt.Errorf("%q: want unix:/absolute/path", ep)
			}
		case strings.HasPrefix(ep, "tcp:"):
			host, port, err := net.SplitHostPort(strings.TrimPrefix(ep, "tcp:"))
			if err != nil || host == "" {
				return fmt.Errorf("%q: want tcp:host:port", ep)
			}
			if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
				return fmt.Errorf("%q: port %q is not 1-65535", ep, port)
			}
		case strings.HasPrefix(ep, "ssl:"):
			return fmt.Errorf("%q: ssl endpoints are not supported yet (ovn-trace would need the certificates)", ep)
		default:
			return fmt.Errorf("%q: want unix:/path or tcp:host:port", ep)
		}
	}
	return nil
}

// ParseLevel parses a log level name.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return l, fmt.Errorf("log_level %q: want debug, info, warn or error", s)
	}
	return l, nil
}
