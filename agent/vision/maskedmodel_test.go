package vision

import (
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/models"
)

// TestMaskedModelEmbedsMaskedFaces: with a masked_model, a face the mask
// head calls masked is embedded by that net (on the same crop) and an
// unmasked face exactly as without it.
func TestMaskedModelEmbedsMaskedFaces(t *testing.T) {
	checkMats(t)
	dir, _ := modelsDir(t)
	open := func(embedder, masked string) *Pipeline {
		t.Helper()
		man, err := models.LoadManifest(filepath.Join(dir, "manifest.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		md, ok := man.Find("faceplugin")
		if !ok {
			t.Fatal("faceplugin is not in the models dir")
		}
		md.Embedding.MaskedModel = masked
		if err := man.Validate(); err != nil {
			t.Fatal(err)
		}
		cfg := DefaultConfig()
		cfg.Raw = true
		p, err := New(dir, man, "", embedder, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	base := open("faceplugin", "")
	hybrid := open("faceplugin", "faceplugin-masked")
	alone := open("faceplugin-masked", "")
	if base.TemplateModel == hybrid.TemplateModel || !strings.Contains(hybrid.TemplateModel, "faceplugin-masked") {
		t.Errorf("template tags %q and %q: a store must tell them apart", base.TemplateModel, hybrid.TemplateModel)
	}

	photo := sample(t, "sample1.jpg")
	fb, err := base.FaceInImage(photo, FaceOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	fh, err := hybrid.FaceInImage(photo, FaceOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fh.Mask == visit.Masked {
		t.Fatalf("the unmasked demo face is called masked (score %.3f)", fh.MaskScore)
	}
	if c := cosine(fb.Embedding, fh.Embedding); c < 0.99999 {
		t.Errorf("unmasked face: cosine %.6f to the embedder's own template, want the same template", c)
	}

	img, err := gocv.IMDecode(photo, gocv.IMReadColor)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	mb, err := base.FaceWithPaintedMask(img, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	mh, err := hybrid.FaceWithPaintedMask(img, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	ma, err := alone.FaceWithPaintedMask(img, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if mh.Mask != visit.Masked {
		t.Fatalf("painted mask not called masked (score %.3f)", mh.MaskScore)
	}
	if c := cosine(mh.Embedding, ma.Embedding); c < 0.99999 {
		t.Errorf("masked face: cosine %.6f to the masked model's template, want the same template", c)
	}
	if c := cosine(mh.Embedding, mb.Embedding); c > 0.999 {
		t.Errorf("masked face: cosine %.6f to the embedder's own template: the masked model was not used", c)
	}
}
