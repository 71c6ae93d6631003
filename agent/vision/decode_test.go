package vision

import (
	"errors"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/internal/imagecheck/crafted"
)

// OpenCV throws from its own size check on a PNG claiming 65000x65000;
// through gocv v0.31's IMDecode that exception aborts the process. Under
// decodeUnchecked (the header check skipped on purpose) it is an error.
func TestDecodeCatchesOpenCVException(t *testing.T) {
	checkMats(t)
	_, err := decodeUnchecked(crafted.HugeClaimPNG())
	if !errors.Is(err, ErrDecode) || !strings.Contains(err.Error(), "OpenCV") {
		t.Fatalf("decodeUnchecked(huge claim): %v; want an OpenCV exception as ErrDecode", err)
	}
	t.Logf("caught: %v", err)
}

func TestDecodeImage(t *testing.T) {
	checkMats(t)
	jpg := crafted.JPEG(64, 48, 1)
	m, err := DecodeImage(jpg, imagecheck.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Cols() != 64 || m.Rows() != 48 || m.Channels() != 3 {
		t.Errorf("decoded %dx%dx%d", m.Cols(), m.Rows(), m.Channels())
	}
	m.Close()
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"huge claim", crafted.HugeClaimPNG(), imagecheck.ErrTooLarge},
		{"jpeg claiming 30000x30000", crafted.JPEGClaiming(30000, 30000), imagecheck.ErrTooLarge},
		{"random", crafted.Random(1000, 3), imagecheck.ErrUnsupported},
		{"empty", nil, imagecheck.ErrEmpty},
		{"truncated", crafted.Truncate(jpg, 0.5), imagecheck.ErrTruncated},
		// Passes the header check, but the pixel data is not zlib.
		{"png with garbage data", crafted.PNG(32, 32, crafted.Random(100, 4)), ErrDecode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := DecodeImage(tc.data, imagecheck.Limits{})
			if err == nil {
				m.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("%v; want %v", err, tc.want)
			}
		})
	}
}
