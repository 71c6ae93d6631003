package imagecheck

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// Formats selects which headers Check accepts.
type Formats uint8

const (
	// FormatsCommon (the default) accepts JPEG, PNG, BMP and WebP only: the
	// daemon's camera and replay paths reach no other OpenCV decoder.
	FormatsCommon Formats = iota
	// FormatsOpenCV also accepts what the Debian-linked OpenCV 4.6 decodes
	// from memory by default: PBM/PGM/PPM/PAM and PFM (PxM), TIFF and
	// BigTIFF, JPEG 2000 (JP2 and codestream), Sun raster and Radiance HDR.
	// Each header is parsed here for its size first, so the pixel and byte
	// limits hold as for the common formats. OpenEXR is refused: OpenCV
	// leaves its decoder off unless OPENCV_IO_ENABLE_OPENEXR is set.
	FormatsOpenCV
)

// Sniff names the image format data starts with ("" when none is known).
// It needs at most the first 32 bytes.
func Sniff(head []byte) string {
	switch {
	case bytes.HasPrefix(head, pngMagic):
		return "png"
	case bytes.HasPrefix(head, jpegMagic):
		return "jpeg"
	case len(head) >= 2 && head[0] == 'B' && head[1] == 'M':
		return "bmp"
	case len(head) >= 12 && string(head[:4]) == "RIFF" && string(head[8:12]) == "WEBP":
		return "webp"
	case len(head) >= 3 && head[0] == 'P' && head[1] >= '1' && head[1] <= '7' && isSpace(head[2]):
		return "pnm"
	case len(head) >= 3 && head[0] == 'P' && (head[1] == 'F' || head[1] == 'f') && isSpace(head[2]):
		return "pfm"
	case bytes.HasPrefix(head, []byte("II*\x00")) || bytes.HasPrefix(head, []byte("MM\x00*")) ||
		bytes.HasPrefix(head, []byte("II+\x00")) || bytes.HasPrefix(head, []byte("MM\x00+")):
		return "tiff"
	case bytes.HasPrefix(head, jp2Magic) || bytes.HasPrefix(head, j2kMagic):
		return "jpeg2000"
	case bytes.HasPrefix(head, []byte{0x59, 0xa6, 0x6a, 0x95}):
		return "sunraster"
	case bytes.HasPrefix(head, []byte("#?RADIANCE")) || bytes.HasPrefix(head, []byte("#?RGBE")):
		return "hdr"
	case bytes.HasPrefix(head, []byte{0x76, 0x2f, 0x31, 0x01}):
		return "openexr"
	}
	return ""
}

var (
	jp2Magic = []byte("\x00\x00\x00\x0cjP  \r\n\x87\n")
	j2kMagic = []byte{0xFF, 0x4F, 0xFF, 0x51}
)

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// otherConfig reads the size of the formats FormatsOpenCV adds.
func otherConfig(format string, data []byte) (Info, error) {
	switch format {
	case "pnm":
		return pnmConfig(data)
	case "pfm":
		w, h, err := pnmInts(data[2:], 2)
		return Info{Format: "pfm", Width: w, Height: h}, err
	case "tiff":
		return tiffConfig(data)
	case "jpeg2000":
		return jp2Config(data)
	case "sunraster":
		if len(data) < 32 {
			return Info{Format: format}, fmt.Errorf("%w: sun raster header cut short", ErrTruncated)
		}
		return Info{Format: format, Width: int(int32(binary.BigEndian.Uint32(data[4:]))), Height: int(int32(binary.BigEndian.Uint32(data[8:])))}, nil
	case "hdr":
		return hdrConfig(data)
	case "openexr":
		return Info{Format: format}, fmt.Errorf("%w: OpenEXR (OpenCV's decoder is off unless OPENCV_IO_ENABLE_OPENEXR is set)", ErrUnsupported)
	}
	return Info{}, fmt.Errorf("%w: %s", ErrUnsupported, format)
}

// pnmConfig: "P1".."P6" then width, height (and maxval) separated by
// white space and # comments; "P7" (PAM) has WIDTH and HEIGHT lines up to
// ENDHDR (pamConfig).
func pnmConfig(data []byte) (Info, error) {
	info := Info{Format: "pnm"}
	if data[1] == '7' {
		return pamConfig(data)
	}
	w, h, err := pnmInts(data[2:], 2)
	info.Width, info.Height = w, h
	return info, err
}

// pamConfig reads a PAM header's WIDTH and HEIGHT lines up to the ENDHDR
// line. OpenCV ends a header line at CR as well as LF and takes a field's
// value up to the line's end; a header whose size lines could be read two
// ways (a size line given twice, or with other than one number after its
// name) is refused rather than guessed.
func pamConfig(data []byte) (Info, error) {
	info := Info{Format: "pnm"}
	head := strings.ReplaceAll(string(data[3:min(len(data), 64<<10)]), "\r", "\n")
	seen := map[string]bool{}
	for _, line := range strings.Split(head, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "ENDHDR":
			return info, nil
		case "WIDTH", "HEIGHT":
		default:
			continue
		}
		if seen[f[0]] {
			return info, fmt.Errorf("%w: PAM %s given twice", ErrCorrupt, f[0])
		}
		seen[f[0]] = true
		if len(f) != 2 {
			return info, fmt.Errorf("%w: PAM line %q", ErrCorrupt, line)
		}
		v, err := decimal(f[1])
		if err != nil {
			return info, fmt.Errorf("%w: PAM %s %q", ErrCorrupt, f[0], f[1])
		}
		if f[0] == "WIDTH" {
			info.Width = v
		} else {
			info.Height = v
		}
	}
	return info, fmt.Errorf("%w: PAM header without ENDHDR", ErrTruncated)
}

// decimal parses a run of ASCII digits, leading zeros allowed (OpenCV reads
// them), refusing values over 2^30.
func decimal(d string) (int, error) {
	t := strings.TrimLeft(d, "0")
	if d == "" || len(t) > 10 || strings.Trim(d, "0123456789") != "" {
		return 0, fmt.Errorf("not a decimal size: %q", d)
	}
	if t == "" {
		return 0, nil
	}
	v, err := strconv.Atoi(t)
	if err != nil || v > 1<<30 {
		return 0, fmt.Errorf("size %q out of range", d)
	}
	return v, nil
}

// pnmInts reads the first n (1 or 2) decimal numbers of a PNM-style header.
// A # comment runs to the next LF or CR, as OpenCV's reader ends it.
func pnmInts(b []byte, n int) (int, int, error) {
	var v []int
	i := 0
	for len(v) < n {
		for i < len(b) && (isSpace(b[i]) || b[i] == '#') {
			if b[i] == '#' {
				for i < len(b) && b[i] != '\n' && b[i] != '\r' {
					i++
				}
				continue
			}
			i++
		}
		j := i
		for j < len(b) && b[j] >= '0' && b[j] <= '9' && j-i < 64 {
			j++
		}
		if j == i || j == len(b) {
			return 0, 0, fmt.Errorf("%w: netpbm header", ErrTruncated)
		}
		x, err := decimal(string(b[i:j]))
		if err != nil {
			return 0, 0, fmt.Errorf("%w: netpbm header: %v", ErrCorrupt, err)
		}
		v = append(v, x)
		i = j
	}
	return v[0], v[1], nil
}

// tiffConfig reads ImageWidth (256) and ImageLength (257) of the first
// image file directory (what imdecode decodes), classic TIFF or BigTIFF; a
// size tag given twice is refused.
func tiffConfig(data []byte) (Info, error) {
	info := Info{Format: "tiff"}
	var bo binary.ByteOrder = binary.LittleEndian
	if data[0] == 'M' {
		bo = binary.BigEndian
	}
	cut := fmt.Errorf("%w: TIFF directory cut short", ErrTruncated)
	big := bo.Uint16(data[2:]) == 43
	var off uint64
	if big {
		if len(data) < 16 {
			return info, cut
		}
		off = bo.Uint64(data[8:])
	} else {
		if len(data) < 8 {
			return info, cut
		}
		off = uint64(bo.Uint32(data[4:]))
	}
	if off >= uint64(len(data)) {
		return info, cut
	}
	var n, size uint64 = 0, 12
	p := off
	if big {
		if p+8 > uint64(len(data)) {
			return info, cut
		}
		n, size, p = bo.Uint64(data[p:]), 20, p+8
	} else {
		if p+2 > uint64(len(data)) {
			return info, cut
		}
		n, p = uint64(bo.Uint16(data[p:])), p+2
	}
	if n > 1<<16 || p+n*size > uint64(len(data)) {
		return info, cut
	}
	var seen [2]bool
	for k := range n {
		e := data[p+k*size:]
		tag, typ := bo.Uint16(e), bo.Uint16(e[2:])
		if tag != 256 && tag != 257 {
			continue
		}
		// libtiff keeps the first of a tag given twice; which one another
		// reader keeps is not ours to guess.
		if seen[tag-256] {
			return info, fmt.Errorf("%w: TIFF size tag %d given twice", ErrCorrupt, tag)
		}
		seen[tag-256] = true
		vo := 8
		if big {
			vo = 12
		}
		var v uint64
		switch typ {
		case 3: // SHORT
			v = uint64(bo.Uint16(e[vo:]))
		case 4: // LONG
			v = uint64(bo.Uint32(e[vo:]))
		case 16: // LONG8
			v = bo.Uint64(e[vo:])
		default:
			return info, fmt.Errorf("%w: TIFF size tag of type %d", ErrCorrupt, typ)
		}
		if v > 1<<30 {
			return info, fmt.Errorf("%w: TIFF side of %d pixels", ErrCorrupt, v)
		}
		if tag == 256 {
			info.Width = int(v)
		} else {
			info.Height = int(v)
		}
	}
	return info, nil
}

// jp2Config reads the size from a codestream's SIZ marker segment: a bare
// codestream's, or in a JP2 file the one that opens the contiguous
// codestream box (jp2c), found by walking the top-level boxes. That is what
// the decoder (OpenJPEG) sizes the image by; the ihdr box of the header box
// (jp2h) must agree with it, and a file where they differ is refused.
func jp2Config(data []byte) (Info, error) {
	info := Info{Format: "jpeg2000"}
	if bytes.HasPrefix(data, j2kMagic) {
		return sizConfig(data, info)
	}
	var ihdr []byte
	for p := 0; p < len(data); {
		if p+8 > len(data) {
			return info, fmt.Errorf("%w: JP2 box header cut short", ErrTruncated)
		}
		l, typ, hl := uint64(binary.BigEndian.Uint32(data[p:])), string(data[p+4:p+8]), uint64(8)
		switch l {
		case 0: // to the end of the file
			l = uint64(len(data) - p)
		case 1:
			if p+16 > len(data) {
				return info, fmt.Errorf("%w: JP2 box header cut short", ErrTruncated)
			}
			l, hl = binary.BigEndian.Uint64(data[p+8:]), 16
		}
		if l < hl {
			return info, fmt.Errorf("%w: JP2 box %q of %d bytes", ErrCorrupt, typ, l)
		}
		end := uint64(len(data) - p)
		if typ == "jp2c" {
			// A codestream cut short still shows its SIZ; decoding fails later.
			info, err := sizConfig(data[p+int(hl):p+int(min(l, end))], info)
			if err == nil && ihdr != nil {
				h, w := binary.BigEndian.Uint32(ihdr), binary.BigEndian.Uint32(ihdr[4:])
				if uint64(w) != uint64(info.Width) || uint64(h) != uint64(info.Height) {
					return Info{Format: info.Format}, fmt.Errorf("%w: JP2 header box says %dx%d, its codestream %dx%d", ErrCorrupt, w, h, info.Width, info.Height)
				}
			}
			return info, err
		}
		if l > end {
			return info, fmt.Errorf("%w: JP2 box %q cut short", ErrTruncated, typ)
		}
		if typ == "jp2h" && ihdr == nil {
			// Its first box is the image header box: length 22, "ihdr", height, width.
			b := data[p+int(hl) : p+int(l)]
			if len(b) < 16 || string(b[4:8]) != "ihdr" {
				return info, fmt.Errorf("%w: JP2 header box without its ihdr box first", ErrCorrupt)
			}
			ihdr = b[8:16]
		}
		p += int(l)
	}
	return info, fmt.Errorf("%w: JP2 without a codestream box", ErrTruncated)
}

// sizConfig reads a codestream's SIZ segment: SOC, SIZ marker, Lsiz, Rsiz,
// then Xsiz, Ysiz, XOsiz, YOsiz.
func sizConfig(cs []byte, info Info) (Info, error) {
	if len(cs) < 24 {
		return info, fmt.Errorf("%w: JPEG 2000 SIZ cut short", ErrTruncated)
	}
	if !bytes.HasPrefix(cs, j2kMagic) {
		return info, fmt.Errorf("%w: JPEG 2000 codestream without SOC and SIZ first", ErrCorrupt)
	}
	s := cs[8:]
	x, y := binary.BigEndian.Uint32(s), binary.BigEndian.Uint32(s[4:])
	xo, yo := binary.BigEndian.Uint32(s[8:]), binary.BigEndian.Uint32(s[12:])
	if xo > x || yo > y {
		return info, fmt.Errorf("%w: JPEG 2000 origin outside the image", ErrCorrupt)
	}
	if x-xo > 1<<30 || y-yo > 1<<30 {
		return info, fmt.Errorf("%w: JPEG 2000 of %dx%d pixels", ErrCorrupt, x-xo, y-yo)
	}
	info.Width, info.Height = int(x-xo), int(y-yo)
	return info, nil
}

// hdrConfig reads a Radiance header: lines up to an empty one, then the
// resolution line ("-Y H +X W", or another axis order).
func hdrConfig(data []byte) (Info, error) {
	info := Info{Format: "hdr"}
	head := data[:min(len(data), 8192)]
	i := bytes.Index(head, []byte("\n\n"))
	if i < 0 {
		return info, fmt.Errorf("%w: Radiance header without its end", ErrTruncated)
	}
	rest := head[i+2:]
	j := bytes.IndexByte(rest, '\n')
	if j < 0 {
		return info, fmt.Errorf("%w: Radiance resolution line cut short", ErrTruncated)
	}
	f := strings.Fields(string(rest[:j]))
	if len(f) != 4 || len(f[0]) != 2 || len(f[2]) != 2 {
		return info, fmt.Errorf("%w: Radiance resolution line %q", ErrCorrupt, rest[:j])
	}
	a, err1 := strconv.Atoi(f[1])
	b, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil || a > 1<<30 || b > 1<<30 {
		return info, fmt.Errorf("%w: Radiance resolution line %q", ErrCorrupt, rest[:j])
	}
	if f[0][1] == 'Y' {
		info.Height, info.Width = a, b
	} else {
		info.Width, info.Height = a, b
	}
	return info, nil
}
