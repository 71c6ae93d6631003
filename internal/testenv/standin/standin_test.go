package standin

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/models"
)

// The manifest entries docs/models.md tells an operator to write for the
// real files are the ones the stand-ins are registered with (checksums
// aside), and they validate once the checksums are filled in.
func TestDocumentedEntries(t *testing.T) {
	b, err := os.ReadFile(testenv.Path("docs", "models.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i := strings.Index(doc, "### The original project's models")
	if i < 0 {
		t.Fatal("docs/models.md has no section on the original project's models")
	}
	block := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindStringSubmatch(doc[i:])
	if block == nil {
		t.Fatal("no yaml block in the section")
	}
	sha := strings.Repeat("0", 64)
	text := regexp.MustCompile(`<sha256 of [^>]*>`).ReplaceAllString(block[1], sha)
	man, err := models.ParseManifest([]byte("schema: 1\n" + text))
	if err != nil {
		t.Fatalf("the documented entries do not validate: %v\n%s", err, text)
	}
	for _, want := range []models.Model{Res10Entry(), OpenFaceEntry()} {
		got, ok := man.Find(want.Name)
		if !ok {
			t.Errorf("%s not documented", want.Name)
			continue
		}
		g := *got
		g.SHA256, g.ConfigSHA256 = "", ""
		if !reflect.DeepEqual(g, want) {
			t.Errorf("documented %s:\n%+v\nthe stand-in's:\n%+v", want.Name, g, want)
		}
	}
	if man.Pipeline.Detector != Res10Name || man.Pipeline.Embedder != OpenFaceName {
		t.Errorf("documented pipeline %+v", man.Pipeline)
	}
}

// The writers are deterministic: the same bytes every time (checksums a
// test can rely on), and the files begin as their formats do.
func TestWritersDeterministic(t *testing.T) {
	if string(Res10Weights()) != string(Res10Weights()) || string(OpenFace()) != string(OpenFace()) {
		t.Fatal("writers are not deterministic")
	}
	t7 := OpenFace()
	// TYPE_TORCH (4), object index 1, "V 1", "nn.Sequential".
	if want := "\x04\x00\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00V 1\x0d\x00\x00\x00nn.Sequential"; !strings.HasPrefix(string(t7), want) {
		t.Errorf(".t7 begins %q", t7[:32])
	}
	// NetParameter.name (field 1, bytes) "res10-standin".
	if w := Res10Weights(); !strings.HasPrefix(string(w), "\x0a\x0dres10-standin") {
		t.Errorf("caffemodel begins %q", w[:16])
	}
	if d := Res10Deploy(); !strings.Contains(d, "input: \"data\"") || !strings.Contains(d, "name: \"detection_out\"") {
		t.Errorf("deploy.prototxt:\n%s", d)
	}
}
