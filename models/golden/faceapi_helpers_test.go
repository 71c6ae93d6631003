package golden

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/internal/testenv/mats"

	"gocv.io/x/gocv"
)

// faPkgDir is the extracted @vladmandic/face-api package: $ATM_MODEL_SRC
// (default <repo>/build/src) + /face-api. Missing sources fail the test.
func faPkgDir(tb testing.TB) string {
	tb.Helper()
	src := testenv.ModelSrc()
	dir := filepath.Join(src, "face-api")
	if _, err := os.Stat(filepath.Join(dir, "model", "face_recognition_model-weights_manifest.json")); err != nil {
		tb.Fatalf("face-api package not extracted at %s (%v): run `make models` first (or set ATM_MODEL_SRC)", dir, err)
	}
	return dir
}

// faRandomNCHW is the golden script's xorshift32 image (HWC, pixel =
// state>>24) laid out as a [1,3,size,size] blob.
func faRandomNCHW(seed uint32, size int) []float32 {
	s := seed
	out := make([]float32, 3*size*size)
	for i := 0; i < size*size*3; i++ {
		s ^= s << 13
		s ^= s >> 17
		s ^= s << 5
		p, c := i/3, i%3
		out[c*size*size+p] = float32(s >> 24)
	}
	return out
}

func faLoadGolden(tb testing.TB, name string, v any) {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "golden", "faceapi_"+name+".json"))
	if err != nil {
		tb.Fatalf("golden file: %v (regenerate with: node scripts/golden/faceapi.mjs)", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		tb.Fatalf("golden file %s: %v", name, err)
	}
}

func faFloats(tb testing.TB, s string) []float32 {
	tb.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b)%4 != 0 {
		tb.Fatalf("golden float array: %v (%d bytes)", err, len(b))
	}
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func faMaxAbs(tb testing.TB, a, b []float32) float64 {
	tb.Helper()
	if len(a) != len(b) {
		tb.Fatalf("length %d vs %d", len(a), len(b))
	}
	m := 0.0
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = math.Max(m, d)
	}
	return m
}

// faNet loads ONNX bytes into OpenCV; the caller closes it.
func faNet(tb testing.TB, model []byte) gocv.Net {
	tb.Helper()
	net, err := gocv.ReadNetFromONNXBytes(model)
	if err != nil {
		tb.Fatalf("OpenCV rejects the model: %v", err)
	}
	if net.Empty() {
		tb.Fatal("OpenCV loaded an empty net")
	}
	return net
}

// faForward sets the input blob and returns copies of the named outputs
// and their shapes; every Mat it makes is closed.
func faForward(tb testing.TB, net *gocv.Net, size int, input []float32, outs ...string) ([][]float32, [][]int) {
	tb.Helper()
	blob := gocv.NewMatWithSizes([]int{1, 3, size, size}, gocv.MatTypeCV32F)
	defer blob.Close()
	p, err := blob.DataPtrFloat32()
	if err != nil {
		tb.Fatal(err)
	}
	copy(p, input)
	net.SetInput(blob, "input")
	res := net.ForwardLayers(outs)
	defer func() {
		for _, m := range res {
			m.Close()
		}
	}()
	if len(res) != len(outs) {
		tb.Fatalf("%d outputs, want %d", len(res), len(outs))
	}
	vals := make([][]float32, len(res))
	shapes := make([][]int, len(res))
	for i, m := range res {
		d, err := m.DataPtrFloat32()
		if err != nil {
			tb.Fatalf("output %s: %v", outs[i], err)
		}
		vals[i] = append([]float32(nil), d...)
		shapes[i] = m.Size()
	}
	return vals, shapes
}

func faCheckMats(tb testing.TB) {
	tb.Helper()
	if n := mats.Live(); n > 0 {
		tb.Errorf("%d gocv Mats left open", n)
	}
}

func faSameShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
