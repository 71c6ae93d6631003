// Package crafted makes hostile image files for tests: headers that claim
// huge sizes, decompression bombs, truncated and random files. Nothing here
// is used outside tests.
package crafted

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// PNG builds an 8-bit RGB PNG of w x h whose IDAT holds idat (not checked
// against the size), followed by IEND.
func PNG(w, h int, idat []byte) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], uint32(w))
	binary.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = 8, 2 // bit depth 8, colour type RGB
	chunk(&b, "IHDR", ihdr)
	chunk(&b, "IDAT", idat)
	chunk(&b, "IEND", nil)
	return b.Bytes()
}

func chunk(b *bytes.Buffer, typ string, data []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(data)))
	b.Write(n[:])
	c := crc32.NewIEEE()
	c.Write([]byte(typ))
	c.Write(data)
	b.WriteString(typ)
	b.Write(data)
	binary.BigEndian.PutUint32(n[:], c.Sum32())
	b.Write(n[:])
}

// HugeClaimPNG is the 69-byte PNG that claims 65000x65000 pixels (4.2
// gigapixels): OpenCV throws from its own size check, which gocv v0.31 lets
// abort the process.
func HugeClaimPNG() []byte {
	return PNG(65000, 65000, zeros(1, 0)) // 12 bytes of zlib: one empty row start
}

// BombPNG is a decompression bomb: a w x h PNG whose IDAT inflates to
// rows rows of zeros (the full image when rows >= h). 30000x30000 with all
// its rows is the 875 KB file that decodes to 2.7 GB; tests that
// only need the header pass fewer rows to stay fast.
func BombPNG(w, h, rows int) []byte {
	return PNG(w, h, zeros(min(rows, h), 1+3*w))
}

// zeros is the zlib stream of rows rows of rowLen zero bytes (filter byte
// included).
func zeros(rows, rowLen int) []byte {
	var b bytes.Buffer
	z, _ := zlib.NewWriterLevel(&b, zlib.BestCompression)
	row := make([]byte, max(rowLen, 1))
	if rows == 0 || rowLen == 0 {
		z.Write(row[:1])
	}
	for range rows {
		z.Write(row[:rowLen])
	}
	z.Close()
	return b.Bytes()
}

// JPEG encodes a w x h image of smooth noise (deterministic per seed).
func JPEG(w, h int, seed uint64) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	r := rand.New(rand.NewPCG(seed, 1))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(x + r.IntN(16)), uint8(y + r.IntN(16)), uint8(r.IntN(256)), 255})
		}
	}
	var b bytes.Buffer
	jpeg.Encode(&b, img, &jpeg.Options{Quality: 90})
	return b.Bytes()
}

// JPEGClaiming is a small real JPEG whose frame header is rewritten to
// claim w x h: libjpeg allocates the claimed size and fills what the scan
// lacks (the 88 KB JPEG decoded to 2.7 GB).
func JPEGClaiming(w, h int) []byte {
	b := JPEG(256, 256, 7)
	for i := 2; i+9 < len(b); {
		if b[i] != 0xFF {
			break
		}
		m := b[i+1]
		n := int(binary.BigEndian.Uint16(b[i+2:]))
		if m == 0xC0 || m == 0xC2 { // SOF0/SOF2: FF Cx len(2) precision(1) height(2) width(2)
			binary.BigEndian.PutUint16(b[i+5:], uint16(h))
			binary.BigEndian.PutUint16(b[i+7:], uint16(w))
			return b
		}
		i += 2 + n
	}
	panic("crafted: no frame header in encoded JPEG")
}

// Random is n bytes of noise.
func Random(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 2))
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

// Truncate keeps the first fraction of b.
func Truncate(b []byte, fraction float64) []byte {
	return b[:int(float64(len(b))*fraction)]
}

// WriteSparse makes a file of size bytes starting with head, without
// writing (or using disk for) the rest.
func WriteSparse(w io.WriterAt, truncate func(int64) error, head []byte, size int64) error {
	if _, err := w.WriteAt(head, 0); err != nil {
		return err
	}
	return truncate(size)
}

// WriteHostileSet writes the files of issue 13 into dir (a 69-byte PNG
// claiming 65000x65000, PNG and JPEG decompression bombs of 30000x30000,
// truncated JPEG and PNG, a zero-byte file, random bytes, a random file
// whose name holds a tab and a newline, and a sparse 1 GiB file) and returns
// each name with the start of the reason it must be refused with under the
// default limits.
func WriteHostileSet(dir string) (map[string]string, error) {
	jpg := JPEG(64, 48, 1)
	files := map[string][]byte{
		"huge-claim.png":  HugeClaimPNG(),
		"bomb.png":        BombPNG(30000, 30000, 64),
		"bomb.jpg":        JPEGClaiming(30000, 30000),
		"truncated.jpg":   Truncate(jpg, 0.6),
		"truncated.png":   Truncate(BombPNG(64, 64, 64), 0.7),
		"zero.jpg":        nil,
		"random.jpg":      Random(8192, 5),
		"tab\tnew\nl.png": Random(100, 6),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	f, err := os.Create(filepath.Join(dir, "big.jpg"))
	if err != nil {
		return nil, err
	}
	if err := WriteSparse(f, f.Truncate, jpg, 1<<30); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return map[string]string{
		"huge-claim.png":  "image too large: png of 65000x65000 = 4225000000 pixels",
		"bomb.png":        "image too large: png of 30000x30000 = 900000000 pixels",
		"bomb.jpg":        "image too large: jpeg of 30000x30000",
		"truncated.jpg":   "truncated image: JPEG without an end-of-image marker",
		"truncated.png":   "truncated image: PNG without its IEND chunk",
		"zero.jpg":        "empty file",
		"random.jpg":      "unsupported image format",
		"tab\tnew\nl.png": "unsupported image format",
		"big.jpg":         "file too large: 1073741824 bytes",
	}, nil
}
