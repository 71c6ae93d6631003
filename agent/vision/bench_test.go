package vision

import (
	"context"
	"fmt"
	"image"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/visit"
)

// frame640 is face-api's sample1.jpg resized to a 640x480 camera frame.
func frame640(b testing.TB) visit.Frame {
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

// closeFrame640 frames sample1.jpg's customer as an ATM camera sees him:
// a 4:3 view whose height is 2.5 face boxes (the face fills 40% of it),
// resized to 640x480.
func closeFrame640(b testing.TB) visit.Frame {
	dir, man := modelsDir(b)
	p, err := New(dir, man, man.Pipeline.Detector, "", DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	jpg := sample(b, "sample1.jpg")
	f, err := p.FaceInImage(jpg, FaceOptions{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	m, _ := gocv.IMDecode(jpg, gocv.IMReadColor)
	defer m.Close()
	h := 2.5 * f.Det.H()
	w := h * 4 / 3
	cx, cy := (f.Det.X0+f.Det.X1)/2, (f.Det.Y0+f.Det.Y1)/2
	roi := m.Region(image.Rect(int(cx-w/2), int(cy-h/2), int(cx+w/2), int(cy+h/2)).Intersect(image.Rect(0, 0, m.Cols(), m.Rows())))
	defer roi.Close()
	r := gocv.NewMat()
	defer r.Close()
	gocv.Resize(roi, &r, image.Pt(640, 480), 0, 0, gocv.InterpolationLinear)
	return visit.Frame{W: 640, H: 480, BGR: r.ToBytes()}
}

// BenchmarkPerceiveBurst is one visit: a 5-frame 640x480 burst through the
// default pipeline (detection, crop, embedding, aggregation). "close" is a
// customer at an ATM camera's distance; "wide" a group photo with small
// faces, where the fast detector hands over to the main one. The
// "faceres" rows run the previous default embedder (box crop, no landmark
// net) in the same process, a baseline that shares the machine's load:
//
//	go test -run '^$' -bench 'PerceiveBurst/.*/.*/threads=2' -benchtime 30x -count 5 ./agent/vision/
func BenchmarkPerceiveBurst(b *testing.B) {
	scenes := []struct {
		name  string
		frame func(testing.TB) visit.Frame
	}{{"close", closeFrame640}, {"wide", frame640}}
	for _, emb := range []string{"default", "faceres"} {
		for _, sc := range scenes {
			for _, threads := range []int{1, 2} {
				name := fmt.Sprintf("%s/%s/threads=%d", emb, sc.name, threads)
				b.Run(name, func(b *testing.B) { benchBurst(b, strings.TrimPrefix(emb, "default"), sc.frame, threads) })
			}
		}
	}
}

func benchBurst(b *testing.B, emb string, frame func(testing.TB) visit.Frame, threads int) {
	dir, man := modelsDir(b)
	cfg := DefaultConfig()
	cfg.Threads = threads
	p, err := New(dir, man, "", emb, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	fr := frame(b)
	burst := []visit.Frame{fr, fr, fr, fr, fr}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := p.Perceive(context.Background(), burst)
		if err != nil || d.Outcome != visit.FaceFound {
			b.Fatalf("%v %v", d.Outcome, err)
		}
	}
}

// BenchmarkDetect640 times each detector in the manifest on a 640x480 frame.
func BenchmarkDetect640(b *testing.B) {
	dir, man := modelsDir(b)
	fr := frame640(b)
	img, release, err := frameMat(fr)
	if err != nil {
		b.Fatal(err)
	}
	defer release()
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

// BenchmarkEmbed times each embedder in the built manifest on one face crop
// at its input size (blob, forward, normalisation; no detection):
//
//	go test -tags matprofile -run '^$' -bench Embed -benchtime 50x ./agent/vision/
func BenchmarkEmbed(b *testing.B) {
	defer SetNumThreads(0)
	dir, man := modelsDir(b)
	img, err := gocv.IMDecode(sample(b, "sample1.jpg"), gocv.IMReadColor)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	for _, md := range man.Models {
		if md.Task != "embedder" {
			continue
		}
		e, err := NewEmbedder(dir, &md)
		if err != nil {
			b.Fatal(err)
		}
		crop := gocv.NewMat()
		gocv.Resize(img, &crop, image.Pt(md.Input.Width, md.Input.Height), 0, 0, gocv.InterpolationArea)
		if _, _, err := e.EmbedCrop(crop, 0); err != nil { // warm-up
			b.Fatal(err)
		}
		for _, threads := range []int{1, 2} {
			b.Run(fmt.Sprintf("%s/threads=%d", md.Name, threads), func(b *testing.B) {
				SetNumThreads(threads)
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if _, _, err := e.EmbedCrop(crop, 0); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/embed")
			})
		}
		crop.Close()
		e.Close()
	}
}

// BenchmarkLoadPipeline is what the agent's start spends on perception:
// every network of the default pipeline read, checked against its sha256,
// loaded and self-tested by one forward, then closed:
//
//	go test -tags matprofile -run '^$' -bench LoadPipeline -benchtime 10x ./agent/vision/
func BenchmarkLoadPipeline(b *testing.B) {
	dir, man := modelsDir(b)
	for b.Loop() {
		p, err := New(dir, man, man.Pipeline.Detector, "", DefaultConfig())
		if err != nil {
			b.Fatal(err)
		}
		p.Close()
	}
}
