package vision

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/periocular/atm-agent/models"
)

// ProjectionHead is the JSON form of a learned projection: K orthonormal
// directions removed from every template (x - U U^T x, renormalised).
type ProjectionHead struct {
	Embedder string      `json:"embedder"`
	U        [][]float32 `json:"u"`
	Trained  string      `json:"trained"`
}

// loadProjection reads the embedder's projection head, if any.
func loadProjection(dir string, md *models.Model) (*ProjectionHead, error) {
	if md.Projection == nil {
		return nil, nil
	}
	file := models.Path(dir, md.Projection.File)
	if err := models.CheckFile(file, -1, md.Projection.SHA256); err != nil {
		return nil, fmt.Errorf("projection of %s: %w", md.Name, err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var p ProjectionHead
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("projection %s: %w", file, err)
	}
	for i, u := range p.U {
		if md.Embedding != nil && len(u) != md.Embedding.Dim {
			return nil, fmt.Errorf("projection %s: direction %d has %d values for a %d-d embedding", file, i, len(u), md.Embedding.Dim)
		}
	}
	return &p, nil
}

// Apply projects x in place and renormalises it.
func (p *ProjectionHead) Apply(x []float32) {
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
}
