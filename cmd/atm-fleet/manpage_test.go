package main

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/manroff"
)

// The man page names every command of the usage text and the flags of run
// and compact; man(1), when installed, reads it without a warning (as
// lintian's groff-message check does).
func TestManpage(t *testing.T) {
	var out, usage bytes.Buffer
	if code := runMain(context.Background(), []string{"manpage"}, nil, &out, io.Discard); code != 0 {
		t.Fatalf("manpage: exit %d", code)
	}
	runMain(context.Background(), []string{"--help"}, nil, &usage, io.Discard)
	page := out.String()
	for _, c := range commands {
		if !strings.Contains(page, ".SS \""+manroff.Escape(c.name)+"\"\n") || !strings.Contains(usage.String(), "atm-fleet "+c.synopsis) {
			t.Errorf("command %q missing from the man page or the usage", c.name)
		}
	}
	for _, f := range []string{`\-\-config`, `\-\-wait`, `.SH "EXIT STATUS"`, "/etc/atm\\-fleet/users.yaml"} {
		if !strings.Contains(page, f) {
			t.Errorf("man page lacks %q", f)
		}
	}
	man, err := exec.LookPath("man")
	if err != nil {
		t.Skip("man not installed")
	}
	cmd := exec.Command(man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", "-")
	cmd.Stdin = strings.NewReader(page)
	cmd.Env = append(cmd.Environ(), "LC_ALL=C.UTF-8")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("man --warnings: %v\n%s", err, stderr.String())
	}
}
