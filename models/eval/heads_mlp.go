package eval

import (
	"fmt"

	"github.com/periocular/atm-agent/models/eval/learn"
)

// fitMLP fits mlpBase on train, then the residual MLP on top of it. The
// number of epochs is chosen by early stopping on an inner identity split
// of train (fit on innerFold 0, score selectionScore on innerFold 1); the
// head is then refitted on all of train for that many epochs.
func (m Method) fitMLP(train []tagged, nsets int, cache *pcaCache, key string) (*headFit, error) {
	var in, val []tagged
	for _, t := range train {
		if innerFold(t.Identity) == 0 {
			in = append(in, t)
		} else {
			val = append(val, t)
		}
	}
	if len(in) == 0 || len(val) == 0 {
		return nil, fmt.Errorf("mlp: an inner fold is empty")
	}
	validate := func(apply func([]float32) []float32) float64 {
		held := make([][2][]Sample, nsets)
		for _, t := range val {
			s := t.Sample
			s.Embedding = apply(t.Embedding)
			held[t.set][0] = append(held[t.set][0], s)
		}
		var figs []map[string]PairFig
		for si := range held {
			figs = append(figs, heldOutFigs(held[si]))
		}
		return selectionScore(figs)
	}
	_, res, err := m.train(in, nsets, cache, key+" mlp inner", 0, func(h *learn.MLP) float64 { return validate(h.Apply) })
	if err != nil {
		return nil, err
	}
	epochs := res.BestEpoch
	if epochs == 0 {
		b, err := mlpBase.fit(train, nsets, cache, key)
		if err != nil {
			return nil, err
		}
		b.desc = "e=0 (base)"
		return b, nil
	}
	h, _, err := m.train(train, nsets, cache, key, epochs, nil)
	if err != nil {
		return nil, err
	}
	return &headFit{mlp: h, apply: h.Apply, desc: fmt.Sprintf("e=%d", epochs)}, nil
}

// train fits mlpBase and then the MLP on data, for epochs (0: m.MaxEpochs
// with early stopping by validate).
func (m Method) train(data []tagged, nsets int, cache *pcaCache, key string, epochs int, validate func(*learn.MLP) float64) (*learn.MLP, *learn.MLPResult, error) {
	b, err := mlpBase.fit(data, nsets, cache, key)
	if err != nil {
		return nil, nil, err
	}
	ids := map[string]int{}
	x := make([][]float32, len(data))
	labels := make([]int, len(data))
	for i, t := range data {
		c, ok := ids[t.Identity]
		if !ok {
			c = len(ids)
			ids[t.Identity] = c
		}
		x[i], labels[i] = t.Embedding, c
	}
	o := learn.MLPOptions{Hidden: m.Hidden, Margin: m.Margin, MaxEpochs: m.MaxEpochs, LR: m.LR, WeightDecay: m.WD, Validate: validate, Seed: 1}
	if epochs > 0 {
		o.MaxEpochs = epochs
	}
	return learn.FitMLP(x, labels, len(ids), b.lin, o)
}
