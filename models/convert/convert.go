// Package convert holds the project's model converters (TF.js and TFLite -> ONNX,
// ONNX rewrites), build-time code that `atm-tools models build` passes to
// models.Build explicitly; the daemon links none of it.
package convert

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/models/faceapi"
	"github.com/periocular/atm-agent/models/onnx"
	"github.com/periocular/atm-agent/models/tfgraph"
	"github.com/periocular/atm-agent/models/tflite"
)

// Converters returns the project's converters by the name manifest
// entries use in source.converter. Adding a TF.js graph model needs only a
// manifest entry with converter "tfgraph" (its first source file is the
// model.json).
func Converters() map[string]models.ConvertFunc {
	c := map[string]models.ConvertFunc{}
	// An ONNX file OpenCV 4.6 reads as it is.
	c["copy"] = func(dir string, md *models.Model) ([]byte, error) {
		return readFirstSource(dir, md)
	}
	// An ONNX file whose opset-11 Clip nodes (min/max as inputs, e.g. a
	// PyTorch ReLU6) OpenCV 4.6 refuses: rewritten to the attribute form,
	// opset 10.
	c["onnx-clip-opset10"] = func(dir string, md *models.Model) ([]byte, error) {
		b, err := readFirstSource(dir, md)
		if err != nil {
			return nil, err
		}
		out, _, err := onnx.ClipToAttributes(b, 10)
		return out, err
	}
	c["faceapi-tiny"] = func(dir string, md *models.Model) ([]byte, error) {
		return faceapi.TinyFaceDetectorSize(dir, md.Input.Width)
	}
	c["faceapi-ssd"] = func(dir string, _ *models.Model) ([]byte, error) { return faceapi.SSDMobilenetV1(dir) }
	c["faceapi-landmarks68"] = func(dir string, _ *models.Model) ([]byte, error) { return faceapi.FaceLandmark68(dir) }
	c["faceapi-recognition"] = func(dir string, _ *models.Model) ([]byte, error) { return faceapi.FaceRecognition(dir) }
	c["tfgraph"] = func(dir string, md *models.Model) ([]byte, error) {
		if len(md.Source.Files) == 0 {
			return nil, fmt.Errorf("converter tfgraph needs the model.json as first source file")
		}
		return tfgraph.Convert(filepath.Join(dir, filepath.FromSlash(md.Source.Files[0])), graphOptions(md))
	}
	// A float32 TFLite model (OpenCV 4.6 has no TFLite importer): its
	// operators become TF graph nodes and go the tfgraph way.
	c["tflite"] = func(dir string, md *models.Model) ([]byte, error) {
		b, err := readFirstSource(dir, md)
		if err != nil {
			return nil, err
		}
		return tflite.Convert(b, graphOptions(md))
	}
	return c
}

// graphOptions are the tfgraph options a manifest entry implies: a batch of
// one at the entry's input size, its input name, and outputs renamed from the
// graph's tensors (outputs[].from) to the entry's names.
func graphOptions(md *models.Model) tfgraph.Options {
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
	return opts
}

func readFirstSource(dir string, md *models.Model) ([]byte, error) {
	if len(md.Source.Files) == 0 {
		return nil, fmt.Errorf("converter %s needs the model file as first source file", md.Source.Converter)
	}
	return os.ReadFile(filepath.Join(dir, filepath.FromSlash(md.Source.Files[0])))
}
