package vision

import (
	"context"
	"fmt"
	"image"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/visit"
)

// frame640 is face-api's sample1.jpg resized to a 640x480 camera frame.
func frame640(b *testing.B) visit.Frame {
	m, err := gocv.IMDecode(sample(b, "sample1.jpg"), gocv.IMReadColor)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	r := gocv.NewMat()
	defer r.Close()
	gocv.Resize(m, &r, image.Pt(640, 480), 0, 0, gocv.InterpolationArea)
	return visit.Frame{W: 640, H: 480, BGR: r.ToBytes()}
}

// BenchmarkPerceiveBurst is one visit: a 5-frame 640x480 burst through the
// default pipeline (detection, crop, embedding, aggregation).
func BenchmarkPerceiveBurst(b *testing.B) {
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			dir, man := modelsDir(b)
			cfg := DefaultConfig()
			cfg.Threads = threads
			p, err := New(dir, man, "", "", cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			fr := frame640(b)
			burst := []visit.Frame{fr, fr, fr, fr, fr}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d, err := p.Perceive(context.Background(), burst)
				if err != nil || d.Outcome != visit.FaceFound {
					b.Fatalf("%v %v", d.Outcome, err)
				}
			}
		})
	}
}

// BenchmarkDetect640 times each detector in the manifest on a 640x480 frame.
func BenchmarkDetect640(b *testing.B) {
	dir, man := modelsDir(b)
	fr := frame640(b)
	img, _ := frameMat(fr)
	defer img.Close()
	for _, md := range man.Models {
		if md.Task != "detector" {
			continue
		}
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/threads=%d", md.Name, threads), func(b *testing.B) {
				SetNumThreads(threads)
				d, err := NewDetector(dir, &md)
				if err != nil {
					b.Skip(err) // a decoder not wired into vision
				}
				defer d.Close()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, err := d.Detect(img); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
