package sim

import (
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"runtime"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/agent/visit"
)

// Frame is a camera frame (visit.Frame).
type Frame = visit.Frame

// Frame size of the simulated camera.
const (
	FrameW = 640
	FrameH = 480
)

// Shot says what the camera sees during one visit.
type Shot int

const (
	ShotFace    Shot = iota // the customer's face
	ShotCovered             // the lens is covered: a dark, noisy frame
	ShotEmpty               // nobody in view (face turned away, hood): background only
)

func (s Shot) String() string {
	switch s {
	case ShotFace:
		return "face"
	case ShotCovered:
		return "covered"
	case ShotEmpty:
		return "empty"
	}
	return fmt.Sprintf("shot(%d)", int(s))
}

// Render draws n camera frames of one visit: the face crop (or nothing)
// over a soft background, with per-frame position, scale and brightness
// jitter. seed makes it reproducible; face may be nil for faceless shots.
func Render(face []byte, shot Shot, n int, seed uint64) []Frame {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	bg := background(r)
	out := make([]Frame, 0, n)
	// The customer stands at one place per visit and moves a little per frame.
	side0 := 230 + r.IntN(60)
	cx0 := FrameW/2 + r.IntN(81) - 40
	cy0 := FrameH/2 + r.IntN(41) - 30
	for i := 0; i < n; i++ {
		fr := make([]byte, len(bg))
		copy(fr, bg)
		gain := 0.85 + 0.3*r.Float64()
		switch shot {
		case ShotFace:
			side := side0 + r.IntN(13) - 6
			cx, cy := cx0+r.IntN(13)-6, cy0+r.IntN(9)-4
			paste(fr, face, side, cx-side/2, cy-side/2)
		case ShotCovered:
			gain = 0.04 + 0.03*r.Float64()
		}
		noise := 3.0
		if shot == ShotCovered {
			noise = 1.5
		}
		for j := range fr {
			v := float64(fr[j])*gain + noise*(r.Float64()-0.5)*2
			fr[j] = uint8(math.Max(0, math.Min(255, v)))
		}
		out = append(out, Frame{W: FrameW, H: FrameH, BGR: fr})
	}
	return out
}

// background is a vertical gradient between two muted colours, blurred
// noise on top: a wall or a street behind the customer.
func background(r *rand.Rand) []byte {
	var top, bot [3]float64
	for c := range 3 {
		top[c] = 60 + 120*r.Float64()
		bot[c] = 40 + 100*r.Float64()
	}
	small := make([]byte, 0, 32*24*3)
	for y := 0; y < 24; y++ {
		t := float64(y) / 23
		for x := 0; x < 32; x++ {
			for c := range 3 {
				v := top[c]*(1-t) + bot[c]*t + 14*(r.Float64()-0.5)
				small = append(small, uint8(math.Max(0, math.Min(255, v))))
			}
		}
	}
	m, _ := gocv.NewMatFromBytes(24, 32, gocv.MatTypeCV8UC3, small) // wraps small: keep it alive
	defer runtime.KeepAlive(small)
	defer m.Close()
	big := gocv.NewMat()
	defer big.Close()
	gocv.Resize(m, &big, image.Pt(FrameW, FrameH), 0, 0, gocv.InterpolationCubic)
	gocv.GaussianBlur(big, &big, image.Pt(61, 61), 0, 0, gocv.BorderReflect)
	return append([]byte(nil), big.ToBytes()...)
}

// paste scales the CropSize face crop to side pixels and blends it into fr
// at (x, y) through a soft elliptical alpha, so no hard square edge shows.
func paste(fr, face []byte, side, x, y int) {
	src, _ := gocv.NewMatFromBytes(CropSize, CropSize, gocv.MatTypeCV8UC3, face) // wraps face: keep it alive
	defer runtime.KeepAlive(face)
	defer src.Close()
	dst := gocv.NewMat()
	defer dst.Close()
	gocv.Resize(src, &dst, image.Pt(side, side), 0, 0, gocv.InterpolationLinear)
	b := dst.ToBytes()
	half := float64(side) / 2
	for j := 0; j < side; j++ {
		fy := y + j
		if fy < 0 || fy >= FrameH {
			continue
		}
		for i := 0; i < side; i++ {
			fx := x + i
			if fx < 0 || fx >= FrameW {
				continue
			}
			dx, dy := (float64(i)-half)/half, (float64(j)-half)/(half*1.05)
			d := math.Sqrt(dx*dx + dy*dy)
			a := 1.0
			if d > 0.8 {
				a = math.Max(0, (1-d)/0.2)
			}
			if a == 0 {
				continue
			}
			so, do := 3*(j*side+i), 3*(fy*FrameW+fx)
			for c := range 3 {
				fr[do+c] = uint8(a*float64(b[so+c]) + (1-a)*float64(fr[do+c]) + 0.5)
			}
		}
	}
}
