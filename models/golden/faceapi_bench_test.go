package golden

import (
	"fmt"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/models/faceapi"
)

// faBench reports ms per forward at 1 and 2 OpenCV threads.
func faBench(b *testing.B, convert func(string) ([]byte, error), size int, out string) {
	model, err := convert(faPkgDir(b))
	if err != nil {
		b.Fatal(err)
	}
	net := faNet(b, model)
	defer net.Close()
	in := faRandomNCHW(1, size)
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			vision.SetNumThreads(threads)
			faForward(b, &net, size, in, out) // warm-up
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				faForward(b, &net, size, in, out)
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/forward")
		})
	}
}

func BenchmarkFaceAPITinyFaceDetector416(b *testing.B) {
	faBench(b, faceapi.TinyFaceDetector, faceapi.TinyFaceDetectorDefaultSize, faceapi.TinyOutput)
}

func BenchmarkFaceAPITinyFaceDetector224(b *testing.B) {
	faBench(b, func(p string) ([]byte, error) { return faceapi.TinyFaceDetectorSize(p, 224) }, 224, faceapi.TinyOutput)
}

func BenchmarkFaceAPISSDMobilenetV1(b *testing.B) {
	faBench(b, faceapi.SSDMobilenetV1, faceapi.SSDMobilenetV1Size, faceapi.SSDBoxEncodings)
}

func BenchmarkFaceAPIFaceLandmark68(b *testing.B) {
	faBench(b, faceapi.FaceLandmark68, faceapi.FaceLandmark68Size, faceapi.LandmarkOutput)
}

func BenchmarkFaceAPIFaceRecognition(b *testing.B) {
	faBench(b, faceapi.FaceRecognition, faceapi.FaceRecognitionSize, faceapi.DescriptorOutput)
}
