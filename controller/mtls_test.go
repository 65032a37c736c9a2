package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	v1 "github.com/meridian-sdn/meridian/api/meridian/v1"
)

// pki is a throw-away CA issuing server and client certificates for a test.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPEM  []byte
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meridian test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), caCert: cert, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	if err := os.WriteFile(filepath.Join(p.dir, "ca.pem"), p.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issue writes name.pem and name-key.pem for a certificate with the CN.
func (p *pki) issue(t *testing.T, name, cn string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestMutualTLSIdentifiesCallersByCertificate starts a controller with TLS
// and a client CA: a client certificate whose CN is in the tokens file
// authenticates as that identity, one whose CN is not is refused, and a
// client with neither certificate nor token is refused.
func TestMutualTLSIdentifiesCallersByCertificate(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey := p.issue(t, "server", "controller", true)
	aliceCert, aliceKey := p.issue(t, "alice", "alice", false)
	malCert, malKey := p.issue(t, "mallory", "mallory", false)
	tokens := filepath.Join(p.dir, "tokens.yaml")
	if err := os.WriteFile(tokens, []byte(`identities:
- subject: alice
  role: user
  organization: acme
  projects: [projects/demo]
  certificate_cn: alice
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	cfg.DataDir, cfg.TokensFile = t.TempDir(), tokens
	cfg.ListenGRPC, cfg.ListenHTTP = "127.0.0.1:0", "127.0.0.1:0"
	cfg.TLSCert, cfg.TLSKey, cfg.ClientCA = srvCert, srvKey, filepath.Join(p.dir, "ca.pem")
	c, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	var addr string
	for deadline := time.Now().Add(5 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		addr, _ = c.Addrs()
	}
	if addr == "" {
		t.Fatal("controller did not start listening")
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)
	whoami := func(cert, key string) (*v1.WhoAmIResponse, error) {
		tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if cert != "" {
			kp, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{kp}
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		return v1.NewIdentityServiceClient(conn).WhoAmI(cctx, &v1.WhoAmIRequest{})
	}
	got, err := whoami(aliceCert, aliceKey)
	if err != nil {
		t.Fatalf("alice's certificate: %v", err)
	}
	if got.Subject != "alice" || got.Role != "user" || got.Organization != "acme" {
		t.Errorf("alice's certificate authenticated as %+v", got)
	}
	for name, files := range map[string][2]string{"unknown CN": {malCert, malKey}, "no certificate": {"", ""}} {
		if _, err := whoami(files[0], files[1]); status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: got %v, want Unauthenticated", name, err)
		}
	}
}
