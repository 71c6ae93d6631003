package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/cli/modelscmd"
	"github.com/periocular/atm-agent/internal/paths"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/models/eval"
	"github.com/periocular/atm-agent/models/eval/dataset"
)

func init() {
	commands["eval"] = cli.Command{Summary: "measure perception and clustering on a labelled folder"}
}

// pipelineFlags selects and loads the perception pipeline.
type pipelineFlags struct {
	dir, detector, embedder string
	threads                 int
	crop                    string
	cropScale               float64
	flip, raw               bool
	minScore, padTight      float64
	cache                   string // embedding cache dir
	align                   string // arcface alignment points override
	fuse                    string
	landmarks               string // landmark model override
	recrop                  string // re-cut faces before perception (diagnostics)
}

// datasetFlags select the labelled folder an eval command measures.
type datasetFlags struct {
	dir, mask string
}

func (d *datasetFlags) register(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&d.dir, "dataset", "", "labelled folder (labels.csv: path,identity,masked)")
	fs.StringVar(&d.mask, "mask", "none", "none, or synthetic: paint masks on half of each identity's unmasked images")
}

// registerCache adds --cache for the commands that embed whole datasets.
func (pf *pipelineFlags) registerCache(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&pf.cache, "cache", paths.Work("evalcache"), "embedding cache dir (empty disables)")
}

func (d *datasetFlags) synthetic() bool { return d.mask == "synthetic" }

// writeJSON prints v indented: the eval commands' JSON contracts.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (pf *pipelineFlags) register(fs interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
	Float64Var(*float64, string, float64, string)
	BoolVar(*bool, string, bool, string)
}) {
	fs.StringVar(&pf.dir, "models-dir", modelscmd.DefaultDir(), "models dir holding manifest.yaml")
	fs.StringVar(&pf.detector, "detector", "", "detector model (default: the manifest's pipeline)")
	fs.StringVar(&pf.embedder, "embedder", "", "embedder model (default: the manifest's pipeline)")
	fs.IntVar(&pf.threads, "threads", 2, "OpenCV threads")
	fs.StringVar(&pf.crop, "crop", "", "override the embedder's crop policy: box, aligned or original (the original project's)")
	fs.Float64Var(&pf.cropScale, "crop-scale", 0, "override the embedder's crop scale (box side / detector box side)")
	fs.BoolVar(&pf.flip, "flip", false, "average each template with the mirrored face's")
	fs.BoolVar(&pf.raw, "raw", false, "skip the embedder's learned projection")
	fs.Float64Var(&pf.minScore, "min-score", -1, "override the detector score gate")
	fs.Float64Var(&pf.padTight, "pad-tight", -1, "override the tight-crop padding factor (0 disables)")
	fs.StringVar(&pf.landmarks, "landmarks", "", "landmark model the landmark alignments read (default: the manifest's pipeline.landmarks)")
	fs.StringVar(&pf.fuse, "fuse", "", "score fusion: NAME:W also runs embedder NAME (its manifest settings) and weighs its cosine W, the embedder's 1-W")
	fs.StringVar(&pf.align, "align", "", "override the arcface crop's alignment points: detector, eyes, landmarks or landmarks-eyes")
	fs.StringVar(&pf.recrop, "recrop", "", "re-cut each face before perception, as a tight-crop dataset is cut: tight (the detector box, 160x160) or tight-stretch (a taller box stretched to 160x160)")
}

func (pf *pipelineFlags) load() (*vision.Pipeline, *models.Manifest, string, error) {
	pp, err := pf.prepare()
	if err != nil {
		return nil, nil, "", err
	}
	p, err := pp.open()
	if err != nil {
		return nil, nil, "", err
	}
	return p, pp.man, pp.key, nil
}

// preparedPipeline is a pipeline's manifest (with the flags' overrides
// applied in memory), settings and cache key, before any net is loaded.
type preparedPipeline struct {
	dir                string
	man                *models.Manifest
	cfg                vision.Config
	detector, embedder string   // as given (empty: the manifest's)
	detectors          []string // the detection stage's models, fast first
	embedderName       string
	key                string
}

// open loads the nets.
func (pp *preparedPipeline) open() (*vision.Pipeline, error) {
	return vision.New(pp.dir, pp.man, pp.detector, pp.embedder, pp.cfg)
}

// prepare reads the manifest, applies the flags and names everything that
// changes the templates (the cache key) without loading a net.
func (pf *pipelineFlags) prepare() (*preparedPipeline, error) {
	man, err := models.LoadManifest(filepath.Join(pf.dir, "manifest.yaml"))
	if err != nil {
		return nil, err
	}
	cfg := vision.DefaultConfig()
	cfg.Threads = pf.threads
	cfg.Raw = pf.raw
	if pf.minScore >= 0 {
		cfg.MinScore = pf.minScore
	}
	if pf.padTight >= 0 {
		cfg.PadTight = pf.padTight
	}
	emb := pf.embedder
	if emb == "" {
		emb = man.Pipeline.Embedder
	}
	if pf.landmarks != "" {
		if _, ok := man.Find(pf.landmarks); !ok {
			return nil, fmt.Errorf("%w: --landmarks %q is not in the model manifest", cli.ErrUsage, pf.landmarks)
		}
		man.Pipeline.Landmarks = pf.landmarks
	}
	if md, ok := man.Find(emb); ok && md.Embedding != nil {
		if pf.crop != "" {
			md.Embedding.Crop = pf.crop
		}
		if pf.cropScale > 0 {
			md.Embedding.CropScale = pf.cropScale
		}
		if pf.flip {
			md.Embedding.Flip = true
		}
		if pf.align != "" {
			md.Embedding.Align = strings.TrimPrefix(pf.align, "detector")
		}
		if err := man.Validate(); err != nil {
			return nil, err
		}
	}
	// The detection stage as vision.New builds it: the manifest's detector
	// with its fast first stage, or the named one alone.
	detectors := []string{pf.detector}
	if pf.detector == "" {
		detectors = []string{man.Pipeline.Detector}
		if man.Pipeline.FastDetector != "" {
			detectors = []string{man.Pipeline.FastDetector, man.Pipeline.Detector}
		}
	}
	md, ok := man.Find(emb)
	if !ok {
		return nil, fmt.Errorf("embedder %q is not in the model manifest", emb)
	}
	emb = md.Name
	for i, d := range detectors {
		md, ok := man.Find(d)
		if !ok {
			return nil, fmt.Errorf("detector %q is not in the model manifest", d)
		}
		detectors[i] = md.Name
	}
	// The cache key names everything that changes the embeddings.
	kc := cfg
	kc.Raw = false     // only matters through the projection's checksum below
	kc.NoTrack = false // bursts only: evaluations embed single images
	key := fmt.Sprintf("%s|%s|%+v", vision.Revision, strings.Join(detectors, ">"), kc)
	if len(detectors) > 1 {
		key += fmt.Sprintf("|fast %v %v", man.Pipeline.FastMinScore, man.Pipeline.FastMinFace)
	}
	for _, name := range append(slices.Clone(detectors), emb) {
		if md, ok := man.Find(name); ok {
			key += "|" + md.SHA256 + fmt.Sprintf("%+v", md.Embedding) + fmt.Sprintf("%+v", md.Input)
			if md.Config != "" {
				// Caffe's deploy.prototxt is half of the model: the same
				// weights under another prototxt are another network.
				key += "|config " + md.ConfigSHA256
			}
			if md.MaskHead != nil {
				key += md.MaskHead.SHA256
			}
			if md.Embedding != nil && md.Embedding.Align != "" {
				if lm, ok := man.Find(man.Pipeline.Landmarks); ok {
					key += "|landmarks " + lm.SHA256
				}
			}
			if md.Projection != nil && !cfg.Raw {
				key += md.Projection.SHA256
			}
		}
	}
	return &preparedPipeline{dir: pf.dir, man: man, cfg: cfg, detector: pf.detector, embedder: pf.embedder,
		detectors: detectors, embedderName: emb, key: key}, nil
}

func evalVerify(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "eval verify", "eval verify --dataset DIR [--json] [--mask synthetic] [--roc FILE.png]")
	var pf pipelineFlags
	pf.register(fs)
	pf.registerCache(fs)
	var df datasetFlags
	df.register(fs)
	asJSON := fs.Bool("json", false, "print the JSON report instead of markdown")
	roc := fs.String("roc", "", "write ROC curves to this PNG file")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	run, ds, _, err := datasetRun(ctx, env, &pf, df.dir, df.mask)
	if err != nil {
		return err
	}
	rep := eval.Verify(run, ds.Name, df.synthetic())
	if *roc != "" {
		if err := rep.WriteROC(*roc); err != nil {
			return err
		}
	}
	if *asJSON {
		return writeJSON(env.Stdout, rep)
	}
	rep.Markdown(env.Stdout)
	return nil
}

// progressIfTerminal draws progress on stderr when it is a terminal.
func progressIfTerminal(env *cli.Env, label string) func(int, int) {
	if f, ok := env.Stderr.(*os.File); ok && isTerminal(f) {
		return eval.Progress(env.Stderr, label)
	}
	return nil
}

func init() {
	subs := commands["eval"]
	inner := map[string]cli.Command{
		"verify":         {Summary: "verification figures (ROC, TAR at FAR) per mask pair type", Run: evalVerify},
		"cluster":        {Summary: "clustering figures of several algorithms side by side", Run: evalCluster},
		"calibrate":      {Summary: "measure a model on a labelled folder and write its thresholds to the manifest", Run: evalCalibrate},
		"crops":          {Summary: "a PNG contact sheet of what the embedder is fed, for checking crops by eye", Run: evalCrops},
		"heldout":        {Summary: "clustering precision on identities the projection and the cuts were not fitted on", Run: evalHeldOut},
		"train-heads":    {Summary: "fit the embedder's mask classifier and mask-removing projection on labelled data", Run: evalTrainHeads},
		"mask-calibrate": {Summary: "recalibrate the embedder's mask head (Platt scaling, unknown band) on half of the identities, measured on the other half", Run: evalMaskCalibrate},
	}
	subs.Subs = inner
	commands["eval"] = subs
}

// datasetRun loads the dataset and runs (or reuses) the pipeline over it.
func datasetRun(ctx context.Context, env *cli.Env, pf *pipelineFlags, dir, mask string) (*eval.Run, *dataset.Dataset, *models.Manifest, error) {
	return datasetRunSubset(ctx, env, pf, dir, mask, 0, 0)
}

// datasetRunSubset is datasetRun on a bounded subset (see dataset.Subset).
func datasetRunSubset(ctx context.Context, env *cli.Env, pf *pipelineFlags, dir, mask string, maxPer, maxSingles int) (*eval.Run, *dataset.Dataset, *models.Manifest, error) {
	if dir == "" {
		return nil, nil, nil, fmt.Errorf("%w: --dataset is required", cli.ErrUsage)
	}
	if mask != "none" && mask != "synthetic" {
		return nil, nil, nil, fmt.Errorf("%w: --mask %q: want none or synthetic", cli.ErrUsage, mask)
	}
	ds, err := dataset.Load(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	if maxPer > 0 || maxSingles > 0 {
		ds = ds.Subset(maxPer, maxSingles)
	}
	recrop, err := vision.ParseRecrop(pf.recrop)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	p, man, key, err := pf.load()
	if err != nil {
		return nil, nil, nil, err
	}
	defer p.Close()
	run, err := eval.Embed(ctx, p, ds, eval.EmbedOptions{SyntheticMasks: mask == "synthetic", Recrop: recrop, CacheDir: pf.cache, CacheKey: key,
		Progress: progressIfTerminal(env, "embedding "+ds.Name)})
	if err != nil {
		return nil, nil, nil, err
	}
	run.Detector = p.Detector
	if pf.fuse != "" {
		name, ws, _ := strings.Cut(pf.fuse, ":")
		w, err := strconv.ParseFloat(ws, 64)
		if err != nil || name == "" {
			return nil, nil, nil, fmt.Errorf("%w: --fuse %q: want NAME:WEIGHT", cli.ErrUsage, pf.fuse)
		}
		other := pipelineFlags{dir: pf.dir, cache: pf.cache, threads: pf.threads, raw: pf.raw, minScore: pf.minScore, padTight: pf.padTight,
			detector: pf.detector, recrop: pf.recrop, embedder: name}
		b, _, _, err := datasetRunSubset(ctx, env, &other, dir, mask, maxPer, maxSingles)
		if err != nil {
			return nil, nil, nil, err
		}
		if run, err = eval.Fuse(run, b, w); err != nil {
			return nil, nil, nil, err
		}
	}
	return run, ds, man, nil
}

func evalCluster(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "eval cluster", "eval cluster --dataset DIR [--json] [--mask synthetic]")
	var pf pipelineFlags
	pf.register(fs)
	pf.registerCache(fs)
	var df datasetFlags
	df.register(fs)
	asJSON := fs.Bool("json", false, "print the JSON report instead of markdown")
	algos := fs.String("algorithms", "", "comma-separated algorithms (default: all)")
	eps := fs.Float64("eps", 0.5, "DBSCAN eps (euclidean), the original project's value")
	minSamples := fs.Int("min-samples", 2, "DBSCAN min_samples, the original project's value")
	cuts := fs.String("thresholds", "", "space-separated cut sets to sweep instead of the manifest's thresholds, each UU,MM,MU cosine distances or one value for all three")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	sets, err := parseCutSets(*cuts)
	if err != nil {
		return err
	}
	run, ds, man, err := datasetRun(ctx, env, &pf, df.dir, df.mask)
	if err != nil {
		return err
	}
	if sets == nil {
		th, err := embedderThresholds(man, run.Embedder)
		if err != nil {
			return err
		}
		sets = []identity.Thresholds{th}
	}
	for _, th := range sets {
		o := eval.ClusterOptions{Thresholds: th, Eps: *eps, MinSamples: *minSamples}
		for _, a := range splitList(*algos) {
			o.Algorithms = append(o.Algorithms, identity.Algorithm(a))
		}
		rep, err := eval.ClusterEval(ctx, run, ds.Name, o)
		if err != nil {
			return err
		}
		if *asJSON {
			if err := writeJSON(env.Stdout, rep); err != nil {
				return err
			}
			continue
		}
		if len(sets) > 1 {
			fmt.Fprintf(env.Stdout, "\n### Cuts UU %.4g, MM %.4g, MU %.4g\n", th.UU, th.MM, th.MU)
		}
		rep.Markdown(env.Stdout)
	}
	return nil
}

// parseCutSets reads --thresholds: space-separated sets, each "UU,MM,MU"
// or one value for all three pair types. Empty means none.
func parseCutSets(s string) ([]identity.Thresholds, error) {
	var sets []identity.Thresholds
	for _, f := range strings.Fields(s) {
		var v []float64
		for _, x := range strings.Split(f, ",") {
			c, err := strconv.ParseFloat(x, 64)
			if err != nil || c <= 0 || c >= 2 {
				return nil, fmt.Errorf("--thresholds %q: want cosine distances in (0, 2)", f)
			}
			v = append(v, c)
		}
		switch len(v) {
		case 1:
			sets = append(sets, identity.Thresholds{UU: v[0], MM: v[0], MU: v[0]})
		case 3:
			sets = append(sets, identity.Thresholds{UU: v[0], MM: v[1], MU: v[2]})
		default:
			return nil, fmt.Errorf("--thresholds %q: want UU,MM,MU or one value", f)
		}
	}
	return sets, nil
}

// embedderThresholds reads the calibrated thresholds of an embedder.
func embedderThresholds(man *models.Manifest, embedder string) (identity.Thresholds, error) {
	md, ok := man.Find(embedder)
	if !ok || md.Thresholds == nil || md.Thresholds.UU <= 0 {
		return identity.Thresholds{}, fmt.Errorf("embedder %s has no calibrated thresholds in the manifest: run `atm-tools eval calibrate --model %s --dataset DIR`", embedder, embedder)
	}
	t := md.Thresholds
	return t.Thresholds, nil
}

func evalCalibrate(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "eval calibrate", "eval calibrate --dataset DIR --model NAME [--far 1e-3] [--mask synthetic]")
	var pf pipelineFlags
	pf.register(fs)
	pf.registerCache(fs)
	var df datasetFlags
	df.register(fs)
	model := fs.String("model", "", "embedder to calibrate (default: the manifest's pipeline embedder)")
	far := fs.Float64("far", 1e-3, "target false accept rate per pair")
	also := fs.String("manifest", "", "also write the thresholds into this manifest (e.g. models/manifest.yaml)")
	types := fs.String("types", "uu,mm,mu", "pair types to write (the others keep their values): lets each type be calibrated on the data that has it")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *far <= 0 || *far >= 1 {
		return fmt.Errorf("%w: --far %v: want a rate in (0,1)", cli.ErrUsage, *far)
	}
	pf.embedder = *model
	run, ds, man, err := datasetRun(ctx, env, &pf, df.dir, df.mask)
	if err != nil {
		return err
	}
	th, tar := eval.Calibrate(run, *far)
	if th.UU <= 0 {
		return fmt.Errorf("dataset %s gave no unmasked impostor pairs: cannot calibrate", ds.Name)
	}
	write := splitList(*types)
	for _, t := range write {
		if t != "uu" && t != "mm" && t != "mu" {
			return fmt.Errorf("%w: --types %q: want uu, mm, mu", cli.ErrUsage, t)
		}
	}
	got := map[string]float64{"uu": th.UU, "mm": th.MM, "mu": th.MU}
	for _, w := range write {
		if got[w] <= 0 {
			return fmt.Errorf("dataset %s has no %s impostor pairs, so %s cannot be calibrated on it: give --types without it, or --mask synthetic to paint masks", ds.Name, strings.ToUpper(w), w)
		}
	}
	note := fmt.Sprintf("%s: %s (%d images, mask %s)", strings.Join(write, "+"), ds.Name, len(run.Samples), df.mask)
	update := func(md *models.Model) {
		old := models.Thresholds{}
		if md.Thresholds != nil {
			old = *md.Thresholds
		}
		t := old
		t.FAR = *far
		for _, w := range write {
			switch w {
			case "uu":
				t.UU = round4(th.UU)
			case "mm":
				t.MM = round4(th.MM)
			case "mu":
				t.MU = round4(th.MU)
			}
		}
		t.Dataset = note
		if old.Dataset != "" && len(write) < 3 {
			t.Dataset = old.Dataset + "; " + note
		}
		md.Thresholds = &t
	}
	md, _ := man.Find(run.Embedder)
	update(md)
	if err := man.Save(filepath.Join(pf.dir, "manifest.yaml")); err != nil {
		return err
	}
	if *also != "" {
		other, err := models.LoadManifest(*also)
		if err != nil {
			return err
		}
		omd, ok := other.Find(run.Embedder)
		if !ok {
			return fmt.Errorf("%s has no model %s", *also, run.Embedder)
		}
		update(omd)
		if err := other.Save(*also); err != nil {
			return err
		}
	}
	fmt.Fprintf(env.Stdout, "%s at FAR %g on %s: uu %.4f (TAR %.3f)  mm %.4f (TAR %.3f)  mu %.4f (TAR %.3f)\n", run.Embedder, *far, ds.Name,
		th.UU, tar["uu"], th.MM, tar["mm"], th.MU, tar["mu"])
	return nil
}

func round4(v float64) float64 { return float64(int64(v*1e4+0.5)) / 1e4 }

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func evalCrops(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "eval crops", "eval crops --dataset DIR --out SHEET.png [--identities 8] [--per-identity 6] [--recrop tight]")
	var pf pipelineFlags
	pf.register(fs)
	var df datasetFlags
	df.register(fs)
	out := fs.String("out", "", "PNG file to write")
	ids := fs.Int("identities", 8, "identities (rows)")
	per := fs.Int("per-identity", 6, "images per identity")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if df.dir == "" || *out == "" {
		return fmt.Errorf("%w: --dataset and --out are required", cli.ErrUsage)
	}
	recrop, err := vision.ParseRecrop(pf.recrop)
	if err != nil {
		return fmt.Errorf("%w: %v", cli.ErrUsage, err)
	}
	ds, err := dataset.Load(df.dir)
	if err != nil {
		return err
	}
	p, _, _, err := pf.load()
	if err != nil {
		return err
	}
	defer p.Close()
	return eval.ContactSheet(ctx, p, ds, eval.SheetOptions{Recrop: recrop, Identities: *ids, PerIdentity: *per}, *out, env.Stdout)
}
