package vision

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/internal/testenv/standin"
	"github.com/periocular/atm-agent/models"
)

// biasedT7 is the stand-in embedder's .t7 with the projection's bias (its
// last FloatStorage, zeros) set to ones: a valid Torch file of the same
// size whose templates differ.
func biasedT7(t *testing.T, t7 []byte) []byte {
	t.Helper()
	b := bytes.Clone(t7)
	i := bytes.LastIndex(b, []byte("torch.FloatStorage"))
	if i < 0 {
		t.Fatal("no FloatStorage in the .t7")
	}
	i += len("torch.FloatStorage")
	n := int(binary.LittleEndian.Uint64(b[i:]))
	i += 8
	for k := 0; k < n; k++ {
		binary.LittleEndian.PutUint32(b[i+4*k:], math.Float32bits(1))
	}
	return b
}

// A Torch model swapped on disk after its check never reaches OpenCV: the
// checked bytes go into a sealed in-memory file and OpenCV reads that.
// Before, LoadNet checked the file by path and OpenCV then read the path
// again, so a file swapped in between (here, by rename, as an attacker
// with write access to the folder would) was loaded unchecked. The net
// loaded gives the stand-in's own templates (the Go reference); the swapped
// file, a valid network, gives others; loaded again, the swapped file is
// refused by its checksum.
func TestTorchSwappedAfterCheckNeverLoaded(t *testing.T) {
	checkMats(t)
	dir := t.TempDir()
	man, err := standin.WriteModelsDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	md, ok := man.Find(standin.OpenFaceName)
	if !ok {
		t.Fatal("no stand-in embedder in the manifest")
	}
	file := models.Path(dir, md.File)
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(t.TempDir(), "evil.t7")
	if err := os.WriteFile(evil, biasedT7(t, good), 0o644); err != nil {
		t.Fatal(err)
	}

	blob := make([]float32, 3*96*96)
	for i := range blob {
		blob[i] = float32((i*7919)%256) / 255
	}
	ref := standin.OpenFaceReference(blob)
	template := func(n *Net) []float32 {
		t.Helper()
		outs, err := n.Forward(blob, 3)
		if err != nil {
			t.Fatal(err)
		}
		return outs[0].Data
	}
	maxDiff := func(a, b []float32) float64 {
		if len(a) != len(b) {
			return math.Inf(1)
		}
		var m float64
		for i := range a {
			m = math.Max(m, math.Abs(float64(a[i]-b[i])))
		}
		return m
	}

	// The swapped file is a network that gives other templates.
	raw := gocv.ReadNetFromTorch(evil)
	if raw.Empty() {
		t.Fatal("OpenCV does not read the swapped .t7")
	}
	evilNet := &Net{Model: *md, net: raw}
	evilDiff := maxDiff(template(evilNet), ref)
	evilNet.Close()
	if evilDiff < 1e-3 {
		t.Fatalf("the swapped file gives the same templates (max abs diff %g): the test proves nothing", evilDiff)
	}

	old := beforeTorchRead
	t.Cleanup(func() { beforeTorchRead = old })
	swaps := 0
	beforeTorchRead = func() {
		if err := os.Rename(evil, file); err != nil {
			t.Errorf("swap: %v", err)
		}
		swaps++
	}
	n, err := LoadNet(dir, md)
	if err != nil {
		t.Fatal(err)
	}
	d := maxDiff(template(n), ref)
	n.Close()
	t.Logf("template vs the checked file's reference: max abs diff %.2g (the swapped file's: %.2g)", d, evilDiff)
	if swaps != 1 {
		t.Fatalf("swapped %d times between check and read, want once", swaps)
	}
	if d > 1e-5 {
		t.Errorf("the file swapped after the check reached OpenCV: templates differ from the checked file's by %g", d)
	}

	// Now the file on disk is the swapped one: refused before OpenCV.
	beforeTorchRead = old
	if _, err := LoadNet(dir, md); !errors.Is(err, models.ErrIntegrity) {
		t.Errorf("the swapped file loaded again: %v, want a checksum error", err)
	}
}
