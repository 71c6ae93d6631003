package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The contact sheet and the embedding cache of `eval crops` / `eval
// verify` hold faces and templates: under umask 000, and over a sheet
// written before with 0644, they are the owner's only.
func TestEvalOutputPrivate(t *testing.T) {
	root, models := demoModels(t, "eval crops runs the real pipeline")
	ds := t.TempDir()
	var labels strings.Builder
	labels.WriteString("path,identity,masked\n")
	for i, name := range []string{"sample1.jpg", "sample2.jpg"} {
		b, err := os.ReadFile(filepath.Join(root, "build", "src", "face-api", "demo", name))
		if err != nil {
			t.Skipf("demo photos: %v", err)
		}
		if err := os.WriteFile(filepath.Join(ds, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		labels.WriteString(name + ",p" + string(rune('1'+i)) + ",0\n")
	}
	if err := os.WriteFile(filepath.Join(ds, "labels.csv"), []byte(labels.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	sheet := filepath.Join(out, "sheet.png")
	if err := os.WriteFile(sheet, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(out, "cache")
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, args := range [][]string{
		{"eval", "crops", "--models-dir", models, "--dataset", ds, "--out", sheet},
		{"eval", "verify", "--models-dir", models, "--dataset", ds, "--cache", cache},
	} {
		var errb strings.Builder
		if code := runMain(context.Background(), args, io.Discard, &errb); code != 0 {
			t.Fatalf("%v: exit %d\n%s", args, code, errb.String())
		}
	}
	check := func(path string, want os.FileMode) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %#o, want %#o", path, fi.Mode().Perm(), want)
		}
	}
	check(sheet, 0o600)
	check(cache, 0o700)
	files, _ := filepath.Glob(filepath.Join(cache, "*.gob"))
	if len(files) == 0 {
		t.Fatal("no cache file written")
	}
	for _, f := range files {
		check(f, 0o600)
	}
}
