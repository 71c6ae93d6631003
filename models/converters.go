package models

import (
	"fmt"
	"path/filepath"

	"github.com/periocular/atm-agent/models/faceapi"
	"github.com/periocular/atm-agent/models/tfgraph"
)

// The project's converters, by the name manifest entries use in
// source.converter. Adding a TF.js graph model needs only a manifest entry
// with converter "tfgraph" (its first source file is the model.json).
func init() {
	RegisterConverter("faceapi-tiny", func(dir string, md *Model) ([]byte, error) {
		return faceapi.TinyFaceDetectorSize(dir, md.Input.Width)
	})
	RegisterConverter("faceapi-ssd", func(dir string, _ *Model) ([]byte, error) { return faceapi.SSDMobilenetV1(dir) })
	RegisterConverter("faceapi-landmarks68", func(dir string, _ *Model) ([]byte, error) { return faceapi.FaceLandmark68(dir) })
	RegisterConverter("faceapi-recognition", func(dir string, _ *Model) ([]byte, error) { return faceapi.FaceRecognition(dir) })
	RegisterConverter("tfgraph", func(dir string, md *Model) ([]byte, error) {
		if len(md.Source.Files) == 0 {
			return nil, fmt.Errorf("converter tfgraph needs the model.json as first source file")
		}
		opts := tfgraph.Options{
			InputShape: []int{1, md.Input.Height, md.Input.Width, 3},
			InputName:  md.Input.Name,
		}
		for _, o := range md.Outputs {
			if o.From != "" {
				opts.Outputs = append(opts.Outputs, o.From)
				if opts.OutputNames == nil {
					opts.OutputNames = map[string]string{}
				}
				opts.OutputNames[o.From] = o.Name
			}
		}
		return tfgraph.Convert(filepath.Join(dir, filepath.FromSlash(md.Source.Files[0])), opts)
	})
}
