package vision

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/periocular/atm-agent/models"
)

// ProjectionHead is a learned projection applied to every
// raw template, the result renormalised. Either K orthonormal directions are
// removed (nuisance-attribute projection: x - U U^T x), or a linear map is
// applied (W (x - Mean), e.g. NAP composed with PCA and within-class
// whitening; W may have fewer rows than x has values, so templates shrink).
type ProjectionHead struct {
	Embedder string      `json:"embedder"`
	U        [][]float32 `json:"u,omitempty"`
	Mean     []float32   `json:"mean,omitempty"`
	W        [][]float32 `json:"w,omitempty"`
	Trained  string      `json:"trained"`
}

// loadProjection reads the embedder's projection head, if any.
func loadProjection(dir string, md *models.Model) (*ProjectionHead, error) {
	if md.Projection == nil {
		return nil, nil
	}
	file := models.Path(dir, md.Projection.File)
	b, err := models.ReadChecked(file, -1, md.Projection.SHA256)
	if err != nil {
		return nil, fmt.Errorf("projection of %s: %w", md.Name, err)
	}
	p, err := DecodeProjection(b)
	if err != nil {
		return nil, fmt.Errorf("projection %s: %w", file, err)
	}
	if err := p.check(md); err != nil {
		return nil, fmt.Errorf("projection %s: %w", file, err)
	}
	return p, nil
}

func (p *ProjectionHead) check(md *models.Model) error {
	if (len(p.U) == 0) == (len(p.W) == 0) {
		return fmt.Errorf("want either directions (u) or a linear map (w)")
	}
	in := -1
	if md.Embedding != nil {
		in = md.Embedding.Dim
	}
	for i, u := range p.U {
		if in >= 0 && len(u) != in {
			return fmt.Errorf("direction %d has %d values for a %d-d embedding", i, len(u), in)
		}
	}
	for i, w := range p.W {
		if in >= 0 && len(w) != in || len(w) != len(p.W[0]) {
			return fmt.Errorf("row %d has %d values for a %d-d embedding", i, len(w), in)
		}
	}
	if len(p.Mean) > 0 && len(p.W) > 0 && len(p.Mean) != len(p.W[0]) {
		return fmt.Errorf("mean has %d values for a %d-d embedding", len(p.Mean), len(p.W[0]))
	}
	return nil
}

// OutDim is the template length after the projection (0: unchanged).
func (p *ProjectionHead) OutDim() int { return len(p.W) }

// Apply returns the projected, renormalised template: x itself, changed in
// place, for directions; a new slice for a linear map.
func (p *ProjectionHead) Apply(x []float32) []float32 {
	if len(p.W) > 0 {
		c := x
		if len(p.Mean) > 0 {
			c = make([]float32, len(x))
			for i := range x {
				c[i] = x[i] - p.Mean[i]
			}
		}
		y := make([]float32, len(p.W))
		for o, w := range p.W {
			var d float32
			for i := range c {
				d += w[i] * c[i]
			}
			y[o] = d
		}
		l2normalize(y)
		return y
	}
	for _, u := range p.U {
		var d float32
		for i := range x {
			d += u[i] * x[i]
		}
		for i := range x {
			x[i] -= d * u[i]
		}
	}
	l2normalize(x)
	return x
}

// TemplateShape returns what the pipeline's templates for embedder md look
// like without loading any network: their length after the projection head
// and the model tag they carry (see Pipeline.TemplateModel).
func TemplateShape(dir string, md *models.Model) (dim int, model string, err error) {
	if md.Embedding == nil {
		return 0, "", fmt.Errorf("model %s is not an embedder", md.Name)
	}
	p, err := loadProjection(dir, md)
	if err != nil {
		return 0, "", err
	}
	dim, model = templateShape(md, p)
	return dim, model, nil
}

// templateShape is TemplateShape for an embedder whose head p (nil for
// none) is already loaded.
func templateShape(md *models.Model, p *ProjectionHead) (dim int, model string) {
	model = md.Name
	if md.Embedding != nil {
		dim = md.Embedding.Dim
	}
	if p == nil {
		return dim, model
	}
	if d := p.OutDim(); d > 0 {
		dim = d
	}
	return dim, model + "+" + p.ContentSHA256()[:12]
}

// ContentSHA256 identifies the head by its values, not its file: the
// sha256 of its JSON form, which is the checksum the JSON files had, so
// templates tagged before heads were stored as float32 binary still match.
func (p *ProjectionHead) ContentSHA256() string {
	b, err := json.Marshal(p)
	if err != nil {
		return "unencodable"
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
