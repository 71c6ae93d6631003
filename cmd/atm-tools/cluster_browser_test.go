package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/internal/testenv/browser"
)

// A real headless Chromium on the offline report: the analyst names a
// person, merges two identities, takes one face out, exports the
// corrections; `cluster --apply` re-clusters from the cache (nothing is
// embedded again) and the new report.json holds the result. Screenshots go
// to $ATM_CLUSTER_SCREENSHOTS (docs/img/cluster when refreshing the docs)
// or a temp dir.
func TestClusterBrowserCorrections(t *testing.T) {
	browser.Path(t) // skips early without Chromium
	models := testenv.ModelsDir(t)
	demo := filepath.Join(testenv.ModelSrc(), "face-api", "demo")
	in := t.TempDir()
	for _, f := range []struct{ src, dst string }{
		{"sample1.jpg", "alice/a.jpg"}, {"sample1.jpg", "alice/b.jpg"}, {"sample1.jpg", "alice/c.jpg"},
		{"sample2.jpg", "bob/a.jpg"}, {"sample2.jpg", "bob/b.jpg"}, {"sample3.jpg", "carol.jpg"},
	} {
		b, err := os.ReadFile(filepath.Join(demo, f.src))
		if err != nil {
			t.Fatalf("demo photo (run `make models`): %v", err)
		}
		// A trailer after the end of image: distinct files, same face.
		b = append(slices.Clone(b), f.dst...)
		p := filepath.Join(in, filepath.FromSlash(f.dst))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	cache := t.TempDir()
	args := []string{"cluster", in, "-o", out, "--models-dir", models, "--cache", cache, "--thresholds", "0.3,0.3,0.3"}
	if code, _, stderr := runTool(t, args...); code != 0 {
		t.Fatalf("cluster: exit %d\n%s", code, stderr)
	}
	rep := readClusterReport(t, out)
	folderOf := func(r clusterReport, path string) string {
		for _, e := range r.Images {
			if e.Path == path {
				return e.Folder
			}
		}
		return ""
	}
	alice, bob := folderOf(rep, "alice/a.jpg"), folderOf(rep, "bob/a.jpg")
	if alice != "person_0001" || bob != "person_0002" || folderOf(rep, "carol.jpg") != "singletons" {
		t.Fatalf("first run: alice in %s, bob in %s, carol in %s", alice, bob, folderOf(rep, "carol.jpg"))
	}
	var cKey string
	for _, e := range rep.Images {
		if e.Path == "alice/c.jpg" {
			cKey = e.Key
		}
	}

	br := browser.Start(t, 1200, 900, "ATM_CLUSTER_SCREENSHOTS", chromedp.Flag("allow-file-access-from-files", true))
	shot, do, get := br.Shot, br.Do, br.Get
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	do("open the report",
		chromedp.Navigate("file://"+filepath.Join(out, "report.html")),
		chromedp.WaitVisible(css(`#person_0001`)),
		shot("report"))
	do("search",
		chromedp.SendKeys(css(`#q`), "bob/"),
		chromedp.Sleep(200*time.Millisecond),
		shot("search"))
	if n := get(chromedp.Text(css(`#shown`))); n != "2 faces match" {
		t.Errorf("search shows %q, want 2 faces match", n)
	}
	do("clear the search, name, merge, take a face out, export",
		chromedp.Evaluate[chromedp.Void](`(function(){var q=document.getElementById('q');q.value='';q.dispatchEvent(new Event('input'));})()`),
		chromedp.SendKeys(css(`input.name[data-folder="person_0001"]`), "Alice"),
		chromedp.SendKeys(css(`input.merge[data-folder="person_0002"]`), "person_0001"),
		chromedp.SendKeys(css(fmt.Sprintf(`input.move[data-face=%q]`, cKey)), "out"),
		chromedp.Click(css(`#export`)),
		chromedp.WaitVisible(css(`#corrections`)),
		shot("corrections"))
	js := get(chromedp.Evaluate[string](`document.getElementById('corrections').value`))
	var c struct {
		Schema int
		Merge  []struct{ Faces, Into []string }
		Move   []struct {
			Face string
			To   []string
		}
		Name []struct {
			Faces []string
			Name  string
		}
	}
	if err := json.Unmarshal([]byte(js), &c); err != nil || len(c.Merge) != 1 || len(c.Move) != 1 || len(c.Name) != 1 {
		t.Fatalf("exported corrections (%v):\n%s", err, js)
	}
	file := filepath.Join(t.TempDir(), "corrections.json")
	os.WriteFile(file, []byte(js), 0o644)

	code, stdout, stderr := runTool(t, append(args, "--apply", file)...)
	if code != 0 {
		t.Fatalf("cluster --apply: exit %d\n%s", code, stderr)
	}
	if !strings.Contains(stdout, "corrections: 1 merged, 1 moved, 1 named, 0 naming faces") || !strings.Contains(stdout, "6 from the cache, 0 embedded") {
		t.Errorf("--apply summary: %s", stdout)
	}
	rep = readClusterReport(t, out)
	want := map[string]string{"alice/a.jpg": "person_0001", "alice/b.jpg": "person_0001", "bob/a.jpg": "person_0001", "bob/b.jpg": "person_0001",
		"alice/c.jpg": "singletons", "carol.jpg": "singletons"}
	for p, f := range want {
		if got := folderOf(rep, p); got != f {
			t.Errorf("after --apply %s is in %s, want %s", p, got, f)
		}
	}
	if rep.Identities[0].Name != "Alice" || rep.Identities[0].Size != 4 {
		t.Errorf("first identity %+v, want Alice with 4 images", rep.Identities[0])
	}
	do("the corrected report", chromedp.Navigate("file://"+filepath.Join(out, "report.html")), chromedp.WaitVisible(css(`#person_0001`)), shot("applied"))
	if h := get(chromedp.Text(css(`#person_0001 h2`))); !strings.Contains(h, "person_0001 (Alice): 4 images") {
		t.Errorf("corrected heading %q", h)
	}

	// Two people seen once are one: carol.jpg's face is moved to the
	// singleton alice/c.jpg ("singletons/PATH", offered in the list). Before,
	// only person folders were targets, so two singletons could not be
	// joined in the page (their "maybe" suggestions could not be acted on).
	// The page shows Alice's name, so its export names her again.
	var carolKey string
	for _, e := range rep.Images {
		if e.Path == "carol.jpg" {
			carolKey = e.Key
		}
	}
	if opts := get(chromedp.Evaluate[string](`Array.prototype.map.call(document.querySelectorAll('#folders option'),function(o){return o.value;}).join(',')`)); opts != "person_0001,singletons/alice/c.jpg,singletons/carol.jpg" {
		t.Errorf("move targets offered: %s", opts)
	}
	do("join two singletons, export",
		chromedp.SendKeys(css(fmt.Sprintf(`input.move[data-face=%q]`, carolKey)), "singletons/alice/c.jpg"),
		chromedp.Click(css(`#export`)),
		chromedp.WaitVisible(css(`#corrections`)))
	js = get(chromedp.Evaluate[string](`document.getElementById('corrections').value`))
	if !strings.Contains(js, cKey) || !strings.Contains(js, carolKey) {
		t.Fatalf("exported corrections do not move %s to %s:\n%s", carolKey, cKey, js)
	}
	file2 := filepath.Join(t.TempDir(), "corrections2.json")
	os.WriteFile(file2, []byte(js), 0o644)
	code, stdout, stderr = runTool(t, append(args, "--apply", file, "--apply", file2)...)
	if code != 0 || !strings.Contains(stdout, "corrections: 1 merged, 2 moved, 2 named, 0 naming faces") {
		t.Fatalf("cluster --apply twice: exit %d\n%s%s", code, stdout, stderr)
	}
	rep = readClusterReport(t, out)
	if a, c := folderOf(rep, "alice/c.jpg"), folderOf(rep, "carol.jpg"); a != "person_0002" || c != a {
		t.Errorf("after joining the singletons alice/c.jpg is in %s, carol.jpg in %s; want both in person_0002", a, c)
	}
}

type clusterReport struct {
	Identities []struct {
		Folder, Name string
		Size         int
	}
	Images []struct{ Path, Folder, Key string }
}

func readClusterReport(t *testing.T, out string) clusterReport {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r clusterReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}
