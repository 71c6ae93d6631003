package faceapi

import (
	"fmt"
	"path/filepath"

	"github.com/periocular/atm-agent/models/tfjs"
)

// SSDAnchors reads ssd_mobilenetv1's anchor boxes (Output/extra_dim, 5118 x
// [ymin, xmin, ymax, xmax]) from the extracted package.
func SSDAnchors(pkgDir string) ([]float32, error) {
	w, err := tfjs.LoadWeightsManifest(filepath.Join(pkgDir, "model", "ssd_mobilenetv1_model-weights_manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("faceapi: ssd anchors: %w", err)
	}
	t := w["Output/extra_dim"]
	if t == nil || !sameShape(t.Shape, []int{1, SSDNumAnchors, 4}) {
		return nil, fmt.Errorf("faceapi: ssd anchors: Output/extra_dim missing or not [1,%d,4]", SSDNumAnchors)
	}
	return t.Data, nil
}
