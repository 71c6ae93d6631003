package models

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Files lists the files of md relative to its models dir: the weights,
// the second file some formats need, and the embedder's heads.
func (md *Model) Files() []string {
	var fs []string
	for _, f := range md.fileSums() {
		fs = append(fs, f.path)
	}
	return fs
}

// fileSum is one of a model's files with the size (-1: not recorded) and
// sha256 the manifest gives it.
type fileSum struct {
	path string
	size int64
	sha  string
}

func (md *Model) fileSums() []fileSum {
	orUnknown := func(n int64) int64 {
		if n == 0 {
			return -1
		}
		return n
	}
	fs := []fileSum{{md.File, orUnknown(md.Size), strings.ToLower(md.SHA256)}}
	if md.Config != "" {
		fs = append(fs, fileSum{md.Config, orUnknown(md.ConfigSize), strings.ToLower(md.ConfigSHA256)})
	}
	for _, h := range []*Head{md.MaskHead, md.Projection} {
		if h != nil && h.File != "" {
			fs = append(fs, fileSum{h.File, -1, strings.ToLower(h.SHA256)})
		}
	}
	return fs
}

// PipelineOnly returns a copy of the manifest with only the models its
// pipeline runs (what the package ships; the others come with
// `atm-tools models build`).
func (m *Manifest) PipelineOnly() *Manifest {
	var drop []string
	for _, md := range m.Models {
		if !m.Pipeline.Uses(md.Name) {
			drop = append(drop, md.Name)
		}
	}
	return m.Without(drop...)
}

// CopyPipeline copies the pipeline's models from the models dir src to dst
// (created) and writes their manifest there.
func CopyPipeline(src, dst string) (*Manifest, error) {
	man, err := LoadManifest(filepath.Join(src, "manifest.yaml"))
	if err != nil {
		return nil, err
	}
	sub := man.PipelineOnly()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, fmt.Errorf("models dir %s: %w", dst, err)
	}
	for i := range sub.Models {
		for _, f := range sub.Models[i].fileSums() {
			// "../x" left --out as surely as "/x" did: written as root
			// over whatever was there.
			if !filepath.IsLocal(f.path) {
				return nil, fmt.Errorf("model %s: file %s is outside the models dir", sub.Models[i].Name, f.path)
			}
			if err := copyChecked(filepath.Join(src, f.path), filepath.Join(dst, f.path), f.size, f.sha); err != nil {
				return nil, fmt.Errorf("model %s: %w", sub.Models[i].Name, err)
			}
		}
	}
	if err := sub.Save(filepath.Join(dst, "manifest.yaml")); err != nil {
		return nil, err
	}
	return sub, nil
}

// copyChecked copies a file whose bytes match size and sha (ReadChecked),
// through a temporary file renamed over to: a link already at to is
// replaced, never written through.
func copyChecked(from, to string, size int64, sha string) error {
	b, err := ReadChecked(from, size, sha)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(to), ".ship-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), to)
}
