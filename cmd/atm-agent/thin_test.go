package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The daemon's main package stays a command list and flags (the wiring is
// agent/daemon, the commands' work in their packages): every non-test file
// under 150 lines, no function over 60 lines.
func TestMainPackageIsThin(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	n := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		n++
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Count(string(b), "\n"); lines >= 150 {
			t.Errorf("%s: %d lines, want under 150", f, lines)
		}
		af, err := parser.ParseFile(fset, f, b, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(node ast.Node) bool {
			var body *ast.BlockStmt
			var name string
			switch fn := node.(type) {
			case *ast.FuncDecl:
				body, name = fn.Body, fn.Name.Name
			case *ast.FuncLit:
				body, name = fn.Body, "func literal"
			}
			if body != nil {
				if l := fset.Position(body.End()).Line - fset.Position(body.Pos()).Line + 1; l > 60 {
					t.Errorf("%s: %s at line %d is %d lines, want at most 60", f, name, fset.Position(body.Pos()).Line, l)
				}
			}
			return true
		})
	}
	if n == 0 {
		t.Fatal("no source files found")
	}
}
