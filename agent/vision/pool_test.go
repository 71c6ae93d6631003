package vision

import (
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/imagecheck"
)

// rawFaceplugin builds a pipeline whose faceplugin entry pools its feature
// map as given (rows 0: the model's own template), without the projection.
func rawFaceplugin(t *testing.T, rows int, weight float64, fmap string) (*Pipeline, error) {
	t.Helper()
	dir, man := modelsDir(t)
	md, ok := man.Find("faceplugin")
	if !ok {
		t.Skip("faceplugin is not in the built models")
	}
	md.Embedding.PoolRows, md.Embedding.PoolWeight, md.Embedding.FeatureMap = rows, weight, fmap
	cfg := DefaultConfig()
	cfg.Raw = true
	p, err := New(dir, man, "", "faceplugin", cfg)
	if err == nil {
		t.Cleanup(func() { p.Close() })
	}
	return p, err
}

// The periocular template comes from the model's own last layers run in
// Go: pooled over every row it is the model's template, and over the eyes
// and brows it moves less than the whole face when a mask is painted on.
func TestPeriocularPooling(t *testing.T) {
	checkMats(t)
	img, other := sample(t, "sample1.jpg"), sample(t, "sample2.jpg")
	embedOther := func(p *Pipeline) []float32 {
		t.Helper()
		f, err := p.FaceInImage(other, FaceOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return f.Embedding
	}
	embed := func(p *Pipeline, masked bool) []float32 {
		t.Helper()
		if !masked {
			f, err := p.FaceInImage(img, FaceOptions{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			return f.Embedding
		}
		m, err := DecodeImage(img, imagecheck.Limits{Formats: imagecheck.FormatsOpenCV})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		f, err := p.FaceWithPaintedMask(m, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		return f.Embedding
	}
	plain, err := rawFaceplugin(t, 0, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	all, err := rawFaceplugin(t, 7, 1, "507")
	if err != nil {
		t.Fatal(err)
	}
	if c := cosine(embed(plain, false), embed(all, false)); c < 0.99999 {
		t.Errorf("pooled over all 7 rows: cosine %.6f with the model's own template, want 1", c)
	}
	eyes, err := rawFaceplugin(t, 4, 1, "507")
	if err != nil {
		t.Fatal(err)
	}
	// How much nearer the masked face is to its owner than another
	// person's face is: the margin a match needs.
	margin := func(p *Pipeline) float64 {
		own := embed(p, false)
		return cosine(own, embed(p, true)) - cosine(own, embedOther(p))
	}
	whole, peri := margin(plain), margin(eyes)
	t.Logf("painted mask, margin over another person: whole face %.3f, periocular %.3f", whole, peri)
	// Raw, on whole-face crops, the periocular margin is the smaller
	// one (0.026 against 0.158): the head, not the pooling, spreads it.
	both, err := rawFaceplugin(t, 4, 0.5, "507")
	if err != nil {
		t.Fatal(err)
	}
	if e := embed(both, false); len(e) != 1024 {
		t.Errorf("whole-face and periocular template: %d values, want 1024", len(e))
	}
	// A tensor the model does not have is refused when loading, never
	// asked of OpenCV (which would abort the process).
	if _, err := rawFaceplugin(t, 4, 0.5, "no-such-tensor"); err == nil || !strings.Contains(err.Error(), "periocular pooling") {
		t.Errorf("missing feature map: err %v", err)
	}
	if _, err := rawFaceplugin(t, 9, 0.5, "507"); err == nil || !strings.Contains(err.Error(), "pool_rows 9") {
		t.Errorf("more rows than the map has: err %v", err)
	}
}
