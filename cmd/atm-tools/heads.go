package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/models/eval"
)

// evalTrainHeads fits the embedder's mask classifier and mask-removing
// projection on labelled dev data and records them in the manifest.
func evalTrainHeads(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "eval train-heads", "eval train-heads --dataset DIR[:synthetic] ... [--nap-k 0,8,16] [--ship-k 16] [--manifest models/manifest.yaml]")
	var pf pipelineFlags
	pf.register(fs)
	pf.registerCache(fs)
	var sets multiFlag
	fs.Var(&sets, "dataset", "labelled folder; DIR:synthetic paints masks on half of each identity's unmasked images (repeatable)")
	napK := fs.String("nap-k", "0,4,8,16,32", "projection sizes to compare (identity-held-out)")
	shipK := fs.Int("ship-k", 0, "NAP projection size to write (0: none; same as --ship napK)")
	typeCuts := fs.Float64("type-cuts", 0, "also score every method the way the identity engine decides: one cut per predicted pair type at this impostor FAR on the training fold, a pair scored by its similarity minus its type's cut (0: off)")
	var methods multiFlag
	fs.Var(&methods, "method", "projection to compare, identity-held-out: napK, wccn[:p=128,256][:a=0.01,0.1], lda[:p=256][:a=0.1][:k=64,128], napK+wccn..., napK+lda...; lists are grids searched on the training identities only (repeatable)")
	ship := fs.String("ship", "", "projection to fit on all the data and write (a --method spec; overrides --ship-k)")
	manifest := fs.String("manifest", "", "manifest to record the heads in (e.g. models/manifest.yaml); heads are written to its heads/ folder")
	maxPer := fs.Int("max-per-identity", 0, "in :synthetic datasets, use at most this many images per identity (0: all)")
	maxSingles := fs.Int("max-singletons", 0, "in :synthetic datasets, use at most this many single-image identities (0: all)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if len(sets) == 0 {
		return fmt.Errorf("%w: at least one --dataset", cli.ErrUsage)
	}
	pf.raw = true
	var ks []int
	for _, s := range splitList(*napK) {
		k, err := strconv.Atoi(s)
		if err != nil || k < 0 {
			return fmt.Errorf("%w: --nap-k %q", cli.ErrUsage, s)
		}
		ks = append(ks, k)
	}
	var ms []eval.Method
	for _, spec := range methods {
		m, err := eval.ParseMethod(spec)
		if err != nil {
			return fmt.Errorf("%w: %v", cli.ErrUsage, err)
		}
		ms = append(ms, m)
	}
	var shipM *eval.Method
	if *ship != "" {
		m, err := eval.ParseMethod(*ship)
		if err != nil {
			return fmt.Errorf("%w: --ship: %v", cli.ErrUsage, err)
		}
		shipM = &m
	}
	trainSets, _, err := loadSets(ctx, env, &pf, sets, *maxPer, *maxSingles)
	if err != nil {
		return err
	}
	embedder := trainSets[len(trainSets)-1].Run.Embedder
	trained := fmt.Sprintf("atm-tools eval train-heads %s (dev halves), embedder %s", strings.Join(args, " "), embedder)
	mc, proj, rep, err := eval.TrainHeads(trainSets, eval.HeadsOptions{Methods: ms, NAPK: ks, Ship: shipM, ShipK: *shipK, Trained: trained, Embedder: embedder, TypeCuts: *typeCuts})
	if err != nil {
		return err
	}
	rep.Markdown(env.Stdout)
	if *manifest == "" {
		return nil
	}
	headsDir := filepath.Join(filepath.Dir(*manifest), "heads")
	man, md, err := recordMaskHead(*manifest, embedder, mc, trained)
	if err != nil {
		return err
	}
	md.Projection = nil
	if proj != nil {
		name := fmt.Sprintf("%s-nap%d.f32", embedder, len(proj.U))
		if len(proj.W) > 0 {
			name = fmt.Sprintf("%s-linear%d.f32", embedder, len(proj.W))
		}
		pb, err := vision.EncodeProjection(proj)
		if err != nil {
			return err
		}
		if md.Projection, err = writeHead(headsDir, name, pb, trained); err != nil {
			return err
		}
	}
	if md.Projection != nil && md.Thresholds != nil {
		fmt.Fprintf(env.Stdout, "\nthe projection changed: recalibrate %s's thresholds (`atm-tools eval calibrate`)\n", embedder)
	}
	if err := man.Save(*manifest); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "\nwrote heads to %s and recorded them in %s; run `atm-tools models build` to install them\n", headsDir, *manifest)
	return nil
}

// recordMaskHead writes mc as the embedder's mask head in the manifest's
// heads/ folder and records it in the manifest, returned unsaved with the
// embedder's entry.
func recordMaskHead(manifest, embedder string, mc *vision.MaskClassifier, provenance string) (*models.Manifest, *models.Model, error) {
	man, err := models.LoadManifest(manifest)
	if err != nil {
		return nil, nil, err
	}
	md, ok := man.Find(embedder)
	if !ok {
		return nil, nil, fmt.Errorf("%s has no model %s", manifest, embedder)
	}
	b, err := json.Marshal(mc)
	if err != nil {
		return nil, nil, err
	}
	if md.MaskHead, err = writeHead(filepath.Join(filepath.Dir(manifest), "heads"), embedder+"-mask.json", b, provenance); err != nil {
		return nil, nil, err
	}
	return man, md, nil
}

func writeHead(dir, name string, b []byte, provenance string) (*models.Head, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, b, 0o644); err != nil {
		return nil, err
	}
	sum, err := models.FileSHA256(file)
	if err != nil {
		return nil, err
	}
	return &models.Head{File: name, SHA256: sum, Provenance: provenance}, nil
}

// loadSets runs the pipeline over each DIR[:synthetic] spec (a :synthetic
// set paints masks on half of each identity's unmasked images, and keeps at
// most maxPer images per identity and maxSingles single-image identities;
// 0: all). The sets are named DIR's dataset name, +synthetic.
func loadSets(ctx context.Context, env *cli.Env, pf *pipelineFlags, specs []string, maxPer, maxSingles int) ([]eval.Set, *models.Manifest, error) {
	var out []eval.Set
	var man *models.Manifest
	for _, s := range specs {
		dir, mode := s, "none"
		if strings.HasSuffix(s, ":synthetic") {
			dir, mode = strings.TrimSuffix(s, ":synthetic"), "synthetic"
		}
		mp, ms := 0, 0
		if mode == "synthetic" {
			mp, ms = maxPer, maxSingles
		}
		run, ds, m, err := datasetRunSubset(ctx, env, pf, dir, mode, mp, ms)
		if err != nil {
			return nil, nil, err
		}
		name := ds.Name
		if mode == "synthetic" {
			name += "+synthetic"
		}
		out = append(out, eval.Set{Name: name, Run: run})
		man = m
	}
	return out, man, nil
}

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
