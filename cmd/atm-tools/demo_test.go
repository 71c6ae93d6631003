package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
	atmmodels "github.com/periocular/atm-agent/models"
)

// TestDemo runs the whole simulated day in-process (about 25 s of CPU), as
// from the installed package: outside a checkout, with no --models or
// --photos, it must find both at the installed paths (a fake install root
// holding the built models and the demo photos).
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("demo replays ~46 visits through the real models")
	}
	root := testenv.Root()
	models := filepath.Join(root, "build", "models")
	if _, err := os.Stat(filepath.Join(models, "manifest.yaml")); err != nil {
		t.Skipf("built models needed (make models): %v", err)
	}
	// The installed layout: only the models the package ships (the
	// pipeline's, as `atm-tools models ship` copies them) and the photos.
	fake := t.TempDir()
	if _, err := atmmodels.CopyPipeline(models, filepath.Join(fake, "usr/lib/atm-agent/models")); err != nil {
		t.Fatal(err)
	}
	photos := filepath.Join(fake, "usr/share/atm-tools/demo")
	if err := os.MkdirAll(filepath.Dir(photos), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "build", "src", "face-api", "demo"), photos); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ATM_AGENT_ROOT", fake)
	t.Setenv("ATM_MODELS_DIR", "")
	t.Chdir(t.TempDir())
	var out, errb bytes.Buffer
	code := runMain(context.Background(), []string{"demo", "--duration", "2s", "--seed", "1"}, &out, &errb)
	s := out.String()
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, s, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if !strings.HasPrefix(lines[0], "SIMULATED") || !strings.HasPrefix(lines[len(lines)-1], "SIMULATED") {
		t.Errorf("output must say it is simulated at start and end:\n%s", s)
	}
	m := regexp.MustCompile(`visits stored (\d+) of (\d+) card inserts.*lost 0`).FindStringSubmatch(s)
	if m == nil || m[1] != m[2] {
		t.Errorf("not every card insert was stored:\n%s", s)
	}
	if n := strings.Count(s, "] visit demo-1-"); m != nil && strconv.Itoa(n) != m[2] {
		t.Errorf("%d visit lines for %s card inserts", n, m[2])
	}
	for _, rule := range []string{"same-face-repeat", "multiple-cards", "faceless-burst"} {
		if !strings.Contains(s, "ALERT via MQTT  "+rule) {
			t.Errorf("no %s alert arrived at the subscriber", rule)
		}
	}
	if !strings.Contains(s, "alerts stored 3, missing at the subscriber 0") || !regexp.MustCompile(`with 0 gaps`).MatchString(s) {
		t.Errorf("alerts or sequence numbers missing at the subscriber:\n%s", s)
	}
	t.Logf("\n%s", s[strings.Index(s, "=== Summary"):])
}
