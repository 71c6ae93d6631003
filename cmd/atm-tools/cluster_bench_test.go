package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/internal/testenv"
)

// BenchmarkClusterCacheLFW clusters about 1,000 LFW images twice with the
// same cache: the first run embeds every image, the second re-clusters from
// the cache with other thresholds. It reports both wall times and fails when
// the second takes 5% of the first or more (docs/benchmarks.md). Needs
// ../shared/datasets/lfw or $ATM_LFW_DIR (skipped without it) and the built models:
//
//	ATM_MODELS_DIR=$PWD/build/models go test -run '^$' -bench ClusterCacheLFW -benchtime 1x ./cmd/atm-tools/
func BenchmarkClusterCacheLFW(b *testing.B) {
	models := testenv.ModelsDir(b)
	lfw := testenv.Path("..", "shared", "datasets", "lfw")
	if d := os.Getenv("ATM_LFW_DIR"); d != "" {
		lfw = d
	}
	people, err := os.ReadDir(lfw)
	if err != nil {
		b.Skipf("no LFW at %s: %v", lfw, err)
	}
	n := 1000
	if s := os.Getenv("ATM_BENCH_IMAGES"); s != "" {
		if _, err := fmt.Sscan(s, &n); err != nil {
			b.Fatal(err)
		}
	}
	// The first people in name order until n images: links, so the input
	// holds only them.
	in := b.TempDir()
	var files []string
	for _, p := range people {
		if !p.IsDir() {
			continue
		}
		ents, _ := os.ReadDir(filepath.Join(lfw, p.Name()))
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".jpg") {
				files = append(files, filepath.Join(p.Name(), e.Name()))
			}
		}
		if len(files) >= n {
			break
		}
	}
	sort.Strings(files)
	for _, f := range files {
		dst := filepath.Join(in, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(lfw, f), dst); err != nil {
			b.Fatal(err)
		}
	}
	cache := b.TempDir()
	run := func(thresholds string) (time.Duration, string) {
		out := filepath.Join(b.TempDir(), "out")
		t0 := time.Now()
		code, stdout, stderr := runTool(b, "cluster", in, "-o", out, "--models-dir", models, "--cache", cache, "--thresholds", thresholds)
		el := time.Since(t0)
		if code != 0 {
			b.Fatalf("cluster: exit %d\n%s", code, stderr)
		}
		return el, strings.TrimSpace(stdout)
	}
	for range b.N {
		first, s1 := run("0.52,0.40,0.50")
		second, s2 := run("0.45,0.35,0.45")
		b.Logf("%d images\nfirst:  %v  %s\nsecond: %v  %s", len(files), first.Round(time.Millisecond), s1, second.Round(time.Millisecond), s2)
		b.ReportMetric(first.Seconds(), "first-s")
		b.ReportMetric(second.Seconds(), "rerun-s")
		ratio := second.Seconds() / first.Seconds()
		b.ReportMetric(100*ratio, "rerun-%")
		if ratio >= 0.05 {
			b.Errorf("re-clustering from the cache took %.1f%% of the first run (goal < 5%%)", 100*ratio)
		}
	}
}
