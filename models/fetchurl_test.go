package models

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// urlLock is a lock with one URL package holding one file.
func urlLock(url, body string) (*Lock, LockFile) {
	s := sha256.Sum256([]byte(body))
	f := LockFile{Path: "w/net.onnx", SHA256: hex.EncodeToString(s[:]), Size: int64(len(body)), URL: url}
	return &Lock{Packages: []LockPackage{{Kind: KindURL, Name: "net", Version: "abc123", Dir: "net", License: "Apache-2.0", Files: []LockFile{f}}}}, f
}

type fetchRun struct {
	skipped []error
	log     strings.Builder
}

func (r *fetchRun) opts(cache, src string, mirrors ...string) FetchOptions {
	return FetchOptions{CacheDir: cache, SrcDir: src, NPM: "/bin/false", Mirrors: mirrors,
		Skipped: func(_ LockPackage, err error) { r.skipped = append(r.skipped, err) },
		Log:     func(f string, a ...any) { fmt.Fprintf(&r.log, f+"\n", a...) }}
}

func closedPortURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/net.onnx"
}

func TestFetchURLUnreachableIsSkippedNotFatal(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	for name, url := range map[string]string{"404": notFound.URL + "/net.onnx", "closed port": closedPortURL(t)} {
		t.Run(name, func(t *testing.T) {
			cache, src := t.TempDir(), t.TempDir()
			lock, _ := urlLock(url, "weights")
			var r fetchRun
			if err := Fetch(context.Background(), lock, r.opts(cache, src)); err != nil {
				t.Fatalf("an unreachable URL source must not fail the fetch: %v", err)
			}
			if len(r.skipped) != 1 {
				t.Fatalf("skipped %d packages, want 1; log:\n%s", len(r.skipped), r.log.String())
			}
			if !strings.Contains(r.log.String(), "SKIPPED") || !strings.Contains(r.skipped[0].Error(), strings.TrimPrefix(url, "http://")[:9]) {
				t.Errorf("the report should say SKIPPED and name the URL: %v\n%s", r.skipped[0], r.log.String())
			}
			if name == "404" && !strings.Contains(r.skipped[0].Error(), "404") {
				t.Errorf("the HTTP status is not reported: %v", r.skipped[0])
			}
			if _, err := os.Stat(filepath.Join(src, "net", "w", "net.onnx")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("nothing should be written: %v", err)
			}
		})
	}
}

func TestFetchURLMirrorIsVerified(t *testing.T) {
	cache, src, mirror := t.TempDir(), t.TempDir(), t.TempDir()
	lock, lf := urlLock(closedPortURL(t), "weights")
	dst := filepath.Join(src, "net", "w", "net.onnx")

	// A mirror file with the right name but other bytes is refused.
	os.WriteFile(filepath.Join(mirror, "net.onnx"), []byte("weightz"), 0o644)
	var r fetchRun
	if err := Fetch(context.Background(), lock, r.opts(cache, src, mirror)); err != nil {
		t.Fatal(err)
	}
	if len(r.skipped) != 1 || !errors.Is(r.skipped[0], ErrIntegrity) || !strings.Contains(r.log.String(), "REFUSED") {
		t.Fatalf("a mirror file with a wrong sha256 must be refused: %v\n%s", r.skipped, r.log.String())
	}
	if _, err := os.Stat(dst); err == nil {
		t.Fatal("refused bytes were written")
	}
	if _, err := os.Stat(cachedURLFile(cache, lf)); err == nil {
		t.Fatal("refused bytes were cached")
	}

	// The right bytes in a second mirror, under the package's folder.
	good := t.TempDir()
	os.MkdirAll(filepath.Join(good, "net"), 0o755)
	os.WriteFile(filepath.Join(good, "net", "net.onnx"), []byte("weights"), 0o644)
	r = fetchRun{}
	if err := Fetch(context.Background(), lock, r.opts(cache, src, mirror, good)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "weights" || len(r.skipped) != 0 {
		t.Fatalf("got %q, skipped %v\n%s", b, r.skipped, r.log.String())
	}

	// Later fetches need neither the mirror nor the network: the cache has it.
	os.RemoveAll(src)
	r = fetchRun{}
	if err := Fetch(context.Background(), lock, r.opts(cache, src)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "weights" || !strings.Contains(r.log.String(), "using cached") {
		t.Fatalf("got %q\n%s", b, r.log.String())
	}
	// A damaged cache entry is not used.
	os.RemoveAll(src)
	os.WriteFile(cachedURLFile(cache, lf), []byte("weightz"), 0o644)
	r = fetchRun{}
	Fetch(context.Background(), lock, r.opts(cache, src))
	if len(r.skipped) != 1 {
		t.Fatalf("a damaged cache entry was used:\n%s", r.log.String())
	}
}

func TestFetchURLDownloadIsVerified(t *testing.T) {
	body := "weights"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }))
	defer srv.Close()
	cache, src := t.TempDir(), t.TempDir()
	lock, lf := urlLock(srv.URL+"/net.onnx", "weights")

	body = "weights and more" // the server's bytes differ from the lock
	var r fetchRun
	Fetch(context.Background(), lock, r.opts(cache, src))
	if len(r.skipped) != 1 || !errors.Is(r.skipped[0], ErrIntegrity) {
		t.Fatalf("a download that does not match the lock must be refused: %v", r.skipped)
	}

	body = "weights"
	r = fetchRun{}
	if err := Fetch(context.Background(), lock, r.opts(cache, src)); err != nil || len(r.skipped) != 0 {
		t.Fatalf("%v %v\n%s", err, r.skipped, r.log.String())
	}
	if b, _ := os.ReadFile(filepath.Join(src, "net", "w", "net.onnx")); string(b) != "weights" {
		t.Fatalf("got %q", b)
	}
	if err := CheckFile(cachedURLFile(cache, lf), lf.Size, lf.SHA256); err != nil {
		t.Fatalf("not cached: %v", err)
	}
}

func TestLockValidation(t *testing.T) {
	sha := strings.Repeat("a", 64)
	ok := LockPackage{Kind: KindURL, Name: "n", Version: "v", Dir: "n", Files: []LockFile{{Path: "f", SHA256: sha, Size: 1, URL: "https://x/f"}}}
	for want, mut := range map[string]func(p *LockPackage){
		"kind":      func(p *LockPackage) { p.Kind = "git" },
		"http(s)":   func(p *LockPackage) { p.Files[0].URL = "file:///etc/passwd" },
		"integrity": func(p *LockPackage) { p.Kind = KindNPM },
		"sha256":    func(p *LockPackage) { p.Files[0].SHA256 = "abc" },
		"relative":  func(p *LockPackage) { p.Files[0].Path = "../../f" },
		"plain":     func(p *LockPackage) { p.Dir = "a/b" },
	} {
		p := ok
		p.Files = append([]LockFile(nil), ok.Files...)
		mut(&p)
		err := (&Lock{Packages: []LockPackage{p}}).Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v", want, err)
		}
	}
	if err := (&Lock{Packages: []LockPackage{ok}}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// A model whose URL source was not fetched is left out of the build, unless
// the pipeline uses it.
func TestBuildSkipsUnfetchedURLModel(t *testing.T) {
	lock, _ := urlLock(closedPortURL(t), "weights")
	md := Model{Name: "extra", Task: TaskEmbedder, File: "extra.onnx", SHA256: strings.Repeat("a", 64),
		Source: &Source{Package: "net", Version: "abc123", Files: []string{"w/net.onnx"}, Converter: "copy"}}
	man := &Manifest{Schema: 1, Models: []Model{md}}
	out := t.TempDir()
	var skipped []string
	err := Build(context.Background(), man, lock, BuildOptions{SrcDir: t.TempDir(), OutDir: out, Converters: copyOnly,
		Skipped: func(n string, _ error) { skipped = append(skipped, n) }})
	if err != nil || len(skipped) != 1 || skipped[0] != "extra" {
		t.Fatalf("err %v, skipped %v", err, skipped)
	}
	if len(man.Without(skipped...).Models) != 0 {
		t.Fatal("Without kept the skipped model")
	}
	man.Pipeline.Embedder = "extra"
	err = Build(context.Background(), man, lock, BuildOptions{SrcDir: t.TempDir(), OutDir: out, Converters: copyOnly})
	if err == nil || !strings.Contains(err.Error(), "pipeline uses it") || !strings.Contains(err.Error(), "--mirror") {
		t.Fatalf("a pipeline model that cannot be fetched must fail the build with advice: %v", err)
	}
}

// copyOnly stands in for models/convert (which imports this package): the
// model is never converted here, only looked up.
var copyOnly = map[string]ConvertFunc{"copy": func(dir string, md *Model) ([]byte, error) {
	return os.ReadFile(filepath.Join(dir, filepath.FromSlash(md.Source.Files[0])))
}}
