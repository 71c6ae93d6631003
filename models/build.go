package models

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// ConvertFunc turns a locked package's files (extracted under pkgDir) into
// the model file bytes described by md.
type ConvertFunc func(pkgDir string, md *Model) ([]byte, error)

// converterNames lists the converters' names.
func converterNames(c map[string]ConvertFunc) []string {
	var n []string
	for k := range c {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// BuildOptions controls Build.
type BuildOptions struct {
	SrcDir string // extracted package files (Fetch's SrcDir)
	OutDir string // converted models and a copy of the manifest
	// Update records the produced checksums in the manifest instead of
	// requiring them to match (used when a converter changes on purpose).
	Update bool
	Only   []string // model names; empty means all
	// HeadsDir holds the small learned heads (mask classifier, projection)
	// that are copied next to the models.
	HeadsDir string
	// Skipped is told about each model left out because its source is an
	// optional URL package that could not be fetched (see Fetch). Such a
	// model is an error only when the manifest's pipeline uses it.
	Skipped func(name string, err error)
	Log     func(format string, args ...any)
	// Converters by the name manifest entries use in source.converter
	// (models/convert.Converters; build-time code the daemon never links).
	Converters map[string]ConvertFunc
}

// Build converts every manifest model that has a Source from the locked
// package files, checks that the result is byte-identical to the manifest's
// sha256 (conversion is deterministic) and writes it to OutDir.
func Build(ctx context.Context, man *Manifest, lock *Lock, o BuildOptions) error {
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return fmt.Errorf("create models dir: %w", err)
	}
	for i := range man.Models {
		md := &man.Models[i]
		for _, h := range []*Head{md.MaskHead, md.Projection} {
			if h == nil {
				continue
			}
			if err := copyHead(o.HeadsDir, o.OutDir, h); err != nil {
				return fmt.Errorf("model %s: %w", md.Name, err)
			}
		}
		if md.Source == nil || (len(o.Only) > 0 && !slices.Contains(o.Only, md.Name)) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		pkg, err := lockedPackage(lock, md.Source)
		if err != nil {
			return fmt.Errorf("model %s: %w", md.Name, err)
		}
		conv, ok := o.Converters[md.Source.Converter]
		if !ok {
			return fmt.Errorf("model %s: unknown converter %q (have %v)", md.Name, md.Source.Converter, converterNames(o.Converters))
		}
		pkgDir := filepath.Join(o.SrcDir, pkg.Dir)
		if err := sourceReady(pkgDir, pkg, md.Source); err != nil {
			if !pkg.IsURL() {
				return fmt.Errorf("model %s: source %w (run `atm-tools models fetch`)", md.Name, err)
			}
			if man.Pipeline.Uses(md.Name) {
				return fmt.Errorf("model %s: the manifest's pipeline uses it, but its source %s@%s could not be fetched: %w (run `atm-tools models fetch --mirror DIR` with a directory holding the file)",
					md.Name, pkg.Name, pkg.Version, err)
			}
			logf("%-28s SKIPPED: source %s@%s not fetched (%v); optional, not in the pipeline", md.Name, pkg.Name, pkg.Version, err)
			if o.Skipped != nil {
				o.Skipped(md.Name, err)
			}
			continue
		}
		b, err := conv(pkgDir, md)
		if err != nil {
			return fmt.Errorf("convert model %s: %w", md.Name, err)
		}
		sum := sha256.Sum256(b)
		got := hex.EncodeToString(sum[:])
		if o.Update {
			md.SHA256, md.Size = got, int64(len(b))
		} else if got != md.SHA256 || int64(len(b)) != md.Size {
			return fmt.Errorf("convert model %s: produced sha256 %s (%d bytes), manifest says %s (%d bytes): the conversion is not reproducible; run with --update only if the converter changed on purpose",
				md.Name, got, len(b), md.SHA256, md.Size)
		}
		out := Path(o.OutDir, md.File)
		if err := writeAtomic(out, b); err != nil {
			return fmt.Errorf("write model %s: %w", md.Name, err)
		}
		logf("%-28s %s  %8d bytes  <- %s@%s (%s)", md.Name, got[:16], len(b), pkg.Name, pkg.Version, md.Source.Converter)
	}
	return nil
}

// sourceReady checks a model's source files against the lock.
func sourceReady(pkgDir string, pkg *LockPackage, s *Source) error {
	for _, f := range s.Files {
		lf := lockFile(pkg, f)
		if err := CheckFile(filepath.Join(pkgDir, filepath.FromSlash(f)), lf.Size, lf.SHA256); err != nil {
			return err
		}
	}
	return nil
}

func lockedPackage(lock *Lock, s *Source) (*LockPackage, error) {
	for i := range lock.Packages {
		p := &lock.Packages[i]
		if p.Name == s.Package && p.Version == s.Version {
			for _, f := range s.Files {
				if lockFile(p, f) == nil {
					return nil, fmt.Errorf("source file %s is not pinned in the lock file", f)
				}
			}
			return p, nil
		}
	}
	return nil, fmt.Errorf("source package %s@%s is not in the lock file", s.Package, s.Version)
}

func lockFile(p *LockPackage, path string) *LockFile {
	for i := range p.Files {
		if p.Files[i].Path == path {
			return &p.Files[i]
		}
	}
	return nil
}

func writeAtomic(file string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".model-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// copyHead copies a learned head file into the models dir, checking it.
func copyHead(src, dst string, h *Head) error {
	from := Path(src, h.File)
	if err := CheckFile(from, -1, h.SHA256); err != nil {
		return fmt.Errorf("head: %w", err)
	}
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return writeAtomic(Path(dst, h.File), b)
}
