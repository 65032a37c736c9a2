package ctl

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestEndToEndMTLS checks the TLS side of the client against a real
// controller: server verification with a CA, identity from a client
// certificate (CN alice in examples/tokens.yaml), TLS settings from the
// config file, and a clear error for a plaintext client.
func TestEndToEndMTLS(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	addr, _ := startController(t, "--tls-cert", pki.serverCert, "--tls-key", pki.serverKey, "--client-ca", pki.ca)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := Run(ctx, args, Streams{In: strings.NewReader(""), Out: &out, Err: &out}, func(string) string { return "" })
		return out.String(), err
	}

	// The client certificate alone authenticates as alice.
	out, err := run("--config=", "--endpoint", addr, "--tls-ca", pki.ca, "--tls-cert", pki.clientCert, "--tls-key", pki.clientKey, "whoami")
	if err != nil || !strings.Contains(out, "alice") {
		t.Errorf("whoami with alice's certificate: %v\n%s", err, out)
	}
	// Server-verified TLS with a bearer token.
	out, err = run("--config=", "--endpoint", addr, "--tls-ca", pki.ca, "--token", "demo-admin-token", "whoami", "-o", "json")
	// protojson varies its whitespace on purpose: match the field, not the bytes.
	if err != nil || !jsonField(out, "subject", "admin") {
		t.Errorf("whoami over TLS with a token: %v\n%s", err, out)
	}
	// The same from a config file.
	cfg := filepath.Join(dir, "config.yaml")
	mustWrite(t, cfg, "endpoint: "+addr+"\ntls:\n  ca: "+pki.ca+"\n  cert: "+pki.clientCert+"\n  key: "+pki.clientKey+"\n")
	if out, err := run("--config", cfg, "whoami"); err != nil || !strings.Contains(out, "alice") {
		t.Errorf("whoami from the config file: %v\n%s", err, out)
	}
	// A plaintext client cannot talk to a TLS controller, and is told where.
	_, err = run("--config=", "--endpoint", addr, "--token", "demo-admin-token", "whoami")
	if !isCode(err, codes.Unavailable) || !strings.Contains(err.Error(), addr) {
		t.Errorf("plaintext client against TLS: %v", err)
	}
	// A config file named explicitly must exist.
	if _, err := run("--config", filepath.Join(dir, "missing.yaml"), "whoami"); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing explicit config: %v", err)
	}
}

// testPKI holds the PEM files of a throwaway CA, a server certificate for
// 127.0.0.1 and a client certificate with CN alice.
type testPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newTestPKI(t *testing.T, dir string) testPKI {
	t.Helper()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meridian test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	}
	p := testPKI{
		ca: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "alice.pem"), clientKey: filepath.Join(dir, "alice-key.pem"),
	}
	sc, sk := issue(2, "meridian-controller", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	cc, ck := issue(3, "alice", x509.ExtKeyUsageClientAuth, nil)
	for path, b := range map[string][]byte{
		p.ca: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), p.serverCert: sc, p.serverKey: sk, p.clientCert: cc, p.clientKey: ck,
	} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
