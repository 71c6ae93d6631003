// Experiment (masked views; removed after measuring): writes the demo's visits (seed 1), one frame each, as a
// labelled folder for eval (outside the repository).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/hal/sim"
)

func main() {
	out := os.Args[1]
	faces, err := sim.LoadFaces("build/models", "build/src/face-api/demo")
	if err != nil {
		panic(err)
	}
	scores := make([]float64, len(faces))
	for i, f := range faces {
		scores[i] = f.Score
	}
	sc := sim.Build(len(faces), 1, scores...)
	os.MkdirAll(out, 0o755)
	lab, _ := os.Create(filepath.Join(out, "labels.csv"))
	fmt.Fprintln(lab, "path,identity,masked")
	for i, v := range sc.Visits {
		if v.Person < 0 {
			continue
		}
		frs := sc.Frames(faces, v, 5)
		for k := range frs {
			if k != 2 {
				continue
			}
			fr := frs[k]
			m, err := gocv.NewMatFromBytes(fr.H, fr.W, gocv.MatTypeCV8UC3, fr.BGR)
			if err != nil {
				panic(err)
			}
			name := fmt.Sprintf("v%02d_f%d.png", i, k)
			gocv.IMWrite(filepath.Join(out, name), m)
			m.Close()
			masked := 0
			if v.Mask >= 0 {
				masked = 1
			}
			fmt.Fprintf(lab, "%s,%s,%d\n", name, sc.People[v.Person].Name, masked)
		}
	}
	lab.Close()
}
