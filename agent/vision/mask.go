package vision

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/models"
)

// MaskClassifier is a logistic regression on an embedder's templates:
// p(masked) = sigmoid(w.x + b). Scores between Unmasked and Masked are
// reported as unknown.
type MaskClassifier struct {
	Embedder string    `json:"embedder"`
	W        []float32 `json:"w"`
	B        float64   `json:"b"`
	// Scores >= Masked say masked, <= Unmasked say unmasked.
	Masked   float64 `json:"masked"`
	Unmasked float64 `json:"unmasked"`
	// Accuracy measured on held-out data when the head was trained.
	Accuracy float64 `json:"accuracy"`
	Trained  string  `json:"trained"`
}

// ErrNoMaskModel says the embedder has no mask head.
var ErrNoMaskModel = errors.New("no mask head for this embedder")

// LoadMaskClassifier reads the embedder's mask head, checking its sha256.
func LoadMaskClassifier(dir string, man *models.Manifest, embedder string) (*MaskClassifier, error) {
	md, ok := man.Find(embedder)
	if !ok || md.MaskHead == nil {
		return nil, ErrNoMaskModel
	}
	file := models.Path(dir, md.MaskHead.File)
	b, err := models.ReadChecked(file, -1, md.MaskHead.SHA256)
	if err != nil {
		return nil, fmt.Errorf("mask head of %s: %w", embedder, err)
	}
	var mc MaskClassifier
	if err := json.Unmarshal(b, &mc); err != nil {
		return nil, fmt.Errorf("mask head %s: %w", file, err)
	}
	if md.Embedding != nil && len(mc.W) != md.Embedding.Dim {
		return nil, fmt.Errorf("mask head %s: %d weights for a %d-d embedding", file, len(mc.W), md.Embedding.Dim)
	}
	return &mc, nil
}

// Score is the probability that the face is masked.
func (m *MaskClassifier) Score(emb []float32) float64 {
	z := m.B
	for i, w := range m.W {
		if i < len(emb) {
			z += float64(w) * float64(emb[i])
		}
	}
	return 1 / (1 + math.Exp(-z))
}

// State turns a score into a mask state.
func (m *MaskClassifier) State(score float64) visit.MaskState {
	switch {
	case score >= m.Masked:
		return visit.Masked
	case score <= m.Unmasked:
		return visit.Unmasked
	}
	return visit.MaskUnknown
}
