package models

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRepoLockAndManifestAreValid(t *testing.T) {
	l, err := LoadLock("lock.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Packages) != 5 {
		t.Fatalf("lock pins %d packages, want 5", len(l.Packages))
	}
	m, err := LoadManifest("manifest.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, md := range m.Models {
		if md.Source == nil {
			continue
		}
		pkg, err := lockedPackage(l, md.Source)
		if err != nil {
			t.Errorf("model %s: %v", md.Name, err)
			continue
		}
		// A machine that reaches only the package registries must be able
		// to build the default pipeline: URL sources are optional extras.
		if m.Pipeline.Uses(md.Name) && pkg.IsURL() {
			t.Errorf("pipeline model %s comes from URL source %s: the default must come from registry packages", md.Name, pkg.Name)
		}
	}
}

func TestManifestRejectsUnknownKeyWithLine(t *testing.T) {
	_, err := ParseManifest([]byte("schema: 1\nmodels:\n  - name: x\n    tsak: detector\n"))
	if err == nil || !strings.Contains(err.Error(), "line 4") || !strings.Contains(err.Error(), "tsak") {
		t.Fatalf("want an error naming line 4 and the key, got %v", err)
	}
}

func TestManifestValidation(t *testing.T) {
	good := Model{Name: "e", Task: TaskEmbedder, Format: FormatONNX, File: "e.onnx", SHA256: strings.Repeat("a", 64),
		Input:     Input{Width: 10, Height: 10, Layout: "NCHW", Color: "RGB", Scale: PerChannel{1}, Resize: "stretch"},
		Decode:    "embedding",
		Embedding: &Embedding{Dim: 4, Metric: "cosine", Crop: "box"}}
	cases := map[string]func(m *Model){
		"sha256":      func(m *Model) { m.SHA256 = "xyz" },
		"task":        func(m *Model) { m.Task = "classifier" },
		"caffe":       func(m *Model) { m.Format = FormatCaffe },
		"input color": func(m *Model) { m.Input.Color = "YUV" },
		"metric":      func(m *Model) { m.Embedding.Metric = "manhattan" },
		"crop":        func(m *Model) { m.Embedding.Crop = "eyes" },
		"scale count": func(m *Model) { m.Input.Scale = PerChannel{1, 2} },
		"scale zero":  func(m *Model) { m.Input.Scale = PerChannel{1, 0, 1} },
	}
	man := &Manifest{Schema: 1, Models: []Model{good}}
	if err := man.Validate(); err != nil {
		t.Fatalf("good manifest: %v", err)
	}
	for want, mut := range cases {
		md := good
		e := *good.Embedding
		md.Embedding = &e
		mut(&md)
		err := (&Manifest{Schema: 1, Models: []Model{md}}).Validate()
		if err == nil || !strings.Contains(err.Error(), strings.Split(want, " ")[0]) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	bad := &Manifest{Schema: 1, Models: []Model{good}, Pipeline: Pipeline{Detector: "e"}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "is a embedder") {
		t.Errorf("pipeline detector pointing at an embedder: %v", err)
	}
	det := good
	det.Name, det.Task, det.Decode, det.Embedding = "d", TaskDetector, "blazeface", nil
	for name, tc := range map[string]struct {
		p    Pipeline
		want string
	}{
		"fast detector is an embedder": {Pipeline{Detector: "d", FastDetector: "e", FastMinScore: 0.5}, "pipeline.fast_detector"},
		"fast detector unknown":        {Pipeline{Detector: "d", FastDetector: "x", FastMinScore: 0.5}, "no model named"},
		"fast score missing":           {Pipeline{Detector: "d", FastDetector: "d"}, "fast_min_score"},
		"fast face out of range":       {Pipeline{Detector: "d", FastDetector: "d", FastMinScore: 0.5, FastMinFace: 1.5}, "fast_min_face"},
		"good cascade":                 {Pipeline{Detector: "d", FastDetector: "d", FastMinScore: 0.5, FastMinFace: 0.2}, ""},
	} {
		err := (&Manifest{Schema: 1, Models: []Model{good, det}, Pipeline: tc.p}).Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: got %v, want %q", name, err, tc.want)
		}
	}
}

func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "m.onnx")
	data := []byte("model bytes")
	os.WriteFile(f, data, 0o644)
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	if err := CheckFile(f, int64(len(data)), sha); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f, []byte("model bytez"), 0o644)
	if err := CheckFile(f, int64(len(data)), sha); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), f) {
		t.Errorf("tampered: %v", err)
	}
	os.WriteFile(f, data[:4], 0o644)
	if err := CheckFile(f, int64(len(data)), sha); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated: %v", err)
	}
	if err := CheckFile(filepath.Join(dir, "nope"), 1, sha); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing: %v", err)
	}
}

// fakeTarball builds an npm-style tarball and its lock entry.
func fakeTarball(t *testing.T, dir string, files map[string]string) LockPackage {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	p := LockPackage{Name: "@x/pkg", Version: "1.0.0", Dir: "pkg", License: "MIT"}
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: "package/" + name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
		s := sha256.Sum256([]byte(body))
		p.Files = append(p.Files, LockFile{Path: name, SHA256: hex.EncodeToString(s[:]), Size: int64(len(body))})
	}
	tw.Close()
	gz.Close()
	s := sha512.Sum512(buf.Bytes())
	p.Integrity = "sha512-" + base64.StdEncoding.EncodeToString(s[:])
	os.WriteFile(filepath.Join(dir, p.Tarball()), buf.Bytes(), 0o644)
	return p
}

func TestFetchFromCacheWithoutNetwork(t *testing.T) {
	cache, src := t.TempDir(), t.TempDir()
	p := fakeTarball(t, cache, map[string]string{"model/a.bin": "weights", "LICENSE": "MIT"})
	lock := &Lock{Packages: []LockPackage{p}}
	// npm is not needed when the cache holds the tarball: make it fail.
	o := FetchOptions{CacheDir: cache, SrcDir: src, NPM: "/bin/false"}
	if err := Fetch(context.Background(), lock, o); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(src, "pkg", "model", "a.bin")); string(b) != "weights" {
		t.Fatalf("extracted %q", b)
	}
	// A damaged extracted file is replaced from the cache.
	os.WriteFile(filepath.Join(src, "pkg", "model", "a.bin"), []byte("evil"), 0o644)
	if err := Fetch(context.Background(), lock, o); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(src, "pkg", "model", "a.bin")); string(b) != "weights" {
		t.Fatalf("not repaired: %q", b)
	}
	// A cached tarball that does not match the integrity hash is not used;
	// the fallback download (here: a failing npm) is reported.
	os.WriteFile(filepath.Join(cache, p.Tarball()), []byte("not the package"), 0o644)
	os.RemoveAll(src)
	err := Fetch(context.Background(), lock, o)
	if err == nil || !strings.Contains(err.Error(), "npm pack") {
		t.Fatalf("want an npm pack failure, got %v", err)
	}
	// A lock whose file hash disagrees with the tarball is refused.
	os.Remove(filepath.Join(cache, p.Tarball()))
	p2 := fakeTarball(t, cache, map[string]string{"model/a.bin": "weights", "LICENSE": "MIT"})
	p2.Files[0].SHA256 = strings.Repeat("0", 64)
	err = Fetch(context.Background(), &Lock{Packages: []LockPackage{p2}}, o)
	if !errors.Is(err, ErrIntegrity) {
		t.Fatalf("want integrity error, got %v", err)
	}
}

// Input scale is one number or one per channel, and survives a save.
func TestPerChannelScale(t *testing.T) {
	m, err := LoadManifest("manifest.yaml")
	if err != nil {
		t.Fatal(err)
	}
	f, _ := m.Find("foamliu")
	fp, _ := m.Find("faceplugin")
	if f == nil || fp == nil {
		t.Fatal("foamliu and faceplugin must be in the manifest")
	}
	if len(f.Input.Scale) != 3 || len(fp.Input.Scale) != 1 {
		t.Fatalf("scales %v %v", f.Input.Scale, fp.Input.Scale)
	}
	// torchvision: (x/255 - 0.485)/0.229 for red.
	if got, want := f.Input.Scale.Channels()[0]*(255*0.9-f.Input.Mean[0]), (0.9-0.485)/0.229; math.Abs(got-want) > 1e-9 {
		t.Errorf("red channel: %v, want %v", got, want)
	}
	file := filepath.Join(t.TempDir(), "m.yaml")
	if err := m.Save(file); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(file)
	if !strings.Contains(string(b), "scale: 0.0078125\n") || !strings.Contains(string(b), "scale: [0.017124753831663668, 0.01750700280112045, 0.017429193899782137]") {
		t.Errorf("saved scales:\n%s", b)
	}
	m2, err := LoadManifest(file)
	if err != nil {
		t.Fatal(err)
	}
	f2, _ := m2.Find("foamliu")
	if fmt.Sprint(f2.Input.Scale) != fmt.Sprint(f.Input.Scale) {
		t.Errorf("round trip %v -> %v", f.Input.Scale, f2.Input.Scale)
	}
	if _, err := ParseManifest([]byte("schema: 1\nmodels:\n  - name: x\n    input: {scale: {a: 1}}\n")); err == nil {
		t.Error("a mapping as scale must be an error")
	}
}
