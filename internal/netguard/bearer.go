package netguard

import (
	"crypto/sha256"
	"crypto/subtle"
	"strings"
)

// BearerMatches reports whether an Authorization header value carries the
// bearer token whose SHA-256 is sum. The scheme is matched without regard
// to case (RFC 9110 section 11.1: "bearer" is "Bearer"); the comparison of
// the token is constant-time.
func BearerMatches(header string, sum [sha256.Size]byte) bool {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(got[:], sum[:]) == 1
}
