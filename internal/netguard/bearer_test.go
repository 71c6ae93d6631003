package netguard

import (
	"crypto/sha256"
	"testing"
)

func TestBearerMatches(t *testing.T) {
	sum := sha256.Sum256([]byte("s3cret-token"))
	for h, want := range map[string]bool{
		"Bearer s3cret-token":   true,
		"bearer s3cret-token":   true, // the scheme is case-insensitive
		"BEARER  s3cret-token ": true,
		"Bearer s3cret-tokeN":   false,
		"Basic s3cret-token":    false,
		"s3cret-token":          false,
		"Bearer":                false,
		"":                      false,
		"Bearers3cret-token":    false,
	} {
		if got := BearerMatches(h, sum); got != want {
			t.Errorf("BearerMatches(%q) = %v, want %v", h, got, want)
		}
	}
}
