package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/periocular/atm-agent/eval"
	"github.com/periocular/atm-agent/eval/dataset"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/vision"
)

func init() {
	commands["eval"] = command{"measure perception and clustering on a labelled folder", subcommands("eval", map[string]command{
		"verify": {"verification figures (ROC, TAR at FAR) per mask pair type", evalVerify},
	})}
}

// pipelineFlags selects and loads the perception pipeline.
type pipelineFlags struct {
	dir, detector, embedder string
	threads                 int
}

func (pf *pipelineFlags) register(fs interface {
	StringVar(*string, string, string, string)
	IntVar(*int, string, int, string)
}) {
	fs.StringVar(&pf.dir, "models-dir", defaultModelsDir(), "models dir holding manifest.yaml")
	fs.StringVar(&pf.detector, "detector", "", "detector model (default: the manifest's pipeline)")
	fs.StringVar(&pf.embedder, "embedder", "", "embedder model (default: the manifest's pipeline)")
	fs.IntVar(&pf.threads, "threads", 2, "OpenCV threads")
}

func (pf *pipelineFlags) load() (*vision.Pipeline, *models.Manifest, string, error) {
	man, err := models.LoadManifest(filepath.Join(pf.dir, "manifest.yaml"))
	if err != nil {
		return nil, nil, "", err
	}
	cfg := vision.DefaultConfig()
	cfg.Threads = pf.threads
	p, err := vision.New(pf.dir, man, pf.detector, pf.embedder, cfg)
	if err != nil {
		return nil, nil, "", err
	}
	det := pf.detector
	if det == "" {
		det = man.Pipeline.Detector
	}
	// The cache key names everything that changes the embeddings.
	key := fmt.Sprintf("%s|%+v", det, cfg)
	for _, name := range []string{det, p.Embedder} {
		if md, ok := man.Find(name); ok {
			key += "|" + md.SHA256 + fmt.Sprintf("%+v", md.Embedding) + fmt.Sprintf("%+v", md.Input)
			if md.MaskHead != nil {
				key += md.MaskHead.SHA256
			}
		}
	}
	return p, man, key, nil
}

func evalVerify(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "eval verify", "eval verify --dataset DIR [--json] [--mask synthetic] [--roc FILE.png]")
	var pf pipelineFlags
	pf.register(fs)
	dir := fs.String("dataset", "", "labelled folder (labels.csv: path,identity,masked)")
	asJSON := fs.Bool("json", false, "print the JSON report instead of markdown")
	mask := fs.String("mask", "none", "none, or synthetic: paint masks on half of each identity's unmasked images")
	roc := fs.String("roc", "", "write ROC curves to this PNG file")
	cache := fs.String("cache", filepath.Join("build", "evalcache"), "embedding cache dir (empty disables)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("%w: --dataset is required", errUsage)
	}
	if *mask != "none" && *mask != "synthetic" {
		return fmt.Errorf("%w: --mask %q: want none or synthetic", errUsage, *mask)
	}
	ds, err := dataset.Load(*dir)
	if err != nil {
		return err
	}
	p, _, key, err := pf.load()
	if err != nil {
		return err
	}
	defer p.Close()
	run, err := eval.Embed(ctx, p, ds, eval.EmbedOptions{SyntheticMasks: *mask == "synthetic", CacheDir: *cache, CacheKey: key,
		Progress: progressIfTerminal(env, "embedding "+ds.Name)})
	if err != nil {
		return err
	}
	run.Detector = pf.detector
	rep := eval.Verify(run, ds.Name, *mask == "synthetic")
	if *roc != "" {
		if err := rep.WriteROC(*roc); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.Markdown(env.stdout)
	return nil
}

// progressIfTerminal draws progress on stderr when it is a terminal.
func progressIfTerminal(env *cliEnv, label string) func(int, int) {
	if f, ok := env.stderr.(*os.File); ok && isTerminal(f) {
		return eval.Progress(env.stderr, label)
	}
	return nil
}
