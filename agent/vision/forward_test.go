package vision

import (
	"errors"
	"strings"
	"testing"
)

// A manifest entry whose input size does not fit its network (blazeface
// is 256x256; an operator's edit says 128) passes the file's checksum, and
// OpenCV throws at the first forward. Through gocv that exception aborted
// the process (SIGABRT at the first card insert, then a restart loop); it
// is an error now, and the network still works at its own size after.
func TestForwardExceptionIsAnError(t *testing.T) {
	checkMats(t)
	dir, man := modelsDir(t)
	md, ok := man.Find("blazeface")
	if !ok {
		t.Skip("no blazeface in the manifest")
	}
	bad := *md
	bad.Input.Width, bad.Input.Height = md.Input.Width/2, md.Input.Height/2
	// Refused at load, by the self-test's forward: the agent does not start.
	if n, err := LoadNet(dir, &bad); !errors.Is(err, ErrForward) || !strings.Contains(err.Error(), "the manifest's entry does not fit it") {
		if err == nil {
			n.Close()
		}
		t.Fatalf("load at the wrong size: %v, want ErrForward", err)
	} else {
		t.Logf("refused: %v", err)
	}
	// A forward that throws later is an error too (the net is loaded at
	// its own size and given another).
	good, err := LoadNet(dir, md)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	good.Model.Input.Width, good.Model.Input.Height = bad.Input.Width, bad.Input.Height
	if _, err := good.Forward(make([]float32, 3*bad.Input.Width*bad.Input.Height), 3); !errors.Is(err, ErrForward) {
		t.Fatalf("forward at the wrong size: %v, want ErrForward", err)
	}
	good.Model.Input.Width, good.Model.Input.Height = md.Input.Width, md.Input.Height
	if err != nil {
		t.Fatal(err)
	}
	outs, err := good.Forward(make([]float32, 3*md.Input.Width*md.Input.Height), 3)
	if err != nil || len(outs) == 0 {
		t.Fatalf("forward at the network's size: %v", err)
	}
}
