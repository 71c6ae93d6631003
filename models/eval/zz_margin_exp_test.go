package eval

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/periocular/atm-agent/agent/visit"
)

func TestZZMarginExp(t *testing.T) {
	dir := os.Getenv("EXP_CACHE")
	if dir == "" {
		t.Skip()
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.gob"))
	for _, f := range files {
		key := filepath.Base(f[:len(f)-4])
		r, err := loadCache(dir, key)
		if err != nil {
			t.Fatal(err)
		}
		nm, ns, dim := 0, 0, 0
		for _, s := range r.Samples {
			if s.Found {
				dim = len(s.Embedding)
				if s.Masked {
					nm++
				}
				if s.Synthetic {
					ns++
				}
			}
		}
		fmt.Printf("%s emb=%s n=%d dim=%d masked=%d synth=%d first=%s\n", key, r.Embedder, len(r.Samples), dim, nm, ns, r.Samples[0].Rel)
		if dim != 256 || nm == 0 {
			continue // only the shipped pipeline's templates of masked sets
		}
		marginSim(r)
	}
}

func marginSim(r *Run) {
	type g struct{ rows [][]float32 }
	gal := map[string]*g{}
	var ids []string
	var qs []Sample
	for _, s := range r.Samples {
		if !s.Found {
			continue
		}
		if s.Mask == visit.Masked {
			qs = append(qs, s)
			continue
		}
		if s.Mask != visit.Unmasked && s.Mask != visit.MaskUnknown {
			continue
		}
		if gal[s.Identity] == nil {
			gal[s.Identity] = &g{}
			ids = append(ids, s.Identity)
		}
		gal[s.Identity].rows = append(gal[s.Identity].rows, s.Embedding)
	}
	type res struct {
		own, d1, d2 float64
		best        string
		ownOK       bool
		id          string
	}
	var out []res
	for _, q := range qs {
		x := q.Embedding
		var nx float64
		for _, v := range x {
			nx += float64(v) * float64(v)
		}
		nx = math.Sqrt(nx)
		d1, d2 := math.Inf(1), math.Inf(1)
		best := ""
		own := math.Inf(1)
		for _, id := range ids {
			var sum float64
			for _, y := range gal[id].rows {
				var dp, ny float64
				for k := range x {
					dp += float64(x[k]) * float64(y[k])
					ny += float64(y[k]) * float64(y[k])
				}
				sum += 1 - dp/(nx*math.Sqrt(ny))
			}
			d := sum / float64(len(gal[id].rows))
			if id == q.Identity {
				own = d
			}
			if d < d1 {
				d2, d1, best = d1, d, id
			} else if d < d2 {
				d2 = d
			}
		}
		out = append(out, res{own: own, d1: d1, d2: d2, best: best, ownOK: !math.IsInf(own, 1), id: q.Identity})
	}
	nOwn := 0
	for _, o := range out {
		if o.ownOK {
			nOwn++
		}
	}
	fmt.Printf("  queries %d (with own gallery %d), gallery identities %d\n", len(out), nOwn, len(ids))
	for _, c := range []float64{0.50, 0.53, 0.55, 0.57, 0.60} {
		for _, rr := range []float64{1, 0.95, 0.9, 0.85, 0.8} {
			ok, bad := 0, 0
			for _, o := range out {
				if o.d1 <= c && o.d1 <= rr*o.d2 {
					if o.best == o.id {
						ok++
					} else {
						bad++
					}
				}
			}
			fmt.Printf("  cut %.2f ratio %.2f: right %d (%.3f of %d) wrong %d (%.4f of %d)\n", c, rr, ok, float64(ok)/float64(nOwn), nOwn, bad, float64(bad)/float64(len(out)), len(out))
		}
	}
	// distribution of own-vs-best for right answers
	var ownD []float64
	for _, o := range out {
		if o.ownOK {
			ownD = append(ownD, o.own)
		}
	}
	sort.Float64s(ownD)
	if len(ownD) > 0 {
		fmt.Printf("  own-identity MU linkage quantiles 10/25/50/75: %.3f %.3f %.3f %.3f\n", ownD[len(ownD)/10], ownD[len(ownD)/4], ownD[len(ownD)/2], ownD[3*len(ownD)/4])
	}
}
