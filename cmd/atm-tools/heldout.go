package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/models/eval"
)

// evalHeldOut measures clustering precision on identities that neither the
// projection nor the cuts were fitted on (eval.HeldOutClustering).
func evalHeldOut(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "eval heldout", `eval heldout --train DIR[:synthetic] ... --dataset DIR[:synthetic] ... --thresholds "UU,MM,MU ..." [--min-precision NAME=P,...]`)
	var pf pipelineFlags
	pf.register(fs)
	pf.registerCache(fs)
	var train, sets multiFlag
	fs.Var(&train, "train", "labelled folder the projection is fitted on (its other fold); DIR:synthetic paints masks on half of each identity's unmasked images (repeatable)")
	fs.Var(&sets, "dataset", "labelled folder clustered, DIR:synthetic as above (repeatable)")
	method := fs.String("method", "nap4+wccn:p=256:a=0.7", "projection fitted on each fold (a train-heads --method spec)")
	cuts := fs.String("thresholds", "", "candidate cut sets, space-separated, each UU,MM,MU or one value")
	minP := fs.String("min-precision", "", "BCubed precision a set must keep on the fitting half, NAME=P,... (set names as printed, e.g. lfw+synthetic)")
	defP := fs.Float64("default-precision", 0.95, "minimum BCubed precision of a set not named in --min-precision")
	maxPer := fs.Int("max-per-identity", 0, "in :synthetic training sets, use at most this many images per identity (0: all)")
	maxSingles := fs.Int("max-singletons", 0, "in :synthetic training sets, use at most this many single-image identities (0: all)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if len(train) == 0 || len(sets) == 0 {
		return fmt.Errorf("%w: at least one --train and one --dataset", cli.ErrUsage)
	}
	m, err := eval.ParseMethod(*method)
	if err != nil {
		return fmt.Errorf("%w: --method: %v", cli.ErrUsage, err)
	}
	cs, err := parseCutSets(*cuts)
	if err != nil || len(cs) == 0 {
		return fmt.Errorf("%w: --thresholds %q: %v", cli.ErrUsage, *cuts, err)
	}
	mp := map[string]float64{}
	for _, kv := range splitList(*minP) {
		k, v, ok := strings.Cut(kv, "=")
		p, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil || p < 0 || p > 1 {
			return fmt.Errorf("%w: --min-precision %q: want NAME=P with P in [0, 1]", cli.ErrUsage, kv)
		}
		mp[k] = p
	}
	pf.raw = true
	trainSets, _, err := loadSets(ctx, env, &pf, train, *maxPer, *maxSingles)
	if err != nil {
		return err
	}
	clusterSets, _, err := loadSets(ctx, env, &pf, sets, 0, 0)
	if err != nil {
		return err
	}
	for k := range mp {
		known := false
		for _, s := range clusterSets {
			known = known || s.Name == k
		}
		if !known {
			return fmt.Errorf("%w: --min-precision names %q, which is not a --dataset", cli.ErrUsage, k)
		}
	}
	rep, err := eval.HeldOutClustering(ctx, trainSets, clusterSets, eval.HeldOutOptions{Method: m, Cuts: cs, MinPrecision: mp, Default: *defP})
	if err != nil {
		return err
	}
	rep.Markdown(env.Stdout)
	return nil
}
