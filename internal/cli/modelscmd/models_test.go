package modelscmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/models"
)

func TestModelsVerify(t *testing.T) {
	t.Setenv("ATM_AGENT_AS_CLI", "1")
	src := testenv.ModelsDir(t)
	dir, man := testenv.CopyModels(t, src, "faceapi-tiny", "faceapi-landmarks68")

	code, out, errs := runCLI(t, "models", "verify", "--dir", dir)
	if code != 0 {
		t.Fatalf("verify of intact models: exit %d\n%s%s", code, out, errs)
	}
	for _, md := range man.Models {
		if !strings.Contains(out, md.Name) || !strings.Contains(out, "OK") {
			t.Errorf("verify output lacks %s OK:\n%s", md.Name, out)
		}
	}

	// One flipped byte: the file is named, the exit is non-zero, no crash.
	tampered := filepath.Join(dir, man.Models[1].File)
	b, _ := os.ReadFile(tampered)
	b[len(b)/2] ^= 0x01
	os.WriteFile(tampered, b, 0o644)
	code, out, _ = runCLI(t, "models", "verify", "--dir", dir)
	if code == 0 {
		t.Fatalf("verify passed a tampered model:\n%s", out)
	}
	if !strings.Contains(out, tampered) || !strings.Contains(out, "sha256") {
		t.Errorf("verify output does not name the tampered file and the check:\n%s", out)
	}
	if !strings.Contains(out, man.Models[0].Name+" ") || strings.Count(out, "OK") != 1 {
		t.Errorf("the intact model should still pass:\n%s", out)
	}

	// Truncated file.
	os.WriteFile(tampered, b[:100], 0o644)
	_, out, _ = runCLI(t, "models", "verify", "--dir", dir)
	if !strings.Contains(out, "truncated") {
		t.Errorf("truncation not reported:\n%s", out)
	}

	// Missing file.
	os.Remove(tampered)
	_, out, _ = runCLI(t, "models", "verify", "--dir", dir)
	if !strings.Contains(out, "missing") {
		t.Errorf("missing file not reported:\n%s", out)
	}
}

// A file whose checksum an operator recorded but that OpenCV cannot parse
// must cost the child process, not the verifier.
func TestModelsVerifySurvivesOpenCVAbort(t *testing.T) {
	t.Setenv("ATM_AGENT_AS_CLI", "1")
	src := testenv.ModelsDir(t)
	dir, man := testenv.CopyModels(t, src, "faceapi-tiny")
	bad := filepath.Join(dir, man.Models[0].File)
	junk := []byte("\x08\x07\x12\x04junk this is not an onnx graph \xff\xff\xff\xff")
	os.WriteFile(bad, junk, 0o644)
	sum, _ := models.FileSHA256(bad)
	man.Models[0].SHA256, man.Models[0].Size = sum, int64(len(junk))
	man.Save(filepath.Join(dir, "manifest.yaml"))

	code, out, errs := runCLI(t, "models", "verify", "--dir", dir)
	if code == 0 {
		t.Fatalf("verify passed an unparseable model:\n%s", out)
	}
	if !strings.Contains(out, "FAIL: OpenCV aborted loading the model") || !strings.Contains(out, man.Models[0].Name) {
		t.Errorf("no failure line for the bad model:\n%s\n%s", out, errs)
	}
}

// Without --dir, outside a checkout, verify checks the installed models
// (a fake install root), in the child probes too.
func TestModelsVerifyInstalledDefault(t *testing.T) {
	t.Setenv("ATM_AGENT_AS_CLI", "1")
	src := testenv.ModelsDir(t)
	dir, _ := testenv.CopyModels(t, src, "faceapi-tiny")
	fake := t.TempDir()
	inst := filepath.Join(fake, "usr", "lib", "atm-agent", "models")
	if err := os.MkdirAll(filepath.Dir(inst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dir, inst); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ATM_AGENT_ROOT", fake)
	t.Setenv("ATM_MODELS_DIR", "")
	t.Chdir(t.TempDir())
	code, out, errs := runCLI(t, "models", "verify")
	if code != 0 || !strings.Contains(out, "faceapi-tiny") || !strings.Contains(out, "OK") {
		t.Fatalf("verify of the installed models: exit %d\n%s%s", code, out, errs)
	}
	_, help, _ := runCLI(t, "models", "verify", "--help")
	if !strings.Contains(help, inst) {
		t.Errorf("--help does not show the installed default %s:\n%s", inst, help)
	}
}
