// Experiment (masked views; removed after measuring): genuine and impostor
// cosine-distance quantiles per pair type, MU plain and MU against the
// unmasked face's masked view, from an eval cache file (build/evalcache/KEY.gob).
package main

import (
	"encoding/gob"
	"fmt"
	"os"
	"sort"

	"github.com/periocular/atm-agent/models/eval"
)

func dot(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

func q(v []float64, p float64) float64 {
	if len(v) == 0 {
		return -1
	}
	sort.Float64s(v)
	return v[int(p*float64(len(v)-1))]
}

func main() {
	fh, _ := os.Open(os.Args[1])
	var r eval.Run
	if err := gob.NewDecoder(fh).Decode(&r); err != nil {
		panic(err)
	}
	var s []eval.Sample
	for _, x := range r.Samples {
		if x.Found {
			s = append(s, x)
		}
	}
	g := map[string][]float64{}
	im := map[string][]float64{}
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			a, b := s[i], s[j]
			var kinds = map[string]float64{}
			switch {
			case !a.Masked && !b.Masked:
				kinds["uu"] = 1 - dot(a.Embedding, b.Embedding)
			case a.Masked && b.Masked:
				kinds["mm"] = 1 - dot(a.Embedding, b.Embedding)
			default:
				if !a.Masked {
					a, b = b, a
				}
				kinds["mu"] = 1 - dot(a.Embedding, b.Embedding)
				kinds["mu-view"] = 1 - dot(a.Embedding, eval.ViewTemplate(b))
			}
			for k, d := range kinds {
				if a.Identity == b.Identity {
					g[k] = append(g[k], d)
				} else {
					im[k] = append(im[k], d)
				}
			}
		}
	}
	for _, k := range []string{"uu", "mm", "mu", "mu-view"} {
		fmt.Printf("%-8s genuine median %.3f p90 %.3f max %.3f | impostor min %.3f p0.1%% %.3f p1%% %.3f median %.3f\n", k, q(g[k], .5), q(g[k], .9), q(g[k], 1), q(im[k], 0), q(im[k], .001), q(im[k], .01), q(im[k], .5))
	}
}
