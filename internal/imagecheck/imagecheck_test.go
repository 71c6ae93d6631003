package imagecheck_test

import (
	"bytes"
	"errors"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/internal/imagecheck/crafted"
)

func smallPNG(t *testing.T) []byte {
	var b bytes.Buffer
	if err := png.Encode(&b, image.NewGray(image.Rect(0, 0, 64, 48))); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// bmp builds a BITMAPINFOHEADER BMP header claiming w x h (no pixels).
func bmp(w, h int32) []byte {
	b := make([]byte, 54)
	b[0], b[1] = 'B', 'M'
	le := func(off int, v uint32) {
		b[off], b[off+1], b[off+2], b[off+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	le(14, 40)
	le(18, uint32(w))
	le(22, uint32(h))
	return b
}

func TestCheck(t *testing.T) {
	jpg := crafted.JPEG(64, 48, 1)
	for _, tc := range []struct {
		name string
		data []byte
		want error  // nil: accepted
		msg  string // in the error
	}{
		{"small png", smallPNG(t), nil, ""},
		{"small jpeg", jpg, nil, ""},
		{"small bmp", bmp(640, -480), nil, ""},
		{"empty", nil, imagecheck.ErrEmpty, "empty file"},
		{"69-byte png claiming 65000x65000", crafted.HugeClaimPNG(), imagecheck.ErrTooLarge, "65000x65000 = 4225000000 pixels (limit 50000000)"},
		{"png bomb 30000x30000", crafted.BombPNG(30000, 30000, 16), imagecheck.ErrTooLarge, "30000x30000"},
		{"jpeg claiming 30000x30000", crafted.JPEGClaiming(30000, 30000), imagecheck.ErrTooLarge, "jpeg of 30000x30000"},
		{"bmp claiming 60000x60000", bmp(60000, 60000), imagecheck.ErrTooLarge, "bmp of 60000x60000"},
		{"bmp with absurd width", bmp(-2147483648, 1), imagecheck.ErrCorrupt, "bmp"},
		{"png without IEND", crafted.Truncate(smallPNG(t), 0.8), imagecheck.ErrTruncated, "IEND"},
		{"png header cut", smallPNG(t)[:20], imagecheck.ErrTruncated, "cut short"},
		{"jpeg cut in its scan", crafted.Truncate(jpg, 0.7), imagecheck.ErrTruncated, "end-of-image"},
		{"jpeg cut in its header", jpg[:30], imagecheck.ErrTruncated, ""},
		{"random bytes", crafted.Random(4096, 1), imagecheck.ErrUnsupported, "JPEG, PNG, BMP or WebP expected"},
		{"gif", []byte("GIF89a\x01\x00\x01\x00\x00\x00\x00;"), imagecheck.ErrUnsupported, ""},
		{"tiff", []byte("II*\x00\x08\x00\x00\x00"), imagecheck.ErrUnsupported, ""},
		{"png of zero width", crafted.PNG(0, 10, nil), imagecheck.ErrCorrupt, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := imagecheck.Check(tc.data, imagecheck.Limits{})
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %v; want %v with %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestHugeClaimIsTiny(t *testing.T) {
	if n := len(crafted.HugeClaimPNG()); n > 80 {
		t.Fatalf("the huge-claim PNG is %d bytes; the point is that it is tiny", n)
	}
}

func TestLimits(t *testing.T) {
	data := smallPNG(t) // 64x48 = 3072 pixels
	if _, err := imagecheck.Check(data, imagecheck.Limits{MaxPixels: 3072}); err != nil {
		t.Errorf("at the pixel limit: %v", err)
	}
	if _, err := imagecheck.Check(data, imagecheck.Limits{MaxPixels: 3071}); !errors.Is(err, imagecheck.ErrTooLarge) {
		t.Errorf("over the pixel limit: %v", err)
	}
	if _, err := imagecheck.Check(data, imagecheck.Limits{MaxBytes: int64(len(data) - 1)}); !errors.Is(err, imagecheck.ErrFileTooBig) {
		t.Errorf("over the byte limit: %v", err)
	}
}

// ReadFile refuses a big file from its size, before reading: a sparse
// 1 GiB file is refused at once and without allocating.
func TestReadFileBig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.jpg")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := crafted.WriteSparse(f, f.Truncate, crafted.JPEG(64, 48, 1), 1<<30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	allocs := testing.AllocsPerRun(1, func() {
		_, _, err = imagecheck.ReadFile(p, imagecheck.Limits{})
	})
	if !errors.Is(err, imagecheck.ErrFileTooBig) || !strings.Contains(err.Error(), "1073741824 bytes (limit 67108864)") {
		t.Fatalf("1 GiB file: %v", err)
	}
	if allocs > 20 {
		t.Errorf("%v allocations refusing a big file", allocs)
	}
}

func FuzzCheck(f *testing.F) {
	f.Add(crafted.HugeClaimPNG())
	f.Add(crafted.JPEG(16, 16, 1))
	f.Add(bmp(10, 10))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := imagecheck.Check(data, imagecheck.Limits{})
		if err == nil && (info.Pixels() > imagecheck.DefaultMaxPixels || info.Width <= 0 || info.Height <= 0) {
			t.Fatalf("accepted %+v", info)
		}
	})
}

// The formats OpenCV decodes beyond the common four: accepted only with
// FormatsOpenCV, and their headers checked against the pixel limit before
// any decoder sees them.
func TestCheckOpenCVFormats(t *testing.T) {
	tiffHdr := func(w, h uint16) []byte {
		b := []byte("II*\x00\x08\x00\x00\x00\x02\x00")
		b = append(b, 0, 1, 3, 0, 1, 0, 0, 0, byte(w), byte(w>>8), 0, 0)
		b = append(b, 1, 1, 3, 0, 1, 0, 0, 0, byte(h), byte(h>>8), 0, 0)
		return append(b, 0, 0, 0, 0)
	}
	all := imagecheck.Limits{Formats: imagecheck.FormatsOpenCV}
	for _, tc := range []struct {
		name   string
		data   []byte
		w, h   int
		want   error
		common bool // also accepted by the default
	}{
		{"pgm", []byte("P5\n# comment\n640 480\n255\n\x00"), 640, 480, nil, false},
		{"ppm claiming 60000x60000", []byte("P6 60000 60000 255\n"), 0, 0, imagecheck.ErrTooLarge, false},
		{"pam", []byte("P7\nWIDTH 32\nHEIGHT 16\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n"), 32, 16, nil, false},
		{"pfm", []byte("PF\n100 50\n-1.0\n"), 100, 50, nil, false},
		{"tiff", tiffHdr(300, 200), 300, 200, nil, false},
		{"tiff claiming 65000x65000", tiffHdr(65000, 65000), 0, 0, imagecheck.ErrTooLarge, false},
		{"sun raster", append([]byte{0x59, 0xa6, 0x6a, 0x95, 0, 0, 0, 64, 0, 0, 0, 48}, make([]byte, 20)...), 64, 48, nil, false},
		{"hdr", []byte("#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 480 +X 640\n"), 640, 480, nil, false},
		{"j2k codestream", append([]byte{0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0, 0, 0, 1, 0, 0, 0, 0, 128}, make([]byte, 8)...), 256, 128, nil, false},
		{"openexr", append([]byte{0x76, 0x2f, 0x31, 0x01}, make([]byte, 40)...), 0, 0, imagecheck.ErrUnsupported, false},
		{"pnm cut", []byte("P6 640"), 0, 0, imagecheck.ErrTruncated, false},
		// Read as OpenCV reads them (agent/vision's TestCheckAgreesWithOpenCV
		// decodes each such header for real).
		{"pgm comment ended by CR", []byte("P5\n#\r8000 8000 255\n10 10\n"), 0, 0, imagecheck.ErrTooLarge, false},
		{"pgm with leading zeros", []byte("P5 00000000016000 16000\n255\n"), 0, 0, imagecheck.ErrTooLarge, false},
		{"pgm side of 11 digits", []byte("P5 12345678901 1\n255\n"), 0, 0, imagecheck.ErrCorrupt, false},
		{"tiff size tags twice", append(tiffHdr(10, 10)[:10:10], append(tiffHdr(300, 10)[10:22], tiffHdr(300, 10)[10:]...)...), 0, 0, imagecheck.ErrCorrupt, false},
		{"pam size given twice", []byte("P7\nWIDTH 10\nHEIGHT 10\nWIDTH 60000\nENDHDR\n"), 0, 0, imagecheck.ErrCorrupt, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := imagecheck.Check(tc.data, all)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if tc.want == nil && (info.Width != tc.w || info.Height != tc.h) {
				t.Errorf("size %dx%d, want %dx%d", info.Width, info.Height, tc.w, tc.h)
			}
			if _, err := imagecheck.Check(tc.data, imagecheck.Limits{}); !errors.Is(err, imagecheck.ErrUnsupported) {
				t.Errorf("default formats accepted it: %v", err)
			}
		})
	}
}
