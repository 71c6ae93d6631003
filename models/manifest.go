// Package models describes, provisions and verifies the face models the agent
// runs: the pinned registry packages their weights come from (lock.json), the
// manifest that says how to feed and decode every model (manifest.yaml), and
// the checks that keep a missing, truncated or tampered file from ever reaching
// OpenCV (which aborts the whole process on a malformed model).
//
// This package is pure Go; running the networks is vision's job.
package models

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/regfile"

	"gopkg.in/yaml.v3"
)

// Tasks a model can do.
const (
	TaskDetector  = "detector"
	TaskLandmarks = "landmarks"
	TaskEmbedder  = "embedder"
	TaskMask      = "mask"
)

// Formats OpenCV DNN can read.
const (
	FormatONNX  = "onnx"
	FormatCaffe = "caffe"
	FormatTorch = "torch"
)

// Manifest lists every model the agent knows and which ones it uses.
type Manifest struct {
	Schema int `yaml:"schema"`
	// Pipeline names the models the agent runs by default; operators override
	// them in the agent config.
	Pipeline Pipeline `yaml:"pipeline"`
	Models   []Model  `yaml:"models"`
}

// Pipeline is the default choice of models, decided by measurement
// (docs/accuracy.md).
type Pipeline struct {
	Detector  string `yaml:"detector"`
	Landmarks string `yaml:"landmarks,omitempty"`
	Embedder  string `yaml:"embedder"`
	// FastDetector, when set, runs first on every image. Its customer face
	// is used when it scores at least FastMinScore and its box side is at
	// least FastMinFace of the image's shorter side (a close-range face);
	// otherwise Detector runs. A cheap close-range detector in front of a
	// general one: docs/accuracy.md measures the cut.
	FastDetector string  `yaml:"fast_detector,omitempty"`
	FastMinScore float64 `yaml:"fast_min_score,omitempty"`
	FastMinFace  float64 `yaml:"fast_min_face,omitempty"`
}

// Uses reports whether the pipeline names the model in any role.
func (p Pipeline) Uses(name string) bool {
	return name != "" && (p.Detector == name || p.Landmarks == name || p.Embedder == name || p.FastDetector == name)
}

// Without returns a copy of the manifest without the named models (the
// models dir's copy leaves out the models that were not built).
func (m *Manifest) Without(names ...string) *Manifest {
	c := *m
	c.Models = nil
	for _, md := range m.Models {
		if !slices.Contains(names, md.Name) {
			c.Models = append(c.Models, md)
		}
	}
	return &c
}

// Model is one network and everything needed to run it.
type Model struct {
	Name   string `yaml:"name"`
	Task   string `yaml:"task"`
	Format string `yaml:"format"`
	// File is the weights file, relative to the models dir (or absolute).
	File   string `yaml:"file"`
	SHA256 string `yaml:"sha256"`
	Size   int64  `yaml:"size"`
	// Config is a second file some formats need (Caffe deploy.prototxt).
	Config       string `yaml:"config,omitempty"`
	ConfigSHA256 string `yaml:"config_sha256,omitempty"`
	ConfigSize   int64  `yaml:"config_size,omitempty"`

	Input   Input    `yaml:"input"`
	Outputs []Output `yaml:"outputs"`
	// Decode names the post-processing in Go: "blazeface", "tinyyolo",
	// "ssd", "opencv-ssd", "landmarks68", "embedding".
	Decode    string     `yaml:"decode"`
	Embedding *Embedding `yaml:"embedding,omitempty"`
	// Thresholds are calibrated per pair type on labelled data
	// (`atm-tools eval calibrate`); empty until calibrated.
	Thresholds *Thresholds `yaml:"thresholds,omitempty"`
	// MaskHead is a small linear classifier on this embedder's templates
	// that says whether the face is masked (trained by the project,
	// docs/accuracy.md).
	MaskHead *Head `yaml:"mask_head,omitempty"`
	// Projection is a learned linear map applied to this embedder's
	// templates before matching (nuisance attribute projection that removes
	// mask directions; docs/accuracy.md).
	Projection *Head   `yaml:"projection,omitempty"`
	Source     *Source `yaml:"source,omitempty"`
	License    string  `yaml:"license"`
	Provenance string  `yaml:"provenance"`
	Notes      string  `yaml:"notes,omitempty"`
}

// Input says how to turn an image into the network's input blob:
// blob = (pixel - mean) * scale, in the given colour order and layout. Mean
// and scale are one value for every channel or three, in the input's colour
// order (torchvision's (x/255 - m)/s is mean 255*m, scale 1/(255*s)).
type Input struct {
	Width  int        `yaml:"width"`
	Height int        `yaml:"height"`
	Layout string     `yaml:"layout"` // NCHW (OpenCV DNN always feeds NCHW)
	Color  string     `yaml:"color"`  // RGB or BGR
	Mean   []float64  `yaml:"mean,flow"`
	Scale  PerChannel `yaml:"scale"`
	// Resize: "stretch" or "letterbox" (keep aspect, pad with Pad).
	Resize string  `yaml:"resize"`
	Pad    float64 `yaml:"pad,omitempty"`
	Name   string  `yaml:"name,omitempty"` // input blob name, "" for the first
}

// PerChannel is one value for all three channels or one per channel. In
// YAML it is a number or a list of three numbers.
type PerChannel []float64

// UnmarshalYAML accepts a scalar or a sequence.
func (p *PerChannel) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var v float64
		if err := n.Decode(&v); err != nil {
			return err
		}
		*p = PerChannel{v}
		return nil
	}
	var v []float64
	if err := n.Decode(&v); err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalYAML writes a single value as a plain number.
func (p PerChannel) MarshalYAML() (any, error) {
	if len(p) == 1 {
		return p[0], nil
	}
	n := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
	for _, v := range p {
		n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: strconv.FormatFloat(v, 'g', -1, 64)})
	}
	return n, nil
}

// Channels expands the value to the three channels (zeros when empty).
func (p PerChannel) Channels() [3]float64 {
	switch len(p) {
	case 1:
		return [3]float64{p[0], p[0], p[0]}
	case 3:
		return [3]float64{p[0], p[1], p[2]}
	}
	return [3]float64{}
}

// Output is one named network output.
type Output struct {
	Name string `yaml:"name"`
	// From is the source graph's tensor this output is taken from
	// (converters that rename outputs).
	From  string `yaml:"from,omitempty"`
	Shape []int  `yaml:"shape,flow,omitempty"`
	Desc  string `yaml:"desc,omitempty"`
}

// Embedding describes an embedder's template.
type Embedding struct {
	Dim    int    `yaml:"dim"`
	Metric string `yaml:"metric"` // cosine or euclidean
	// Crop says what part of the face box the embedder sees:
	// "aligned" (eye-aligned whole face), "arcface" (similarity-aligned to
	// the ArcFace 112 five-point template from the detector's eyes, nose and
	// mouth, zoomed out by CropScale, default 1), "box" (detector box scaled
	// by CropScale), "original" (the original project's top-73% policy).
	Crop      string  `yaml:"crop"`
	CropScale float64 `yaml:"crop_scale,omitempty"`
	Flip      bool    `yaml:"flip,omitempty"` // average with the mirrored face
	// Align picks the points an "arcface" crop is aligned by: "" (the
	// detector's eyes, nose and mouth), "eyes" (the detector's eyes only),
	// "landmarks" (eye centres, nose tip and mouth corners from the
	// pipeline's landmark net), "landmarks-eyes" (its eye centres only).
	Align string `yaml:"align,omitempty"`
}

// Thresholds are cosine-distance cuts per pair type at a target FAR.
// A zero value disables matching for that pair type.
type Thresholds struct {
	FAR              float64          `yaml:"far"`
	visit.Thresholds `yaml:",inline"` // the cuts the identity engine applies
	Dataset          string           `yaml:"dataset,omitempty"`
}

// Head is a small learned file (JSON) that works on a model's outputs.
type Head struct {
	File   string `yaml:"file"`
	SHA256 string `yaml:"sha256"`
	// Provenance: the command and data that produced it.
	Provenance string `yaml:"provenance"`
}

// Source says how a model was produced from a locked package.
type Source struct {
	Package   string   `yaml:"package"`
	Version   string   `yaml:"version"`
	Files     []string `yaml:"files,flow"`
	Converter string   `yaml:"converter"`
}

// LoadManifest reads and validates a manifest. Unknown keys are errors.
// A file that is not a regular file (a named pipe would block the read
// for good) is refused before it is read.
func LoadManifest(file string) (*Manifest, error) {
	b, err := regfile.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read model manifest: %w", err)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, fmt.Errorf("model manifest %s: %w", file, err)
	}
	return m, nil
}

// ParseManifest decodes a manifest strictly and validates it.
func ParseManifest(b []byte) (*Manifest, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var m Manifest
	if err := dec.Decode(&m); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks the manifest for mistakes an operator could make.
func (m *Manifest) Validate() error {
	if m.Schema != 1 {
		return fmt.Errorf("schema %d: this agent reads schema 1", m.Schema)
	}
	seen := map[string]bool{}
	var errs []error
	for i, md := range m.Models {
		if md.Name == "" {
			errs = append(errs, fmt.Errorf("models[%d]: name is required", i))
			continue
		}
		if seen[md.Name] {
			errs = append(errs, fmt.Errorf("model %q: listed twice", md.Name))
		}
		seen[md.Name] = true
		if err := md.validate(); err != nil {
			errs = append(errs, fmt.Errorf("model %q: %w", md.Name, err))
		}
	}
	for _, ref := range []struct{ what, name, task string }{
		{"detector", m.Pipeline.Detector, TaskDetector},
		{"fast_detector", m.Pipeline.FastDetector, TaskDetector},
		{"landmarks", m.Pipeline.Landmarks, TaskLandmarks},
		{"embedder", m.Pipeline.Embedder, TaskEmbedder},
	} {
		if ref.name == "" {
			continue
		}
		md, ok := m.Find(ref.name)
		if !ok {
			errs = append(errs, fmt.Errorf("pipeline.%s: no model named %q", ref.what, ref.name))
		} else if md.Task != ref.task {
			errs = append(errs, fmt.Errorf("pipeline.%s: model %q is a %s", ref.what, ref.name, md.Task))
		}
	}
	if p := m.Pipeline; p.FastDetector != "" {
		if p.FastMinScore <= 0 || p.FastMinScore >= 1 {
			errs = append(errs, fmt.Errorf("pipeline.fast_min_score %v: must be in (0,1) when fast_detector is set", p.FastMinScore))
		}
		if p.FastMinFace < 0 || p.FastMinFace >= 1 {
			errs = append(errs, fmt.Errorf("pipeline.fast_min_face %v: must be in [0,1)", p.FastMinFace))
		}
	}
	return errors.Join(errs...)
}

func (md *Model) validate() error {
	switch md.Task {
	case TaskDetector, TaskLandmarks, TaskEmbedder, TaskMask:
	default:
		return fmt.Errorf("task %q: want detector, landmarks, embedder or mask", md.Task)
	}
	switch md.Format {
	case FormatONNX, FormatTorch:
	case FormatCaffe:
		if md.Config == "" {
			return errors.New("caffe models need config (the deploy.prototxt)")
		}
	default:
		return fmt.Errorf("format %q: want onnx, caffe or torch", md.Format)
	}
	if md.File == "" {
		return errors.New("file is required")
	}
	if len(md.SHA256) != 64 || strings.Trim(strings.ToLower(md.SHA256), "0123456789abcdef") != "" {
		return fmt.Errorf("sha256 %q: want 64 hex digits", md.SHA256)
	}
	if md.Config != "" && len(md.ConfigSHA256) != 64 {
		return errors.New("config_sha256 is required with config")
	}
	in := md.Input
	if in.Width <= 0 || in.Height <= 0 {
		return fmt.Errorf("input size %dx%d: must be positive", in.Width, in.Height)
	}
	if in.Color != "RGB" && in.Color != "BGR" {
		return fmt.Errorf("input color %q: want RGB or BGR", in.Color)
	}
	if in.Layout != "NCHW" {
		return fmt.Errorf("input layout %q: OpenCV DNN feeds NCHW", in.Layout)
	}
	if len(in.Scale) != 1 && len(in.Scale) != 3 {
		return fmt.Errorf("input scale: %d values, want 1 or 3", len(in.Scale))
	}
	for _, v := range in.Scale {
		if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("input scale %v: every value must be finite and non-zero", []float64(in.Scale))
		}
	}
	if len(in.Mean) != 0 && len(in.Mean) != 1 && len(in.Mean) != 3 {
		return fmt.Errorf("input mean: %d values, want 1 or 3", len(in.Mean))
	}
	if in.Resize != "stretch" && in.Resize != "letterbox" {
		return fmt.Errorf("input resize %q: want stretch or letterbox", in.Resize)
	}
	if md.Task == TaskEmbedder {
		e := md.Embedding
		if e == nil || e.Dim <= 0 {
			return errors.New("embedders need embedding.dim")
		}
		if e.Metric != "cosine" && e.Metric != "euclidean" {
			return fmt.Errorf("embedding metric %q: want cosine or euclidean", e.Metric)
		}
		switch e.Crop {
		case "aligned", "arcface", "box", "original":
		default:
			return fmt.Errorf("embedding crop %q: want aligned, arcface, box or original", e.Crop)
		}
		switch e.Align {
		case "", "eyes", "landmarks", "landmarks-eyes":
		default:
			return fmt.Errorf("embedding align %q: want eyes, landmarks or landmarks-eyes (or nothing: the detector's points)", e.Align)
		}
	}
	if md.Decode == "" {
		return errors.New("decode is required (how the output is read)")
	}
	return nil
}

// Find returns the model with the given name.
func (m *Manifest) Find(name string) (*Model, bool) {
	for i := range m.Models {
		if m.Models[i].Name == name {
			return &m.Models[i], true
		}
	}
	return nil, false
}

// Path resolves a manifest-relative file against the models dir.
func Path(dir, file string) string {
	if filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(dir, file)
}

// Check verifies that the model's files exist with the manifest's size and
// sha256. It reads the files but never hands them to OpenCV.
func (md *Model) Check(dir string) error {
	size := md.Size
	if size == 0 {
		size = -1
	}
	if err := CheckFile(Path(dir, md.File), size, strings.ToLower(md.SHA256)); err != nil {
		return fmt.Errorf("model %s: %w", md.Name, err)
	}
	if md.Config != "" {
		cs := md.ConfigSize
		if cs == 0 {
			cs = -1
		}
		if err := CheckFile(Path(dir, md.Config), cs, strings.ToLower(md.ConfigSHA256)); err != nil {
			return fmt.Errorf("model %s: %w", md.Name, err)
		}
	}
	return nil
}

// ReadChecked reads the model's file (and its config file, if any) once,
// verified against the manifest's sizes and sha256 (models.ReadChecked):
// the bytes to hand to OpenCV.
func (md *Model) ReadChecked(dir string) (file, config []byte, err error) {
	size := md.Size
	if size == 0 {
		size = -1
	}
	if file, err = ReadChecked(Path(dir, md.File), size, strings.ToLower(md.SHA256)); err != nil {
		return nil, nil, fmt.Errorf("model %s: %w", md.Name, err)
	}
	if md.Config != "" {
		cs := md.ConfigSize
		if cs == 0 {
			cs = -1
		}
		if config, err = ReadChecked(Path(dir, md.Config), cs, strings.ToLower(md.ConfigSHA256)); err != nil {
			return nil, nil, fmt.Errorf("model %s: %w", md.Name, err)
		}
	}
	return file, config, nil
}

// Save writes the manifest as YAML with models sorted by name.
func (m *Manifest) Save(file string) error {
	sort.SliceStable(m.Models, func(i, j int) bool { return m.Models[i].Name < m.Models[j].Name })
	var buf bytes.Buffer
	buf.WriteString("# Model manifest: every model the agent can run, how to feed and decode it,\n" +
		"# its checksums, provenance and calibrated thresholds. Written by\n" +
		"# `atm-tools models build` and `atm-tools eval calibrate`; hand edits are kept\n" +
		"# as long as they stay valid. Operators add their own models here.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(m); err != nil {
		return err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}
