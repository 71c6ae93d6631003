package vision

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/imagecheck"
	"gocv.io/x/gocv"
)

// The header check is only a guard if it reads the size the decoder will
// allocate. Each file below hides a 320x240 image behind a header that a
// careless reader takes for 10x10 (an ihdr decoy before the JP2 header box,
// TIFF size tags given twice, a PGM comment ended by CR, leading zeros, PAM
// size lines after a commented ENDHDR or split by CR). For every one, and
// for honest files of each format OpenCV writes, either Check refuses the
// file or OpenCV decodes exactly the size Check reported.
func TestCheckAgreesWithOpenCV(t *testing.T) {
	checkMats(t)
	const w, h = 320, 240
	gray := gocv.NewMatWithSize(h, w, gocv.MatTypeCV8UC1)
	defer gray.Close()
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			gray.SetUCharAt(y, x, uint8(x+y))
		}
	}
	color := gocv.NewMat()
	defer color.Close()
	gocv.CvtColor(gray, &color, gocv.ColorGrayToBGR)
	enc := func(ext string, m gocv.Mat) []byte {
		buf, err := gocv.IMEncode(gocv.FileExt(ext), m)
		if err != nil {
			t.Fatalf("encode %s: %v", ext, err)
		}
		defer buf.Close()
		return bytes.Clone(buf.GetBytes())
	}
	pixels := make([]byte, w*h)
	for i := range pixels {
		pixels[i] = byte(i)
	}
	be32 := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

	jp2 := enc(".jp2", color)
	at := bytes.Index(jp2, []byte("jp2h")) - 4
	if at < 0 {
		t.Fatal("no jp2h box in OpenCV's JP2")
	}
	decoy := append(append([]byte("ihdr"), be32(10)...), be32(10)...)
	jp2Decoy := bytes.Join([][]byte{jp2[:at], be32(uint32(8 + len(decoy))), []byte("xml "), decoy, jp2[at:]}, nil)
	jp2Lying := bytes.Clone(jp2)
	ih := bytes.Index(jp2Lying, []byte("ihdr"))
	copy(jp2Lying[ih+4:], append(be32(10), be32(10)...))

	cases := map[string][]byte{
		"jp2":                         jp2,
		"tiff":                        enc(".tiff", color),
		"pgm":                         enc(".pgm", gray),
		"ppm":                         enc(".ppm", color),
		"pbm":                         enc(".pbm", gray),
		"sun raster":                  enc(".ras", color),
		"jp2 with an ihdr decoy":      jp2Decoy,
		"jp2 whose ihdr says 10x10":   jp2Lying,
		"tiff with size tags twice":   dupTagTIFF(w, h, pixels),
		"pgm comment ended by CR":     append([]byte(fmt.Sprintf("P5\n#\r%d %d 255\n10 10\n", w, h)), pixels...),
		"pgm with leading zeros":      append([]byte(fmt.Sprintf("P5 000000000%d %d\n255\n", w, h)), pixels...),
		"pam after a commented end":   append([]byte(fmt.Sprintf("P7\nWIDTH 10\nHEIGHT 10\n#ENDHDR\nWIDTH %d\nHEIGHT %d\nDEPTH 1\nMAXVAL 255\nTUPLTYPE GRAYSCALE\nENDHDR\n", w, h)), pixels...),
		"pam size lines split by CR":  append([]byte(fmt.Sprintf("P7\nWIDTH 10\nHEIGHT 10\nWIDTH %d\rHEIGHT %d\nDEPTH 1\nMAXVAL 255\nENDHDR\n", w, h)), pixels...),
		"pam with a trailing comment": append([]byte(fmt.Sprintf("P7\nWIDTH %d # x\nHEIGHT %d\nDEPTH 1\nMAXVAL 255\nENDHDR\n", w, h)), pixels...),
	}
	honest := []string{"jp2", "tiff", "pgm", "ppm", "pbm", "sun raster", "jp2 with an ihdr decoy", "pgm comment ended by CR", "pgm with leading zeros"}
	all := imagecheck.Limits{Formats: imagecheck.FormatsOpenCV}
	for name, data := range cases {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			info, err := imagecheck.Check(data, all)
			m, derr := decodeUnchecked(data)
			if derr == nil {
				defer m.Close()
			}
			switch {
			case err != nil:
				for _, n := range honest {
					if n == name {
						t.Fatalf("refused a file whose header says one size: %v", err)
					}
				}
				t.Logf("refused: %v", err)
			case derr != nil:
				t.Fatalf("check passed it as %dx%d, OpenCV could not decode it: %v", info.Width, info.Height, derr)
			case m.Cols() != info.Width || m.Rows() != info.Height:
				t.Fatalf("check read %dx%d, OpenCV decoded %dx%d", info.Width, info.Height, m.Cols(), m.Rows())
			case m.Cols() != w || m.Rows() != h:
				t.Fatalf("decoded %dx%d, the file holds %dx%d", m.Cols(), m.Rows(), w, h)
			}
		})
	}
}

// dupTagTIFF is an uncompressed 8-bit grey TIFF whose ImageWidth and
// ImageLength are each given twice: the real size, then 10.
func dupTagTIFF(w, h int, pixels []byte) []byte {
	type ent struct {
		tag, typ uint16
		val      uint32
	}
	const short, long = 3, 4
	es := []ent{{256, long, uint32(w)}, {256, long, 10}, {257, long, uint32(h)}, {257, long, 10},
		{258, short, 8}, {259, short, 1}, {262, short, 1}, {273, long, 0}, {277, short, 1},
		{278, long, uint32(h)}, {279, long, uint32(len(pixels))}}
	dataAt := 8 + 2 + 12*len(es) + 4
	le := binary.LittleEndian
	b := append([]byte("II*\x00"), le.AppendUint32(nil, 8)...)
	b = le.AppendUint16(b, uint16(len(es)))
	for _, e := range es {
		if e.tag == 273 {
			e.val = uint32(dataAt)
		}
		b = le.AppendUint16(b, e.tag)
		b = le.AppendUint16(b, e.typ)
		b = le.AppendUint32(b, 1)
		if e.typ == short {
			b = le.AppendUint16(b, uint16(e.val))
			b = le.AppendUint16(b, 0)
		} else {
			b = le.AppendUint32(b, e.val)
		}
	}
	b = le.AppendUint32(b, 0)
	return append(b, pixels...)
}
