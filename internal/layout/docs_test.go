package layout

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/internal/testenv"
)

// docLink is a reference from one page to another: docs/NAME.md in the
// text or a relative Markdown link (NAME.md).
var docLink = regexp.MustCompile(`(?:docs/|\]\()([a-z0-9-]+\.md)`)

// Every page a package ships names only pages it ships too: an operator
// reading /usr/share/doc/atm-agent/operations.md on the box can open the
// security.md and trigger-api.md it points to.
func TestShippedDocsAreWhole(t *testing.T) {
	root := testenv.Root()
	for _, cfg := range []string{"nfpm.yaml", "nfpm-fleet.yaml", "nfpm-tools.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, "scripts", "packaging", cfg))
		if err != nil {
			t.Fatal(err)
		}
		var pkg struct {
			Contents []struct {
				Src string `yaml:"src"`
				Dst string `yaml:"dst"`
			} `yaml:"contents"`
		}
		if err := yaml.Unmarshal(b, &pkg); err != nil {
			t.Fatalf("%s: %v", cfg, err)
		}
		shipped := map[string]bool{}
		for _, c := range pkg.Contents {
			if !strings.HasPrefix(c.Src, "docs/") || !strings.HasSuffix(c.Src, ".md") {
				continue
			}
			files, err := filepath.Glob(filepath.Join(root, c.Src))
			if err != nil || len(files) == 0 {
				t.Fatalf("%s: %s matches no file (%v)", cfg, c.Src, err)
			}
			for _, f := range files {
				shipped[filepath.Base(f)] = true
			}
		}
		if len(shipped) == 0 {
			t.Fatalf("%s ships no documentation", cfg)
		}
		for page := range shipped {
			text, err := os.ReadFile(filepath.Join(root, "docs", page))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range docLink.FindAllStringSubmatch(string(text), -1) {
				if _, err := os.Stat(filepath.Join(root, "docs", m[1])); err != nil {
					continue // a name in prose, not a page of ours
				}
				if !shipped[m[1]] {
					t.Errorf("%s: the shipped %s names %s, which the package does not ship", cfg, page, m[1])
				}
			}
		}
	}
}

// Every Go module a package's binary links is named in that package's
// copyright file (DEP-5), as Debian expects of a statically linked
// binary: a new dependency cannot ship unlisted.
func TestCopyrightNamesEveryLinkedModule(t *testing.T) {
	root := testenv.Root()
	for bin, file := range map[string]string{"atm-agent": "copyright", "atm-fleet": "copyright-fleet", "atm-tools": "copyright-tools"} {
		text, err := os.ReadFile(filepath.Join(root, "scripts", "packaging", file))
		if err != nil {
			t.Fatal(err)
		}
		mods := goList(t, "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}}{{end}}{{end}}", "./cmd/"+bin)
		slices.Sort(mods)
		mods = slices.Compact(mods)
		if len(mods) == 0 {
			t.Fatalf("%s links no module: go list found nothing", bin)
		}
		for _, m := range mods {
			name := regexp.MustCompile(`/v[0-9]+$`).ReplaceAllString(m, "")
			short := strings.TrimPrefix(name, "golang.org/") // listed as "golang.org/x/image, x/net, ..."
			if !strings.Contains(string(text), name) && !strings.Contains(string(text), " "+short) {
				t.Errorf("%s links %s, which scripts/packaging/%s does not name", bin, m, file)
			}
		}
	}
}
