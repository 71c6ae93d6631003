package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The contact sheet and the embedding cache of `eval crops` / `eval
// verify` hold faces and templates: under umask 000, and over a sheet
// written before with 0644, they are the owner's only.
// fnv1aFold is the held-out split of models/eval (the low bit of FNV-1a).
func fnv1aFold(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h % 2
}

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
	dump := filepath.Join(out, "crops")
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	for _, args := range [][]string{
		{"eval", "crops", "--models-dir", models, "--dataset", ds, "--out", sheet},
		{"eval", "crops", "--models-dir", models, "--dataset", ds, "--dump", dump},
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
	check(dump, 0o700)
	index, err := os.ReadFile(filepath.Join(dump, "index.csv"))
	if err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSpace(string(index)), "\n")
	if len(rows) != 3 || rows[0] != "file,identity,masked,fold,path" || !strings.HasSuffix(rows[1], ",p1,false,"+strconv.Itoa(int(fnv1aFold("p1")))+",sample1.jpg") {
		t.Fatalf("index.csv:\n%s", index)
	}
	crops, _ := filepath.Glob(filepath.Join(dump, "*.png"))
	if len(crops) != 2 {
		t.Fatalf("%d crops written, want 2", len(crops))
	}
	for _, f := range append(crops, filepath.Join(dump, "index.csv")) {
		check(f, 0o600)
	}
	// A second dump into the same folder is refused: crops of two runs
	// would mix under one index.
	var errb strings.Builder
	if code := runMain(context.Background(), []string{"eval", "crops", "--models-dir", models, "--dataset", ds, "--dump", dump}, io.Discard, &errb); code == 0 || !strings.Contains(errb.String(), "not empty") {
		t.Fatalf("dump into a used folder: exit %d\n%s", code, errb.String())
	}
	files, _ := filepath.Glob(filepath.Join(cache, "*.gob"))
	if len(files) == 0 {
		t.Fatal("no cache file written")
	}
	for _, f := range files {
		check(f, 0o600)
	}
}
