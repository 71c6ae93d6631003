package vision

import (
	"context"
	"image"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/testenv"
)

// shifted is fr moved by (dx, dy) pixels, borders replicated: a customer
// who moves a little between the frames of a burst.
func shifted(t testing.TB, fr visit.Frame, dx, dy float64) visit.Frame {
	t.Helper()
	return warped(t, fr, 1, dx, dy)
}

// shrunk is fr scaled by s about its centre, borders replicated: the same
// customer standing farther from the camera.
func shrunk(t testing.TB, fr visit.Frame, s float64) visit.Frame {
	t.Helper()
	return warped(t, fr, s, (1-s)*float64(fr.W)/2, (1-s)*float64(fr.H)/2)
}

// warped is fr scaled by s, then moved by (dx, dy) pixels, borders
// replicated.
func warped(t testing.TB, fr visit.Frame, s, dx, dy float64) visit.Frame {
	t.Helper()
	img, release, err := frameMat(fr)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	m := gocv.NewMatWithSize(2, 3, gocv.MatTypeCV64F)
	defer m.Close()
	m.SetDoubleAt(0, 0, s)
	m.SetDoubleAt(1, 1, s)
	m.SetDoubleAt(0, 2, dx)
	m.SetDoubleAt(1, 2, dy)
	out := gocv.NewMat()
	defer out.Close()
	gocv.WarpAffineWithParams(img, &out, m, image.Pt(fr.W, fr.H), gocv.InterpolationLinear, gocv.BorderReplicate, colorOf(0))
	return visit.Frame{W: fr.W, H: fr.H, BGR: out.ToBytes()}
}

// perceiveBoth runs a burst with and without tracking.
func perceiveBoth(t testing.TB, p *Pipeline, burst []visit.Frame) (tr, full visit.Descriptor, tt, ft Timings) {
	t.Helper()
	var err error
	p.cfg.NoTrack = false
	if tr, err = p.PerceiveTimed(context.Background(), burst, &tt); err != nil {
		t.Fatal(err)
	}
	p.cfg.NoTrack = true
	defer func() { p.cfg.NoTrack = false }()
	if full, err = p.PerceiveTimed(context.Background(), burst, &ft); err != nil {
		t.Fatal(err)
	}
	return
}

// Tracking within a burst finds the same face as the whole detection stage
// on every frame, and the visit's template barely moves.
func TestTrackInBurst(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	fr := closeFrame640(t)
	burst := jittered(t, fr, 0)
	tr, full, tt, ft := perceiveBoth(t, p, burst)
	if tr.Outcome != visit.FaceFound || full.Outcome != visit.FaceFound {
		t.Fatalf("outcomes %v (tracked) and %v", tr.Outcome, full.Outcome)
	}
	c := cosine(tr.Embedding, full.Embedding)
	t.Logf("tracked %d of %d frames (fast %d, full %d; without: fast %d, full %d); detect %v vs %v; cosine %.4f",
		tt.Tracked, len(burst), tt.Fast, tt.Full, ft.Fast, ft.Full, tt.Detect, ft.Detect, c)
	if tt.Tracked != len(burst)-1 || ft.Tracked != 0 {
		t.Errorf("tracked %d frames (want %d), %d with tracking off", tt.Tracked, len(burst)-1, ft.Tracked)
	}
	if c < 0.98 || tr.Mask != full.Mask {
		t.Errorf("tracked template at cosine %.4f of the untracked one, mask %v vs %v", c, tr.Mask, full.Mask)
	}
}

// jittered is a 5-frame burst of fr moved a few pixels each frame (seed
// picks one of two jitter patterns).
func jittered(t testing.TB, fr visit.Frame, seed int) []visit.Frame {
	sh := [][5][2]float64{
		{{0, 0}, {6, 3}, {12, -4}, {3, 8}, {-7, 2}},
		{{1, 1}, {5, 4}, {10, -3}, {2, 7}, {-6, 1}},
	}[seed]
	out := make([]visit.Frame, len(sh))
	for i, d := range sh {
		out[i] = shifted(t, fr, d[0], d[1])
	}
	return out
}

// In a group photo the whole detection stage may pick a different,
// similar face in a frame of the burst; tracking keeps to the person the
// burst started with, so two bursts of one scene give one template.
func TestTrackKeepsThePerson(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	fr := frame640(t)
	first, err := p.FaceInFrame(fr, FaceOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tra, fulla, tt, _ := perceiveBoth(t, p, jittered(t, fr, 0))
	trb, fullb, _, _ := perceiveBoth(t, p, jittered(t, fr, 1))
	t.Logf("tracked %d frames; bursts agree at cosine %.4f tracked, %.4f untracked; tracked vs the first frame's face %.4f, %.4f",
		tt.Tracked, cosine(tra.Embedding, trb.Embedding), cosine(fulla.Embedding, fullb.Embedding),
		cosine(tra.Embedding, first.Embedding), cosine(trb.Embedding, first.Embedding))
	if tt.Tracked == 0 {
		t.Fatal("no frame tracked")
	}
	for _, d := range []visit.Descriptor{tra, trb} {
		if c := cosine(d.Embedding, first.Embedding); c < 0.95 {
			t.Errorf("tracked burst template at cosine %.4f of the first frame's face: another person", c)
		}
	}
}

// seedClips lists the seed clips' frames by clip (god_masked,
// god_unmasked, holness_masked), each sorted, and skips the test when
// ../shared is absent or in -short.
func seedClips(t *testing.T) (root string, clips map[string][]string) {
	t.Helper()
	root = testenv.Path("..", "shared", "datasets", "seed-clips", "frames")
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Skipf("seed clips not available: %v", err)
	}
	if testing.Short() {
		t.Skip("seed clips: not in -short")
	}
	clips = map[string][]string{}
	for _, e := range ents {
		n := e.Name()
		if i := strings.LastIndex(n, "_"); i > 0 && strings.HasSuffix(n, ".jpg") {
			clips[n[:i]] = append(clips[n[:i]], n)
		}
	}
	for _, names := range clips {
		sort.Strings(names)
	}
	return root, clips
}

// On real video (the seed clips, 6 frames a second): bursts of 5
// consecutive frames, tracked and not. With landmark alignment the
// landmark net reads the box the tracker or the detector drew, so the two
// templates differ a little (seed clips: cosine min 0.888, median 0.991;
// mask scores up to 0.24 apart with the recalibrated mask head, 0.14
// before its Platt scaling steepened it). What must hold
// is what the identity engine sees: the genuine/impostor margin per pair
// type, and no confident mask state flipped. A second landmark pass on a
// box rebuilt from the first pass's points was tried and dropped: +28 ms a
// burst, margins no better (min cosine 0.82-0.97 over refit sides 0.9-1.2).
func TestTrackSeedClips(t *testing.T) {
	root, clips := seedClips(t)
	checkMats(t)
	p := newTestPipeline(t, "", "")
	type burstDesc struct {
		who      string
		mask     bool
		tr, full []float32
	}
	var all []burstDesc
	var cos []float64
	var tracked, frames int
	var dT, dF, maxMaskDiff float64
	for clip, names := range clips {
		for i := 0; i+5 <= len(names); i += 5 {
			var burst []visit.Frame
			for _, n := range names[i : i+5] {
				burst = append(burst, loadFrame(t, filepath.Join(root, n)))
			}
			tr, full, tt, ft := perceiveBoth(t, p, burst)
			if tr.Outcome != full.Outcome {
				t.Errorf("%s burst %d: outcome %v tracked, %v not", clip, i/5, tr.Outcome, full.Outcome)
				continue
			}
			tracked += tt.Tracked
			frames += len(burst)
			dT += tt.Detect.Seconds()
			dF += ft.Detect.Seconds()
			if tr.Outcome == visit.FaceFound {
				cos = append(cos, cosine(tr.Embedding, full.Embedding))
				all = append(all, burstDesc{who: strings.Split(clip, "_")[0], mask: strings.Contains(clip, "_masked"), tr: tr.Embedding, full: full.Embedding})
				maxMaskDiff = max(maxMaskDiff, math.Abs(float64(tr.MaskScore-full.MaskScore)))
				if tr.Mask != full.Mask && tr.Mask != visit.MaskUnknown && full.Mask != visit.MaskUnknown {
					t.Errorf("%s burst %d: mask %v tracked (score %.3f), %v not (%.3f)", clip, i/5, tr.Mask, tr.MaskScore, full.Mask, full.MaskScore)
				}
			}
		}
	}
	// Separation of identities between bursts: the farthest same-person
	// pair against the nearest other-person pair, by pair type.
	sep := map[string][2]float64{}
	for _, mode := range []string{"tracked", "untracked"} {
		for _, pt := range []string{"UU", "MM", "MU"} {
			maxG, minI := -1.0, 3.0
			for i := range all {
				for j := i + 1; j < len(all); j++ {
					a, b := all[i], all[j]
					typ := map[int]string{0: "UU", 1: "MU", 2: "MM"}[btoi(a.mask)+btoi(b.mask)]
					if typ != pt {
						continue
					}
					x, y := a.tr, b.tr
					if mode == "untracked" {
						x, y = a.full, b.full
					}
					d := 1 - cosine(x, y)
					if a.who == b.who {
						maxG = max(maxG, d)
					} else {
						minI = min(minI, d)
					}
				}
			}
			t.Logf("%s %s: farthest genuine %.4f, nearest impostor %.4f", mode, pt, maxG, minI)
			sep[mode+pt] = [2]float64{maxG, minI}
		}
	}
	for _, pt := range []string{"UU", "MM", "MU"} {
		tr, un := sep["tracked"+pt], sep["untracked"+pt]
		// Tracked boxes frame the face a little differently from fresh
		// detections, and the face mesh reads the box: with it the MU
		// margin is 0.372 tracked against 0.414 untracked (0.04; the
		// 68-point alignment lost under 0.03). Both stay far apart.
		if tr[1]-tr[0] < un[1]-un[0]-0.05 {
			t.Errorf("%s: tracking weakens the separation: genuine <= %.4f, impostors >= %.4f, margin %.4f (untracked %.4f, %.4f, margin %.4f)",
				pt, tr[0], tr[1], tr[1]-tr[0], un[0], un[1], un[1]-un[0])
		}
	}
	sort.Float64s(cos)
	if len(cos) == 0 {
		t.Fatal("no bursts with a face")
	}
	t.Logf("%d bursts, %d of %d frames tracked; detection %.1f ms vs %.1f ms per burst; cosine tracked/untracked min %.4f median %.4f; mask score differs by up to %.3f",
		len(cos), tracked, frames, 1000*dT/float64(len(cos)), 1000*dF/float64(len(cos)), cos[0], cos[len(cos)/2], maxMaskDiff)
	if cos[0] < 0.85 || cos[len(cos)/2] < 0.98 {
		t.Errorf("tracked bursts' templates at cosine min %.4f, median %.4f of the untracked ones", cos[0], cos[len(cos)/2])
	}
	if tracked < frames/2 {
		t.Errorf("only %d of %d frames tracked", tracked, frames)
	}
}

// TestSeedClipVisitsGroupByPerson runs the seed clips the way the agent
// sees customers: each 5 frames of a clip one visit (Perceive: tracking,
// burst template, mask state), the three stills one visit each
// (FaceInImage), grouped by the identity engine at the shipped cuts in
// several orders. Issue 12's goal: exactly 3 people, God's masked still
// with God. (Single frames, as `eval cluster` groups them, give 4: one
// masked frame of God founds its own identity.)
// seedClipVisits perceives the seed clips as the agent sees them: each 5
// consecutive frames of a clip one visit (Perceive), each still one visit
// (FaceInImage). who names the clip or still of each visit; quality is the
// visit quality the agent's new-identity gate reads. Each burst is perceived
// once per scale (its frames shrunk by it, the customer farther away: a
// smaller face, a lower quality); a shrunk burst in which no face passes
// the gates is no visit of the agent's identity step and is left out.
func seedClipVisits(t *testing.T, p *Pipeline, scales ...float64) (samples []identity.Sample, who []string, quality []float64) {
	t.Helper()
	root, clips := seedClips(t)
	if len(scales) == 0 {
		scales = []float64{1}
	}
	qOf, dropped := map[float64][]float64{}, map[float64]int{}
	defer func() {
		for _, sc := range scales {
			if q := qOf[sc]; len(q) > 0 && len(scales) > 1 {
				slices.Sort(q)
				t.Logf("scale %.2f: %d bursts with a face (%d without), quality min %.2f median %.2f max %.2f", sc, len(q), dropped[sc], q[0], q[len(q)/2], q[len(q)-1])
			}
		}
	}()
	for _, clip := range slices.Sorted(maps.Keys(clips)) {
		names := clips[clip]
		for i := 0; i+5 <= len(names); i += 5 {
			var burst []visit.Frame
			for _, n := range names[i : i+5] {
				burst = append(burst, loadFrame(t, filepath.Join(root, n)))
			}
			for _, sc := range scales {
				b := burst
				if sc != 1 {
					b = make([]visit.Frame, len(burst))
					for k, fr := range burst {
						b[k] = shrunk(t, fr, sc)
					}
				}
				d, err := p.Perceive(context.Background(), b)
				if err == nil && d.Outcome != visit.FaceFound && sc != 1 {
					dropped[sc]++
					continue
				}
				qOf[sc] = append(qOf[sc], float64(d.Quality))
				if err != nil || d.Outcome != visit.FaceFound {
					t.Fatalf("%s burst %d: %v, %v", clip, i/5, d.Outcome, err)
				}
				samples = append(samples, identity.Sample{Embedding: d.Embedding, Mask: d.Mask})
				who = append(who, clip)
				quality = append(quality, float64(d.Quality))
			}
		}
	}
	for _, n := range []string{"god_masked_still.png", "god_unmasked_still.png", "aakash_unmasked_still.png"} {
		b, err := os.ReadFile(filepath.Join(root, n))
		if err != nil {
			t.Fatal(err)
		}
		f, err := p.FaceInImage(b, FaceOptions{}, nil)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		samples = append(samples, identity.Sample{Embedding: f.Embedding, Mask: f.Mask})
		who = append(who, n)
		quality = append(quality, f.Quality)
	}
	return samples, who, quality
}

func TestSeedClipVisitsGroupByPerson(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	samples, who, _ := seedClipVisits(t, p)
	th := p.emb.net.Model.Thresholds
	if th == nil {
		t.Fatal("the default embedder has no thresholds in the manifest")
	}
	cfg := identity.DefaultConfig()
	cfg.Thresholds = th.Thresholds
	person := func(s string) string { return strings.Split(s, "_")[0] }
	rng := rand.New(rand.NewPCG(1, 2))
	for _, alg := range []identity.Algorithm{identity.Average, identity.Online} {
		for trial := 0; trial < 3; trial++ {
			perm := rng.Perm(len(samples))
			ss := make([]identity.Sample, len(samples))
			ww := make([]string, len(samples))
			for i, j := range perm {
				ss[i], ww[i] = samples[j], who[j]
				ss[i].Time = time.Unix(int64(i), 0)
			}
			labels, err := identity.Cluster(context.Background(), ss, identity.ClusterOptions{Algorithm: alg, Config: cfg})
			if err != nil {
				t.Fatal(err)
			}
			people := map[int]map[string]int{}
			labelOf := map[string]int{}
			for i, l := range labels {
				if people[l] == nil {
					people[l] = map[string]int{}
				}
				people[l][ww[i]]++
				labelOf[ww[i]] = l
			}
			t.Logf("%s, order %d: %d identities %v", alg, trial, len(people), people)
			if len(people) != 3 {
				t.Errorf("%s, order %d: %d identities for 3 people: %v", alg, trial, len(people), people)
			}
			for l, g := range people {
				seen := map[string]bool{}
				for w := range g {
					seen[person(w)] = true
				}
				if len(seen) > 1 {
					t.Errorf("%s, order %d: identity %d merges %v", alg, trial, l, g)
				}
			}
			if labelOf["god_masked_still.png"] != labelOf["god_unmasked"] || labelOf["god_masked"] != labelOf["god_unmasked"] {
				t.Errorf("%s, order %d: God's masked visits are not with his unmasked ones: %v", alg, trial, people)
			}
		}
	}
}

func loadFrame(t testing.TB, path string) visit.Frame {
	t.Helper()
	m := gocv.IMRead(path, gocv.IMReadColor)
	defer m.Close()
	if m.Empty() {
		t.Fatalf("%s: not readable", path)
	}
	return visit.Frame{W: m.Cols(), H: m.Rows(), BGR: m.ToBytes()}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// gatedOutcome is what the agent's identity step makes of a stream of
// visits under one new-identity gate.
type gatedOutcome struct {
	identities, falseMerges, split, neverIdentified, withoutIdentity int
	splitWho                                                         []string
}

// streamGated offers the visits to an identity engine in order as the agent
// does (agent/visit.go): a visit below gate may join an identity but not
// start one (Join) and otherwise stays without one; at the end a
// consolidation, as the agent's timer runs it, after which the visits
// still without identity are offered again (agent/periodic.go,
// attachRefused). person maps a visit's name to its person.
func streamGated(t *testing.T, cfg identity.Config, ss []identity.Sample, ww []string, qq []float64, gate float64, person func(string) string) gatedOutcome {
	t.Helper()
	eng, err := identity.New(cfg, len(ss[0].Embedding), identity.WithIDGenerator(identity.SequentialIDs("s-")))
	if err != nil {
		t.Fatal(err)
	}
	obs := func(i int) identity.Observation {
		return identity.Observation{VisitID: strconv.Itoa(i), Time: time.Unix(int64(i), 0), Embedding: ss[i].Embedding, Mask: ss[i].Mask}
	}
	var refused []int
	for i := range ss {
		if qq[i] >= gate {
			if _, err := eng.Assign(obs(i)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		_, ok, err := eng.Join(obs(i))
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			refused = append(refused, i)
		}
	}
	if _, err := eng.Consolidate(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, i := range refused {
		if _, _, err := eng.Join(obs(i)); err != nil {
			t.Fatal(err)
		}
	}
	var o gatedOutcome
	peopleOf, idsOf := map[string]map[string]bool{}, map[string]map[string]bool{}
	for i := range ss {
		p := person(ww[i])
		if idsOf[p] == nil {
			idsOf[p] = map[string]bool{}
		}
		id, ok := eng.IdentityOf(strconv.Itoa(i))
		if !ok {
			o.withoutIdentity++
			continue
		}
		idsOf[p][id] = true
		if peopleOf[id] == nil {
			peopleOf[id] = map[string]bool{}
		}
		peopleOf[id][p] = true
	}
	o.identities = len(peopleOf)
	for _, ps := range peopleOf {
		if len(ps) > 1 {
			o.falseMerges++
		}
	}
	for p, ids := range idsOf {
		switch len(ids) {
		case 0:
			o.neverIdentified++
		case 1:
		default:
			o.split++
			o.splitWho = append(o.splitWho, p)
		}
	}
	return o
}

// The new-identity gate (vision.new_identity_quality) on real faces: the
// seed clips' visits streamed through the identity engine as the agent
// does, in three orders, under the gates the demo sweep measured
// (docs/accuracy.md, "The quality gate for a new identity").
func TestSeedClipVisitsQualityGate(t *testing.T) {
	checkMats(t)
	p := newTestPipeline(t, "", "")
	samples, who, quality := seedClipVisits(t, p, 1, 0.45, 0.35, 0.3, 0.25)
	qs := slices.Clone(quality)
	slices.Sort(qs)
	t.Logf("%d visits, quality min %.2f median %.2f max %.2f", len(qs), qs[0], qs[len(qs)/2], qs[len(qs)-1])
	for i, w := range who {
		if strings.HasSuffix(w, ".png") {
			t.Logf("still %s: quality %.2f", w, quality[i])
		}
	}
	cfg := identity.DefaultConfig()
	cfg.Thresholds = p.emb.net.Model.Thresholds.Thresholds
	person := func(s string) string { return strings.Split(s, "_")[0] }
	def := DefaultConfig().NewIdentityQuality
	for _, gate := range []float64{def, 0.4, 0.3, 0.2, 0} {
		rng := rand.New(rand.NewPCG(1, 2))
		for trial := 0; trial < 3; trial++ {
			perm := rng.Perm(len(samples))
			ss, ww, qq := make([]identity.Sample, len(perm)), make([]string, len(perm)), make([]float64, len(perm))
			for i, j := range perm {
				ss[i], ww[i], qq[i] = samples[j], who[j], quality[j]
			}
			o := streamGated(t, cfg, ss, ww, qq, gate, person)
			t.Logf("gate %.1f, order %d: %d identities for 3 people, %d false merges, %d split %v, %d never identified, %d of %d visits without identity",
				gate, trial, o.identities, o.falseMerges, o.split, o.splitWho, o.neverIdentified, o.withoutIdentity, len(ss))
			if o.falseMerges > 0 {
				t.Errorf("gate %.1f, order %d: %d false merges", gate, trial, o.falseMerges)
			}
			// The shipped gate: every person found once. Gates of 0.3
			// and below let a far visit found an identity its near
			// visits do not join (a split); measured 2026-12-07.
			if gate == def && (o.identities != 3 || o.split != 0 || o.neverIdentified != 0) {
				t.Errorf("shipped gate %.1f, order %d: %d identities, %d split %v, %d never identified; want 3, 0, 0",
					gate, trial, o.identities, o.split, o.splitWho, o.neverIdentified)
			}
		}
	}
}
