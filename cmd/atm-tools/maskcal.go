package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/models/eval"
)

// evalMaskCalibrate recalibrates the embedder's mask head (Platt scaling of
// its logit and a new unknown band) on one half of the identities of the
// dev sets, and reports it against the head as it is on the other half and
// on test sets.
func evalMaskCalibrate(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "eval mask-calibrate", "eval mask-calibrate --dataset DIR[:synthetic] ... [--test DIR] [--target-wrong 0.01] [--manifest models/manifest.yaml]")
	var pf pipelineFlags
	pf.register(fs)
	pf.registerCache(fs)
	var sets, tests multiFlag
	fs.Var(&sets, "dataset", "labelled folder fitted on (its fitting half only); DIR:synthetic paints masks on half of each identity's unmasked images (repeatable)")
	fs.Var(&tests, "test", "labelled folder only measured, never fitted on (repeatable; DIR:synthetic as for --dataset)")
	fitFold := fs.Int("fit-fold", 0, "the half of the identities (0 or 1, the heads' identity split) fitted on; the other half measures")
	target := fs.String("target-wrong", "0.01", "most share of each class called the other class, per fitting set, on its fitting half; auto: the share the head as it is gets wrong there (at least 0.01)")
	asJSON := fs.Bool("json", false, "print the JSON report instead of markdown")
	retrain := fs.Bool("retrain", false, "fit a new logistic head on the fitting half (raw templates; class- and set-balanced) instead of keeping the head's weights")
	oldRecipe := fs.Bool("old-recipe", false, "with --retrain: refit the head as train-heads does (pooled, class-balanced, +-0.15 band), on the fitting half only: the shipped head's recipe measured fairly")
	manifest := fs.String("manifest", "", "write the recalibrated head to this manifest's heads/ folder and record it (e.g. models/manifest.yaml)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if len(sets) == 0 {
		return fmt.Errorf("%w: at least one --dataset", cli.ErrUsage)
	}
	targetWrong := -1.0
	if *target != "auto" {
		v, err := strconv.ParseFloat(*target, 64)
		if err != nil || v < 0 || v >= 0.5 {
			return fmt.Errorf("%w: --target-wrong %q: want auto or a share in [0, 0.5)", cli.ErrUsage, *target)
		}
		targetWrong = v
	}
	// The mask head reads the raw template; the retrained one needs it too.
	pf.raw = pf.raw || *retrain
	if *oldRecipe && !*retrain {
		return fmt.Errorf("%w: --old-recipe needs --retrain", cli.ErrUsage)
	}
	fit, man, err := loadSets(ctx, env, &pf, sets, 0, 0)
	if err != nil {
		return err
	}
	test, _, err := loadSets(ctx, env, &pf, tests, 0, 0)
	if err != nil {
		return err
	}
	embedder := fit[0].Run.Embedder
	head, err := vision.LoadMaskClassifier(pf.dir, man, embedder)
	if err != nil {
		return err
	}
	trained := fmt.Sprintf("%s; recalibrated by atm-tools eval mask-calibrate %s (fitted on identity fold %d only), embedder %s",
		head.Trained, strings.Join(args, " "), *fitFold, embedder)
	if *retrain {
		trained = fmt.Sprintf("atm-tools eval mask-calibrate %s (head and calibration fitted on identity fold %d only), embedder %s",
			strings.Join(args, " "), *fitFold, embedder)
	}
	out, rep, err := eval.CalibrateMask(head, fit, test, eval.MaskCalOptions{FitFold: *fitFold, TargetWrong: targetWrong, Trained: trained, Retrain: *retrain, OldRecipe: *oldRecipe})
	if err != nil {
		return err
	}
	if *asJSON {
		if err := writeJSON(env.Stdout, rep); err != nil {
			return err
		}
	} else {
		rep.Markdown(env.Stdout)
	}
	if *manifest == "" {
		return nil
	}
	mf, _, err := recordMaskHead(*manifest, embedder, out, trained)
	if err != nil {
		return err
	}
	if err := mf.Save(*manifest); err != nil {
		return err
	}
	fmt.Fprintf(env.Stderr, "wrote %s's recalibrated mask head and recorded it in %s; run `make models` to install it\n", embedder, *manifest)
	return nil
}
