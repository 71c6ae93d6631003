package netguard

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
)

// Which Host headers a TCP request may carry, and that a request over a
// Unix socket is never refused.
func TestHostsAllowed(t *testing.T) {
	hs := NewHosts([]string{"ATM-0042.Bank.Example."})
	hostname, _ := os.Hostname()
	for host, want := range map[string]bool{
		"127.0.0.1:9464": true, "[::1]:9464": true, "10.0.0.7": true, "localhost:9464": true, "LOCALHOST.": true,
		"app.localhost:1": true, hostname: true, hostname + ":9464": true, "atm-0042.bank.example:9464": true, "": true,
		"evil.example:9464": false, "evil.example": false, "127.0.0.1.nip.io:9464": false, "localhost.evil.example": false,
		"atm-0042.bank.example.evil": false,
	} {
		r := httptest.NewRequest("GET", "/metrics", nil)
		r.Host = host
		r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9464}))
		if got := hs.Allowed(r); got != want {
			t.Errorf("Host %q over TCP: allowed %v, want %v", host, got, want)
		}
	}
	r := httptest.NewRequest("GET", "/v1/health", nil)
	r.Host = "evil.example"
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.UnixAddr{Name: "/run/atm-agent/trigger.sock", Net: "unix"}))
	if !hs.Allowed(r) {
		t.Error("a request over the Unix socket was refused")
	}
}
