// Package eval runs the perception pipeline over labelled datasets and
// measures it: verification (ROC over all pairs, per mask pair type),
// detection rates, clustering quality and per-stage timings.
package eval

import (
	"context"
	"crypto/sha256"
	"encoding/gob"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/models/eval/dataset"
)

// Sample is one dataset image after perception.
type Sample struct {
	Rel       string
	Identity  string
	Masked    bool // ground truth (synthetic masks count as masked)
	Synthetic bool // a mask was painted on
	Found     bool
	Err       string // unreadable file, etc.
	Embedding []float32
	Quality   float64
	Score     float64
	Padded    bool
	Mask      visit.MaskState // predicted
	MaskScore float64
	Box       [4]float64
}

// Run is the perception output over a dataset plus timings.
type Run struct {
	Samples  []Sample
	Detect   []time.Duration // per image
	Embed    []time.Duration
	Decode   []time.Duration
	Embedder string
	Detector string
}

// EmbedOptions controls Embed.
type EmbedOptions struct {
	// SyntheticMasks paints masks on half of each identity's unmasked images.
	SyntheticMasks bool
	// Recrop re-cuts every face before perception (vision.Recrop).
	Recrop vision.Recrop
	// CacheDir, when set, keeps results keyed by models, settings and files.
	CacheDir string
	// CacheKey identifies the pipeline (model checksums and settings).
	CacheKey string
	Progress func(done, total int)
}

// Embed runs the pipeline over every still image of the dataset.
func Embed(ctx context.Context, p *vision.Pipeline, ds *dataset.Dataset, o EmbedOptions) (*Run, error) {
	items := ds.Images()
	if len(items) == 0 {
		return nil, fmt.Errorf("dataset %s has no still images", ds.Dir)
	}
	synth := make([]bool, len(items))
	if o.SyntheticMasks {
		synth = dataset.SyntheticHalf(items)
	}
	key := ""
	if o.CacheDir != "" {
		key = cacheKey(o, items, synth)
		if r, err := loadCache(o.CacheDir, key); err == nil {
			return r, nil
		}
	}
	r := &Run{Embedder: p.Embedder}
	for i, it := range items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s := Sample{Rel: it.Rel, Identity: it.Identity, Masked: it.Masked || synth[i], Synthetic: synth[i]}
		t0 := time.Now()
		data, err := os.ReadFile(it.Path)
		var f vision.Face
		var tm vision.Timings
		if err == nil {
			if synth[i] {
				f, err = faceWithSyntheticMask(p, data, i, &tm)
			} else if o.Recrop != vision.RecropNone {
				f, err = p.FaceInRecrop(data, o.Recrop, &tm)
			} else {
				f, err = p.FaceInImage(data, vision.FaceOptions{Limits: imagecheck.Limits{Formats: imagecheck.FormatsOpenCV}}, &tm)
			}
		}
		switch {
		case errors.Is(err, vision.ErrNoFace):
		case err != nil:
			s.Err = err.Error()
		default:
			s.Found = true
			s.Embedding = f.Embedding
			s.Quality, s.Score, s.Padded = f.Quality, f.Det.Score, f.Padded
			s.Mask, s.MaskScore = f.Mask, f.MaskScore
			s.Box = [4]float64{f.Det.X0, f.Det.Y0, f.Det.X1, f.Det.Y1}
		}
		total := time.Since(t0)
		r.Samples = append(r.Samples, s)
		r.Detect = append(r.Detect, tm.Detect)
		r.Embed = append(r.Embed, tm.Embed)
		r.Decode = append(r.Decode, total-tm.Detect-tm.Embed)
		if o.Progress != nil {
			o.Progress(i+1, len(items))
		}
	}
	if o.CacheDir != "" {
		_ = saveCache(o.CacheDir, key, r) // a cache that cannot be written only costs time
	}
	return r, nil
}

// faceWithSyntheticMask finds the face, paints a mask on it (style chosen by
// index, so runs are reproducible) and measures the masked image.
func faceWithSyntheticMask(p *vision.Pipeline, data []byte, i int, tm *vision.Timings) (vision.Face, error) {
	img, err := vision.DecodeImage(data, imagecheck.Limits{Formats: imagecheck.FormatsOpenCV})
	if err != nil {
		return vision.Face{}, err
	}
	defer img.Close()
	return p.FaceWithPaintedMask(img, i%vision.MaskStyles, tm)
}

func cacheKey(o EmbedOptions, items []dataset.Item, synth []bool) string {
	h := sha256.New()
	fmt.Fprintf(h, "v3|%s|%v|%s\n", o.CacheKey, o.SyntheticMasks, o.Recrop)
	for i, it := range items {
		st, err := os.Stat(it.Path)
		if err == nil {
			fmt.Fprintf(h, "%s|%d|%d|%v\n", it.Rel, st.Size(), st.ModTime().UnixNano(), synth[i])
		} else {
			fmt.Fprintf(h, "%s|missing\n", it.Rel)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:24]
}

func loadCache(dir, key string) (*Run, error) {
	f, err := os.Open(filepath.Join(dir, key+".gob"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r Run
	if err := gob.NewDecoder(f).Decode(&r); err != nil {
		return nil, err
	}
	return &r, nil
}

func saveCache(dir, key string, r *Run) error {
	// Templates of whatever faces were evaluated: a new cache folder is
	// the owner's only (its files are CreateTemp's 0600; a folder given
	// with --cache that exists keeps its mode).
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".run-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := gob.NewEncoder(tmp).Encode(r); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, key+".gob"))
}

// Progress draws a one-line progress counter on a terminal.
func Progress(w io.Writer, label string) func(done, total int) {
	start := time.Now()
	return func(done, total int) {
		if done%25 != 0 && done != total {
			return
		}
		el := time.Since(start)
		eta := time.Duration(float64(el) / float64(done) * float64(total-done))
		fmt.Fprintf(w, "\r%s %d/%d  %s elapsed, %s left   ", label, done, total, el.Round(time.Second), eta.Round(time.Second))
		if done == total {
			fmt.Fprintln(w)
		}
	}
}

// Fuse joins two runs of the same dataset by different embedders into one
// whose templates are both templates, each L2-normalised, concatenated
// with weights sqrt(1-w) and sqrt(w): the cosine of two fused templates is
// (1-w) x a's cosine + w x b's (score fusion). A face counts as found only
// when both runs found it; mask state and timings are a's.
func Fuse(a, b *Run, w float64) (*Run, error) {
	if len(a.Samples) != len(b.Samples) {
		return nil, fmt.Errorf("fuse: %d samples against %d", len(a.Samples), len(b.Samples))
	}
	if w <= 0 || w >= 1 {
		return nil, fmt.Errorf("fuse: weight %g, want between 0 and 1", w)
	}
	out := *a
	out.Embedder = fmt.Sprintf("%s+%s:%g", a.Embedder, b.Embedder, w)
	out.Samples = make([]Sample, len(a.Samples))
	wa, wb := math.Sqrt(1-w), math.Sqrt(w)
	for i, s := range a.Samples {
		t := b.Samples[i]
		if s.Rel != t.Rel {
			return nil, fmt.Errorf("fuse: sample %d is %s in one run and %s in the other", i, s.Rel, t.Rel)
		}
		if s.Found && !t.Found {
			s.Found, s.Embedding = false, nil
		}
		if s.Found {
			e := make([]float32, 0, len(s.Embedding)+len(t.Embedding))
			e = appendScaled(e, s.Embedding, wa)
			s.Embedding = appendScaled(e, t.Embedding, wb)
		}
		out.Samples[i] = s
	}
	return &out, nil
}

func appendScaled(dst, v []float32, w float64) []float32 {
	var n float64
	for _, x := range v {
		n += float64(x) * float64(x)
	}
	k := w / math.Sqrt(max(n, 1e-30))
	for _, x := range v {
		dst = append(dst, float32(float64(x)*k))
	}
	return dst
}
