package identity

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"sync/atomic"
)

// IDGenerator returns a new identity id each call.
type IDGenerator func() string

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// RandomID returns "p-" and 10 lowercase base32 characters (50 bits) from
// crypto/rand. Ids are per device and reveal nothing about the person.
func RandomID() string {
	var b [7]byte
	rand.Read(b[:]) // never returns an error (Go >= 1.24)
	s := b32.EncodeToString(b[:])[:10]
	out := []byte("p-" + s)
	for i := 2; i < len(out); i++ {
		if out[i] >= 'A' && out[i] <= 'Z' {
			out[i] += 'a' - 'A'
		}
	}
	return string(out)
}

// SequentialIDs returns a deterministic generator: prefix-0001, prefix-0002...
// For tests and reproducible batch runs.
func SequentialIDs(prefix string) IDGenerator {
	var n atomic.Int64
	return func() string { return fmt.Sprintf("%s%04d", prefix, n.Add(1)) }
}
