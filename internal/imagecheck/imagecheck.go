// Package imagecheck decides, from an image file's size and header alone,
// whether it is safe to hand to a decoder: OpenCV allocates the whole image
// a header claims before it reads a single pixel, so a 69-byte PNG that
// claims 65000x65000 (or an 88 KB JPEG claiming 30000x30000) would cost
// gigabytes or abort the process. Only formats whose header is parsed here
// are accepted: by default JPEG, PNG, BMP and WebP (the daemon's paths), so
// no other decoder OpenCV links is reachable from its files; with
// FormatsOpenCV (the offline tools: cluster, eval) also PxM, PFM, TIFF,
// JPEG 2000, Sun raster and Radiance HDR, each sized from its header first.
package imagecheck

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"os"

	"golang.org/x/image/webp"
)

// Limits bound what one image may cost. A zero field takes its default.
type Limits struct {
	// MaxPixels is the largest width*height accepted (default
	// DefaultMaxPixels). Decoding costs 3 bytes per pixel and the pipeline's
	// working copies a few more.
	MaxPixels int64
	// MaxBytes is the largest file accepted (default DefaultMaxBytes); the
	// file is never read past it.
	MaxBytes int64
	// Formats selects the accepted headers (default FormatsCommon).
	Formats Formats
}

const (
	// DefaultMaxPixels admits 8K frames (33 MP) and most camera photos
	// (e.g. 8192x6100).
	DefaultMaxPixels = 50_000_000
	// DefaultMaxBytes is 64 MiB.
	DefaultMaxBytes = 64 << 20
)

// WithDefaults fills zero fields.
func (l Limits) WithDefaults() Limits {
	if l.MaxPixels <= 0 {
		l.MaxPixels = DefaultMaxPixels
	}
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	return l
}

// Sentinel errors; the wrapping error says what was found and the limit.
var (
	ErrEmpty       = errors.New("empty file")
	ErrFileTooBig  = errors.New("file too large")
	ErrTooLarge    = errors.New("image too large")
	ErrUnsupported = errors.New("unsupported image format")
	ErrCorrupt     = errors.New("corrupt image header")
	ErrTruncated   = errors.New("truncated image")
)

// Info is what a header says.
type Info struct {
	Format        string // "jpeg", "png", "bmp", "webp"
	Width, Height int
}

// Pixels is Width*Height.
func (i Info) Pixels() int64 { return int64(i.Width) * int64(i.Height) }

// ReadFile reads path if its size is within l.MaxBytes (checked before
// reading, and again while reading, for a file that grows) and its header
// passes Check.
func ReadFile(path string, l Limits) ([]byte, Info, error) {
	l = l.WithDefaults()
	f, err := os.Open(path)
	if err != nil {
		return nil, Info{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, Info{}, err
	}
	if st.Size() > l.MaxBytes {
		return nil, Info{}, fmt.Errorf("%w: %d bytes (limit %d)", ErrFileTooBig, st.Size(), l.MaxBytes)
	}
	data, err := io.ReadAll(io.LimitReader(f, l.MaxBytes+1))
	if err != nil {
		return nil, Info{}, err
	}
	if int64(len(data)) > l.MaxBytes {
		return nil, Info{}, fmt.Errorf("%w: more than %d bytes (limit %d)", ErrFileTooBig, l.MaxBytes, l.MaxBytes)
	}
	info, err := Check(data, l)
	if err != nil {
		return nil, info, err
	}
	return data, info, nil
}

var (
	pngMagic  = []byte("\x89PNG\r\n\x1a\n")
	jpegMagic = []byte{0xFF, 0xD8, 0xFF}
)

// Check parses data's header and refuses it when it is empty, too big,
// of a format other than JPEG, PNG, BMP or WebP, claims more than
// l.MaxPixels, or is visibly truncated (a PNG without IEND, a JPEG without
// an end-of-image marker after its scan data). It never decodes pixels.
func Check(data []byte, l Limits) (Info, error) {
	l = l.WithDefaults()
	if len(data) == 0 {
		return Info{}, ErrEmpty
	}
	if int64(len(data)) > l.MaxBytes {
		return Info{}, fmt.Errorf("%w: %d bytes (limit %d)", ErrFileTooBig, len(data), l.MaxBytes)
	}
	var (
		info Info
		err  error
	)
	switch {
	case bytes.HasPrefix(data, pngMagic):
		info, err = config("png", data, png.DecodeConfig)
		if err == nil && !pngComplete(data) {
			err = fmt.Errorf("%w: PNG without its IEND chunk", ErrTruncated)
		}
	case bytes.HasPrefix(data, jpegMagic):
		info, err = config("jpeg", data, jpeg.DecodeConfig)
		if err == nil && !jpegComplete(data) {
			err = fmt.Errorf("%w: JPEG without an end-of-image marker after its scan data", ErrTruncated)
		}
	case len(data) >= 2 && data[0] == 'B' && data[1] == 'M':
		info, err = bmpConfig(data)
	case len(data) >= 12 && string(data[:4]) == "RIFF" && string(data[8:12]) == "WEBP":
		info, err = config("webp", data, webp.DecodeConfig)
	default:
		f := Sniff(data[:min(len(data), 32)])
		if f == "" || l.Formats != FormatsOpenCV {
			if l.Formats == FormatsOpenCV {
				return Info{}, fmt.Errorf("%w (no image header OpenCV decodes: JPEG, PNG, BMP, WebP, PBM/PGM/PPM/PAM/PFM, TIFF, JPEG 2000, Sun raster or Radiance HDR expected)", ErrUnsupported)
			}
			return Info{}, fmt.Errorf("%w (JPEG, PNG, BMP or WebP expected)", ErrUnsupported)
		}
		info, err = otherConfig(f, data)
	}
	if err != nil {
		return info, err
	}
	if info.Width <= 0 || info.Height <= 0 {
		return info, fmt.Errorf("%w: %s of %dx%d pixels", ErrCorrupt, info.Format, info.Width, info.Height)
	}
	if p := info.Pixels(); p > l.MaxPixels {
		return info, fmt.Errorf("%w: %s of %dx%d = %d pixels (limit %d)", ErrTooLarge, info.Format, info.Width, info.Height, p, l.MaxPixels)
	}
	return info, nil
}

func config(format string, data []byte, dec func(io.Reader) (image.Config, error)) (Info, error) {
	c, err := dec(bytes.NewReader(data))
	if err != nil {
		switch {
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
			return Info{Format: format}, fmt.Errorf("%w: %s header cut short", ErrTruncated, format)
		case isUnsupported(err):
			return Info{Format: format}, fmt.Errorf("%w: %s variant: %v", ErrUnsupported, format, err)
		}
		return Info{Format: format}, fmt.Errorf("%w: %s: %v", ErrCorrupt, format, err)
	}
	return Info{Format: format, Width: c.Width, Height: c.Height}, nil
}

func isUnsupported(err error) bool {
	var j jpeg.UnsupportedError
	var p png.UnsupportedError
	return errors.As(err, &j) || errors.As(err, &p)
}

// pngComplete: the IEND chunk (length 0, "IEND") is present. Trailing bytes
// after it are tolerated, as decoders do.
func pngComplete(data []byte) bool {
	return bytes.Contains(data[len(pngMagic):], []byte("\x00\x00\x00\x00IEND"))
}

// jpegComplete walks the marker segments up to the first start-of-scan and
// looks for an end-of-image marker after it. Inside entropy-coded data 0xFF
// is always followed by 0x00 or a restart marker, so FFD9 there is the real
// end; an EXIF thumbnail's own FFD9 lies in a segment before the scan and
// does not count.
func jpegComplete(data []byte) bool {
	i := 2
	for i+4 <= len(data) {
		if data[i] != 0xFF {
			return false
		}
		m := data[i+1]
		switch {
		case m == 0xFF: // fill byte
			i++
			continue
		case m == 0xD8 || m == 0x01 || (m >= 0xD0 && m <= 0xD7): // no length
			i += 2
			continue
		}
		n := int(binary.BigEndian.Uint16(data[i+2:]))
		if m == 0xDA {
			return bytes.LastIndex(data, []byte{0xFF, 0xD9}) > i+2+n
		}
		i += 2 + n
	}
	return false
}

// bmpConfig reads the size from a BMP's DIB header: BITMAPCOREHEADER
// (12 bytes, 16-bit sizes) or the later ones (40+ bytes, signed 32-bit sizes,
// a negative height meaning top-down rows).
func bmpConfig(data []byte) (Info, error) {
	info := Info{Format: "bmp"}
	if len(data) < 26 {
		return info, fmt.Errorf("%w: bmp header cut short", ErrTruncated)
	}
	switch hs := binary.LittleEndian.Uint32(data[14:]); {
	case hs == 12:
		info.Width = int(binary.LittleEndian.Uint16(data[18:]))
		info.Height = int(binary.LittleEndian.Uint16(data[20:]))
	case hs >= 40 && hs <= 256:
		w := int64(int32(binary.LittleEndian.Uint32(data[18:])))
		h := int64(int32(binary.LittleEndian.Uint32(data[22:])))
		if h < 0 {
			h = -h
		}
		if w > 1<<30 || h > 1<<30 {
			return info, fmt.Errorf("%w: bmp of %dx%d pixels", ErrCorrupt, w, h)
		}
		info.Width, info.Height = int(w), int(h)
	default:
		return info, fmt.Errorf("%w: bmp header size %d", ErrCorrupt, hs)
	}
	return info, nil
}
