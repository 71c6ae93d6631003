package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/models/batch"
)

func init() {
	commands["cluster"] = cli.Command{Summary: "group the photos of a folder by person (batch job)", Run: runCluster}
}

const clusterSynopsis = "cluster DIR -o OUT [--algorithm average|complete|online|dbscan] [--eps 0.5 --min-samples 2] [--singletons folder|own] [--video-fps 1] [--force]"

func runCluster(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "cluster", clusterSynopsis)
	var pf pipelineFlags
	pf.register(fs)
	if f := fs.Lookup("threads"); f != nil {
		f.Usage = "OpenCV threads of each worker's pipeline (default: cores/workers)"
		f.DefValue = "0"
	}
	out := fs.String("o", "", "output folder (created; must be empty unless --force)")
	algo := fs.String("algorithm", string(identity.DefaultAlgorithm), "average, complete, online or dbscan (the original project's baseline)")
	eps := fs.Float64("eps", 0.5, "DBSCAN eps (euclidean on the templates), the original project's value")
	minSamples := fs.Int("min-samples", 2, "DBSCAN min_samples (the point itself included), the original project's value")
	var applyFiles []string
	fs.Func("apply", "corrections exported from report.html (repeatable, applied in order): re-cluster from the cache, apply them and rewrite OUT (implies --force)", func(v string) error {
		applyFiles = append(applyFiles, v)
		return nil
	})
	near := fs.Float64("near", batch.NearFactor, "near-miss suggestions reach this factor x the cut (0: none)")
	minFace := fs.Float64("min-face-px", batch.DefaultMinFacePx, "smallest face box side used, in pixels (smaller faces are left out; an image without a larger one is listed as noface, \"face too small\"); 0: no limit")
	faces := fs.String("faces", "customer", "customer (the largest, most central face: ATM frames) or all (every face of a group photo as its own item)")
	singletons := fs.String("singletons", "folder", "people seen once: folder (all under singletons/) or own (a person folder each)")
	force := fs.Bool("force", false, "replace a previous run's output in OUT (a folder with other files is refused)")
	link := fs.Bool("link", false, "hard-link the input files into OUT when possible instead of copying (OUT then shares the inputs' inodes: unsafe for evidence)")
	_ = fs.Bool("copy", true, "copy files into OUT (the default; kept for old scripts)")
	thresholds := fs.String("thresholds", "", "UU,MM,MU cosine-distance thresholds (default: the manifest's calibrated ones)")
	workers := fs.Int("workers", runtime.NumCPU(), "perception workers, each with its own pipeline (--threads defaults to cores/workers)")
	thumb := fs.Int("thumb", 96, "contact-sheet thumbnail size in pixels, up to 512 (-1: none)")
	maxPixels := fs.Int64("max-pixels", imagecheck.DefaultMaxPixels, "largest image accepted, in pixels (width*height, read from the header before decoding); larger ones are listed as unreadable")
	maxBytes := fs.Int64("max-bytes", imagecheck.DefaultMaxBytes, "largest image file accepted, in bytes (never read past it)")
	videoFPS := fs.Float64("video-fps", batch.DefaultVideoFPS, "video files (MP4/MOV, AVI, Matroska/WebM, MPEG-TS that OpenCV reads): frames sampled per second of video, each an item VIDEO#t=SECONDS (0: video files are skipped)")
	videoMax := fs.Int("video-max-frames", batch.DefaultVideoMaxFrames, "most frames sampled from one video (the rest of a longer video is listed under skipped)")
	cacheDir := fs.String("cache", "", "embedding cache folder (default: $XDG_CACHE_HOME/atm-tools/cluster, i.e. ~/.cache/...)")
	noCache := fs.Bool("no-cache", false, "neither read nor write the embedding cache")
	cacheMax := fs.Int64("cache-max-bytes", batch.DefaultCacheMaxBytes, "bound on the cache's entries; the least recently used go first")
	// DIR may come before the flags (cluster DIR -o OUT): parse around it.
	var pos []string
	rest := args
	for {
		if err := cli.ParseFlags(fs, rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: want exactly one input folder, got %d (usage: atm-tools %s)", cli.ErrUsage, len(pos), clusterSynopsis)
	}
	if pos[0] == "" {
		return fmt.Errorf("%w: the input folder is an empty string (give . for the current folder)", cli.ErrUsage)
	}
	if *out == "" {
		return fmt.Errorf("%w: -o OUT is required", cli.ErrUsage)
	}
	alg := identity.Algorithm(*algo)
	if !validAlgorithm(alg) {
		return fmt.Errorf("%w: --algorithm %q: want one of %v", cli.ErrUsage, *algo, identity.Algorithms())
	}
	if *videoFPS < 0 || math.IsNaN(*videoFPS) || math.IsInf(*videoFPS, 0) || *videoFPS > 1000 {
		return fmt.Errorf("%w: --video-fps %v: want 0 (off) or a rate in frames per second up to 1000", cli.ErrUsage, *videoFPS)
	}
	if *videoMax < 1 {
		return fmt.Errorf("%w: --video-max-frames %d: want 1 or more", cli.ErrUsage, *videoMax)
	}
	if *faces != string(batch.FacesCustomer) && *faces != string(batch.FacesAll) {
		return fmt.Errorf("%w: --faces %q: want customer or all", cli.ErrUsage, *faces)
	}
	if *maxPixels < 1 || *maxBytes < 1 {
		return fmt.Errorf("%w: --max-pixels %d, --max-bytes %d: want at least 1", cli.ErrUsage, *maxPixels, *maxBytes)
	}
	if *singletons != string(batch.SingletonsFolder) && *singletons != string(batch.SingletonsOwn) {
		return fmt.Errorf("%w: --singletons %q: want folder or own", cli.ErrUsage, *singletons)
	}
	if !(*near >= 0) || math.IsInf(*near, 0) {
		return fmt.Errorf("%w: --near %v: want 0 (no suggestions) or a factor such as %g", cli.ErrUsage, *near, batch.NearFactor)
	}
	if !(*eps > 0) || math.IsInf(*eps, 0) {
		return fmt.Errorf("%w: --eps %v: want a distance above 0", cli.ErrUsage, *eps)
	}
	if *minSamples < 1 {
		return fmt.Errorf("%w: --min-samples %d: want 1 or more", cli.ErrUsage, *minSamples)
	}
	if !(*minFace >= 0) || math.IsInf(*minFace, 0) {
		return fmt.Errorf("%w: --min-face-px %v: want 0 (no limit) or a size in pixels", cli.ErrUsage, *minFace)
	}
	if maxW := maxClusterWorkers(); *workers < 1 || *workers > maxW {
		// Each worker loads a pipeline of its own (~40 MB of models and
		// buffers): 1000 of them would exhaust memory before the first image.
		return fmt.Errorf("%w: --workers %d: want 1 to %d (4 per CPU; each worker loads its own ~40 MB pipeline)", cli.ErrUsage, *workers, maxW)
	}
	if *thumb < -1 || *thumb > batch.MaxThumb {
		return fmt.Errorf("%w: --thumb %d: want -1 (none), 0 (the default, 96) or a size up to %d pixels", cli.ErrUsage, *thumb, batch.MaxThumb)
	}
	threadsSet := false
	fs.Visit(func(f *flag.Flag) { threadsSet = threadsSet || f.Name == "threads" })
	if !threadsSet {
		// Measured (docs/cluster.md): two single-threaded pipelines beat one
		// pipeline with two OpenCV threads.
		pf.threads = max(1, runtime.NumCPU() / *workers)
	}
	if *cacheMax < 1 {
		return fmt.Errorf("%w: --cache-max-bytes %d: want at least 1", cli.ErrUsage, *cacheMax)
	}
	cacheAt := *cacheDir
	if !*noCache && cacheAt == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("embedding cache: %w (pass --cache DIR or --no-cache)", err)
		}
		cacheAt = filepath.Join(d, "atm-tools", "cluster")
	}
	if !*noCache && batch.Within(cacheAt, *out) {
		return fmt.Errorf("%w: --cache %s is inside -o %s, whose contents each run replaces: keep the cache elsewhere", cli.ErrUsage, cacheAt, *out)
	}
	var th *identity.Thresholds
	if *thresholds != "" {
		t, err := parseThresholds(*thresholds)
		if err != nil {
			return fmt.Errorf("%w: --thresholds: %v", cli.ErrUsage, err)
		}
		th = &t
	}

	pp, err := pf.prepare()
	if err != nil {
		return err
	}
	man, det, emb := pp.man, strings.Join(pp.detectors, ">"), pp.embedderName
	em, ok := man.Find(emb)
	if !ok || em.Embedding == nil {
		return fmt.Errorf("embedder %q is not in the model manifest", emb)
	}
	if th == nil {
		t, err := embedderThresholds(man, emb)
		if err != nil && alg != identity.DBSCAN {
			return fmt.Errorf("%w (or pass --thresholds UU,MM,MU)", err)
		}
		if err == nil {
			th = &t
		}
	}
	cfg := identity.DefaultConfig()
	if th != nil {
		cfg.Thresholds = *th
	}
	calibrated, calErr := embedderThresholds(man, emb)
	epsSet := false
	fs.Visit(func(f *flag.Flag) { epsSet = epsSet || f.Name == "eps" })
	for _, w := range clusterWarnings(alg, *eps, epsSet, *thresholds != "", cfg.Thresholds, calibrated, calErr == nil, emb) {
		fmt.Fprintf(env.Stderr, "warning: %s\n", w)
	}

	// One pipeline per worker: the nets serialise inside a pipeline, so
	// two pipelines keep both cores busy (docs/cluster.md has the numbers).
	// Each loads its nets at its first image that is not in the cache: a
	// re-run from the cache loads none.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var finders []batch.FaceFinder
	var lazies []*lazyPipeline
	for range *workers {
		l := &lazyPipeline{pp: pp, fail: cancel}
		lazies = append(lazies, l)
		finders = append(finders, l)
	}
	defer func() {
		for _, l := range lazies {
			l.close()
		}
	}()

	meta := batch.Meta{Version: cli.Version, Input: pos[0], Detector: det, Embedder: emb, Crop: em.Embedding.Crop}
	for _, name := range append(slices.Clone(pp.detectors), emb) {
		if md, ok := man.Find(name); ok {
			meta.Models = append(meta.Models, batch.ModelInfo{Name: md.Name, SHA256: md.SHA256, ConfigSHA256: md.ConfigSHA256})
		}
	}
	var cache *batch.Cache
	if !*noCache {
		cache, err = batch.OpenCache(cacheAt, pp.key, *cacheMax, env.Log)
		if err != nil {
			return err
		}
		defer cache.Close()
	}
	var corr []*batch.Corrections // applied in the order given
	for _, f := range applyFiles {
		c, err := batch.LoadCorrections(f)
		if err != nil {
			return err
		}
		corr = append(corr, c)
	}
	if len(corr) > 0 {
		*force = true
	}
	if *near == 0 {
		*near = -1 // none
	}
	if *minFace == 0 {
		*minFace = -1 // no limit
	}
	o := batch.Options{
		Cluster:     identity.ClusterOptions{Algorithm: alg, Config: cfg, Eps: *eps, MinSamples: *minSamples},
		Singletons:  batch.Singletons(*singletons),
		Faces:       batch.Faces(*faces),
		Corrections: corr,
		Near:        *near,
		MinFacePx:   *minFace,
		Force:       *force,
		Link:        *link,
		Thumb:       *thumb,
		Limits:      imagecheck.Limits{MaxPixels: *maxPixels, MaxBytes: *maxBytes},
		Meta:        meta,
		Log:         env.Log,
		Cache:       cache,
	}
	o.VideoFPS, o.VideoMaxFrames = *videoFPS, *videoMax
	if *videoFPS == 0 {
		o.VideoFPS = -1 // off
	}
	o.Progress = clusterProgress(env.Stderr, time.Now)
	rep, err := batch.Run(ctx, pos[0], *out, finders, o)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause // a pipeline failed to load
	}
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		msg := fmt.Sprintf("interrupted: %s removed", *out)
		if cache != nil {
			hits, misses := cache.Stats()
			msg += fmt.Sprintf("; %d images embedded so far are in the cache for the next run", hits+misses)
		}
		return errors.New(msg)
	}
	if err != nil {
		if errors.Is(err, batch.ErrOutputNotEmpty) || errors.Is(err, batch.ErrForeignFiles) || errors.Is(err, batch.ErrInputInOutput) {
			return fmt.Errorf("%w: %v", cli.ErrUsage, err)
		}
		return err
	}
	if st := rep.Meta.Corrections; st != nil {
		fmt.Fprintf(env.Stdout, "corrections: %d merged, %d moved, %d named, %d naming faces this run does not have\n", st.Merged, st.Moved, st.Named, st.Missing)
	}
	total, embed := rep.Elapsed()
	c := rep.Counts
	cached := ""
	if cache != nil {
		hits, misses := cache.Stats()
		cached = fmt.Sprintf(", %d from the cache, %d embedded", hits, misses)
	}
	faceWord := ""
	if *faces == string(batch.FacesAll) {
		faceWord = fmt.Sprintf(" (%s)", batchPlural(c.Faces, "face", "faces"))
	}
	if c.Videos > 0 {
		faceWord += fmt.Sprintf(" (frames of %s included)", batchPlural(c.Videos, "video", "videos"))
	}
	fmt.Fprintf(env.Stdout, "%s%s: %s (2+ images), %d single-image, %d without a usable face, %d unreadable, %d skipped; %s in %.1fs (perception %.1fs%s)\n",
		batchPlural(c.Images, "image", "images"), faceWord, batchPlural(c.People, "person", "people"), c.Singletons, c.NoFace, c.Unreadable, c.Skipped, *out, total.Seconds(), embed.Seconds(), cached)
	return nil
}

func validAlgorithm(a identity.Algorithm) bool {
	for _, b := range identity.Algorithms() {
		if a == b {
			return true
		}
	}
	return false
}

func parseThresholds(s string) (identity.Thresholds, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return identity.Thresholds{}, fmt.Errorf("%q: want UU,MM,MU", s)
	}
	var v [3]float64
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil {
			return identity.Thresholds{}, fmt.Errorf("%q: %v", p, err)
		}
		v[i] = f
	}
	t := identity.Thresholds{UU: v[0], MM: v[1], MU: v[2]}
	c := identity.DefaultConfig()
	c.Thresholds = t
	if err := c.Validate(); err != nil {
		return identity.Thresholds{}, err
	}
	return t, nil
}

// lazyPipeline is one worker's pipeline, loaded at its first use. A load
// failure cancels the run with the error as its cause.
type lazyPipeline struct {
	pp   *preparedPipeline
	fail context.CancelCauseFunc
	once sync.Once
	p    *vision.Pipeline
	err  error
}

func (l *lazyPipeline) load() error {
	l.once.Do(func() {
		l.p, l.err = l.pp.open()
		if l.err != nil {
			l.fail(l.err)
		}
	})
	return l.err
}

func (l *lazyPipeline) FaceInImage(data []byte, o vision.FaceOptions, t *vision.Timings) (vision.Face, error) {
	if err := l.load(); err != nil {
		return vision.Face{}, err
	}
	return l.p.FaceInImage(data, o, t)
}

func (l *lazyPipeline) FacesInImage(data []byte, o vision.FaceOptions, t *vision.Timings) ([]vision.Face, error) {
	if err := l.load(); err != nil {
		return nil, err
	}
	return l.p.FacesInImage(data, o, t)
}

func (l *lazyPipeline) close() {
	if l.p != nil {
		l.p.Close()
	}
}

// clusterProgress reports the perception stage on w: a progress bar (images
// done, rate, ETA) on a terminal, else a line at most every 10 s and at the
// end, for logs and pipes.
func clusterProgress(w io.Writer, now func() time.Time) func(done, total int) {
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		var bar *progressbar.ProgressBar
		return func(done, total int) {
			if bar == nil {
				bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(f), progressbar.OptionSetDescription("images"),
					progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("img"),
					progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionClearOnFinish())
			}
			_ = bar.Set(done)
		}
	}
	start := now()
	var last time.Time
	return func(done, total int) {
		t := now()
		if done != total && t.Sub(last) < 10*time.Second {
			return
		}
		last = t
		el := t.Sub(start)
		rate := float64(done) / max(el.Seconds(), 1e-3)
		eta := "0s"
		if rate > 0 {
			eta = time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second).String()
		}
		fmt.Fprintf(w, "cluster: %d/%d images (%d%%), %.1f img/s, %s elapsed, ETA %s\n",
			done, total, 100*done/max(total, 1), rate, el.Round(time.Second), eta)
	}
}

// clusterWarnings says when the algorithm's parameters do not fit the
// embedder's metric, with the calibrated value to use instead. DBSCAN's eps
// is a euclidean distance on L2-normalised templates, where a cosine
// distance c is sqrt(2c): the original project's eps 0.5 is cosine 0.125,
// a quarter of a typical calibrated threshold, and leaves nearly every face
// alone. Linkage thresholds far from the calibrated ones are flagged too.
func clusterWarnings(alg identity.Algorithm, eps float64, epsSet, thSet bool, th, cal identity.Thresholds, haveCal bool, emb string) []string {
	if !haveCal {
		if alg == identity.DBSCAN {
			return []string{fmt.Sprintf("embedder %s has no calibrated thresholds: --eps %g (euclidean) cannot be checked against its metric", emb, eps)}
		}
		return nil
	}
	var out []string
	if alg == identity.DBSCAN {
		want := math.Sqrt(2 * cal.UU)
		if eps < 0.8*want || eps > 1.25*want {
			how := "looser than"
			effect := "people will merge"
			if eps < want {
				how, effect = "tighter than", "most faces will be left as singletons (DBSCAN noise)"
			}
			src := "the original project's default"
			if epsSet {
				src = "given"
			}
			out = append(out, fmt.Sprintf("--eps %g (%s) does not fit %s's templates: DBSCAN's eps is euclidean on L2-normalised templates, so it is cosine distance %.3f, far %s the calibrated threshold uu %.3f (eps %.2f); %s. Calibrated default: --eps %.2f",
				eps, src, emb, eps*eps/2, how, cal.UU, want, effect, want))
		}
		return out
	}
	if thSet {
		for _, p := range []struct {
			name     string
			got, cal float64
		}{{"uu", th.UU, cal.UU}, {"mm", th.MM, cal.MM}, {"mu", th.MU, cal.MU}} {
			if p.cal > 0 && (p.got < 0.5*p.cal || p.got > 1.5*p.cal) {
				out = append(out, fmt.Sprintf("--thresholds %s %g is far from %s's calibrated %.3f (cosine distance). Calibrated default: --thresholds %g,%g,%g",
					p.name, p.got, emb, p.cal, cal.UU, cal.MM, cal.MU))
			}
		}
	}
	return out
}

func batchPlural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// maxClusterWorkers bounds --workers: more than 4 pipelines per CPU only
// costs memory.
func maxClusterWorkers() int { return 4 * runtime.NumCPU() }
