package vision

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"reflect"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/models"
)

func TestProjectionHeadLinear(t *testing.T) {
	md := &models.Model{Name: "e", Embedding: &models.Embedding{Dim: 4}}
	h := &ProjectionHead{Mean: []float32{0.5, 0, 0, 0}, W: [][]float32{{1, 0, 0, 0}, {0, 2, 0, 0}}}
	if err := h.check(md); err != nil {
		t.Fatal(err)
	}
	if h.OutDim() != 2 {
		t.Fatalf("out dim %d", h.OutDim())
	}
	x := []float32{1, 0.25, 0, 0}
	y := h.Apply(x)
	// W(x - mean) = (0.5, 0.5), renormalised.
	want := float32(1 / math.Sqrt2)
	if len(y) != 2 || math.Abs(float64(y[0]-want)) > 1e-6 || math.Abs(float64(y[1]-want)) > 1e-6 {
		t.Errorf("Apply = %v, want [%v %v]", y, want, want)
	}
	if x[0] != 1 || x[1] != 0.25 {
		t.Errorf("the input template was changed: %v", x)
	}
	for name, bad := range map[string]*ProjectionHead{
		"both kinds":      {U: [][]float32{{1, 0, 0, 0}}, W: [][]float32{{1, 0, 0, 0}}},
		"neither":         {},
		"short row":       {W: [][]float32{{1, 0, 0}}},
		"short mean":      {Mean: []float32{1}, W: [][]float32{{1, 0, 0, 0}}},
		"short direction": {U: [][]float32{{1, 0}}},
	} {
		if err := bad.check(md); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Directions project in place and keep the length.
	n := &ProjectionHead{U: [][]float32{{1, 0, 0, 0}}}
	z := []float32{0.6, 0.8, 0, 0}
	if got := n.Apply(z); len(got) != 4 || got[0] != 0 || math.Abs(float64(got[1]-1)) > 1e-6 || n.OutDim() != 0 {
		t.Errorf("NAP Apply = %v", got)
	}
}

// The binary form round-trips exactly; the JSON form still reads; damaged
// files are refused with a reason.
func TestProjectionHeadFile(t *testing.T) {
	lin := &ProjectionHead{Embedder: "e", Trained: "t", Mean: []float32{0.5, -1e-7, 3, 0},
		W: [][]float32{{1, 0, 0, 0}, {0, 2.5, 0, 1e30}}}
	nap := &ProjectionHead{Embedder: "e", U: [][]float32{{0.6, 0.8, 0, 0}}}
	for name, p := range map[string]*ProjectionHead{"linear": lin, "nap": nap} {
		b, err := EncodeProjection(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeProjection(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("%s: round trip %+v, want %+v", name, got, p)
		}
		j, _ := json.Marshal(p)
		if got, err := DecodeProjection(j); err != nil || !reflect.DeepEqual(got, p) {
			t.Errorf("%s: JSON form %+v %v", name, got, err)
		}
		for what, bad := range map[string][]byte{
			"truncated":  b[:len(b)-1],
			"extra":      append(append([]byte{}, b...), 0),
			"no magic":   b[1:],
			"short":      b[:10],
			"empty":      nil,
			"huge count": bytes.Replace(b, []byte(`"mean":`), []byte(`"mean":9999999999,"x":`), 1),
		} {
			if _, err := DecodeProjection(bad); err == nil {
				t.Errorf("%s: %s file accepted", name, what)
			}
		}
	}
	if _, err := EncodeProjection(&ProjectionHead{W: [][]float32{{1, 2}, {3}}}); err == nil {
		t.Error("ragged W encoded")
	}
}

// The template tag comes from the head's values: the shipped binary heads
// give the checksums their JSON files had, so templates stored before the
// switch to float32 files still match the running model. (faceplugin's
// head was refitted after that switch, for the face mesh alignment and
// again for the padded search of image files: its pinned value is the
// latest refit's, so an unnoticed change of the head, which would orphan
// every stored template, fails here.)
func TestHeadTagSurvivesBinaryForm(t *testing.T) {
	for file, jsonSHA := range map[string]string{
		"faceres-linear384.f32":    "0b29cec1f10bdb78baa978d271108485f71603ebe1ecc11dbe50c40c20b8f867",
		"faceplugin-linear256.f32": "a9606135e6d5781582c631a46318ed84041480a78dab424ed4b3187688a31aa7",
	} {
		b, err := os.ReadFile(testenv.Path("models", "heads", file))
		if err != nil {
			t.Fatal(err)
		}
		p, err := DecodeProjection(b)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.ContentSHA256(); got != jsonSHA {
			t.Errorf("%s: content sha256 %s, want the JSON file's %s", file, got, jsonSHA)
		}
	}
}
