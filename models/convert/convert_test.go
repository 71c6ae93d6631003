package convert

import (
	"testing"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/models"
)

// Every model of the repository's manifest that is built from a source
// names a converter this package has.
func TestManifestConvertersExist(t *testing.T) {
	man, err := models.LoadManifest(testenv.Path("models", "manifest.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	c := Converters()
	n := 0
	for _, md := range man.Models {
		if md.Source == nil {
			continue
		}
		n++
		if _, ok := c[md.Source.Converter]; !ok {
			t.Errorf("model %s: converter %q not in Converters()", md.Name, md.Source.Converter)
		}
	}
	if n == 0 {
		t.Fatal("the manifest has no model built from a source")
	}
}
