package controller

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigFileOVNExternal(t *testing.T) {
	base := Defaults()
	base.TokensFile = "tokens.yaml"
	cases := []struct {
		name, yaml, wantErr string
	}{
		{"valid", "ovn_northbound: unix:/run/nb.sock\novn_external: {cidr: 203.0.113.0/24, router_range: 203.0.113.128/25, next_hop: 203.0.113.1}\n", ""},
		{"no next hop", "ovn_northbound: unix:/run/nb.sock\novn_external: {cidr: 203.0.113.0/24, router_range: 203.0.113.128/25}\n", ""},
		{"without northbound", "ovn_external: {cidr: 203.0.113.0/24, router_range: 203.0.113.128/25}\n", "needs ovn_northbound"},
		{"bad cidr", "ovn_northbound: unix:/nb\novn_external: {cidr: 203.0.113.0/33, router_range: 203.0.113.128/25}\n", "ovn_external.cidr"},
		{"bad next hop", "ovn_northbound: unix:/nb\novn_external: {cidr: 203.0.113.0/24, router_range: 203.0.113.128/25, next_hop: x}\n", "ovn_external.next_hop"},
		{"range outside cidr", "ovn_northbound: unix:/nb\novn_external: {cidr: 203.0.113.0/24, router_range: 198.51.100.0/25}\n", "ovn_external"},
		{"unknown key", "ovn_northbound: unix:/nb\novn_external: {cidr: 203.0.113.0/24, routers: 203.0.113.128/25}\n", "unknown field"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadConfigFile(path, base)
			if err == nil {
				err = cfg.Validate()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
			}
			if tc.wantErr == "" {
				if _, err := cfg.OVNExternal.Network(); err != nil {
					t.Fatalf("Network: %v", err)
				}
			}
		})
	}
}

func TestConfigOVNSouthbound(t *testing.T) {
	base := Defaults()
	base.TokensFile = "tokens.yaml"
	for _, tc := range []struct {
		nb, sb, wantErr string
	}{
		{"unix:/run/nb.sock", "unix:/run/ovn/ovnsb_db.sock", ""},
		{"unix:/run/nb.sock", "tcp:127.0.0.1:6642,tcp:[2001:db8::1]:6642, tcp:sb.example:6642", ""},
		{"", "unix:/run/ovn/ovnsb_db.sock", "ovn_southbound needs ovn_northbound"},
		{"unix:/nb", "unix:run/sb.sock", "want unix:/absolute/path"},
		{"unix:/nb", "tcp:127.0.0.1", "want tcp:host:port"},
		{"unix:/nb", "tcp:127.0.0.1:0", "not 1-65535"},
		{"unix:/nb", "ssl:127.0.0.1:6642", "ssl endpoints are not supported"},
		{"unix:/nb", "/run/ovn/ovnsb_db.sock", "want unix:/path or tcp:host:port"},
	} {
		cfg := base
		cfg.OVNNorthbound, cfg.OVNSouthbound = tc.nb, tc.sb
		err := cfg.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%s: unexpected error: %v", tc.sb, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: error %v, want one mentioning %q", tc.sb, err, tc.wantErr)
		}
	}
}
