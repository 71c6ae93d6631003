package netguard

import (
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
)

// Hosts are the names a request over TCP may carry in its Host header. A
// web page another site serves can make a browser on the controller send
// requests to a loopback port by DNS rebinding (its own name, resolved to
// 127.0.0.1 a moment later); the browser then sends that site's name as
// Host, and Allowed refuses it. Accepted: an IP address (a rebinding page
// never has one), localhost and names under .localhost (which browsers
// resolve to loopback themselves), the machine's hostname (and its first
// label), and the names given. Requests over a Unix socket, which no
// browser can reach, are always allowed.
type Hosts struct{ names map[string]bool }

// NewHosts returns the Hosts accepting the defaults and extra (names
// without a port; case and a trailing dot ignored).
func NewHosts(extra []string) *Hosts {
	hs := &Hosts{names: map[string]bool{"localhost": true}}
	if h, err := os.Hostname(); err == nil && h != "" {
		h = hostKey(h)
		hs.names[h] = true
		first, _, _ := strings.Cut(h, ".")
		hs.names[first] = true
	}
	for _, n := range extra {
		hs.names[hostKey(n)] = true
	}
	return hs
}

func hostKey(h string) string { return strings.ToLower(strings.TrimSuffix(h, ".")) }

// Allowed reports whether r may be served: it came over a Unix socket, or
// its Host is an IP address or an accepted name, or it has none (HTTP/1.0:
// a browser always sends one).
func (hs *Hosts) Allowed(r *http.Request) bool {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && a.Network() == "unix" {
		return true
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = hostKey(strings.Trim(host, "[]"))
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return host == "" || hs.names[host] || strings.HasSuffix(host, ".localhost")
}
