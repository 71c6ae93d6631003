// Package mats counts live gocv Mats for leak checks in tests. The counts
// exist only in builds with -tags matprofile (CI runs the vision tests so);
// without the tag Live is 0 and every check passes.
package mats

import "testing"

// AssertNone fails t when Mats are alive, with where they were made.
func AssertNone(t testing.TB) {
	t.Helper()
	if n := Live(); n != 0 {
		t.Errorf("%d Mats leaked:\n%s", n, profile())
	}
}
