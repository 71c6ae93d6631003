package batch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/periocular/atm-agent/internal/imagecheck"
)

// Extensions name image files (compared case-insensitively): a file with
// one of them is read even when its header is not an image's, so that a
// damaged photo is listed as unreadable with the reason, not skipped. Any
// other file is read when its header is an image format's (imagecheck.Sniff),
// whatever its name: extension-less files included.
var Extensions = []string{".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".pbm", ".pgm", ".ppm", ".pnm",
	".pam", ".pfm", ".tif", ".tiff", ".jp2", ".j2k", ".ras", ".sr", ".hdr", ".pic", ".exr"}

func isImage(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	for _, e := range Extensions {
		if ext == e {
			return true
		}
	}
	return false
}

// Problem is a file the job did not use, with the reason.
type Problem struct {
	Path string `json:"path"`
	// PathB64 is Path's bytes when they are not valid UTF-8 (standard
	// base64; set when the report is written, see rawName).
	PathB64 string `json:"path_b64,omitempty"`
	Reason  string `json:"reason"`
}

// Listing is what a walk of the input found, every list in path order.
type Listing struct {
	Images     []string  // slash-separated paths relative to the root
	Videos     []string  // video files (by header or extension), same form
	Skipped    []Problem // not an image by name, or not a regular file
	Unreadable []Problem // could not be listed or opened
}

// Walk lists dir recursively in lexical order. Symbolic links to files are
// followed; links to directories are not (no cycles). A file reached
// twice (a symbolic or hard link to a file listed already) is read once:
// the first path that is not a symbolic link is kept (the first link when
// every path is one), the others are listed as skipped with its name, so
// one photo does not count as two images of its person. Paths under any of
// exclude (absolute, cleaned) are left out, so that an output folder inside
// the input is never read back, and so are folders below the root that an
// earlier run wrote (they hold its marker file), listed as skipped. Only a
// root that cannot be read is an error.
func Walk(dir string, exclude ...string) (*Listing, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, &fs.PathError{Op: "walk", Path: dir, Err: errors.New("not a directory")}
	}
	l := &Listing{}
	files := &seenFiles{}
	rel := func(p string) string {
		r, err := filepath.Rel(dir, p)
		if err != nil {
			return filepath.ToSlash(p)
		}
		return filepath.ToSlash(r)
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir {
				return err
			}
			l.Unreadable = append(l.Unreadable, Problem{Path: rel(p), Reason: reason(err)})
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if p != dir && excluded(p, exclude) {
				return fs.SkipDir
			}
			if p != dir && isOutput(p) {
				// An earlier run's output (copies and face thumbnails of
				// the photos) would be clustered again with its sources.
				l.Skipped = append(l.Skipped, Problem{Path: rel(p), Reason: "output folder of an earlier cluster run (" + markerName + "; not read)"})
				return fs.SkipDir
			}
			return nil
		}
		r := rel(p)
		mode := d.Type()
		link := mode&fs.ModeSymlink != 0
		if link {
			st, err := os.Stat(p)
			switch {
			case err != nil:
				l.Unreadable = append(l.Unreadable, Problem{Path: r, Reason: reason(err)})
				return nil
			case st.IsDir():
				l.Skipped = append(l.Skipped, Problem{Path: r, Reason: "symbolic link to a directory (not followed)"})
				return nil
			}
			mode = st.Mode().Type()
		}
		switch {
		case !mode.IsRegular():
			l.Skipped = append(l.Skipped, Problem{Path: r, Reason: "not a regular file"})
		default:
			head, err := readHead(p)
			switch {
			case err != nil:
				l.Unreadable = append(l.Unreadable, Problem{Path: r, Reason: reason(err)})
			case imagecheck.Sniff(head) != "":
				files.add(p, r, link, &l.Images)
			case SniffUnsupported(head) != "":
				l.Unreadable = append(l.Unreadable, Problem{Path: r, Reason: unsupportedReason(SniffUnsupported(head))})
			case SniffVideo(head) != "":
				files.add(p, r, link, &l.Videos)
			case isImage(p):
				files.add(p, r, link, &l.Images)
			case isVideoName(p):
				files.add(p, r, link, &l.Videos)
			case unsupportedName(p) != "":
				l.Unreadable = append(l.Unreadable, Problem{Path: r, Reason: unsupportedReason(unsupportedName(p))})
			default:
				l.Skipped = append(l.Skipped, Problem{Path: r, Reason: "not an image or a video (no image header, no video header)"})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if dup := files.dedup(l); len(dup) > 0 {
		l.Skipped = append(l.Skipped, dup...)
		slices.SortStableFunc(l.Skipped, func(a, b Problem) int { return strings.Compare(a.Path, b.Path) })
	}
	return l, nil
}

// seenFiles groups the image and video paths of one walk by the file they
// reach (os.SameFile), so that links to one file are read once.
type seenFiles struct {
	byStamp map[fileStamp][]int // candidates: groups with that size and time
	groups  [][]seenPath
}

type fileStamp struct {
	size int64
	mod  int64
}

type seenPath struct {
	rel  string
	link bool
	fi   os.FileInfo
}

// add lists rel and remembers which file it reaches.
func (s *seenFiles) add(p, rel string, link bool, list *[]string) {
	*list = append(*list, rel)
	fi, err := os.Stat(p)
	if err != nil { // reading it reports the error
		return
	}
	if s.byStamp == nil {
		s.byStamp = map[fileStamp][]int{}
	}
	sp := seenPath{rel: rel, link: link, fi: fi}
	k := fileStamp{fi.Size(), fi.ModTime().UnixNano()}
	for _, i := range s.byStamp[k] {
		if os.SameFile(s.groups[i][0].fi, fi) {
			s.groups[i] = append(s.groups[i], sp)
			return
		}
	}
	s.byStamp[k] = append(s.byStamp[k], len(s.groups))
	s.groups = append(s.groups, []seenPath{sp})
}

// dedup removes from the listing every path but one of each file reached
// more than once, and returns them as skipped.
func (s *seenFiles) dedup(l *Listing) []Problem {
	var skipped []Problem
	drop := map[string]bool{}
	for _, g := range s.groups {
		if len(g) < 2 {
			continue
		}
		keep := 0
		for i, sp := range g {
			if !sp.link {
				keep = i
				break
			}
		}
		for i, sp := range g {
			if i != keep {
				drop[sp.rel] = true
				skipped = append(skipped, Problem{Path: sp.rel, Reason: "the same file as " + g[keep].rel + " (a link to it; read once)"})
			}
		}
	}
	if len(drop) > 0 {
		for _, list := range []*[]string{&l.Images, &l.Videos} {
			*list = slices.DeleteFunc(*list, func(r string) bool { return drop[r] })
		}
	}
	return skipped
}

// Photo formats OpenCV 4.6 cannot decode but a folder of photos often
// holds: phones write HEIC (HEIF) and AVIF, the web GIF and JPEG XL. They
// are listed as unreadable with what they are, not skipped as "no image
// header" nor, for HEIF and AVIF (ISO BMFF files, "ftyp" at offset 4 like
// an MP4), opened as a video.
const (
	formatHEIF = "HEIF/HEIC"
	formatAVIF = "AVIF"
	formatGIF  = "GIF"
	formatJXL  = "JPEG XL"
)

// SniffUnsupported names the photo format head starts with when OpenCV
// cannot decode it ("" otherwise): HEIF/HEIC and AVIF (by the ftyp box's
// major or compatible brands), GIF, JPEG XL.
func SniffUnsupported(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte("GIF87a")) || bytes.HasPrefix(head, []byte("GIF89a")):
		return formatGIF
	case bytes.HasPrefix(head, []byte{0xFF, 0x0A}) || bytes.HasPrefix(head, []byte("\x00\x00\x00\x0cJXL \r\n\x87\n")):
		return formatJXL
	case len(head) >= 16 && string(head[4:8]) == "ftyp":
		// The box: size, "ftyp", major brand, minor version, compatible
		// brands to its end (bounded by what was read).
		n := int(binary.BigEndian.Uint32(head[:4]))
		if n < 16 || n > len(head) {
			n = len(head)
		}
		brands := [][]byte{head[8:12]}
		for o := 16; o+4 <= n; o += 4 {
			brands = append(brands, head[o:o+4])
		}
		// A video's brands come first: an MP4 that also lists an image
		// brand is still a video.
		if v := string(head[8:12]); v != "mif1" && v != "msf1" && !heifBrand(v) && !avifBrand(v) {
			return ""
		}
		for _, b := range brands {
			switch {
			case avifBrand(string(b)):
				return formatAVIF
			case heifBrand(string(b)):
				return formatHEIF
			}
		}
		for _, b := range brands {
			if string(b) == "mif1" || string(b) == "msf1" {
				return formatHEIF // an image file format without a named codec
			}
		}
	}
	return ""
}

func heifBrand(b string) bool {
	switch b {
	case "heic", "heix", "heim", "heis", "hevc", "hevx", "hevm", "hevs":
		return true
	}
	return false
}

func avifBrand(b string) bool { return b == "avif" || b == "avis" }

// unsupportedName names the unsupported photo format of a file by its
// extension, for a damaged one whose header says nothing.
func unsupportedName(name string) string {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".heic", ".heif", ".hif":
		return formatHEIF
	case ".avif":
		return formatAVIF
	case ".gif":
		return formatGIF
	case ".jxl":
		return formatJXL
	}
	return ""
}

func unsupportedReason(format string) string {
	return "unsupported image format: " + format + " (OpenCV cannot decode it; convert it to JPEG or PNG)"
}

// readHead reads the first 512 bytes of a file (fewer when it is shorter):
// enough for image headers and three MPEG-TS packets' sync bytes.
func readHead(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 512)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:n], nil
}

func excluded(p string, exclude []string) bool {
	abs, err := filepath.Abs(p)
	if err != nil {
		return false
	}
	for _, e := range exclude {
		if abs == e {
			return true
		}
	}
	return false
}

// reason turns an error into a short, stable explanation (no absolute paths,
// so reports do not depend on where the input was mounted).
func reason(err error) string {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	case errors.Is(err, fs.ErrNotExist):
		return "file vanished or broken link"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}

// isOutput reports whether dir holds the marker an output folder is written with.
func isOutput(dir string) bool {
	st, err := os.Lstat(filepath.Join(dir, markerName))
	return err == nil && st.Mode().IsRegular()
}
