// Package batch is the offline clustering job (`atm-tools cluster DIR -o OUT`):
// it walks a folder of photos, finds and embeds the customer's face in each
// (in parallel), groups the faces by person with an identity algorithm and
// writes one folder per person plus report.json and an offline contact sheet
// (report.html). Inputs are only read; bad files are reported, never fatal.
package batch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/imagecheck"
)

// FaceFinder finds the customer's face in an encoded image.
// *vision.Pipeline implements it.
type FaceFinder interface {
	FaceInImage(data []byte, o vision.FaceOptions, t *vision.Timings) (vision.Face, error)
}

// AllFaceFinder finds every face of an image (Options.Faces = all).
// *vision.Pipeline implements it.
type AllFaceFinder interface {
	FacesInImage(data []byte, o vision.FaceOptions, t *vision.Timings) ([]vision.Face, error)
}

// Faces says which faces of an image are clustered.
type Faces string

const (
	// FacesCustomer keeps the customer's face only: the largest, most
	// central (ATM frames; the default).
	FacesCustomer Faces = "customer"
	// FacesAll keeps every face: each face of a group photo is its own item.
	FacesAll Faces = "all"
)

// Singletons says where people seen in one image only go.
type Singletons string

const (
	// SingletonsFolder puts them all under singletons/ (the default).
	SingletonsFolder Singletons = "folder"
	// SingletonsOwn gives each its own person_NNNN/ after the larger ones.
	SingletonsOwn Singletons = "own"
)

// DefaultMinFacePx is Options.MinFacePx's default: the pipeline's own
// smallest usable face (vision.Config.MinFacePx, 40 px). Real photos' faces
// are far larger (LFW's smallest box is 76 px, rmfrd's 113).
var DefaultMinFacePx = vision.DefaultConfig().MinFacePx

// Options tune a run.
// MaxThumb bounds Options.Thumb: a contact-sheet thumbnail larger than this
// shows nothing more, and a huge one would only exhaust memory.
const MaxThumb = 512

type Options struct {
	// Cluster selects the algorithm and its thresholds.
	Cluster identity.ClusterOptions
	// Singletons: folder (default) or own.
	Singletons Singletons
	// Faces: customer (default) or all; all needs finders that implement
	// AllFaceFinder.
	Faces Faces
	// MinFacePx is the smallest face box side, in pixels, that is used
	// (default DefaultMinFacePx; < 0: none): the detector also finds
	// "faces" of a few pixels in icons and tiny images, whose templates
	// group into people that are not there. A smaller face is left out
	// (an image left without one is noface, "face too small").
	MinFacePx float64
	// Near is how far beyond the cut near-miss suggestions reach, as a
	// factor of it (default NearFactor; < 1: none).
	Near float64
	// Corrections are applied to the clustering, one file after the other
	// (see Corrections and applyCorrections).
	Corrections []*Corrections
	// Force replaces a previous run's output (never foreign files).
	Force bool
	// Link hard-links the input files into OUT when the file system allows
	// (fast, no space, but OUT then shares the inputs' inodes: editing a
	// file there edits the evidence). By default every file is copied.
	Link bool
	// Thumb is the side of the contact-sheet thumbnails (default 96; < 0:
	// none; at most MaxThumb).
	Thumb int
	// Meta is copied into the report (models, thresholds, version...).
	Meta Meta
	// Limits bound each input image (file size and pixels, checked from the
	// header before anything is decoded; zero fields take imagecheck's
	// defaults). An image over a limit is listed as unreadable with the reason.
	Limits imagecheck.Limits
	// PixelBudget bounds the pixels being decoded and processed at once over
	// all workers (default: Limits.MaxPixels, i.e. one image of the largest
	// size accepted, or many small ones). With Limits it bounds the memory of
	// a run: docs/cluster.md has the figures.
	PixelBudget int64
	// Progress, when set, is called after each image with done and total.
	Progress func(done, total int)
	// Cache, when set, keeps and reuses perception results by file content
	// (see Cache); the caller opens and closes it.
	Cache *Cache
	// VideoFPS is the sampling rate of video files, in frames per second of
	// video (< 0: video files are skipped; 0: DefaultVideoFPS); each
	// sampled frame is an item (see VideoExtensions for the naming).
	VideoFPS float64
	// VideoMaxFrames bounds the frames taken from one video (0:
	// DefaultVideoMaxFrames); the rest of a longer video is noted under
	// skipped.
	VideoMaxFrames int
	Log            *slog.Logger

	frames map[string]videoFrame // sampled video frames by item path
}

// Run clusters the images under in and writes the result into out. It needs
// one FaceFinder per worker goroutine (each is used by one goroutine only);
// images are spread over them. It returns the report it wrote.
func Run(ctx context.Context, in, out string, finders []FaceFinder, o Options) (*Report, error) {
	if len(finders) == 0 {
		return nil, errors.New("cluster: no face finder")
	}
	switch o.Singletons {
	case "":
		o.Singletons = SingletonsFolder
	case SingletonsFolder, SingletonsOwn:
	default:
		return nil, fmt.Errorf("cluster: singletons %q: want folder or own", o.Singletons)
	}
	if o.Thumb == 0 {
		o.Thumb = 96
	}
	if o.Thumb > MaxThumb {
		return nil, fmt.Errorf("cluster: thumb %d: want at most %d pixels", o.Thumb, MaxThumb)
	}
	switch o.Faces {
	case "":
		o.Faces = FacesCustomer
	case FacesCustomer:
	case FacesAll:
		for _, f := range finders {
			if _, ok := f.(AllFaceFinder); !ok {
				return nil, fmt.Errorf("cluster: faces all: the face finder %T finds only the customer's face", f)
			}
		}
	default:
		return nil, fmt.Errorf("cluster: faces %q: want customer or all", o.Faces)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.MinFacePx == 0:
		o.MinFacePx = DefaultMinFacePx
	case o.MinFacePx < 0:
		o.MinFacePx = 0
	case math.IsNaN(o.MinFacePx) || math.IsInf(o.MinFacePx, 0):
		return nil, fmt.Errorf("cluster: min face %v pixels: want a finite size", o.MinFacePx)
	}
	o.Limits = o.Limits.WithDefaults()
	// A folder of photos may hold any format OpenCV decodes (headers still
	// checked against the limits first).
	o.Limits.Formats = imagecheck.FormatsOpenCV
	if o.PixelBudget <= 0 {
		o.PixelBudget = o.Limits.MaxPixels
	}
	absIn, err := absClean(in)
	if err != nil {
		return nil, fmt.Errorf("cluster: input: %w", err)
	}
	absOut, err := absClean(out)
	if err != nil {
		return nil, fmt.Errorf("cluster: output: %w", err)
	}
	if inside(absIn, absOut) {
		if absIn == absOut {
			return nil, fmt.Errorf("cluster: %w: %s is the output folder itself (each run replaces its contents)", ErrInputInOutput, in)
		}
		return nil, fmt.Errorf("cluster: %w: %s is inside %s (each run replaces its contents)", ErrInputInOutput, in, out)
	}
	lst, err := Walk(absIn, absOut)
	if err != nil {
		return nil, fmt.Errorf("cluster: read input: %w", err)
	}
	created, err := prepareOut(out, o.Force)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if o.VideoFPS == 0 {
		o.VideoFPS = DefaultVideoFPS
	}
	if o.VideoMaxFrames <= 0 {
		o.VideoMaxFrames = DefaultVideoMaxFrames
	}
	if len(lst.Videos) > 0 && o.VideoFPS < 0 {
		for _, v := range lst.Videos {
			lst.Skipped = append(lst.Skipped, Problem{Path: v, Reason: "video (video input is off: --video-fps 0)"})
		}
		sort.SliceStable(lst.Skipped, func(a, b int) bool { return lst.Skipped[a].Path < lst.Skipped[b].Path })
	} else if len(lst.Videos) > 0 {
		tmp, err := os.MkdirTemp("", "atm-cluster-frames-")
		if err != nil {
			_ = removeOurs(out, created)
			return nil, fmt.Errorf("cluster: video frames: %w", err)
		}
		defer os.RemoveAll(tmp)
		if o.frames, err = expandVideos(ctx, absIn, tmp, lst, o); err != nil {
			_ = removeOurs(out, created)
			return nil, fmt.Errorf("cluster: video: %w", err)
		}
	}
	// A run that does not finish (a signal, a write error) takes back what
	// it wrote, so OUT is as before (or gone, when the run created it) and a
	// re-run needs no --force; the images embedded so far stay in the cache.
	ok := false
	defer func() {
		if !ok {
			if cerr := removeOurs(out, created); cerr != nil {
				o.Log.Warn("cluster: removing the partial output", "out", out, "err", cerr)
			}
		}
	}()
	start := time.Now()
	res, err := embedAll(ctx, absIn, lst.Images, finders, o)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	embedTime := time.Since(start)
	lst, res = expandFaces(lst, res, o.MinFacePx)
	rep, err := build(ctx, lst, res, o)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if err := write(absIn, out, rep, res, o); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	ok = true
	rep.elapsed, rep.embedTime = time.Since(start), embedTime
	o.Log.Info("cluster done", "images", rep.Counts.Images, "faces", rep.Counts.Faces, "identities", rep.Counts.Identities,
		"noface", rep.Counts.NoFace, "unreadable", rep.Counts.Unreadable, "elapsed", rep.elapsed.Round(time.Millisecond))
	return rep, nil
}

// result is the perception outcome for one image.
type result struct {
	face   vision.Face
	found  bool
	noface string        // why no usable face, when !found and err == ""
	err    string        // unreadable: why
	decode bool          // err is the decoder's verdict on the bytes (cacheable)
	sum    string        // sha256 of the file, hex (when it could be read)
	more   []vision.Face // with Faces = all: the faces after the first
	faceNo int           // with Faces = all: 1-based number of face in its image
}

// expandFaces turns an image with several faces (Faces = all) into one
// item per face, each with the image's path: the rest of the job then sees
// faces as items. Items of one image follow each other. A face whose box
// side is under minFace pixels is left out (faces keep their numbers in
// the image); an image left without a face is a noface item saying so.
func expandFaces(lst *Listing, res []result, minFace float64) (*Listing, []result) {
	l := *lst
	l.Images = nil
	var out []result
	for i, r := range res {
		if !r.found {
			l.Images = append(l.Images, lst.Images[i])
			out = append(out, r)
			continue
		}
		kept := 0
		small := 0.0
		for k, f := range append([]vision.Face{r.face}, r.more...) {
			if side := math.Max(f.Det.W(), f.Det.H()); side < minFace {
				small = math.Max(small, side)
				continue
			}
			l.Images = append(l.Images, lst.Images[i])
			n := r
			n.face, n.more, n.faceNo = f, nil, k+1
			out = append(out, n)
			kept++
		}
		if kept == 0 {
			l.Images = append(l.Images, lst.Images[i])
			out = append(out, result{sum: r.sum, noface: fmt.Sprintf("face too small: %.0f px (under %g px, --min-face-px)", small, minFace)})
		}
	}
	return &l, out
}

// entry is what the cache keeps of r; not ok for outcomes that depend on
// more than the file's bytes (limits, file system, cancellation).
func (r result) entry() (entry, bool) {
	switch {
	case r.found:
		return entry{kind: entryFace, faces: append([]vision.Face{r.face}, r.more...)}, true
	case r.err == "" && r.noface != "":
		return entry{kind: entryNoFace, reason: r.noface}, true
	case r.decode:
		return entry{kind: entryError, reason: r.err}, true
	}
	return entry{}, false
}

// result is the outcome a cached entry stands for.
func (e entry) result() result {
	switch {
	case e.kind == entryFace && len(e.faces) > 0:
		r := result{face: e.faces[0], found: true, faceNo: 1}
		if len(e.faces) > 1 {
			r.more = e.faces[1:]
		}
		return r
	case e.kind == entryNoFace:
		return result{noface: e.reason}
	}
	return result{err: e.reason, decode: true}
}

// embedAll runs the finders over the images; each worker owns one finder.
// Results land at the image's index, so the output does not depend on
// which worker finished first.
func embedAll(ctx context.Context, root string, images []string, finders []FaceFinder, o Options) ([]result, error) {
	res := make([]result, len(images))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	var done sync.Mutex
	n := 0
	budget := semaphore.NewWeighted(o.PixelBudget)
	var wg sync.WaitGroup
	for _, f := range finders {
		wg.Add(1)
		go func(f FaceFinder) {
			defer wg.Done()
			for i := range jobs {
				p := filepath.Join(root, filepath.FromSlash(images[i]))
				fr, isFrame := o.frames[images[i]]
				if isFrame {
					p = fr.file
				}
				var frp *videoFrame
				if isFrame {
					frp = &fr
				}
				res[i] = embedOne(ctx, f, p, frp, o, budget)
				if isFrame && res[i].sum != "" {
					res[i].sum = fr.frameSum()
				}
				if o.Progress != nil {
					done.Lock()
					n++
					o.Progress(n, len(images))
					done.Unlock()
				}
			}
		}(f)
	}
	var err error
feed:
	for i := range images {
		select {
		case jobs <- i:
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	return res, err
}

// embedOne reads one image within o.Limits (size, then header: nothing is
// decoded before both pass), waits for its pixels in budget, and finds the
// face.
// A video frame (fr != nil) is read from its temporary JPEG at path and
// cached by its video's content and index.
func embedOne(ctx context.Context, f FaceFinder, path string, fr *videoFrame, o Options, budget *semaphore.Weighted) (r result) {
	data, info, err := imagecheck.ReadFile(path, o.Limits)
	if err != nil {
		return result{err: imageReason(err)}
	}
	sum := sha256.Sum256(data)
	defer func() { r.sum = hex.EncodeToString(sum[:]) }()
	var key []byte
	if o.Cache != nil {
		opts := fmt.Sprintf("|thumb %d|faces %s", max(o.Thumb, 0), o.Faces)
		if fr != nil {
			// A frame is cached by its video's content and its index.
			key = imageKey(fr.sum, fmt.Sprintf("%s|frame %d", opts, fr.index))
		} else {
			key = imageKey(sum, opts)
		}
		if e, ok := o.Cache.get(key); ok {
			return e.result()
		}
		defer func() {
			if e, ok := r.entry(); ok {
				o.Cache.put(key, e)
			}
		}()
	}
	px := min(info.Pixels(), o.PixelBudget)
	if err := budget.Acquire(ctx, px); err != nil {
		return result{err: "not processed: " + err.Error()}
	}
	defer budget.Release(px)
	defer func() {
		// A Go-side panic on one odd file must not end the run.
		if p := recover(); p != nil {
			r = result{err: fmt.Sprintf("internal error: %v", p)}
		}
	}()
	fo := vision.FaceOptions{Thumb: max(o.Thumb, 0), Limits: o.Limits}
	var face vision.Face
	var more []vision.Face
	if o.Faces == FacesAll {
		var faces []vision.Face
		faces, err = f.(AllFaceFinder).FacesInImage(data, fo, nil)
		if err == nil {
			face, more = faces[0], faces[1:]
		}
	} else {
		face, err = f.FaceInImage(data, fo, nil)
	}
	switch {
	case errors.Is(err, vision.ErrNoFace):
		return result{noface: "no usable face"}
	case errors.Is(err, vision.ErrEmptyCrop):
		return result{noface: "face crop is empty"}
	case errors.Is(err, vision.ErrDecode):
		return result{err: imageReason(err), decode: true}
	case err != nil:
		return result{err: imageReason(err)}
	}
	var ok []vision.Face
	for _, f := range append([]vision.Face{face}, more...) {
		if finite(f.Embedding) {
			ok = append(ok, f)
		}
	}
	if len(ok) == 0 {
		return result{noface: "embedding is not finite"}
	}
	r = result{face: ok[0], found: true, faceNo: 1}
	if len(ok) > 1 {
		r.more = ok[1:]
	}
	return r
}

func finite(v []float32) bool {
	for _, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			return false
		}
	}
	return true
}

// imageReason words why an image was not used: imagecheck's and the
// decoder's messages say what was found and the limit; file system errors
// go through reason.
func imageReason(err error) string {
	for _, e := range []error{imagecheck.ErrEmpty, imagecheck.ErrFileTooBig, imagecheck.ErrTooLarge,
		imagecheck.ErrUnsupported, imagecheck.ErrCorrupt, imagecheck.ErrTruncated, vision.ErrDecode} {
		if errors.Is(err, e) {
			return err.Error()
		}
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return reason(err)
	}
	return "corrupt or unsupported image: " + err.Error()
}

// build clusters the faces and lays out identities, largest first.
func build(ctx context.Context, lst *Listing, res []result, o Options) (*Report, error) {
	var idx []int // image index of each sample
	var samples []identity.Sample
	base := time.Unix(0, 0).UTC()
	for i, r := range res {
		if r.found {
			idx = append(idx, i)
			samples = append(samples, identity.Sample{Embedding: r.face.Embedding, Mask: r.face.Mask,
				Time: base.Add(time.Duration(len(samples)) * time.Second)})
		}
	}
	alg := o.Cluster.Algorithm
	if alg == "" {
		alg = identity.DefaultAlgorithm
	}
	labels, err := identity.Cluster(ctx, samples, o.Cluster)
	if err != nil {
		return nil, err
	}
	// Groups of image indexes; DBSCAN noise (-1) is one group per image.
	byLabel := map[int][]int{}
	var groups [][]int
	for k, l := range labels {
		if l < 0 {
			groups = append(groups, []int{idx[k]})
			continue
		}
		byLabel[l] = append(byLabel[l], idx[k])
	}
	for _, g := range byLabel {
		groups = append(groups, g)
	}
	for _, g := range groups {
		sort.Ints(g)
	}
	faceKey := func(i int) string {
		no := 0
		if o.Faces == FacesAll {
			no = res[i].faceNo
		}
		return FaceKey(res[i].sum, no)
	}
	var names map[int]string
	var cst *CorrectionStats
	if len(o.Corrections) > 0 {
		keys := make([]string, len(res))
		for _, i := range idx {
			keys[i] = faceKey(i)
		}
		var st CorrectionStats
		groups, names, st = applyCorrections(groups, keys, o.Corrections)
		cst = &st
	}
	// Largest first; ties by the first image's path (indexes follow paths).
	sort.Slice(groups, func(a, b int) bool {
		if len(groups[a]) != len(groups[b]) {
			return len(groups[a]) > len(groups[b])
		}
		return groups[a][0] < groups[b][0]
	})
	rep := &Report{Meta: o.Meta, Images: make([]ImageEntry, len(lst.Images)), Skipped: nonNil(lst.Skipped), Unreadable: nonNil(lst.Unreadable)}
	rep.Meta.Corrections = cst
	rep.Meta.Algorithm = string(alg)
	rep.Meta.Singletons = string(o.Singletons)
	if alg == identity.DBSCAN {
		eps, ms := o.Cluster.Eps, o.Cluster.MinSamples
		if eps == 0 {
			eps = 0.5
		}
		if ms == 0 {
			ms = 2
		}
		rep.Meta.Eps, rep.Meta.MinSamples = eps, ms
	} else {
		th := o.Cluster.Config.Thresholds
		rep.Meta.Thresholds = &th
	}
	for i, p := range lst.Images {
		e := ImageEntry{Path: p}
		if fr, ok := o.frames[p]; ok {
			e.Video = &FrameInfo{Path: fr.video, Frame: fr.index, Time: math.Round(fr.t*1000) / 1000}
		}
		r := res[i]
		switch {
		case r.err != "":
			e.Folder = ""
			rep.Unreadable = append(rep.Unreadable, Problem{Path: p, Reason: r.err})
		case !r.found:
			e.Folder = "noface"
			e.Note = r.noface
			rep.Counts.NoFace++
		default:
			f := r.face
			if o.Faces == FacesAll {
				e.FaceNo = r.faceNo
			}
			e.Key = faceKey(i)
			e.Face = &FaceInfo{Mask: f.Mask.String(), MaskScore: round4(f.MaskScore), Quality: round4(f.Quality), DetScore: round4(f.Det.Score),
				Box: [4]float64{round1(f.Det.X0), round1(f.Det.Y0), round1(f.Det.X1), round1(f.Det.Y1)}}
		}
		rep.Images[i] = e
	}
	sort.SliceStable(rep.Unreadable, func(a, b int) bool { return rep.Unreadable[a].Path < rep.Unreadable[b].Path })
	next := 1
	var cens [][]float64
	for _, g := range groups {
		id := Identity{Size: len(g), Name: names[g[0]]}
		if len(g) == 1 && o.Singletons == SingletonsFolder {
			id.Folder = "singletons"
		} else {
			id.Folder = fmt.Sprintf("person_%04d", next)
			next++
		}
		cen := centroid(res, g)
		cens = append(cens, cen)
		var sum float64
		for _, i := range g {
			d := 0.0
			if len(g) > 1 {
				d = math.Max(0, cosDist(res[i].face.Embedding, cen)) // no -0.000
			}
			rep.Images[i].Folder = id.Folder
			rep.Images[i].Face.Distance = round4(d)
			sum += d
			id.MaxDistance = math.Max(id.MaxDistance, round4(d))
			switch res[i].face.Mask {
			case visit.Masked:
				id.Masked++
			case visit.Unmasked:
				id.Unmasked++
			}
			id.Images = append(id.Images, lst.Images[i])
			id.idx = append(id.idx, i)
		}
		id.MeanDistance = round4(sum / float64(len(g)))
		if len(g) == 1 {
			rep.Counts.Singletons++
		} else {
			rep.Counts.People++
		}
		rep.Identities = append(rep.Identities, id)
	}
	near := o.Near
	if near == 0 {
		near = NearFactor
	}
	suggest(rep, cens, nearCut(o.Cluster, alg), near)
	files := map[string]bool{}
	for _, p := range lst.Images {
		files[p] = true
	}
	rep.Counts.Images = len(files)
	videos := map[string]bool{}
	for _, fr := range o.frames {
		videos[fr.video] = true
	}
	rep.Counts.Videos = len(videos)
	rep.Counts.Faces = len(samples)
	rep.Counts.Identities = len(groups)
	rep.Counts.Skipped = len(rep.Skipped)
	rep.Counts.Unreadable = len(rep.Unreadable)
	return rep, nil
}

func nonNil(p []Problem) []Problem {
	return append([]Problem{}, p...)
}

func centroid(res []result, g []int) []float64 {
	c := make([]float64, len(res[g[0]].face.Embedding))
	for _, i := range g {
		for k, v := range res[i].face.Embedding {
			c[k] += float64(v)
		}
	}
	var n float64
	for _, v := range c {
		n += v * v
	}
	if n = math.Sqrt(n); n > 0 {
		for k := range c {
			c[k] /= n
		}
	}
	return c
}

// cosDist is the cosine distance of a template to a unit centroid.
func cosDist(a []float32, c []float64) float64 {
	var dot, na float64
	for k, v := range a {
		dot += float64(v) * c[k]
		na += float64(v) * float64(v)
	}
	if na == 0 {
		return 1
	}
	return 1 - dot/math.Sqrt(na)
}

func round4(v float64) float64 { return math.Round(v*1e4) / 1e4 }
func round1(v float64) float64 { return math.Round(v*10) / 10 }

// Near-miss suggestions: for each identity, the other identities whose
// centroids lie within Options.Near (default NearFactor) x the algorithm's cut (cosine distance of
// the L2-normalised mean templates), closest first, at most MaxSuggestions.
// They are the "maybe the same person" an analyst checks first: pairs just
// beyond the threshold, which the algorithm kept apart for precision.
const (
	NearFactor     = 1.15
	MaxSuggestions = 3
	// maxSuggestIdentities bounds the all-pairs pass (quadratic).
	maxSuggestIdentities = 4000
)

// nearCut is the cosine distance the algorithm merges below: the UU
// threshold of the linkage methods, DBSCAN's eps turned into a cosine
// distance (eps^2/2 on unit templates).
func nearCut(c identity.ClusterOptions, alg identity.Algorithm) float64 {
	if alg == identity.DBSCAN {
		eps := c.Eps
		if eps == 0 {
			eps = 0.5
		}
		return eps * eps / 2
	}
	return c.Config.Thresholds.UU
}

func suggest(rep *Report, cens [][]float64, cut, factor float64) {
	n := len(cens)
	if n < 2 || n > maxSuggestIdentities || cut <= 0 || factor < 1 {
		return
	}
	limit := cut * factor
	near := make([][]Suggestion, n)
	for a := range n {
		for b := a + 1; b < n; b++ {
			var dot float64
			for k, v := range cens[a] {
				dot += v * cens[b][k]
			}
			d := math.Max(0, 1-dot)
			if d >= limit {
				continue
			}
			near[a] = append(near[a], suggestionTo(rep.Identities[b], b, d))
			near[b] = append(near[b], suggestionTo(rep.Identities[a], a, d))
		}
	}
	for a := range n {
		s := near[a]
		sort.SliceStable(s, func(i, j int) bool {
			if s[i].Distance != s[j].Distance {
				return s[i].Distance < s[j].Distance
			}
			return s[i].rank < s[j].rank
		})
		if len(s) > MaxSuggestions {
			s = s[:MaxSuggestions]
		}
		rep.Identities[a].Maybe = s
	}
}

func suggestionTo(id Identity, rank int, d float64) Suggestion {
	s := Suggestion{Folder: id.Folder, Distance: round4(d), rank: rank}
	if id.Folder == "singletons" {
		s.Image = id.Images[0]
	}
	return s
}
