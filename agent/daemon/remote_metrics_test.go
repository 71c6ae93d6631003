package daemon

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// metrics.listen may be remote only with allow_remote and then a token or
// TLS.
func TestMetricsListenRemote(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    MetricsConfig
		want string // "" = valid
	}{
		{"loopback", MetricsConfig{Listen: "127.0.0.1:9464"}, ""},
		{"localhost", MetricsConfig{Listen: "localhost:9464"}, ""},
		{"all interfaces", MetricsConfig{Listen: ":9464"}, "set metrics.allow_remote: true"},
		{"lan address", MetricsConfig{Listen: "192.0.2.10:9464"}, "is not a loopback address"},
		{"remote, nothing", MetricsConfig{Listen: "0.0.0.0:9464", AllowRemote: true}, "set metrics.token_file (bearer token) or metrics.tls"},
		{"remote, token", MetricsConfig{Listen: "0.0.0.0:9464", AllowRemote: true, TokenFile: "/etc/atm-agent/metrics.token"}, ""},
		{"remote, credential", MetricsConfig{Listen: "[::]:9464", AllowRemote: true, TokenFile: "credential:metrics-token"}, ""},
		{"remote, tls", MetricsConfig{Listen: "0.0.0.0:9464", AllowRemote: true, TLS: MetricsTLSConfig{CertFile: "c.pem", KeyFile: "k.pem"}}, ""},
		{"tls half", MetricsConfig{Listen: "127.0.0.1:9464", TLS: MetricsTLSConfig{CertFile: "c.pem"}}, "cert_file and key_file go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Metrics = tc.m
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
	c := DefaultConfig()
	c.Metrics = MetricsConfig{Listen: "0.0.0.0:9464", AllowRemote: true, TokenFile: "/x"}
	if w := strings.Join(c.Warnings(), "\n"); !strings.Contains(w, "without TLS") {
		t.Errorf("no warning for a token over plain HTTP: %q", w)
	}
}

// The served port asks for the bearer token (from a file or a systemd
// credential) and speaks TLS when configured.
func TestMetricsTokenAndTLS(t *testing.T) {
	dir := t.TempDir()
	token := "s3cret-metrics-token-0123"
	if err := os.WriteFile(filepath.Join(dir, "metrics-token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := selfSigned(t)
	os.WriteFile(filepath.Join(dir, "c.pem"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "k.pem"), keyPEM, 0o600)
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	m := newMetrics([]string{"r1"})
	port := func() int {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	for _, tc := range []struct {
		name string
		cfg  MetricsConfig
		tls  bool
	}{
		{"token file, http", MetricsConfig{TokenFile: filepath.Join(dir, "metrics-token")}, false},
		{"credential, https", MetricsConfig{TokenFile: "credential:metrics-token", TLS: MetricsTLSConfig{CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem")}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Listen = fmt.Sprintf("127.0.0.1:%d", port())
			stop, err := serveMetrics(tc.cfg, m, func() (any, bool) { return map[string]any{"ok": true}, true }, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			scheme := "http"
			cl := &http.Client{Timeout: 5 * time.Second}
			if tc.tls {
				scheme = "https"
				cl.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "atm-agent.test"}}
			}
			get := func(tok string) (int, string) {
				req, _ := http.NewRequest("GET", scheme+"://"+tc.cfg.Listen+"/metrics", nil)
				if tok != "" {
					req.Header.Set("Authorization", "Bearer "+tok)
				}
				resp, err := cl.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			if code, _ := get(""); code != http.StatusUnauthorized {
				t.Errorf("no token: %d, want 401", code)
			}
			if code, _ := get("wrong-token-wrong-token"); code != http.StatusUnauthorized {
				t.Errorf("wrong token: %d, want 401", code)
			}
			if code, body := get(token); code != http.StatusOK || !strings.Contains(body, "atm_agent_visits_total") {
				t.Errorf("right token: %d %.80s", code, body)
			}
			if tc.tls {
				plain := &http.Client{Timeout: 2 * time.Second}
				if resp, err := plain.Get("http://" + tc.cfg.Listen + "/metrics"); err == nil && resp.StatusCode == http.StatusOK {
					t.Error("plain HTTP served on the TLS port")
				}
			}
		})
	}
	if _, err := loadToken(filepath.Join(dir, "c.pem")[:len(dir)] + "/missing"); err == nil {
		t.Error("missing token file accepted")
	}
	os.WriteFile(filepath.Join(dir, "short"), []byte("short\n"), 0o600)
	if _, err := loadToken(filepath.Join(dir, "short")); err == nil || !strings.Contains(err.Error(), "shorter than 16") {
		t.Errorf("short token: %v", err)
	}
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "atm-agent.test"},
		DNSNames: []string{"atm-agent.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}
