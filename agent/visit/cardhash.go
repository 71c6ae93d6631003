package visit

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
)

// ErrCardHashEncoding: a card hash that is neither hex (an even number of
// hex digits) nor base64 (standard or URL alphabet, padded or not).
var ErrCardHashEncoding = errors.New("must be hex (an even number of hex digits) or base64/base64url of the hash's bytes")

// CanonicalCardHash returns the one form a card hash is stored and compared
// in: the lowercase hex of its bytes. The ATM application may send the same
// hash as hex in either letter case or as base64/base64url; they are one
// card. A value made only of hex digits (0-9, a-f, A-F) is read as hex and
// must have an even length; any other value is read as base64, standard
// ('+', '/') or URL ('-', '_') alphabet but not both, with its '=' padding
// or none. (A base64 value made only of hex digits is therefore read as
// hex: for a random hash of 32 or more characters that happens with a
// chance under 1e-14.) It checks the encoding only; the content rules (no
// card data, a length of 32..128) are the trigger endpoint's.
func CanonicalCardHash(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if isHex(s) {
		if len(s)%2 != 0 {
			return "", ErrCardHashEncoding
		}
		return strings.ToLower(s), nil
	}
	body := strings.TrimRight(s, "=")
	if pad := len(s) - len(body); pad > 0 && (pad > 2 || len(s)%4 != 0) {
		return "", ErrCardHashEncoding
	}
	std := strings.ContainsAny(body, "+/")
	url := strings.ContainsAny(body, "-_")
	enc := base64.RawStdEncoding
	switch {
	case std && url:
		return "", ErrCardHashEncoding
	case url:
		enc = base64.RawURLEncoding
	}
	b, err := enc.DecodeString(body)
	if err != nil || len(b) == 0 {
		return "", ErrCardHashEncoding
	}
	return hex.EncodeToString(b), nil
}

// CanonicalCard is CanonicalCardHash for a hash already accepted, e.g. read
// from a store written before hashes were canonicalised: one it cannot
// decode is returned unchanged (it still counts, as itself).
func CanonicalCard(s string) string {
	if c, err := CanonicalCardHash(s); err == nil {
		return c
	}
	return s
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; {
		case ch >= '0' && ch <= '9', ch >= 'a' && ch <= 'f', ch >= 'A' && ch <= 'F':
		default:
			return false
		}
	}
	return true
}
