// Package clitest checks a binary's command tree against the CLI
// conventions of docs/operations.md ("Command-line conventions"): help on
// stdout with exit 0 for every command (--help, -h, help X), usage errors
// with exit 2 on stderr, --version, and a man page and completions that
// name every command.
package clitest

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/cli"
)

// Check walks every command of app.
func Check(t *testing.T, app cli.App) {
	t.Helper()
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := cli.Run(context.Background(), app, args, &out, &errb)
		return code, out.String(), errb.String()
	}
	leaves, err := cli.Walk(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaves) < 4 {
		t.Fatalf("only %d commands found", len(leaves))
	}
	groups := map[string]bool{"": true}
	for _, l := range leaves {
		name := strings.Join(l.Path, " ")
		for i := 1; i < len(l.Path); i++ {
			groups[strings.Join(l.Path[:i], " ")] = true
		}
		for _, form := range [][]string{
			append(append([]string(nil), l.Path...), "--help"),
			append(append([]string(nil), l.Path...), "-h"),
			append([]string{"help"}, l.Path...),
		} {
			code, out, errs := run(form...)
			if code != 0 || !strings.HasPrefix(out, "usage: "+app.Name+" "+l.Path[0]) || errs != "" {
				t.Errorf("%s: exit %d, stdout %q, stderr %q; want 0, usage on stdout, nothing on stderr", strings.Join(form, " "), code, head(out), head(errs))
			}
			if !strings.Contains(out, l.Summary) {
				t.Errorf("%s: help lacks the summary %q", strings.Join(form, " "), l.Summary)
			}
		}
		code, out, errs := run(append(append([]string(nil), l.Path...), "--no-such-flag")...)
		if code != 2 || out != "" || !strings.Contains(errs, "no-such-flag") {
			t.Errorf("%s --no-such-flag: exit %d, stdout %q, stderr %q; want 2, the flag named on stderr", name, code, head(out), head(errs))
		}
	}
	for g := range groups {
		path := strings.Fields(g)
		for _, form := range [][]string{append(path, "--help"), append(path, "-h"), append(append([]string(nil), path...), "help"), append([]string{"help"}, path...)} {
			code, out, errs := run(form...)
			if code != 0 || !strings.HasPrefix(out, "usage: ") || !strings.Contains(out, "commands:") || errs != "" {
				t.Errorf("%q: exit %d, stdout %q, stderr %q; want 0 and the command list on stdout", form, code, head(out), head(errs))
			}
		}
		code, out, errs := run(path...)
		if code != 2 || out != "" || !strings.Contains(errs, "commands:") {
			t.Errorf("%q without a command: exit %d, stdout %q; want 2 and the list on stderr", path, code, head(out))
		}
		code, _, errs = run(append(path, "no-such-command")...)
		if code != 2 || !strings.Contains(errs, "no-such-command") {
			t.Errorf("%q no-such-command: exit %d, stderr %q; want 2", path, code, head(errs))
		}
	}
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, out, _ := run(args...)
		if code != 0 || out != app.Name+" "+cli.Version+"\n" {
			t.Errorf("%v: exit %d, %q; want 0 and %q", args, code, out, app.Name+" "+cli.Version)
		}
	}
	code, man, _ := run("manpage")
	if code != 0 || !strings.HasPrefix(man, `.\"`) || !strings.Contains(man, ".TH "+strings.ToUpper(app.Name)+" 1") {
		t.Errorf("manpage: exit %d, %q", code, head(man))
	}
	for _, l := range leaves {
		if !strings.Contains(man, `.SS "`+strings.ReplaceAll(strings.Join(l.Path, " "), "-", `\-`)+`"`) {
			t.Errorf("man page lacks %q", strings.Join(l.Path, " "))
		}
	}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		code, out, errs := run("completion", sh)
		if code != 0 || !strings.Contains(out, app.Name) {
			t.Errorf("completion %s: exit %d, %q", sh, code, head(errs))
		}
		for _, l := range leaves {
			if !strings.Contains(out, l.Path[len(l.Path)-1]) {
				t.Errorf("completion %s lacks %q", sh, strings.Join(l.Path, " "))
			}
		}
	}
	if code, _, _ := run("completion", "tcsh"); code != 2 {
		t.Errorf("completion tcsh: exit %d, want 2", code)
	}
}

func head(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
