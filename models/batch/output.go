package batch

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"
)

// markerName is written first into every output folder; --force clears only
// folders that carry it.
const markerName = ".atm-agent-cluster"

// OUT holds copies of face photos, face thumbnails and the report naming
// them: it is private to the user who ran the job, whatever the umask and
// whatever the inputs' modes (a photo folder of 0600 files used to come out
// as 0644 copies in 0755 folders, readable by every local user). The owner
// can share it with chmod; a hard link (--link) is the input file itself
// and keeps its own mode.
const (
	outDirMode  = 0o700
	outFileMode = 0o600
)

// ErrOutputNotEmpty is returned when OUT holds files and Force is off.
var ErrOutputNotEmpty = errors.New("output folder is not empty")

// ErrInputInOutput is returned when the input folder is the output folder
// or lies inside it (each run replaces OUT's contents).
var ErrInputInOutput = errors.New("input inside the output folder")

// ErrForeignFiles is returned when Force is on but OUT holds files that no
// previous run wrote: they are never deleted.
var ErrForeignFiles = errors.New("output folder holds files this job did not write")

// ours matches the entries a run creates at the top of OUT.
var ours = regexp.MustCompile(`^(person_\d{4,}|singletons|noface|thumbs|report\.json|report\.html|unreadable\.txt|unreadable\.json|\.atm-agent-cluster)$`)

// prepareOut makes sure out exists and is empty. With force, a folder that a
// previous run wrote (marker present, every top-level entry one of ours) is
// cleared; anything else is refused with the offending names. It says
// whether it created out.
func prepareOut(out string, force bool) (bool, error) {
	ents, err := os.ReadDir(out)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(out, outDirMode); err != nil {
			return false, fmt.Errorf("create output folder: %w", err)
		}
		return true, writeMarker(out)
	}
	if err != nil {
		return false, fmt.Errorf("read output folder: %w", err)
	}
	if len(ents) == 0 {
		return false, writeMarker(out)
	}
	if !force {
		return false, fmt.Errorf("%s: %w (use --force to replace a previous run's output)", out, ErrOutputNotEmpty)
	}
	var foreign []string
	marked := false
	for _, e := range ents {
		if e.Name() == markerName {
			marked = true
		}
		if !ours.MatchString(e.Name()) {
			foreign = append(foreign, e.Name())
		}
	}
	if !marked {
		return false, fmt.Errorf("%s: %w: no %s marker, not a previous run's output", out, ErrForeignFiles, markerName)
	}
	if len(foreign) > 0 {
		sort.Strings(foreign)
		if len(foreign) > 5 {
			foreign = append(foreign[:5], "...")
		}
		return false, fmt.Errorf("%s: %w: %s", out, ErrForeignFiles, strings.Join(foreign, ", "))
	}
	for _, e := range ents {
		if e.Name() == markerName {
			continue
		}
		if err := os.RemoveAll(filepath.Join(out, e.Name())); err != nil {
			return false, fmt.Errorf("clear previous output: %w", err)
		}
	}
	return false, nil
}

// removeOurs takes back an unfinished run's output: the entries a run
// writes (never anything else) and the marker, then out itself when the run
// created it and it is empty.
func removeOurs(out string, created bool) error {
	ents, err := os.ReadDir(out)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if ours.MatchString(e.Name()) {
			errs = append(errs, os.RemoveAll(filepath.Join(out, e.Name())))
		}
	}
	if created {
		errs = append(errs, os.Remove(out))
	}
	return errors.Join(errs...)
}

func writeMarker(out string) error {
	err := os.WriteFile(filepath.Join(out, markerName), []byte("written by atm-tools cluster; --force clears this folder\n"), outFileMode)
	if err != nil {
		return fmt.Errorf("write output marker: %w", err)
	}
	return nil
}

// flatName turns a relative input path into a file name: directories are
// joined with "__" so that same-named files from different folders stay
// apart and the origin stays readable.
func flatName(rel string) string {
	return strings.ReplaceAll(rel, "/", "__")
}

// namer hands out unique file names inside one folder, deterministically
// (callers go in path order). Names differing only in case count as the
// same, so that an output folder on a case-insensitive file system (a FAT
// or exFAT stick, macOS) gets distinct files, not a failed copy after the
// whole job.
type namer map[string]bool

// A name is at most maxName bytes (NAME_MAX of Linux file systems): a longer
// one (a long file name, or many nested folders flattened) keeps the start of
// its stem, cut on a UTF-8 boundary, then "-" and 8 hex digits of the whole
// name's SHA-256 so shortened names stay distinct, then its extension.
func (n namer) take(name string) string {
	ext := filepath.Ext(name)
	if len(ext) > 16 {
		ext = "" // not a real extension: part of the stem
	}
	stem := strings.TrimSuffix(name, ext)
	for i := 1; ; i++ {
		suffix := ""
		if i > 1 {
			suffix = fmt.Sprintf("~%d", i)
		}
		c := fitStem(stem, name, maxName-len(suffix)-len(ext)) + suffix + ext
		if k := strings.ToLower(c); !n[k] {
			n[k] = true
			return c
		}
	}
}

const maxName = 255

// fitStem returns stem if it has at most room bytes, else its shortened form
// (see take); whole is what the hash is taken of.
func fitStem(stem, whole string, room int) string {
	if len(stem) <= room {
		return stem
	}
	sum := sha256.Sum256([]byte(whole))
	tag := "-" + hex.EncodeToString(sum[:4])
	keep := max(room-len(tag), 0)
	for keep > 0 && !utf8.RuneStart(stem[keep]) {
		keep--
	}
	return stem[:keep] + tag
}

// place puts src at dst: a hard link when allowed and possible, else a copy.
// Inputs are only read. It reports whether it linked.
func place(src, dst string, link bool) (bool, error) {
	if real, err := filepath.EvalSymlinks(src); err == nil {
		src = real
	}
	if link {
		if err := os.Link(src, dst); err == nil {
			return true, nil
		}
	}
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, outFileMode)
	if err != nil {
		return false, err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return false, err
	}
	return false, out.Close()
}

// Within says whether path p is dir or lies under it, both made absolute and,
// where they exist, with symbolic links resolved.
func Within(p, dir string) bool {
	ap, err1 := absClean(p)
	ad, err2 := absClean(dir)
	return err1 == nil && err2 == nil && inside(ap, ad)
}

// inside says whether path p is dir or lies under it (both absolute, clean).
func inside(p, dir string) bool {
	if p == dir {
		return true
	}
	r, err := filepath.Rel(dir, p)
	return err == nil && r != ".." && !strings.HasPrefix(r, ".."+string(filepath.Separator))
}

func absClean(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(a); err == nil {
		return r, nil
	}
	return filepath.Clean(a), nil
}
