package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/periocular/atm-agent/store"
)

// openDB opens the store named by --config (or --db) for an admin command.
// The daemon holds the file lock: stop it first (the wait is bounded by
// store.lock_timeout).
func openDB(env *cliEnv, name string, args []string, extra func(fsAdd func(string, string, string) *string)) (*store.Store, []string, map[string]*string, error) {
	fs := newFlags(env, "db "+name, "db "+name+" [--config FILE | --db PATH] ...")
	cfgPath := fs.String("config", "/etc/atm-agent/config.yaml", "agent config file")
	dbPath := fs.String("db", "", "database file (overrides the config's store.path)")
	opts := map[string]*string{}
	if extra != nil {
		extra(func(n, v, u string) *string { p := fs.String(n, v, u); opts[n] = p; return p })
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, nil, nil, err
	}
	scfg := store.DefaultConfig()
	if *dbPath == "" || *cfgPath != "/etc/atm-agent/config.yaml" {
		c, err := LoadConfig(*cfgPath)
		if err != nil && *dbPath == "" {
			return nil, nil, nil, err
		}
		if err == nil {
			scfg = c.Store
		}
	}
	if *dbPath != "" {
		scfg.Path = *dbPath
	}
	o, err := scfg.Options()
	if err != nil {
		return nil, nil, nil, err
	}
	o.Logger = env.log
	st, err := store.Open(scfg.Path, o)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w (is the agent running? stop it first)", err)
	}
	return st, fs.Args(), opts, nil
}

func init() {
	commands["db"] = command{"inspect and maintain the agent database", subcommands("db", map[string]command{
		"stats": {"print database statistics (JSON)", func(ctx context.Context, env *cliEnv, args []string) error {
			st, _, _, err := openDB(env, "stats", args, nil)
			if err != nil {
				return err
			}
			defer st.Close()
			s, err := st.Stats(ctx)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(env.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(s)
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
