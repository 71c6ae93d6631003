package vision

import (
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"runtime"
	"sort"
	"time"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/imagecheck"
	"github.com/periocular/atm-agent/models"
)

// Config tunes the perception pipeline. Thresholds that belong to a model
// (detector score, embedding distances) come from the manifest; these are
// the quality gates of the site.
type Config struct {
	// Threads for OpenCV (0: OpenCV's default).
	Threads int `yaml:"threads"`
	// MinScore is the detector score a face needs to count at all.
	MinScore float64 `yaml:"min_score"`
	// MinFacePx is the smallest face box side (pixels) that is used.
	MinFacePx float64 `yaml:"min_face_px"`
	// MinContrast is the grey-level standard deviation inside the face box
	// below which a detection is taken for a covered lens, not a face.
	MinContrast float64 `yaml:"min_contrast"`
	// MinSharpness is the Laplacian variance below which a face is too blurred.
	MinSharpness float64 `yaml:"min_sharpness"`
	// MaxRoll (degrees) and MaxYaw (nose offset / eye distance).
	MaxRoll float64 `yaml:"max_roll"`
	MaxYaw  float64 `yaml:"max_yaw"`
	// NewIdentityQuality is the visit quality needed to start a new
	// identity; below it a visit may only match an existing one.
	NewIdentityQuality float64 `yaml:"new_identity_quality"`
	// BestFrames is how many of a burst's best frames are aggregated.
	BestFrames int `yaml:"best_frames"`
	// Raw skips the embedder's learned projection (used to train it).
	Raw bool `yaml:"-"`
	// PadTight pads an image whose face fills it (a tight crop) with gray
	// to this factor for a second detection pass (0 disables): on camera
	// frames when the first finds nothing, on image files also when its
	// face is large (see detectCustomer).
	PadTight float64 `yaml:"pad_tight"`
	// NoTrack turns off tracking within a burst: every frame then runs the
	// whole detection stage (used to measure what tracking changes).
	NoTrack bool `yaml:"-"`
}

// Revision names the behaviour of the detection, crop and quality code.
// Evaluation caches key on it: change it whenever a code change alters
// which face is found or how it is cut.
const Revision = "2026-12-07.all-faces-whole"

// DefaultConfig returns the measured defaults (docs/accuracy.md).
func DefaultConfig() Config {
	return Config{
		Threads:            2,
		MinScore:           0.3,
		MinFacePx:          40,
		MinContrast:        6,
		MinSharpness:       5,
		MaxRoll:            45,
		MaxYaw:             0.6,
		NewIdentityQuality: 0.5,
		BestFrames:         3,
		PadTight:           2,
	}
}

// Validate reports settings that cannot work.
func (c Config) Validate() error {
	var errs []error
	// Every comparison is written so that NaN fails it (NaN < x and
	// NaN > x are both false): !(lo <= v && v <= hi).
	if !(c.MinScore >= 0 && c.MinScore < 1) {
		errs = append(errs, fmt.Errorf("vision.min_score %v: must be in [0,1)", c.MinScore))
	}
	for _, f := range []struct {
		name    string
		v       float64
		lo, hi  float64
		meaning string
	}{
		{"min_face_px", c.MinFacePx, 0, 4096, "pixels"},
		{"min_contrast", c.MinContrast, 0, 255, "grey levels"},
		{"min_sharpness", c.MinSharpness, 0, 1e6, "Laplacian variance"},
		{"max_roll", c.MaxRoll, 0, 180, "degrees; 0 turns the gate off"},
		{"max_yaw", c.MaxYaw, 0, 10, "nose offset / eye distance; 0 turns the gate off"},
		{"new_identity_quality", c.NewIdentityQuality, 0, 1, "quality"},
	} {
		if !(f.v >= f.lo && f.v <= f.hi) {
			errs = append(errs, fmt.Errorf("vision.%s %v: want %g..%g (%s)", f.name, f.v, f.lo, f.hi, f.meaning))
		}
	}
	if c.BestFrames < 1 || c.BestFrames > 100 {
		errs = append(errs, fmt.Errorf("vision.best_frames %d: want 1..100", c.BestFrames))
	}
	if c.Threads < 0 || c.Threads > 256 {
		errs = append(errs, fmt.Errorf("vision.threads %d: want 0 (OpenCV's default) to 256", c.Threads))
	}
	if !(c.PadTight == 0 || (c.PadTight >= 1 && c.PadTight <= 4)) {
		errs = append(errs, fmt.Errorf("vision.pad_tight %v: 0 (off) or 1..4", c.PadTight))
	}
	return errors.Join(errs...)
}

// Face is what the pipeline found and measured in one image.
type Face struct {
	Det       Detection
	Embedding []float32 // L2-normalised
	Sharpness float64
	Roll, Yaw float64
	Quality   float64 // in [0,1]
	Mask      visit.MaskState
	MaskScore float64
	Padded    bool // found only after padding a tight crop
	// Thumb is a small JPEG of the face crop when requested (reports).
	Thumb []byte
}

// Timings are per-stage durations of the last call, for metrics and evals.
type Timings struct {
	Detect, Embed time.Duration
	// Fast counts detection passes the fast detector decided; Full those
	// that ran the main detector; Tracked the burst frames whose face the
	// fast detector found near the previous frame's.
	Fast, Full, Tracked int
	// Aligned counts the faces the landmark net ran on.
	Aligned int
}

// Pipeline turns frames into faces and a burst into one visit descriptor.
// It is safe for concurrent use; the nets serialise internally.
type Pipeline struct {
	cfg  Config
	det  Detector
	fast Detector // optional close-range detector run first
	// fastScore and fastFace gate the fast detector's customer face.
	fastScore, fastFace float64
	emb                 *Embedder
	lm                  *landmarker // when the embedder's crop aligns by landmarks
	mask                *MaskClassifier
	proj                *ProjectionHead
	Embedder            string // embedder model name
	// TemplateModel names what a template is comparable with: the embedder,
	// plus its projection head's checksum when one is applied.
	TemplateModel string
	// TemplateDim is the length of a template (after the projection).
	TemplateDim int
	// Detectors are the detection stage's models in the order they run
	// (the fast one first, if any); Detector joins them with ">".
	Detectors []string
	Detector  string
}

// New loads the manifest's pipeline models (or the named ones) from dir.
func New(dir string, man *models.Manifest, detector, embedder string, cfg Config) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Threads > 0 {
		SetNumThreads(cfg.Threads)
	}
	fastName := ""
	if detector == "" {
		// The manifest's choice, with its fast first stage if it has one;
		// a detector named by the caller runs alone.
		detector = man.Pipeline.Detector
		fastName = man.Pipeline.FastDetector
	}
	if embedder == "" {
		embedder = man.Pipeline.Embedder
	}
	dm, ok := man.Find(detector)
	if !ok {
		return nil, fmt.Errorf("detector %q is not in the model manifest", detector)
	}
	em, ok := man.Find(embedder)
	if !ok {
		return nil, fmt.Errorf("embedder %q is not in the model manifest", embedder)
	}
	det, err := NewDetector(dir, dm)
	if err != nil {
		return nil, err
	}
	emb, err := NewEmbedder(dir, em)
	if err != nil {
		det.Close()
		return nil, err
	}
	p := &Pipeline{cfg: cfg, det: det, emb: emb, Embedder: em.Name, Detectors: []string{dm.Name}, Detector: dm.Name}
	if fastName != "" {
		fm, ok := man.Find(fastName)
		if !ok {
			p.Close()
			return nil, fmt.Errorf("fast detector %q is not in the model manifest", fastName)
		}
		if p.fast, err = NewDetector(dir, fm); err != nil {
			p.Close()
			return nil, err
		}
		p.fastScore, p.fastFace = man.Pipeline.FastMinScore, man.Pipeline.FastMinFace
		p.Detectors = []string{fm.Name, dm.Name}
		p.Detector = fm.Name + ">" + dm.Name
	}
	if !cfg.Raw {
		if p.proj, err = loadProjection(dir, em); err != nil {
			p.Close()
			return nil, err
		}
	}
	if em.Embedding != nil && needsLandmarks(em.Embedding.Align) {
		lmm, ok := man.Find(man.Pipeline.Landmarks)
		if !ok {
			p.Close()
			return nil, fmt.Errorf("embedder %s aligns by landmarks (align %q) but the manifest's pipeline.landmarks %q is not a model", em.Name, em.Embedding.Align, man.Pipeline.Landmarks)
		}
		if p.lm, err = newLandmarker(dir, lmm); err != nil {
			p.Close()
			return nil, err
		}
	}
	p.TemplateDim, p.TemplateModel = templateShape(em, p.proj)
	if mc, err := LoadMaskClassifier(dir, man, em.Name); err == nil {
		p.mask = mc
	} else if !errors.Is(err, ErrNoMaskModel) {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Close releases the networks.
func (p *Pipeline) Close() error {
	var errs []error
	if p.det != nil {
		errs = append(errs, p.det.Close())
	}
	if p.fast != nil {
		errs = append(errs, p.fast.Close())
	}
	if p.emb != nil {
		errs = append(errs, p.emb.Close())
	}
	if p.lm != nil {
		errs = append(errs, p.lm.Close())
	}
	return errors.Join(errs...)
}

// Config returns the pipeline's settings.
func (p *Pipeline) Config() Config { return p.cfg }

// ErrNoFace says no usable face was found. It is an outcome, not a failure.
var ErrNoFace = errors.New("no usable face")

// stillPadFrom is the face box side, in image short sides, from which an
// image file is also searched padded: a smaller face cannot be the part of
// a face too large for the detectors.
const stillPadFrom = 0.35

// largeIn says whether face d in img is large enough (stillPadFrom) to be
// a part of a face too large for the detectors.
func largeIn(d Detection, img gocv.Mat) bool {
	return math.Max(d.W(), d.H()) >= stillPadFrom*float64(min(img.Cols(), img.Rows()))
}

// detectCustomer finds the customer's face, padding the image with gray
// for a second pass. A face that fills the image (a tight crop) has no
// context around it, and the detectors, trained on scenes, then box a part
// of it (on rmfrd's masked crops often one eye; docs/accuracy.md). Camera
// frames show the scene, so they are padded only when nothing is found;
// image files (still), which are often such crops, are also padded when
// their face is large (largeIn), and the padded pass's face replaces the
// first when it is the whole of which the first is a part (wholeOf).
// padded says the face kept was found in the padded image.
func (p *Pipeline) detectCustomer(img gocv.Mat, still bool, t *Timings) (d Detection, ok, padded bool, err error) {
	d, ok, err = p.findCustomer(img, t)
	if err != nil {
		return Detection{}, false, false, err
	}
	if p.cfg.PadTight < 1 || (ok && (!still || !largeIn(d, img))) {
		return d, ok, false, nil
	}
	pm, back := p.paddedCopy(img)
	defer pm.Close()
	pd, pok, err := p.findCustomer(pm, t)
	if err != nil {
		return Detection{}, false, false, err
	}
	pd = back(pd)
	if !pok || (ok && !wholeOf(pd, d)) {
		return d, ok, false, nil
	}
	return pd, true, true, nil
}

// paddedCopy is img padded with gray to PadTight times its size for a
// second detection pass, a large image scaled down first: the detectors
// see at most 256 pixels, and padding a 12 MP photo would copy 48 MP for
// nothing. back maps a detection in the copy to img's pixels. The copy
// must be closed.
func (p *Pipeline) paddedCopy(img gocv.Mat) (pm gocv.Mat, back func(Detection) Detection) {
	w, h := img.Cols(), img.Rows()
	src, k := img, 1.0
	if m := max(w, h); m > padMaxSide {
		k = float64(m) / padMaxSide
		// At least a pixel: the short side of a 2561x1 banner rounds to
		// 0, and cv::resize to an empty size throws (the process aborts).
		w, h = max(1, int(math.Round(float64(w)/k))), max(1, int(math.Round(float64(h)/k)))
		small := gocv.NewMat()
		defer small.Close()
		gocv.Resize(img, &small, image.Pt(w, h), 0, 0, gocv.InterpolationArea)
		src = small
	}
	// Pad with constant gray (replicated borders create false faces).
	px := int(float64(w) * (p.cfg.PadTight - 1) / 2)
	py := int(float64(h) * (p.cfg.PadTight - 1) / 2)
	pm = gocv.NewMat()
	gocv.CopyMakeBorder(src, &pm, py, py, px, px, gocv.BorderConstant, colorOf(128))
	return pm, func(d Detection) Detection { return d.mapped(k, -k*float64(px), -k*float64(py)) }
}

// padMaxSide is the longest side an image is padded at; a larger one is
// scaled down for the padded pass (the default 640x480 camera frames are
// smaller; camera.width up to 16384 is allowed, so a larger frame in which
// nothing is found is scaled too).
const padMaxSide = 1280

// stillGrow is how much larger than the first pass's face the padded
// pass's must be to replace it: boxes of the same face differ by a few
// per cent between the passes, and the first pass, which sees the face
// larger, places it better.
const stillGrow = 1.15

// wholeOf says whether face w, found in the padded image, is the whole of
// which part is a part: much larger and holding its centre.
func wholeOf(w, part Detection) bool {
	cx, cy := (part.X0+part.X1)/2, (part.Y0+part.Y1)/2
	return math.Max(w.W(), w.H()) >= stillGrow*math.Max(part.W(), part.H()) &&
		cx >= w.X0 && cx <= w.X1 && cy >= w.Y0 && cy <= w.Y1
}

// findCustomer runs the detection stage on one image: the fast detector
// when its customer face is confident and close, else the main detector.
func (p *Pipeline) findCustomer(img gocv.Mat, t *Timings) (Detection, bool, error) {
	if t == nil {
		t = &Timings{}
	}
	if p.fast != nil {
		d, ok, err := p.fastCustomer(img)
		if err != nil {
			return Detection{}, false, err
		}
		if ok {
			t.Fast++
			return d, true, nil
		}
	}
	t.Full++
	dets, err := p.det.Detect(img)
	if err != nil {
		return Detection{}, false, err
	}
	d, ok := customer(filterScore(dets, p.cfg.MinScore), img.Cols(), img.Rows())
	return d, ok, nil
}

// fastCustomer runs the fast detector on img and keeps its customer face
// only when it is close, confident and whole: a box that crosses the border
// is a tight crop or a partial face, where the 128 input places the box
// worse than the main detector does.
func (p *Pipeline) fastCustomer(img gocv.Mat) (Detection, bool, error) {
	dets, err := p.fast.Detect(img)
	if err != nil {
		return Detection{}, false, err
	}
	dets = filterScore(dets, max(p.fastScore, p.cfg.MinScore))
	w, h := float64(img.Cols()), float64(img.Rows())
	d, ok := customer(dets, img.Cols(), img.Rows())
	ok = ok && math.Max(d.W(), d.H()) >= p.fastFace*math.Min(w, h) &&
		d.X0 >= 0 && d.Y0 >= 0 && d.X1 <= w && d.Y1 <= h
	return d, ok, nil
}

func filterScore(dets []Detection, min float64) []Detection {
	out := dets[:0]
	for _, d := range dets {
		if d.Score >= min {
			out = append(out, d)
		}
	}
	return out
}

// FaceOptions select extra work for one image.
type FaceOptions struct {
	Thumb int // side of a JPEG thumbnail of the face crop; 0 for none
	// Limits bound the image FaceInImage accepts (zero: imagecheck's defaults).
	Limits imagecheck.Limits
}

// measured is a detected face with its quality measures and its crop, not
// yet embedded. The crop must be closed.
type measured struct {
	face Face
	crop gocv.Mat
	// frame is the burst frame the face was measured in; coarse is set
	// when the landmark net has not run yet (see align).
	frame  int
	coarse bool
}

// trackSpan is the side of the square searched around the previous frame's
// face, in face box sides; trackIoU the overlap the new box must keep.
const (
	trackSpan = 2.0
	trackIoU  = 0.3
)

// track looks for the customer where the previous frame of the burst had
// him: the fast detector on a square of trackSpan face sides around the
// previous box, in which the face is large (the fast detector's strength
// at any distance from the camera). The face must pass the fast stage's
// gates within the square and overlap the previous box; otherwise ok is
// false and the frame goes through the whole detection stage.
func (p *Pipeline) track(img gocv.Mat, prev Detection, t *Timings) (Detection, bool, error) {
	if p.fast == nil {
		return Detection{}, false, nil
	}
	side := trackSpan * math.Max(prev.W(), prev.H())
	cx, cy := (prev.X0+prev.X1)/2, (prev.Y0+prev.Y1)/2
	r := image.Rect(int(cx-side/2), int(cy-side/2), int(cx+side/2), int(cy+side/2)).
		Intersect(image.Rect(0, 0, img.Cols(), img.Rows()))
	// A square smaller than the fast detector's input would be upscaled:
	// its keypoints, and so the crop, come out coarser than the main
	// detector's on the whole frame.
	if in := inputSide(p.fast); r.Dx() < in || r.Dy() < in {
		return Detection{}, false, nil
	}
	roi := img.Region(r)
	defer roi.Close()
	d, ok, err := p.fastCustomer(roi)
	if err != nil || !ok {
		return Detection{}, false, err
	}
	d = d.shifted(float64(r.Min.X), float64(r.Min.Y))
	if iou(d, prev) < trackIoU {
		return Detection{}, false, nil
	}
	t.Tracked++
	return d, true, nil
}

// inputSide is a detector network's smaller input side (0 if unknown).
func inputSide(d Detector) int {
	if nd, ok := d.(*netDetector); ok {
		return min(nd.net.Model.Input.Width, nd.net.Model.Input.Height)
	}
	return 0
}

// measure detects the customer's face, cuts it by the embedder's crop
// policy and measures its quality: everything but the embedding, so a
// burst can embed only its best frames. With prev (the customer's face in
// the previous frame of a burst) the face is first tracked from there.
func (p *Pipeline) measure(img gocv.Mat, prev *Detection, t *Timings) (measured, error) {
	return p.measureIn(img, prev, false, false, t)
}

// measureIn is measure; with coarse it leaves out the landmark net (see
// measureDet); still says img is an image file, not a camera frame (see
// detectCustomer).
func (p *Pipeline) measureIn(img gocv.Mat, prev *Detection, coarse, still bool, t *Timings) (measured, error) {
	if t == nil {
		t = &Timings{}
	}
	t0 := time.Now()
	var (
		d          Detection
		ok, padded bool
		err        error
	)
	if prev != nil && !p.cfg.NoTrack {
		d, ok, err = p.track(img, *prev, t)
	}
	if err == nil && !ok {
		d, ok, padded, err = p.detectCustomer(img, still, t)
	}
	t.Detect += time.Since(t0)
	if err != nil {
		return measured{}, err
	}
	if !ok {
		return measured{}, ErrNoFace
	}
	return p.measureDet(img, d, padded, coarse, t)
}

// measureDet measures one detected face: contrast gate, landmarks, crop,
// sharpness, pose and quality. With coarse the landmark net does not run:
// the crop is aligned by the detector's keypoints, which is enough to rank
// a burst's frames by quality (pose comes from those keypoints anyway), and
// align later runs the net on the frames that are embedded.
func (p *Pipeline) measureDet(img gocv.Mat, d Detection, padded, coarse bool, t *Timings) (measured, error) {
	// A covered lens or a dark, uniform frame can still make a weak
	// detection; a face has contrast, a lens cap does not.
	if contrast(img, d) < p.cfg.MinContrast {
		return measured{}, ErrNoFace
	}
	if p.lm != nil && !coarse {
		var err error
		if d, err = p.landmarks(img, d, t); err != nil {
			return measured{}, err
		}
	}
	crop, err := p.emb.crop(img, d)
	if err != nil {
		return measured{}, err
	}
	f := Face{Det: d, Padded: padded, Sharpness: sharpness(crop)}
	f.Roll, f.Yaw, _ = pose(d)
	f.Quality = p.quality(f)
	return measured{face: f, crop: crop, coarse: p.lm != nil && coarse}, nil
}

// landmarks runs the landmark net on d, returning d with its five points.
func (p *Pipeline) landmarks(img gocv.Mat, d Detection, t *Timings) (Detection, error) {
	t1 := time.Now()
	five, err := p.lm.five(img, d)
	t.Detect += time.Since(t1)
	t.Aligned++
	d.Five = five
	return d, err
}

// align runs the landmark net on a face measured coarse and re-cuts its
// crop by the net's points; the quality that ranked it stays.
func (p *Pipeline) align(m *measured, fr visit.Frame, t *Timings) error {
	if !m.coarse {
		return nil
	}
	img, release, err := frameMat(fr)
	if err != nil {
		return err
	}
	defer release()
	d, err := p.landmarks(img, m.face.Det, t)
	if err != nil {
		return err
	}
	crop, err := p.emb.crop(img, d)
	if err != nil {
		return err
	}
	m.crop.Close()
	m.crop, m.face.Det, m.coarse = crop, d, false
	return nil
}

// embed completes a measured face: template, mask state, projection.
func (p *Pipeline) embed(m *measured, thumb int, t *Timings) error {
	t1 := time.Now()
	emb, jpg, err := p.emb.EmbedCrop(m.crop, thumb)
	if t != nil {
		t.Embed += time.Since(t1)
	}
	if err != nil {
		return err
	}
	f := &m.face
	f.Embedding, f.Thumb = emb, jpg
	f.Mask, f.MaskScore = visit.MaskUnknown, 0.5
	if p.mask != nil {
		// The mask head reads the raw template: the projection removes
		// exactly the directions it relies on.
		f.MaskScore = p.mask.Score(emb)
		f.Mask = p.mask.State(f.MaskScore)
	}
	if p.proj != nil {
		f.Embedding = p.proj.Apply(f.Embedding)
	}
	return nil
}

// faceInMat runs detection, quality measures, embedding and mask state on
// one BGR image, an image file's (still) or a camera frame's. It returns
// ErrNoFace when nothing passes the score gate.
func (p *Pipeline) faceInMat(img gocv.Mat, o FaceOptions, still bool, t *Timings) (Face, error) {
	m, err := p.measureIn(img, nil, false, still, t)
	if err != nil {
		return Face{}, err
	}
	defer m.crop.Close()
	if err := p.embed(&m, o.Thumb, t); err != nil {
		return Face{}, err
	}
	return m.face, nil
}

// quality folds the gates into one number in [0,1]: each factor is 1 when
// comfortably inside its gate and falls to 0 at the gate.
func (p *Pipeline) quality(f Face) float64 {
	c := p.cfg
	side := math.Max(f.Det.W(), f.Det.H())
	q := ramp(f.Det.Score, c.MinScore, c.MinScore+0.3)
	q *= ramp(side, c.MinFacePx, 2*c.MinFacePx)
	q *= ramp(f.Sharpness, c.MinSharpness, 4*c.MinSharpness)
	if c.MaxRoll > 0 {
		q *= ramp(c.MaxRoll-math.Abs(f.Roll), 0, c.MaxRoll/2)
	}
	if c.MaxYaw > 0 {
		q *= ramp(c.MaxYaw-math.Abs(f.Yaw), 0, c.MaxYaw/2)
	}
	return q
}

func ramp(v, lo, hi float64) float64 {
	switch {
	case v <= lo:
		return 0
	case v >= hi:
		return 1
	}
	return (v - lo) / (hi - lo)
}

// FaceInImage decodes an image file's bytes (DecodeImage: header checked
// against o.Limits first, OpenCV exceptions caught) and finds the
// customer's face.
func (p *Pipeline) FaceInImage(data []byte, o FaceOptions, t *Timings) (Face, error) {
	img, err := DecodeImage(data, o.Limits)
	if err != nil {
		return Face{}, err
	}
	defer img.Close()
	return p.faceInMat(img, o, true, t)
}

// FacesInImage decodes an image file's bytes as FaceInImage does and
// returns every face the main detector finds above the score gate (not only
// the customer's), each measured and embedded, left to right, top to
// bottom: a group photo gives one Face per person. A face that fails the
// contrast gate or whose crop is empty is left out; ErrNoFace when none is
// left. With o.Thumb each Face's thumbnail is its own crop.
func (p *Pipeline) FacesInImage(data []byte, o FaceOptions, t *Timings) ([]Face, error) {
	img, err := DecodeImage(data, o.Limits)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	if t == nil {
		t = &Timings{}
	}
	t0 := time.Now()
	dets, err := p.det.Detect(img)
	if err != nil {
		return nil, err
	}
	dets = filterScore(dets, p.cfg.MinScore)
	found := make([]foundFace, len(dets))
	large := false
	for i, d := range dets {
		found[i] = foundFace{d: d}
		large = large || largeIn(d, img)
	}
	// As for the customer's face (detectCustomer): nothing found, or a
	// large face that may be a part of a face filling the image, and the
	// padded image is searched too; there a face found whole replaces the
	// parts of it the first pass found.
	if p.cfg.PadTight >= 1 && (len(dets) == 0 || large) {
		pm, back := p.paddedCopy(img)
		pdets, err := p.det.Detect(pm)
		pm.Close()
		if err != nil {
			return nil, err
		}
		for _, pd := range filterScore(pdets, p.cfg.MinScore) {
			pd = back(pd)
			if len(dets) == 0 {
				found = append(found, foundFace{d: pd, padded: true})
				continue
			}
			kept := found[:0:0]
			for _, f := range found {
				if f.padded || !wholeOf(pd, f.d) {
					kept = append(kept, f)
				}
			}
			if len(kept) < len(found) {
				found = append(kept, foundFace{d: pd, padded: true})
			}
		}
	}
	t.Full++
	t.Detect += time.Since(t0)
	sort.SliceStable(found, func(a, b int) bool {
		// Reading order: rows of faces (a face height apart), then x.
		da, db := found[a].d, found[b].d
		ra, rb := int(da.Y0/max(da.H(), 1)), int(db.Y0/max(db.H(), 1))
		if ra != rb {
			return ra < rb
		}
		return da.X0 < db.X0
	})
	var faces []Face
	for _, f := range found {
		m, err := p.measureDet(img, f.d, f.padded, false, t)
		if errors.Is(err, ErrNoFace) || errors.Is(err, ErrEmptyCrop) {
			continue
		}
		if err != nil {
			return nil, err
		}
		err = p.embed(&m, o.Thumb, t)
		m.crop.Close()
		if errors.Is(err, ErrEmptyCrop) {
			continue
		}
		if err != nil {
			return nil, err
		}
		faces = append(faces, m.face)
	}
	if len(faces) == 0 {
		return nil, ErrNoFace
	}
	return faces, nil
}

// foundFace is a detection of FacesInImage and whether it came from the
// padded image.
type foundFace struct {
	d      Detection
	padded bool
}

// FaceInFrame finds the customer's face in a camera frame.
func (p *Pipeline) FaceInFrame(fr visit.Frame, o FaceOptions, t *Timings) (Face, error) {
	img, release, err := frameMat(fr)
	if err != nil {
		return Face{}, err
	}
	defer release()
	return p.faceInMat(img, o, false, t)
}

// frameMat wraps the frame's pixels without a copy; release closes the Mat
// and keeps fr.BGR alive until then (the Mat does not hold the Go slice).
func frameMat(fr visit.Frame) (img gocv.Mat, release func(), err error) {
	if fr.W <= 0 || fr.H <= 0 || len(fr.BGR) != 3*fr.W*fr.H {
		return gocv.Mat{}, nil, fmt.Errorf("frame %dx%d with %d bytes: %w", fr.W, fr.H, len(fr.BGR), ErrInput)
	}
	if img, err = gocv.NewMatFromBytes(fr.H, fr.W, gocv.MatTypeCV8UC3, fr.BGR); err != nil {
		return gocv.Mat{}, nil, err
	}
	return img, func() {
		img.Close()
		runtime.KeepAlive(fr.BGR)
	}, nil
}

// Perceive turns a burst into one visit descriptor: the customer's face in
// each frame, measured and gated by quality; only the BestFrames best are
// embedded, their templates averaged with quality weights and
// L2-normalised; the mask state from their weighted mean score. After a
// frame with a face, the next frame first tracks it (see track).
func (p *Pipeline) Perceive(ctx context.Context, frames []visit.Frame) (visit.Descriptor, error) {
	return p.PerceiveTimed(ctx, frames, nil)
}

// PerceiveTimed is Perceive adding its stage timings and counts to t.
func (p *Pipeline) PerceiveTimed(ctx context.Context, frames []visit.Frame, t *Timings) (visit.Descriptor, error) {
	if t == nil {
		t = &Timings{}
	}
	desc := visit.Descriptor{Frames: len(frames), Model: p.TemplateModel, Outcome: visit.NoFace}
	if len(frames) == 0 {
		desc.Outcome = visit.CameraError
		return desc, nil
	}
	var cands []measured
	defer func() {
		for _, c := range cands {
			c.crop.Close()
		}
	}()
	seen := false
	var prev *Detection
	for i, fr := range frames {
		if err := ctx.Err(); err != nil {
			return desc, err
		}
		img, release, err := frameMat(fr)
		if err != nil {
			return desc, err
		}
		m, err := p.measureIn(img, prev, true, false, t)
		release()
		m.frame = i
		if errors.Is(err, ErrNoFace) {
			prev = nil
			continue
		}
		if err != nil {
			return desc, err
		}
		seen = true
		prev = &m.face.Det
		if m.face.Quality > 0 {
			cands = append(cands, m)
		} else {
			m.crop.Close()
		}
	}
	if len(cands) == 0 {
		if seen {
			desc.Outcome = visit.LowQuality
		}
		return desc, nil
	}
	sort.SliceStable(cands, func(i, j int) bool { return cands[i].face.Quality > cands[j].face.Quality })
	n := min(len(cands), p.cfg.BestFrames)
	faces := make([]Face, 0, n)
	for i := 0; i < n; i++ {
		if err := p.align(&cands[i], frames[cands[i].frame], t); err != nil {
			return desc, err
		}
		if err := p.embed(&cands[i], 0, t); err != nil {
			return desc, err
		}
		faces = append(faces, cands[i].face)
	}
	return aggregate(desc, faces, p.cfg.BestFrames, p.mask), nil
}

func aggregate(desc visit.Descriptor, faces []Face, best int, mc *MaskClassifier) visit.Descriptor {
	sort.SliceStable(faces, func(i, j int) bool { return faces[i].Quality > faces[j].Quality })
	if len(faces) > best {
		faces = faces[:best]
	}
	dim := len(faces[0].Embedding)
	acc := make([]float64, dim)
	var wsum, qsum, msum float64
	for _, f := range faces {
		w := f.Quality
		for i, v := range f.Embedding {
			acc[i] += w * float64(v)
		}
		wsum += w
		qsum += f.Quality
		msum += w * f.MaskScore
	}
	desc.Embedding = normalize(acc)
	desc.Outcome = visit.FaceFound
	desc.Used = len(faces)
	desc.Quality = float32(qsum / float64(len(faces)))
	desc.MaskScore = float32(msum / wsum)
	desc.Mask = visit.MaskUnknown
	if mc != nil {
		desc.Mask = mc.State(float64(desc.MaskScore))
	}
	return desc
}

func normalize(v []float64) []float32 {
	var n float64
	for _, x := range v {
		n += x * x
	}
	n = math.Sqrt(n)
	out := make([]float32, len(v))
	if n == 0 {
		return out
	}
	for i, x := range v {
		out[i] = float32(x / n)
	}
	return out
}

// FaceWithPaintedMask finds the face in img, paints a synthetic mask of the
// given style on a copy and returns the face measured on the masked copy.
func (p *Pipeline) FaceWithPaintedMask(img gocv.Mat, style int, t *Timings) (Face, error) {
	d, ok, _, err := p.detectCustomer(img, true, t)
	if err != nil {
		return Face{}, err
	}
	if !ok {
		return Face{}, ErrNoFace
	}
	masked := img.Clone()
	defer masked.Close()
	if err := PaintMask(&masked, d, style); err != nil {
		return Face{}, err
	}
	return p.faceInMat(masked, FaceOptions{}, true, t)
}
