package dataset

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir, labels string, files ...string) {
	t.Helper()
	os.WriteFile(filepath.Join(dir, "labels.csv"), []byte(labels), 0o644)
	for _, f := range files {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o644)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "path,identity,masked,extra\na/1.jpg,a,1,x\na/2.png,a,false,y\nb/1.jpg,b,0,z\nclip.mp4,b,true,v\n", "a/1.jpg", "a/2.png", "b/1.jpg")
	ds, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Items) != 4 || len(ds.Images()) != 3 || ds.Identities() != 2 {
		t.Fatalf("items %d images %d ids %d", len(ds.Items), len(ds.Images()), ds.Identities())
	}
	if !ds.Items[0].Masked || ds.Items[1].Masked {
		t.Fatal("masked column misread")
	}
	write(t, dir, "path,identity\na/1.jpg,a\n")
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "masked") {
		t.Fatalf("missing column: %v", err)
	}
	write(t, dir, "path,identity,masked\na/1.jpg,a,perhaps\n")
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("bad boolean: %v", err)
	}
}

func TestSubsetAndSyntheticHalf(t *testing.T) {
	var items []Item
	for _, id := range []string{"x", "y"} {
		for _, n := range []string{"4", "1", "3", "2"} {
			items = append(items, Item{Rel: id + n + ".jpg", Path: id + n + ".jpg", Identity: id})
		}
	}
	items = append(items, Item{Rel: "s1.jpg", Path: "s1.jpg", Identity: "s1"}, Item{Rel: "s2.jpg", Path: "s2.jpg", Identity: "s2"})
	ds := &Dataset{Items: items}
	sub := ds.Subset(2, 1)
	var rels []string
	for _, it := range sub.Items {
		rels = append(rels, it.Rel)
	}
	if got := strings.Join(rels, " "); got != "s1.jpg x1.jpg x2.jpg y1.jpg y2.jpg" {
		t.Fatalf("subset %s", got)
	}
	half := SyntheticHalf(items)
	n := map[string]int{}
	for i, h := range half {
		if h {
			n[items[i].Identity]++
		}
	}
	if n["x"] != 2 || n["y"] != 2 {
		t.Fatalf("synthetic half per identity %v", n)
	}
}
