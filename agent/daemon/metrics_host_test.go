package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// /metrics and /healthz answer 421 to a Host header that names another
// site (a web page rebound to 127.0.0.1: `curl -H 'Host: evil.example:PORT'`
// got 200 before), and serve IP addresses, localhost, the machine's
// hostname and metrics.hosts, on a real listener.
func TestMetricsRefusesForeignHost(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	cfg := MetricsConfig{Listen: addr, Hosts: []string{"ATM-0042.bank.example."}}
	stop, err := serveMetrics(cfg, newMetrics(nil), func() (any, bool) { return map[string]any{"ok": true}, true }, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	hostname, _ := os.Hostname()
	cl := &http.Client{Timeout: 5 * time.Second}
	get := func(host, path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		req.Host = host
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("GET %s Host %s: %v", path, host, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, path := range []string{"/metrics", "/healthz"} {
		for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.evil.example:" + port, "localhost.evil.example:" + port} {
			if code, body := get(host, path); code != http.StatusMisdirectedRequest || !strings.Contains(body, "metrics.hosts") {
				t.Errorf("%s Host %s: %d %q, want 421 naming metrics.hosts", path, host, code, body)
			}
		}
		for _, host := range []string{addr, "localhost:" + port, "[::1]:" + port, "10.1.2.3", hostname + ":" + port,
			"atm-0042.bank.example:" + port, "app.localhost:" + port} {
			if code, body := get(host, path); code != http.StatusOK {
				t.Errorf("%s Host %s: %d %q, want 200", path, host, code, body)
			}
		}
	}
	c := DefaultConfig()
	c.Metrics.Hosts = []string{"atm-0042.bank.example:9464"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("metrics.hosts[0] %q", c.Metrics.Hosts[0])) {
		t.Errorf("a host with a port: %v, want a refusal", err)
	}
}
