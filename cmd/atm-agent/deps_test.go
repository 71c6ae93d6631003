package main

import (
	"os/exec"
	"strings"
	"testing"
)

// forbidden are the packages the daemon must never link: each is code that
// never runs on the ATM (attack surface and review cost on a
// security-reviewed box). A prefix matches the package and everything
// beneath it.
var forbidden = map[string]string{
	"github.com/periocular/atm-agent/models/eval":    "the evaluation harness and head training",
	"github.com/periocular/atm-agent/models/convert": "the model converters (models build)",
	"github.com/periocular/atm-agent/models/onnx":    "the ONNX writer (converters)",
	"github.com/periocular/atm-agent/models/tfgraph": "the TF.js graph converter",
	"github.com/periocular/atm-agent/models/tfjs":    "the TF.js weights reader (converters)",
	"github.com/periocular/atm-agent/models/faceapi": "the face-api graph builders (converters)",
	"google.golang.org/protobuf":                     "protobuf (ONNX writing, the Prometheus client)",
	"github.com/prometheus/client_golang":            "the Prometheus client (protobuf); internal/promtext writes the text format",
	"github.com/periocular/atm-agent/models/batch":   "the offline clustering job",
	"github.com/periocular/atm-agent/hal/sim":        "the simulated ATM day (demo)",
	"github.com/mochi-mqtt/server":                   "the demo's embedded MQTT broker",
	"github.com/schollz/progressbar":                 "progress bars (offline tools)",
	"github.com/mitchellh/colorstring":               "progress bar colours (offline tools)",
	"golang.org/x/term":                              "terminal handling (offline tools)",
	"github.com/periocular/atm-agent/sync/fleet":     "the central fleet service (cmd/atm-fleet)",
	"github.com/jackc/pgx":                           "PostgreSQL (the fleet service's store)",
	"github.com/chromedp":                            "the fleet's browser tests",
}

// TestDaemonDeps fails when the daemon binary links a forbidden package
// (as tailscale's cmd/tailscaled/deps_test.go). It asks the go command for
// the package's dependency closure as the build sees it.
func TestDaemonDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", "github.com/periocular/atm-agent/cmd/atm-agent").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps gave %d packages; want the daemon's closure", len(deps))
	}
	for _, d := range deps {
		for prefix, why := range forbidden {
			if d == prefix || strings.HasPrefix(d, prefix+"/") {
				t.Errorf("the daemon links %s: %s", d, why)
			}
		}
	}
}
