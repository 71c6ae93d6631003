package visit

import (
	"errors"
	"slices"
	"testing"
)

func TestCanonicalCardHash(t *testing.T) {
	const hexHash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	tests := []struct {
		in, want string
		err      error
	}{
		{"", "", nil},
		{hexHash, hexHash, nil},
		{"9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08", hexHash, nil},
		{"9f86D081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00A08", hexHash, nil},
		{"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=", hexHash, nil},
		{"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg", hexHash, nil},
		{"n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg=", hexHash, nil},
		{"n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg", hexHash, nil},
		{hexHash[:63], "", ErrCardHashEncoding},                                   // odd hex
		{"n4bQgYhMfWWaL+qgxVrQFaO_TxsrC4Is0V1sFbDwCgg=", "", ErrCardHashEncoding}, // two alphabets
		{"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCg=", "", ErrCardHashEncoding},  // padding does not fit
		{"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg===", "", ErrCardHashEncoding},
		{"n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCggAB", "", ErrCardHashEncoding}, // 45 characters
		{"not base64!", "", ErrCardHashEncoding},
	}
	for _, tt := range tests {
		got, err := CanonicalCardHash(tt.in)
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("CanonicalCardHash(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.err)
		}
	}
	// Cards: canonical, each card once, whatever the stored spelling; a
	// value that does not decode (only from an old store) counts as itself.
	c := Context{CardHash: "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
		CoalescedCards: []string{"n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg", "", "c2", "odd!"}}
	if got, want := c.Cards(), []string{hexHash, "c2", "odd!"}; !slices.Equal(got, want) {
		t.Fatalf("Cards() = %q, want %q", got, want)
	}
}
