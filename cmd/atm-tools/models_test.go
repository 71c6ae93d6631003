package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/models"
)

// A machine that reaches only the package registries: a URL-sourced model
// that cannot be fetched (no mirror, the URL refuses connections) is
// reported and left out; the build and the verify of the rest succeed. A
// mirror holding other bytes under the file's name is refused. Only when the
// pipeline uses the model is it fatal, with advice.
func TestModelsBuildSkipsUnreachableURLModel(t *testing.T) {
	t.Setenv("ATM_AGENT_AS_CLI", "1")
	testenv.ModelsDir(t)
	src := testenv.ModelSrc()
	repoLock, err := models.LoadLock(filepath.Join(testenv.Root(), "models", "lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	repoMan, err := models.LoadManifest(filepath.Join(testenv.Root(), "models", "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/remote.onnx"
	l.Close()

	work := t.TempDir()
	lock := &models.Lock{}
	for _, p := range repoLock.Packages {
		if p.Name == "faceplugin-face-recognition-js" {
			lock.Packages = append(lock.Packages, p)
		}
	}
	body := []byte("bytes nobody can fetch")
	sum := sha256.Sum256(body)
	lock.Packages = append(lock.Packages, models.LockPackage{Kind: models.KindURL, Name: "remote", Version: "c0ffee", Dir: "remote", License: "Apache-2.0",
		Files: []models.LockFile{{Path: "remote.onnx", SHA256: hex.EncodeToString(sum[:]), Size: int64(len(body)), URL: closed}}})
	lb, _ := json.Marshal(lock)
	os.WriteFile(filepath.Join(work, "lock.json"), lb, 0o644)

	fp, ok := repoMan.Find("faceplugin")
	if !ok {
		t.Fatal("faceplugin not in the repository manifest")
	}
	// The heads live beside the repository manifest, not this one: the
	// test is about model sources.
	fp.MaskHead, fp.Projection = nil, nil
	remote := *fp
	remote.Name, remote.File = "remote", "remote.onnx"
	remote.Source = &models.Source{Package: "remote", Version: "c0ffee", Files: []string{"remote.onnx"}, Converter: "copy"}
	man := &models.Manifest{Schema: 1, Models: []models.Model{*fp, remote}}
	manFile := filepath.Join(work, "manifest.yaml")
	man.Save(manFile)

	// A mirror with a file of that name but other bytes.
	mirror := filepath.Join(work, "mirror")
	os.MkdirAll(mirror, 0o755)
	os.WriteFile(filepath.Join(mirror, "remote.onnx"), []byte("bytes somebody swapped"), 0o644) // same size, other sha256

	dir := filepath.Join(work, "models")
	args := []string{"models", "build", "--lock", filepath.Join(work, "lock.json"), "--manifest", manFile,
		"--src", src, "--cache", filepath.Join(work, "cache"), "--dir", dir}
	code, out, errs := runTool(t, append(args, "--mirror", mirror)...)
	if code != 0 {
		t.Fatalf("build with an unreachable optional model: exit %d\n%s%s", code, out, errs)
	}
	for _, want := range []string{"REFUSED mirror file", "sha256", "SKIPPED", "connection refused"} {
		if !strings.Contains(errs, want) {
			t.Errorf("fetch report lacks %q:\n%s", want, errs)
		}
	}
	if !strings.Contains(out, "remote") || !strings.Contains(out, "SKIPPED") || !strings.Contains(out, "faceplugin") {
		t.Errorf("build report:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(src, "remote")); err == nil {
		t.Error("refused mirror bytes were extracted")
	}
	built, err := models.LoadManifest(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := built.Find("remote"); ok || len(built.Models) != 1 {
		t.Errorf("the models dir's manifest should list only what was built: %d models", len(built.Models))
	}
	if code, out, errs := runTool(t, "models", "verify", "--dir", dir); code != 0 || !strings.Contains(out, "faceplugin") {
		t.Errorf("verify without the optional model: exit %d\n%s%s", code, out, errs)
	}

	// The pipeline uses it: fatal, naming the way out.
	man.Pipeline.Embedder = "remote"
	man.Save(manFile)
	code, _, errs = runTool(t, args...)
	if code == 0 || !strings.Contains(errs, "pipeline uses it") || !strings.Contains(errs, "--mirror") {
		t.Errorf("a pipeline model that cannot be fetched: exit %d\n%s", code, errs)
	}
}
