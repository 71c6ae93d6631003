package eval

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestZZDump writes every evaluation cache in $ZZ_CACHE as CSV into
// $ZZ_OUT (path, identity, masked, predicted mask, template) for
// scripts/rerank (experiment).
func TestZZDump(t *testing.T) {
	dir, out := os.Getenv("ZZ_CACHE"), os.Getenv("ZZ_OUT")
	if dir == "" || out == "" {
		t.Skip("ZZ_CACHE and ZZ_OUT not set")
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.gob"))
	for _, f := range files {
		key := strings.TrimSuffix(filepath.Base(f), ".gob")
		r, err := loadCache(dir, key)
		if err != nil {
			continue
		}
		var b strings.Builder
		for _, s := range r.Samples {
			if !s.Found {
				continue
			}
			m := 0
			if s.Masked {
				m = 1
			}
			fmt.Fprintf(&b, "%s,%s,%d,%d", s.Rel, s.Identity, m, s.Mask)
			for _, v := range s.Embedding {
				fmt.Fprintf(&b, ",%.6f", v)
			}
			b.WriteString("\n")
		}
		if err := os.WriteFile(filepath.Join(out, key+".csv"), []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
