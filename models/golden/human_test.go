package golden

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/internal/testenv/mats"
	"github.com/periocular/atm-agent/models/tfgraph"
)

// humanModel describes one human-models network checked against TF.js.
// Keep in sync with MODELS in scripts/golden/human.mjs.
type humanModel struct {
	name    string
	size    int
	face    string // "m11": [-1,1]; "unit": [0,1]; "byte": 0..255; "": no face input
	outputs []string
	tol     float64 // max abs diff allowed
	embed   string  // output held to the embedding tolerance (1e-5)
}

var humanModels = []humanModel{
	{name: "blazeface", size: 256, face: "m11", outputs: []string{"Identity", "Identity_1", "Identity_2", "Identity_3"}, tol: 1e-4},
	{name: "blazeface-front", size: 128, face: "m11", outputs: []string{"Identity", "Identity_1", "Identity_2", "Identity_3"}, tol: 1e-4},
	{name: "facemesh-detection-short", size: 128, face: "m11", outputs: []string{"Identity"}, tol: 1e-4},
	{name: "faceres", size: 224, face: "unit", outputs: []string{"global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"}, tol: 1e-4, embed: "global_pooling/Mean"},
	{name: "faceres-deep", size: 224, face: "unit", outputs: []string{"global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"}, tol: 1e-4, embed: "global_pooling/Mean"},
	{name: "facemesh", size: 192, face: "unit", outputs: []string{"Identity", "Identity_1", "Identity_2"}, tol: 1e-4},
	{name: "iris", size: 64, outputs: []string{"Identity"}, tol: 1e-4},
	{name: "mobilefacenet", size: 112, face: "m11", outputs: []string{"embeddings", "MobileFaceNet/Logits/SpatialSqueeze"}, tol: 1e-5, embed: "embeddings"},
	{name: "mobileface", size: 112, face: "byte", outputs: []string{"batchnorm0/add_1"}, tol: 1e-5, embed: "batchnorm0/add_1"},
}

const embedTol = 1e-5

// humanRtol is the part of the tolerance relative to the largest reference
// value of an output: 8e-6 is about 64 float32 ulps of it.
const humanRtol = 8e-6

type goldenOut struct {
	Shape  []int     `json:"shape"`
	Stride int       `json:"stride"`
	Values []float64 `json:"values"`
}

type goldenDoc struct {
	Model      string `json:"model"`
	InputShape []int  `json:"input_shape"`
	Inputs     []struct {
		Name    string               `json:"name"`
		Seed    uint32               `json:"seed"`
		Scale   string               `json:"scale"`
		Outputs map[string]goldenOut `json:"outputs"`
	} `json:"inputs"`
}

// humanModelsDir is the extracted human-models package; missing is a failure.
func humanModelsDir(t testing.TB) string {
	src := testenv.ModelSrc()
	dir := filepath.Join(src, "human-models", "models")
	if _, err := os.Stat(filepath.Join(dir, "blazeface.json")); err != nil {
		t.Fatalf("human-models package not found in %s (%v): run `make models` (or set ATM_MODEL_SRC)", dir, err)
	}
	return dir
}

// lcg is the seeded generator shared with human.mjs.
func lcg(seed uint32, n int) []float32 {
	out := make([]float32, n)
	x := seed
	for i := range out {
		x = x*1664525 + 1013904223
		out[i] = float32(float64(x>>8)/16777216*2 - 1)
	}
	return out
}

type faceImage struct {
	Size int    `json:"size"`
	RGB  string `json:"rgb"`
	rgb  []byte
}

func loadFace(t testing.TB) *faceImage {
	b, err := os.ReadFile(filepath.Join(testenv.Root(), "testdata", "golden", "human_input_face.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f faceImage
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if f.rgb, err = base64.StdEncoding.DecodeString(f.RGB); err != nil {
		t.Fatal(err)
	}
	return &f
}

// faceNHWC resamples the 256 face as human.mjs does (2x2 mean for half size,
// centre crop otherwise) and scales it ("m11", "unit"; "byte" keeps 0..255).
func faceNHWC(f *faceImage, size int, mode string) []float32 {
	n := f.Size
	out := make([]float32, size*size*3)
	for y := 0; y < size; y++ {
		for x := 0; x < size; x++ {
			for c := 0; c < 3; c++ {
				var v float64
				if size*2 == n {
					p := func(yy, xx int) float64 { return float64(f.rgb[((2*y+yy)*n+2*x+xx)*3+c]) }
					v = (p(0, 0) + p(0, 1) + p(1, 0) + p(1, 1)) / 4
				} else {
					off := (n - size) / 2
					v = float64(f.rgb[((y+off)*n+x+off)*3+c])
				}
				switch mode {
				case "m11":
					v = v/127.5 - 1
				case "byte":
				default:
					v = v / 255
				}
				out[(y*size+x)*3+c] = float32(v)
			}
		}
	}
	return out
}

func nhwcToNCHW(x []float32, h, w, c int) []float32 {
	out := make([]float32, len(x))
	for y := 0; y < h; y++ {
		for i := 0; i < w; i++ {
			for k := 0; k < c; k++ {
				out[(k*h+y)*w+i] = x[(y*w+i)*c+k]
			}
		}
	}
	return out
}

func convertHuman(t testing.TB, m humanModel) []byte {
	b, err := tfgraph.Convert(filepath.Join(humanModelsDir(t), m.name+".json"), tfgraph.Options{
		InputShape: []int{1, m.size, m.size, 3}, Outputs: m.outputs,
	})
	if err != nil {
		t.Fatalf("convert %s: %v", m.name, err)
	}
	return b
}

// forward runs one NCHW blob through net and copies the named outputs out.
func forward(net *gocv.Net, blob []float32, size int, outputs []string) (map[string][]float32, error) {
	in := gocv.NewMatWithSizes([]int{1, 3, size, size}, gocv.MatTypeCV32F)
	defer in.Close()
	p, err := in.DataPtrFloat32()
	if err != nil {
		return nil, err
	}
	copy(p, blob)
	net.SetInput(in, "input")
	outs := net.ForwardLayers(outputs)
	defer func() {
		for i := range outs {
			outs[i].Close()
		}
	}()
	if len(outs) != len(outputs) {
		return nil, fmt.Errorf("%d outputs, want %d", len(outs), len(outputs))
	}
	res := map[string][]float32{}
	for i, name := range outputs {
		d, err := outs[i].DataPtrFloat32()
		if err != nil {
			return nil, fmt.Errorf("output %s: %w", name, err)
		}
		res[name] = append([]float32(nil), d...)
	}
	return res, nil
}

func loadNet(t testing.TB, onnx []byte) gocv.Net {
	net, err := gocv.ReadNetFromONNXBytes(onnx)
	if err != nil {
		t.Fatal(err)
	}
	if net.Empty() {
		t.Fatal("empty network")
	}
	net.SetPreferableBackend(gocv.NetBackendOpenCV)
	net.SetPreferableTarget(gocv.NetTargetCPU)
	return net
}

func TestHumanGolden(t *testing.T) {
	face := loadFace(t)
	for _, m := range humanModels {
		t.Run(m.name, func(t *testing.T) {
			var doc goldenDoc
			b, err := os.ReadFile(filepath.Join(testenv.Root(), "testdata", "golden", "human_"+m.name+".json"))
			if err != nil {
				t.Fatalf("%v (regenerate with node scripts/golden/human.mjs)", err)
			}
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatal(err)
			}
			net := loadNet(t, convertHuman(t, m))
			defer net.Close()
			if len(doc.Inputs) == 0 {
				t.Fatal("golden file has no inputs")
			}
			for _, in := range doc.Inputs {
				var x []float32
				switch in.Name {
				case "random":
					x = lcg(in.Seed, m.size*m.size*3)
				case "face":
					x = faceNHWC(face, m.size, in.Scale)
				default:
					t.Fatalf("unknown input %q", in.Name)
				}
				got, err := forward(&net, nhwcToNCHW(x, m.size, m.size, 3), m.size, m.outputs)
				if err != nil {
					t.Fatal(err)
				}
				for _, o := range m.outputs {
					want, ok := in.Outputs[o]
					if !ok {
						t.Fatalf("golden file lacks output %s", o)
					}
					g := got[o]
					if n := prod(want.Shape); len(g) != n {
						t.Fatalf("%s/%s: %d values, TF.js shape %v", in.Name, o, len(g), want.Shape)
					}
					tol := m.tol
					if o == m.embed {
						tol = embedTol
					}
					// Pass: |got-want| <= tol + humanRtol*max|want| for every value.
					// Raw detector and landmark outputs are in input pixels, and the
					// BlazeFace 256 logits reach 1e3 on a real face: float32
					// summation order alone then moves values by more than 1e-4, so
					// the allowance grows with the output's own scale.
					maxAbs, maxRef, maxRel := 0.0, 0.0, 0.0
					for i, w := range want.Values {
						d := math.Abs(float64(g[i*want.Stride]) - w)
						maxAbs = math.Max(maxAbs, d)
						maxRef = math.Max(maxRef, math.Abs(w))
					}
					maxRel = maxAbs / math.Max(maxRef, 1e-30)
					allowed := tol + humanRtol*maxRef
					worst := maxAbs / allowed
					t.Logf("%s input %-6s %-20s %6d values (%4d compared): max abs diff %.3g (max |ref| %.3g), relative to max |ref| %.3g, allowed %.3g",
						m.name, in.Name, o, len(g), len(want.Values), maxAbs, maxRef, maxRel, allowed)
					if worst > 1 {
						t.Errorf("%s input %s output %s: max abs diff %g > %g (= %g + %g*max|ref|)", m.name, in.Name, o, maxAbs, allowed, tol, humanRtol)
					}
					if o == m.embed && want.Stride == 1 {
						// Cosine matching sees the unit vector: it must agree
						// within embedTol absolutely, whatever the raw scale.
						d := unitDiff(g, want.Values)
						t.Logf("%s input %-6s %-20s L2-normalised: max abs diff %.3g", m.name, in.Name, o, d)
						if d > embedTol {
							t.Errorf("%s input %s output %s: L2-normalised max abs diff %g > %g", m.name, in.Name, o, d, embedTol)
						}
					}
				}
			}
		})
	}
	if n := mats.Live(); n > 0 {
		t.Errorf("%d gocv Mats left open", n)
	}
}

// unitDiff is the max abs difference of the two vectors scaled to unit length.
func unitDiff(got []float32, want []float64) float64 {
	var ng, nw float64
	for i, w := range want {
		ng += float64(got[i]) * float64(got[i])
		nw += w * w
	}
	ng, nw = math.Sqrt(ng), math.Sqrt(nw)
	d := 0.0
	for i, w := range want {
		d = math.Max(d, math.Abs(float64(got[i])/ng-w/nw))
	}
	return d
}

func prod(s []int) int {
	n := 1
	for _, d := range s {
		n *= d
	}
	return n
}

// BenchmarkHuman reports ms per forward of each converted network at 1 and 2
// OpenCV threads:
//
//	go test -tags matprofile -run '^$' -bench BenchmarkHuman -benchtime 20x ./models/golden
func BenchmarkHuman(b *testing.B) {
	defer vision.SetNumThreads(0)
	for _, m := range humanModels {
		net := loadNet(b, convertHuman(b, m))
		blob := nhwcToNCHW(lcg(1, m.size*m.size*3), m.size, m.size, 3)
		if _, err := forward(&net, blob, m.size, m.outputs); err != nil { // warm-up
			b.Fatal(err)
		}
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/threads=%d", m.name, threads), func(b *testing.B) {
				vision.SetNumThreads(threads)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := forward(&net, blob, m.size, m.outputs); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/forward")
			})
		}
		net.Close()
	}
}
