// Package paths says where the binaries find their files: the installed
// layout of the .deb (/etc/atm-agent, /usr/lib/atm-agent/models,
// /var/lib/atm-agent, /usr/share/atm-tools), or the development tree's
// build/ when the command runs inside a source checkout (the working
// directory or one of its parents holds this module's go.mod).
//
// ATM_AGENT_ROOT prefixes every installed path (a package unpacked under a
// directory, as the tests do); ATM_MODELS_DIR names the models dir outright.
package paths

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
)

// Module is the module path a checkout's go.mod declares.
const Module = "github.com/periocular/atm-agent"

// Installed paths, relative to the root (/ unless ATM_AGENT_ROOT).
const (
	ConfigFile = "/etc/atm-agent/config.yaml"
	ModelsDir  = "/usr/lib/atm-agent/models"
	StateDir   = "/var/lib/atm-agent"
	DemoPhotos = "/usr/share/atm-tools/demo"
)

// Installed returns p under ATM_AGENT_ROOT.
func Installed(p string) string {
	if r := os.Getenv("ATM_AGENT_ROOT"); r != "" {
		return filepath.Join(r, p)
	}
	return p
}

// Checkout returns the root of the source checkout the working directory
// is in, or "" when it is in none.
func Checkout() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if isModuleRoot(dir) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

func isModuleRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if mod, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.TrimSpace(mod) == Module
		}
	}
	return false
}

// Dev returns build/<elem...> of the checkout, or "" outside one.
func Dev(elem ...string) string {
	c := Checkout()
	if c == "" {
		return ""
	}
	return filepath.Join(append([]string{c, "build"}, elem...)...)
}

// Models is the models dir: ATM_MODELS_DIR, else the checkout's
// build/models, else the installed one.
func Models() string {
	if d := os.Getenv("ATM_MODELS_DIR"); d != "" {
		return d
	}
	if d := Dev("models"); d != "" {
		return d
	}
	return Installed(ModelsDir)
}

// Photos is the demo's photos: the checkout's build/src/face-api/demo
// (make models extracts them), else the installed copy.
func Photos() string {
	if d := Dev("src", "face-api", "demo"); d != "" {
		return d
	}
	return Installed(DemoPhotos)
}

// Config is the agent's config file. It is the installed one even in a
// checkout: a development config is always named with --config.
func Config() string { return Installed(ConfigFile) }

// Work is a tools' working dir (build/<name> in a checkout, else the
// user's cache dir, ~/.cache/atm-tools/<name>): downloads, extracted
// packages, converted models of `models build`, the evaluation cache.
func Work(name string) string {
	if d := Dev(name); d != "" {
		return d
	}
	if c, err := os.UserCacheDir(); err == nil {
		return filepath.Join(c, "atm-tools", name)
	}
	return filepath.Join(os.TempDir(), "atm-tools", name)
}
