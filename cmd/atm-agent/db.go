package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/vision"
)

// openDB opens the store named by --config (or --db) for an admin command.
// The daemon holds the file lock: stop it first (the wait is bounded by
// store.lock_timeout).
func openDB(env *cliEnv, name string, args []string, extra func(fsAdd func(string, string, string) *string)) (*store.Store, []string, map[string]*string, error) {
	st, rest, opts, _, err := openDBConfig(env, name, args, extra)
	return st, rest, opts, err
}

// openDBConfig is openDB that also returns the agent config it read (nil
// when only --db was given and the config could not be read).
func openDBConfig(env *cliEnv, name string, args []string, extra func(fsAdd func(string, string, string) *string)) (*store.Store, []string, map[string]*string, *Config, error) {
	fs := newFlags(env, "db "+name, "db "+name+" [--config FILE | --db PATH] ...")
	cfgPath := fs.String("config", "/etc/atm-agent/config.yaml", "agent config file")
	dbPath := fs.String("db", "", "database file (overrides the config's store.path)")
	opts := map[string]*string{}
	if extra != nil {
		extra(func(n, v, u string) *string { p := fs.String(n, v, u); opts[n] = p; return p })
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, nil, nil, nil, err
	}
	scfg := store.DefaultConfig()
	var cfg *Config
	if *dbPath == "" || *cfgPath != "/etc/atm-agent/config.yaml" {
		c, err := LoadConfig(*cfgPath)
		if err != nil && *dbPath == "" {
			return nil, nil, nil, nil, err
		}
		if err == nil {
			scfg = c.Store
			cfg = &c
		}
	}
	if *dbPath != "" {
		scfg.Path = *dbPath
	}
	o, err := scfg.Options()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	o.Logger = env.log
	st, err := store.Open(scfg.Path, o)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("%w (is the agent running? stop it first)", err)
	}
	return st, fs.Args(), opts, cfg, nil
}

func init() {
	commands["db"] = command{"inspect and maintain the agent database", subcommands("db", map[string]command{
		"stats": {"print database statistics (JSON), with the stored templates of models the agent no longer runs", func(ctx context.Context, env *cliEnv, args []string) error {
			var modelsDir, embedder *string
			st, _, _, cfg, err := openDBConfig(env, "stats", args, func(add func(string, string, string) *string) {
				modelsDir = add("models-dir", "", "models dir holding manifest.yaml (default: the config's models.dir)")
				embedder = add("embedder", "", "the embedder the agent runs (default: the config's models.embedder, else the manifest's pipeline)")
			})
			if err != nil {
				return err
			}
			defer st.Close()
			s, err := st.Stats(ctx)
			if err != nil {
				return err
			}
			out := dbStats{Stats: s}
			if cfg != nil {
				if *modelsDir == "" {
					*modelsDir = cfg.Models.Dir
				}
				if *embedder == "" {
					*embedder = cfg.Models.Embedder
				}
			}
			if *modelsDir == "" {
				*modelsDir = defaultModelsDir()
			}
			tag, err := currentTemplateModel(*modelsDir, *embedder)
			if err != nil {
				out.TemplateModelError = err.Error()
			} else {
				n := 0
				for m, c := range s.Templates {
					if m != "" && m != tag {
						n += c
					}
				}
				out.TemplateModel, out.TemplatesNotLoaded = tag, &n
			}
			enc := json.NewEncoder(env.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		}},
		"export": {"write the database as JSON lines (no templates unless --embeddings)", func(ctx context.Context, env *cliEnv, args []string) error {
			var emb *string
			st, _, _, err := openDB(env, "export", args, func(add func(string, string, string) *string) {
				emb = add("embeddings", "no", "include embeddings (biometric templates): yes or no")
			})
			if err != nil {
				return err
			}
			defer st.Close()
			if *emb != "yes" && *emb != "no" {
				return fmt.Errorf("%w: --embeddings wants yes or no", errUsage)
			}
			return st.Export(ctx, env.stdout, store.ExportOptions{Embeddings: *emb == "yes"})
		}},
		"purge": {"delete one identity, its visits and alerts (--identity ID), or expired data (--expired)", func(ctx context.Context, env *cliEnv, args []string) error {
			var id, expired *string
			st, _, _, err := openDB(env, "purge", args, func(add func(string, string, string) *string) {
				id = add("identity", "", "identity id to delete")
				expired = add("expired", "no", "apply the retention window now: yes or no")
			})
			if err != nil {
				return err
			}
			defer st.Close()
			switch {
			case *id != "" && *expired == "no":
				n, err := st.PurgeIdentity(ctx, *id)
				if err != nil {
					return err
				}
				fmt.Fprintf(env.stdout, "identity %s deleted with %d visits\n", *id, n)
			case *id == "" && *expired == "yes":
				n, err := st.PurgeExpired(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(env.stdout, "%d visits older than %v deleted\n", n, st.Retention())
			default:
				return fmt.Errorf("%w: give --identity ID or --expired yes", errUsage)
			}
			return nil
		}},
		"compact": {"rewrite the database without free pages", func(ctx context.Context, env *cliEnv, args []string) error {
			st, _, _, err := openDB(env, "compact", args, nil)
			if err != nil {
				return err
			}
			defer st.Close()
			before, _ := st.Stats(ctx)
			t := time.Now()
			if err := st.Compact(ctx, ""); err != nil {
				return err
			}
			after, _ := st.Stats(ctx)
			fmt.Fprintf(env.stdout, "compacted %s: %d -> %d bytes in %v\n", st.Path(), before.FileSize, after.FileSize, time.Since(t).Round(time.Millisecond))
			return nil
		}},
	})}
}

// dbStats is `db stats`'s report: the store's figures and how many stored
// templates belong to a model the agent no longer runs (after an embedder
// upgrade: they are never matched again and age out with retention).
type dbStats struct {
	store.Stats
	// TemplateModel is the tag of the templates the agent makes now.
	TemplateModel string `json:"template_model,omitempty"`
	// TemplatesNotLoaded counts stored templates of any other tag.
	TemplatesNotLoaded *int `json:"templates_not_loaded,omitempty"`
	// TemplateModelError says why the current tag is unknown (no models).
	TemplateModelError string `json:"template_model_error,omitempty"`
}

// currentTemplateModel is the template tag the agent's embedder gives
// (vision.TemplateShape: no network is loaded).
func currentTemplateModel(dir, embedder string) (string, error) {
	man, err := models.LoadManifest(filepath.Join(dir, "manifest.yaml"))
	if err != nil {
		return "", err
	}
	if embedder == "" {
		embedder = man.Pipeline.Embedder
	}
	md, ok := man.Find(embedder)
	if !ok {
		return "", fmt.Errorf("embedder %q is not in %s", embedder, filepath.Join(dir, "manifest.yaml"))
	}
	_, tag, err := vision.TemplateShape(dir, md)
	return tag, err
}
