package cli_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/cli/clitest"
)

func testApp() cli.App {
	leaf := func(name, syn string) cli.Command {
		return cli.Command{Summary: "the " + name + " command", Run: func(_ context.Context, env *cli.Env, args []string) error {
			fs := cli.NewFlags(env, name, syn)
			fs.String("dir", "", "a directory")
			fs.Bool("json", false, "print JSON")
			if err := cli.ParseFlags(fs, args); err != nil {
				return err
			}
			if fs.NArg() > 0 && fs.Arg(0) == "fail" {
				return errors.New("it failed")
			}
			return nil
		}}
	}
	return cli.App{Name: "demo-app", Summary: "a test app", Commands: map[string]cli.Command{
		"run": leaf("run", "run [--dir DIR]"),
		"db": cli.Group("the database", map[string]cli.Command{
			"check":  leaf("db check", "db check [--json]"),
			"export": leaf("db export", "db export"),
			"probe":  {Summary: "internal", Hidden: true, Run: func(context.Context, *cli.Env, []string) error { return nil }},
		}),
	}}
}

func TestConventions(t *testing.T) { clitest.Check(t, testApp()) }

// A leaf whose --help does not reach its flag set fails the walk (and so
// the conventions test of a binary that has one).
func TestWalkRefusesLeafWithoutFlags(t *testing.T) {
	app := testApp()
	app.Commands["bad"] = cli.Command{Summary: "ignores its flags", Run: func(context.Context, *cli.Env, []string) error { return nil }}
	if _, err := cli.Walk(context.Background(), app); err == nil || !strings.Contains(err.Error(), "bad") {
		t.Fatalf("Walk: %v, want an error naming bad", err)
	}
}

func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		err  string
	}{
		{[]string{"run"}, 0, ""},
		{[]string{"run", "fail"}, 1, "demo-app run: it failed"},
		{[]string{"rnu"}, 2, `did you mean "run"?`},
		{[]string{"db", "chek"}, 2, `unknown db command "chek" (did you mean "check"?)`},
		{[]string{"db", "check", "--jsn"}, 2, "unknown flag --jsn (did you mean --json?)"},
		{[]string{"db", "probe"}, 0, ""},
		{[]string{}, 2, "commands:"},
	} {
		var out, errb strings.Builder
		code := cli.Run(context.Background(), testApp(), tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.err) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.err)
		}
	}
	var out strings.Builder
	cli.Run(context.Background(), testApp(), []string{"--help"}, &out, &out)
	if strings.Contains(out.String(), "probe") {
		t.Errorf("help lists the hidden command:\n%s", out.String())
	}
}

func TestSuggest(t *testing.T) {
	cands := []string{"burst_frames", "warmup_frames", "device", "fps"}
	for in, want := range map[string]string{"burst_frame": "burst_frames", "devise": "device", "xyz": "", "fp": "fps", "bursts_frame": "burst_frames"} {
		if got := cli.Suggest(in, cands); got != want {
			t.Errorf("Suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func script(t *testing.T, shell string) string {
	t.Helper()
	var out, errb strings.Builder
	if code := cli.Run(context.Background(), testApp(), []string{"completion", shell}, &out, &errb); code != 0 {
		t.Fatalf("completion %s: exit %d %s", shell, code, errb.String())
	}
	p := filepath.Join(t.TempDir(), "c."+shell)
	if err := os.WriteFile(p, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The generated scripts are run by the real shells: what they complete
// after a group, at a leaf's flags, and at the top level.
func TestCompletionBash(t *testing.T) {
	p := script(t, "bash")
	for line, want := range map[string]string{
		`COMP_WORDS=(demo-app ""); COMP_CWORD=1`:            "db run completion manpage version --help --version",
		`COMP_WORDS=(demo-app db ""); COMP_CWORD=2`:         "check export --help",
		`COMP_WORDS=(demo-app db check --); COMP_CWORD=3`:   "--dir --json --help",
		`COMP_WORDS=(demo-app --dir x db ch); COMP_CWORD=4`: "",
		`COMP_WORDS=(demo-app completion ""); COMP_CWORD=2`: "",
		`COMP_WORDS=(demo-app run --j); COMP_CWORD=2`:       "--json",
	} {
		out, err := exec.Command("bash", "-c", "source "+p+"; "+line+"; _demo_app; echo ${COMPREPLY[@]}").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v %s", line, err, out)
		}
		if got := strings.Fields(string(out)); strings.Join(slices.Sorted(slices.Values(got)), " ") != strings.Join(slices.Sorted(slices.Values(strings.Fields(want))), " ") {
			t.Errorf("%s: %q, want %q", line, got, want)
		}
	}
}

func TestCompletionFish(t *testing.T) {
	if _, err := exec.LookPath("fish"); err != nil {
		t.Skip("fish not installed")
	}
	p := script(t, "fish")
	for line, want := range map[string]string{
		"demo-app db ":          "check export",
		"demo-app db check --j": "--json",
		"demo-app run --":       "--dir --json --help",
	} {
		out, err := exec.Command("fish", "-c", "source "+p+"; complete -C '"+line+"'").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v %s", line, err, out)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			got = append(got, strings.Split(l, "\t")[0])
		}
		if strings.Join(slices.Sorted(slices.Values(got)), " ") != strings.Join(slices.Sorted(slices.Values(strings.Fields(want))), " ") {
			t.Errorf("%s: %q, want %q", line, got, want)
		}
	}
}

func TestCompletionZshParses(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("zsh not installed")
	}
	p := script(t, "zsh")
	if out, err := exec.Command("zsh", "-c", "autoload -U compinit; compinit -u -D; source "+p+"; whence -w _demo_app").CombinedOutput(); err != nil || !strings.Contains(string(out), "function") {
		t.Fatalf("zsh: %v %s", err, out)
	}
}

// `version --json` is one JSON object a fleet inventory can read; plain
// `version` and `--version` keep their one line.
func TestVersionJSON(t *testing.T) {
	var out, errb strings.Builder
	if code := cli.Run(context.Background(), testApp(), []string{"version", "--json"}, &out, &errb); code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var b cli.BuildInfo
	if err := json.Unmarshal([]byte(out.String()), &b); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if b.Name != "demo-app" || b.Version != cli.Version || b.Go != runtime.Version() || b.OS != runtime.GOOS || b.Arch != runtime.GOARCH {
		t.Errorf("build info %+v", b)
	}
	out.Reset()
	if code := cli.Run(context.Background(), testApp(), []string{"version"}, &out, &errb); code != cli.ExitOK || out.String() != "demo-app "+cli.Version+"\n" {
		t.Errorf("plain version: %d %q", code, out.String())
	}
	if code := cli.Run(context.Background(), testApp(), []string{"version", "extra"}, &out, &errb); code != cli.ExitUsage {
		t.Errorf("version extra: exit %d, want usage", code)
	}
}
