package eval

import (
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/models/eval/learn"
	"github.com/periocular/atm-agent/models/eval/metrics"
)

func zzReport(tag string, s []Sample) {
	sc := PairScores(s)
	out := tag
	for _, pt := range []string{"all", "uu", "mm", "mu"} {
		g, im := sc.genuine[pt], sc.impostor[pt]
		if len(g) == 0 {
			continue
		}
		t2, _ := metrics.TARAtFAR(g, im, 1e-2)
		t3, _ := metrics.TARAtFAR(g, im, 1e-3)
		out += fmt.Sprintf("  %s AUC %.3f TAR2 %.3f TAR3 %.3f", pt, metrics.AUC(g, im), t2, t3)
	}
	fmt.Println(out)
}

func zzFold(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % 2)
}

// transform returns copies of test with the mean of fit subtracted and,
// when white > 0, PCA-whitened with shrinkage white.
func zzTransform(fit, test []Sample, white float64) []Sample {
	d := len(fit[0].Embedding)
	mean := make([]float64, d)
	for _, s := range fit {
		for i, v := range s.Embedding {
			mean[i] += float64(v)
		}
	}
	for i := range mean {
		mean[i] /= float64(len(fit))
	}
	var vecs [][]float64
	var scale []float64
	if white > 0 {
		c := make([]float64, d*d)
		for _, s := range fit {
			for i := 0; i < d; i++ {
				xi := float64(s.Embedding[i]) - mean[i]
				for j := 0; j < d; j++ {
					c[i*d+j] += xi * (float64(s.Embedding[j]) - mean[j]) / float64(len(fit))
				}
			}
		}
		vals, v := learn.SymEig(c, d)
		avg := 0.0
		for _, x := range vals {
			avg += x
		}
		avg /= float64(d)
		vecs = v
		for _, x := range vals {
			scale = append(scale, 1/math.Sqrt(math.Max(x, 0)+white*avg))
		}
	}
	out := make([]Sample, len(test))
	for k, s := range test {
		v := make([]float64, d)
		for i, x := range s.Embedding {
			v[i] = float64(x) - mean[i]
		}
		if vecs != nil {
			r := make([]float64, d)
			for j := range vecs {
				var p float64
				for i, x := range v {
					p += vecs[j][i] * x
				}
				r[j] = p * scale[j]
			}
			v = r
		}
		var n float64
		for _, x := range v {
			n += x * x
		}
		n = math.Sqrt(n)
		e := make([]float32, d)
		for i := range v {
			e[i] = float32(v[i] / n)
		}
		s.Embedding = e
		out[k] = s
	}
	return out
}

func TestZZCenter(t *testing.T) {
	dir := os.Getenv("ZZ_CACHE")
	if dir == "" {
		t.Skip()
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.gob"))
	for _, f := range files {
		r, err := loadCache(dir, strings.TrimSuffix(filepath.Base(f), ".gob"))
		if err != nil {
			continue
		}
		var found []Sample
		for _, s := range r.Samples {
			if s.Found {
				found = append(found, s)
			}
		}
		if len(found) == 0 || (os.Getenv("ZZ_ALL") == "" && !strings.Contains(found[0].Rel, "aidai")) {
			continue
		}
		nm := 0
		for _, s := range found {
			if s.Masked {
				nm++
			}
		}
		fmt.Println("first", found[0].Rel, "masked", nm)
		fmt.Println("==", filepath.Base(f), r.Embedder, len(found), "dims", len(found[0].Embedding))
		var a, b []Sample
		for _, s := range found {
			if zzFold(s.Identity) == 0 {
				a = append(a, s)
			} else {
				b = append(b, s)
			}
		}
		for _, p := range [][2][]Sample{{a, b}, {b, a}} {
			fit, test := p[0], p[1]
			zzReport("plain        ", test)
			zzReport("own mean     ", zzTransform(test, test, 0))
			zzReport("other mean   ", zzTransform(fit, test, 0))
			for _, w := range []float64{1} {
				zzReport(fmt.Sprintf("other white %.1f", w), zzTransform(fit, test, w))
			}
		}
	}
}
