//go:build matprofile

package camera

import (
	"bytes"
	"testing"

	"gocv.io/x/gocv"
)

// assertNoMats fails the test if any gocv.Mat is still open.
func assertNoMats(t *testing.T) {
	t.Helper()
	if n := gocv.MatProfile.Count(); n != 0 {
		var b bytes.Buffer
		_ = gocv.MatProfile.WriteTo(&b, 1)
		t.Errorf("%d Mats leaked:\n%s", n, b.String())
	}
}
