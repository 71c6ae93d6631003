//go:build !matprofile

package camera

import "testing"

// assertNoMats needs -tags matprofile; without it Mats are not counted.
func assertNoMats(t *testing.T) { t.Helper() }
