package identity

import (
	"container/heap"
	"context"
	"math"
	"os"
	"strconv"
)

// Centroid: agglomerative clustering whose linkage compares class sums
// scaled by their norms instead of their counts (alpha 1: the cosine
// between the classes' mean templates; alpha 0: average linkage).
const Centroid Algorithm = "centroid"

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil {
		return v
	}
	return def
}

type ccl struct {
	sum   [2][]float64
	norm  [2]float64
	cnt   [2]int
	mem   []int32
	nbr   map[int32]struct{}
	ver   uint32
	alive bool
}

func centroidHAC(ctx context.Context, samples []Sample, opt ClusterOptions, dim int) ([]int, error) {
	alpha := envFloat("ATM_CENTROID_ALPHA", 1)
	loose := envFloat("ATM_CENTROID_LOOSE", 1.5)
	th := opt.Config.Thresholds
	real := thresholdArray(th)
	var inv [3]float64
	for i, t := range real {
		if t > 0 {
			inv[i] = 1 / t
		}
	}
	muOn := th.MUEnabled()
	lt := th
	lt.UU = min(2, th.UU*loose)
	lt.MM = min(2, th.MM*loose)
	if muOn {
		lt.MU = min(2, th.MU*loose)
	}
	sp := newSpace(dim, lt, opt.Config.Exact)
	for _, s := range samples {
		if err := sp.addNormalized(s.Embedding, maskClass(s.Mask)); err != nil {
			return nil, err
		}
	}
	es, err := sp.edges(ctx, opt.Config.Workers)
	if err != nil {
		return nil, err
	}
	n := sp.n()
	cs := make([]ccl, n)
	for i := range cs {
		c := sp.cls[i]
		v := make([]float64, dim)
		for k, x := range sp.row(i) {
			v[k] = float64(x)
		}
		cs[i].sum[c] = v
		cs[i].norm[c] = 1
		cs[i].cnt[c] = 1
		cs[i].mem = []int32{int32(i)}
		cs[i].nbr = map[int32]struct{}{}
		cs[i].alive = true
	}
	for _, e := range es {
		cs[e.i].nbr[e.j] = struct{}{}
		cs[e.j].nbr[e.i] = struct{}{}
	}
	guard := envFloat("ATM_CENTROID_GUARD", math.Inf(1))
	var G float64
	blk := func(a, b *ccl, ca, cb, pt int) (float64, float64) {
		w := float64(a.cnt[ca] * b.cnt[cb])
		var d float64
		for k, x := range a.sum[ca] {
			d += x * b.sum[cb][k]
		}
		den := math.Pow(w, 1-alpha) * math.Pow(a.norm[ca]*b.norm[cb], alpha)
		G += (w - d) * inv[pt]
		return w, w * (1 - d/den) * inv[pt]
	}
	link := func(a, b *ccl) (float64, bool) {
		var W, S float64
		G = 0
		if a.cnt[0]*b.cnt[0] > 0 {
			w, s := blk(a, b, 0, 0, ptUU)
			W, S = W+w, S+s
		}
		if a.cnt[1]*b.cnt[1] > 0 {
			w, s := blk(a, b, 1, 1, ptMM)
			W, S = W+w, S+s
		}
		if W == 0 {
			if !muOn {
				return 0, false
			}
			if a.cnt[0]*b.cnt[1] > 0 {
				w, s := blk(a, b, 0, 1, ptMU)
				W, S = W+w, S+s
			}
			if a.cnt[1]*b.cnt[0] > 0 {
				w, s := blk(a, b, 1, 0, ptMU)
				W, S = W+w, S+s
			}
		}
		if W == 0 {
			return 0, false
		}
		k := S / W
		return k, k <= 1 && G/W <= guard
	}
	h := &hheap{}
	push := func(a, b int32) {
		if a > b {
			a, b = b, a
		}
		if k, ok := link(&cs[a], &cs[b]); ok {
			heap.Push(h, hentry{key: k, a: a, b: b, va: cs[a].ver, vb: cs[b].ver, verified: true})
		}
	}
	for _, e := range es {
		push(e.i, e.j)
	}
	for h.Len() > 0 {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		top := heap.Pop(h).(hentry)
		ca, cb := &cs[top.a], &cs[top.b]
		if !ca.alive || !cb.alive || ca.ver != top.va || cb.ver != top.vb {
			continue
		}
		keep, gone := top.a, top.b
		if len(cs[gone].mem) > len(cs[keep].mem) {
			keep, gone = gone, keep
		}
		ck, cg := &cs[keep], &cs[gone]
		for c := 0; c < 2; c++ {
			if cg.cnt[c] == 0 {
				continue
			}
			if ck.sum[c] == nil {
				ck.sum[c] = make([]float64, dim)
			}
			var nn float64
			for k := range ck.sum[c] {
				ck.sum[c][k] += cg.sum[c][k]
				nn += ck.sum[c][k] * ck.sum[c][k]
			}
			ck.norm[c] = math.Sqrt(nn)
			ck.cnt[c] += cg.cnt[c]
		}
		ck.mem = append(ck.mem, cg.mem...)
		delete(ck.nbr, gone)
		for x := range cg.nbr {
			delete(cs[x].nbr, gone)
			if x != keep {
				ck.nbr[x] = struct{}{}
				cs[x].nbr[keep] = struct{}{}
			}
		}
		ck.ver++
		cs[gone] = ccl{}
		for x := range ck.nbr {
			push(keep, x)
		}
	}
	labels := make([]int, n)
	for c := range cs {
		for _, i := range cs[c].mem {
			labels[i] = c
		}
	}
	return renumber(labels), nil
}
