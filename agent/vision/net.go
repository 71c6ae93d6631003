// Package vision runs the face models through OpenCV DNN (gocv) and turns
// camera frames into one visit descriptor. Every gocv.Mat is created and
// closed inside this package: callers pass and receive plain Go values.
package vision

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/models"
)

// beforeTorchRead runs between the check of a Torch file and OpenCV's read
// of it: a test swaps the file there.
var beforeTorchRead = func() {}

// Net is one loaded network with its manifest entry. A Net is not safe for
// concurrent use; Forward serialises callers.
type Net struct {
	Model models.Model
	mu    sync.Mutex
	net   gocv.Net
}

// LoadNet verifies the model's files against the manifest (size, sha256) and
// only then hands them to OpenCV. A missing, truncated or tampered file is an
// error naming the file, never a crash.
func LoadNet(dir string, md *models.Model) (*Net, error) {
	file := models.Path(dir, md.File)
	var (
		net gocv.Net
		err error
	)
	switch md.Format {
	case models.FormatONNX, models.FormatCaffe:
		// Read once, checked, and those bytes loaded: what was checked is
		// what OpenCV gets.
		var weights, proto []byte
		if weights, proto, err = md.ReadChecked(dir); err != nil {
			return nil, err
		}
		if md.Format == models.FormatONNX {
			net, err = gocv.ReadNetFromONNXBytes(weights)
		} else {
			net, err = gocv.ReadNetFromCaffeBytes(proto, weights)
		}
	case models.FormatTorch:
		// OpenCV 4.6 reads Torch files by path only (readNet from a buffer
		// refuses torch): the checked bytes go into a sealed in-memory
		// file and OpenCV reads that by its /proc/self/fd path, so a file
		// swapped after the check never reaches it.
		var weights []byte
		if weights, _, err = md.ReadChecked(dir); err != nil {
			return nil, err
		}
		var sealed *models.SealedFile
		if sealed, err = models.NewSealedFile(md.File, weights); err == nil {
			beforeTorchRead()
			net = gocv.ReadNetFromTorch(sealed.Path())
			sealed.Close()
		}
	default:
		err = fmt.Errorf("format %q not supported", md.Format)
	}
	if err != nil {
		return nil, fmt.Errorf("load model %s from %s: %w", md.Name, file, err)
	}
	if net.Empty() {
		net.Close()
		return nil, fmt.Errorf("load model %s from %s: OpenCV returned an empty network", md.Name, file)
	}
	net.SetPreferableBackend(gocv.NetBackendOpenCV)
	net.SetPreferableTarget(gocv.NetTargetCPU)
	n := &Net{Model: *md, net: net}
	// The checksum vouches for the file, not for the manifest's entry: an
	// input size or output the network does not have failed at the first
	// visit, inside a card insert. Found here, the agent refuses to start.
	if err := n.selfTest(); err != nil {
		n.Close()
		return nil, fmt.Errorf("load model %s from %s: a test forward at the manifest's input size failed: the file is not a valid %s model, or the manifest's entry does not fit it: %w", md.Name, file, md.Format, err)
	}
	return n, nil
}

// Close releases the network.
func (n *Net) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.net.Close()
}

// Tensor is a float32 network output copied out of OpenCV.
type Tensor struct {
	Shape []int
	Data  []float32
}

// ErrInput marks an input blob of the wrong size.
var ErrInput = errors.New("bad network input")

// Forward runs the network on an NCHW float32 blob of shape
// [1, channels, Input.Height, Input.Width] and returns the requested outputs
// (all manifest outputs when names is empty, or the default output when the
// manifest lists none).
func (n *Net) Forward(blob []float32, channels int, names ...string) ([]Tensor, error) {
	h, w := n.Model.Input.Height, n.Model.Input.Width
	if len(blob) != channels*h*w {
		return nil, fmt.Errorf("model %s: blob of %d values for %dx%dx%d: %w", n.Model.Name, len(blob), channels, h, w, ErrInput)
	}
	if len(names) == 0 {
		for _, o := range n.Model.Outputs {
			names = append(names, o.Name)
		}
	}
	// The Mat wraps blob's memory without a copy (gocv's FromBytes
	// constructors): blob must stay alive until the forward has read it,
	// or the collector frees it and another goroutine's allocation
	// overwrites the input mid-forward.
	in, err := gocv.NewMatWithSizesFromBytes([]int{1, channels, h, w}, gocv.MatTypeCV32F, float32Bytes(blob))
	if err != nil {
		return nil, fmt.Errorf("model %s: input blob: %w", n.Model.Name, err)
	}
	defer runtime.KeepAlive(blob)
	defer in.Close()

	n.mu.Lock()
	defer n.mu.Unlock()
	outs, err := forward(&n.net, in, n.Model.Input.Name, names)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", n.Model.Name, err)
	}
	res := make([]Tensor, len(outs))
	for i := range outs {
		res[i], err = copyTensor(outs[i])
		outs[i].Close()
		if err != nil && i == len(outs)-1 {
			return nil, fmt.Errorf("model %s: output %d: %w", n.Model.Name, i, err)
		}
	}
	for i := range res {
		if res[i].Data == nil {
			return nil, fmt.Errorf("model %s: output %d is empty", n.Model.Name, i)
		}
	}
	return res, nil
}

func copyTensor(m gocv.Mat) (Tensor, error) {
	if m.Empty() {
		return Tensor{}, errors.New("empty output")
	}
	if m.Type() != gocv.MatTypeCV32F {
		return Tensor{}, fmt.Errorf("output type %v, want float32", m.Type())
	}
	d, err := m.DataPtrFloat32()
	if err != nil {
		return Tensor{}, err
	}
	return Tensor{Shape: append([]int(nil), m.Size()...), Data: append([]float32(nil), d...)}, nil
}

// Probe loads the model (LoadNet, which runs its self-test). Run it in a
// child process when the file may be bad: OpenCV aborts the process on
// some malformed model files while reading them.
func Probe(dir string, md *models.Model) error {
	n, err := LoadNet(dir, md)
	if err != nil {
		return err
	}
	return n.Close()
}

// selfTest runs one forward on a constant blob of the manifest's input
// size and checks each output against the manifest's shape (dimensions
// listed as 0 or -1 are free) and an embedder's length against its
// dimension.
func (n *Net) selfTest() error {
	md := &n.Model
	blob := make([]float32, 3*md.Input.Width*md.Input.Height)
	outs, err := n.Forward(blob, 3)
	if err != nil {
		return err
	}
	for i, o := range md.Outputs {
		if i >= len(outs) || len(o.Shape) == 0 {
			continue
		}
		got := outs[i].Shape
		if !shapeMatches(o.Shape, got) {
			return fmt.Errorf("model %s: output %s has shape %v, manifest says %v", md.Name, o.Name, got, o.Shape)
		}
	}
	// An embedder's template is its first output: its length must be the
	// manifest's dimension (a Torch or Caffe file names no outputs to
	// check shapes by).
	if e := md.Embedding; md.Task == models.TaskEmbedder && e != nil && e.Dim > 0 && len(outs[0].Data) != e.Dim {
		return fmt.Errorf("model %s: output of shape %v has %d values, manifest says embedding.dim %d", md.Name, outs[0].Shape, len(outs[0].Data), e.Dim)
	}
	return nil
}

func shapeMatches(want, got []int) bool {
	if len(want) != len(got) {
		return false
	}
	for i := range want {
		if want[i] > 0 && want[i] != got[i] {
			return false
		}
	}
	return true
}
