package models

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Files lists the files of md relative to its models dir: the weights,
// the second file some formats need, and the embedder's heads.
func (md *Model) Files() []string {
	fs := []string{md.File}
	if md.Config != "" {
		fs = append(fs, md.Config)
	}
	for _, h := range []*Head{md.MaskHead, md.Projection} {
		if h != nil && h.File != "" {
			fs = append(fs, h.File)
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
		for _, f := range sub.Models[i].Files() {
			if filepath.IsAbs(f) {
				return nil, fmt.Errorf("model %s: file %s is outside the models dir", sub.Models[i].Name, f)
			}
			if err := copyFile(filepath.Join(src, f), filepath.Join(dst, f)); err != nil {
				return nil, fmt.Errorf("model %s: %w", sub.Models[i].Name, err)
			}
		}
	}
	if err := sub.Save(filepath.Join(dst, "manifest.yaml")); err != nil {
		return nil, err
	}
	return sub, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", from, err)
	}
	return out.Close()
}
