// Package dbcmd is the `db` command group: inspect, check, salvage, purge,
// compact, encrypt and rekey the agent's store (docs/operations.md).
package dbcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/cli/modelscmd"
	"github.com/periocular/atm-agent/internal/paths"
	"github.com/periocular/atm-agent/internal/regfile"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
)

// dbMode says how a db command opens the store.
type dbMode int

const (
	dbRead  dbMode = iota // read-only: never creates, never writes
	dbWrite               // read-write; the file must exist
)

// dbFlags are the flags every db command takes.
type dbFlags struct {
	config, db, keyFile *string
}

func addDBFlags(fs interface {
	String(string, string, string) *string
}) dbFlags {
	return dbFlags{
		config:  fs.String("config", paths.Config(), "agent config file"),
		db:      fs.String("db", "", "database file (overrides the config's store.path)"),
		keyFile: fs.String("key-file", "", "encryption key file (overrides store.key_file; for a credential:NAME key give the credential's source file, e.g. /etc/atm-agent/store.key)"),
	}
}

// storeConfig resolves the store section from --config / --db.
func (f dbFlags) storeConfig() (store.Config, error) {
	scfg, _, err := f.configs()
	return scfg, err
}

// configs also returns the agent config it read (nil when only --db was
// given and the config could not be read).
func (f dbFlags) configs() (store.Config, *daemon.Config, error) {
	scfg := store.DefaultConfig()
	var cfg *daemon.Config
	if *f.db == "" || *f.config != paths.Config() {
		c, err := daemon.LoadConfig(*f.config)
		if err != nil && *f.db == "" {
			return scfg, nil, err
		}
		if err == nil {
			scfg, cfg = c.Store, &c
		}
	}
	if *f.db != "" {
		scfg.Path = *f.db
	}
	return scfg, cfg, nil
}

// key loads the encryption key: --key-file, else store.key_file. A
// credential:NAME key exists only inside the service (systemd sets
// CREDENTIALS_DIRECTORY for the unit's processes alone); outside it the
// command says how to give the key instead. need=false (commands that read
// no template) goes on without a key.
func (f dbFlags) key(scfg store.Config, need bool) ([]byte, error) {
	if *f.keyFile != "" {
		return store.LoadKey(*f.keyFile)
	}
	if scfg.KeyFile == "" {
		return nil, nil
	}
	if strings.HasPrefix(scfg.KeyFile, "credential:") && os.Getenv("CREDENTIALS_DIRECTORY") == "" {
		if !need {
			return nil, nil
		}
		return nil, fmt.Errorf("store.key_file is %q, a systemd credential only the service sees (CREDENTIALS_DIRECTORY is not set here): give this command the credential's source file, e.g. --key-file /etc/atm-agent/store.key (the unit's LoadCredential=)", scfg.KeyFile)
	}
	return store.LoadKey(scfg.KeyFile)
}

// options builds store options without loading store.key_file itself.
func (f dbFlags) options(env *cli.Env, scfg store.Config, needKey bool) (store.Options, error) {
	key, err := f.key(scfg, needKey)
	if err != nil {
		return store.Options{}, err
	}
	scfg.KeyFile = ""
	o, err := scfg.Options()
	if err != nil {
		return o, err
	}
	o.Key, o.Logger = key, env.Log
	return o, nil
}

// openDB opens the store named by --config (or --db) for an admin command:
// read-only commands never create or write; none creates a missing file.
// The daemon holds the file lock: stop it first (the wait is bounded by
// store.lock_timeout, and ends on SIGTERM or SIGINT: ctx).
func openDB(ctx context.Context, env *cli.Env, name string, args []string, mode dbMode, needKey func() bool, extra func(fsAdd func(string, string, string) *string)) (*store.Store, error) {
	st, _, err := openDBConfig(ctx, env, name, args, mode, needKey, extra, nil)
	return st, err
}

// openDBConfig is openDB that also returns the agent config it read (nil
// when only --db was given and the config could not be read). before, when
// set, runs after the flags are parsed and the key is loaded, before the
// store is opened: an error from it leaves the file untouched.
func openDBConfig(ctx context.Context, env *cli.Env, name string, args []string, mode dbMode, needKey func() bool, extra func(fsAdd func(string, string, string) *string), before func(o store.Options) error) (*store.Store, *daemon.Config, error) {
	fs := cli.NewFlags(env, "db "+name, "db "+name+" [--config FILE | --db PATH] [--key-file FILE] ...")
	f := addDBFlags(fs)
	if extra != nil {
		extra(fs.String)
	}
	if err := cli.ParseFlags(fs, args); err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("%w: unexpected argument %q", cli.ErrUsage, fs.Arg(0))
	}
	scfg, cfg, err := f.configs()
	if err != nil {
		return nil, nil, err
	}
	need := mode == dbWrite
	if needKey != nil {
		need = needKey()
	}
	o, err := f.options(env, scfg, need)
	if err != nil {
		return nil, nil, err
	}
	if before != nil {
		if err := before(o); err != nil {
			return nil, nil, err
		}
	}
	o.NoCreate, o.ReadOnly = true, mode == dbRead
	st, err := store.OpenContext(ctx, scfg.Path, o)
	if err != nil {
		return nil, nil, storeOpenError(err)
	}
	if p := st.CompactedAtOpen(); p != nil {
		// A rekey or encrypt stopped before its compaction: the open
		// finished it first (the store's log says so too).
		fmt.Fprintf(env.Stdout, "%s: finished the compaction an interrupted `db %s` left pending (since %s): no %s left in the file\n",
			st.Path(), p.Reason, p.Since.UTC().Format(time.RFC3339), p.Leftovers())
	}
	return st, cfg, nil
}

// storeOpenError adds the hint that fits: a held lock means the agent is
// running; a missing key can be given with --key-file.
func storeOpenError(err error) error {
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return fmt.Errorf("%w (is the agent running? stop it first)", err)
	case errors.Is(err, store.ErrKeyRequired):
		return fmt.Errorf("%w (give it with --key-file FILE)", err)
	}
	return err
}

func printJSON(env *cli.Env, v any) error {
	enc := json.NewEncoder(env.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Command is the db command group.
func Command() cli.Command {
	return cli.Command{Summary: "inspect and maintain the agent database", Subs: map[string]cli.Command{
		"stats": {Summary: "print database statistics (JSON; read-only), with the stored templates of models the agent no longer runs", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			var modelsDir, embedder *string
			st, cfg, err := openDBConfig(ctx, env, "stats", args, dbRead, nil, func(add func(string, string, string) *string) {
				modelsDir = add("models-dir", "", "models dir holding manifest.yaml (default: the config's models.dir)")
				embedder = add("embedder", "", "the embedder the agent runs (default: the config's models.embedder, else the manifest's pipeline)")
			}, nil)
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
				*modelsDir = modelscmd.DefaultDir()
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
			return printJSON(env, out)
		}},
		"export": {Summary: "write the database as JSON lines (read-only; no templates unless --embeddings yes)", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			var emb *string
			st, err := openDB(ctx, env, "export", args, dbRead, func() bool { return *emb == "yes" }, func(add func(string, string, string) *string) {
				emb = add("embeddings", "no", "include embeddings (biometric templates): yes or no")
			})
			if err != nil {
				return err
			}
			defer st.Close()
			if *emb != "yes" && *emb != "no" {
				return fmt.Errorf("%w: --embeddings wants yes or no", cli.ErrUsage)
			}
			if *emb == "yes" {
				if err := privateOutput(env); err != nil {
					return err
				}
			}
			return st.Export(ctx, env.Stdout, store.ExportOptions{Embeddings: *emb == "yes"})
		}},
		"purge": {Summary: "delete one identity, its visits and alerts (--identity ID), or expired data (--expired yes); the file is compacted so nothing deleted stays in it", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			var id, expired *string
			st, err := openDB(ctx, env, "purge", args, dbWrite, nil, func(add func(string, string, string) *string) {
				id = add("identity", "", "identity id to delete")
				expired = add("expired", "no", "apply the retention window now: yes or no")
			})
			if err != nil {
				return err
			}
			defer st.Close()
			switch {
			case *id != "" && *expired == "no":
				n, err := st.PurgeIdentity(ctx, *id) // compacts
				if err != nil {
					return err
				}
				fmt.Fprintf(env.Stdout, "identity %s deleted with %d visits; file compacted\n", *id, n)
			case *id == "" && *expired == "yes":
				n, err := st.PurgeExpired(ctx) // compacts when it removed visits
				if err != nil {
					return err
				}
				if n == 0 {
					if err := st.Compact(ctx, ""); err != nil {
						return err
					}
				}
				fmt.Fprintf(env.Stdout, "%d visits older than %v deleted; file compacted\n", n, st.Retention())
			default:
				return fmt.Errorf("%w: give --identity ID or --expired yes", cli.ErrUsage)
			}
			return nil
		}},
		"compact": {Summary: "rewrite the database without free pages (keeps the file's owner and mode)", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			st, err := openDB(ctx, env, "compact", args, dbWrite, nil, nil)
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
			fmt.Fprintf(env.Stdout, "compacted %s: %d -> %d bytes in %v\n", st.Path(), before.FileSize, after.FileSize, time.Since(t).Round(time.Millisecond))
			return nil
		}},
		"encrypt": {Summary: "seal every plaintext template with the key, then compact (needs the key)", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			// The key is adopted here (a plaintext store takes it at the
			// open): one that is not random is refused before the open.
			st, _, err := openDBConfig(ctx, env, "encrypt", args, dbWrite, nil, nil, func(o store.Options) error {
				if o.Key == nil {
					return nil // the open or Encrypt says a key is needed
				}
				if err := store.CheckNewKey(o.Key); err != nil {
					return fmt.Errorf("%w (a store already sealed with this key: rotate it with atm-agent db rekey --new-key-file NEW)", err)
				}
				return nil
			})
			if err != nil {
				return err
			}
			defer st.Close()
			n, err := st.Encrypt(ctx)
			if err != nil {
				return err
			}
			s, err := st.Stats(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "%d templates encrypted; %d encrypted, %d plaintext; file compacted\n", n, s.TemplatesEncrypted, s.TemplatesPlain)
			return nil
		}},
		"rekey": {Summary: "rotate the encryption key: re-encrypt every template with --new-key-file, then compact (needs the current key)", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			var newKeyFile *string
			var newKey []byte
			defer func() { clear(newKey) }()
			// The new key is read and judged before the store is opened:
			// a refused one leaves the file untouched.
			st, _, err := openDBConfig(ctx, env, "rekey", args, dbWrite, nil, func(add func(string, string, string) *string) {
				newKeyFile = add("new-key-file", "", "the new key: 32 raw bytes or 64 hex characters, e.g. (umask 077; head -c 32 /dev/urandom > /etc/atm-agent/store.key.new)")
			}, func(o store.Options) error {
				if *newKeyFile == "" {
					return fmt.Errorf("%w: give --new-key-file FILE", cli.ErrUsage)
				}
				var err error
				if newKey, err = store.LoadKey(*newKeyFile); err != nil {
					return err
				}
				if err := store.CheckNewKey(newKey); err != nil {
					return fmt.Errorf("--new-key-file %s: %w; the store is unchanged", *newKeyFile, err)
				}
				if o.Key != nil && bytes.Equal(o.Key, newKey) {
					return fmt.Errorf("--new-key-file %s: %w (the same bytes as --key-file): nothing would be rotated; make a new key with %s; the store is unchanged", *newKeyFile, store.ErrSameKey, store.KeyHint)
				}
				return nil
			})
			if err != nil {
				return err
			}
			defer st.Close()
			n, err := st.Rekey(ctx, newKey)
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "%d templates encrypted with %s; file compacted; the store now opens only with that key: put it where store.key_file reads it (the package: mv %s /etc/atm-agent/store.key)\n", n, *newKeyFile, *newKeyFile)
			return nil
		}},
		"check": {Summary: "check the file: pages, bbolt's consistency check, every record, the indexes (read-only; exit 65 when damaged)", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			fs := cli.NewFlags(env, "db check", "db check [--config FILE | --db PATH] [--key-file FILE] [--json]")
			f := addDBFlags(fs)
			asJSON := fs.Bool("json", false, "print the report as JSON")
			if err := cli.ParseFlags(fs, args); err != nil {
				return err
			}
			scfg, err := f.storeConfig()
			if err != nil {
				return err
			}
			key, err := f.key(scfg, false)
			if err != nil {
				return err
			}
			rep, err := store.CheckFile(ctx, scfg.Path, store.CheckOptions{Key: key, BoltCheck: true, Timeout: scfg.LockTimeout})
			if err != nil {
				return storeOpenError(err)
			}
			if *asJSON {
				if err := printJSON(env, rep); err != nil {
					return err
				}
			} else {
				printCheck(env, rep, key != nil)
			}
			if !rep.OK() {
				return &store.DamagedError{Path: rep.Path, Problems: rep.Problems, More: rep.More}
			}
			if rep.WrongKey {
				// Not exit 65: that sends an operator to salvage a sound file.
				return fmt.Errorf("%s: %w: the file's structure and records are sound, its templates were not verified; check with the key it was encrypted with", rep.Path, store.ErrWrongKey)
			}
			return nil
		}},
		"salvage": {Summary: "copy every readable record of a damaged database into a new file (-o); the damaged file is only read", Run: func(ctx context.Context, env *cli.Env, args []string) error {
			fs := cli.NewFlags(env, "db salvage", "db salvage [--config FILE | --db PATH] [--key-file FILE] [-o NEW]")
			f := addDBFlags(fs)
			out := fs.String("o", "", "the new database file (default: PATH.salvaged-<time>); must not exist")
			if err := cli.ParseFlags(fs, args); err != nil {
				return err
			}
			scfg, err := f.storeConfig()
			if err != nil {
				return err
			}
			o, err := f.options(env, scfg, true)
			if err != nil {
				return err
			}
			dst := *out
			if dst == "" {
				dst = scfg.Path + ".salvaged-" + time.Now().UTC().Format("20060102T150405Z")
			}
			rep, err := store.Salvage(ctx, scfg.Path, dst, o)
			if err != nil {
				return storeOpenError(err)
			}
			fmt.Fprintf(env.Stdout, "salvaged %s into %s\n", rep.Source, rep.Dest)
			fmt.Fprintf(env.Stdout, "  visits kept %d, skipped %d; templates lost %d; identities recreated %d; unreadable pages %d\n",
				rep.Kept["visits"], rep.Skipped["visits"], rep.TemplatesLost, rep.IdentitiesRecreated, rep.BadPages)
			for _, b := range []string{"identities", "alerts", "outbox", "templates", "constraints"} {
				fmt.Fprintf(env.Stdout, "  %-10s kept %d, skipped %d\n", b, rep.Kept[b], rep.Skipped[b])
			}
			for _, w := range rep.Warnings {
				fmt.Fprintf(env.Stdout, "  warning: %s\n", w)
			}
			for i, p := range rep.Problems {
				if i == 20 {
					fmt.Fprintf(env.Stdout, "  ... %d more\n", len(rep.Problems)-20+rep.More)
					break
				}
				fmt.Fprintf(env.Stdout, "  skipped: %s\n", p)
			}
			fmt.Fprintf(env.Stdout, "the damaged file is unchanged; to use the new one (agent stopped):\n  mv %s %s.damaged && mv %s %s\n", rep.Source, rep.Source, rep.Dest, rep.Source)
			return nil
		}},
	}}
}

// printCheck prints the report; keyGiven: a key was given, so templates
// not verified means the wrong key, which the problems say.
func printCheck(env *cli.Env, rep *store.CheckReport, keyGiven bool) {
	fmt.Fprintf(env.Stdout, "%s: %d bytes, %d pages of %d bytes, txid %d\n", rep.Path, rep.FileSize, rep.Pages, rep.PageSize, rep.TxID)
	for _, b := range []string{"visits", "templates", "identities", "alerts", "outbox"} {
		fmt.Fprintf(env.Stdout, "  %-10s %d records\n", b, rep.Records[b])
	}
	if !rep.TemplatesVerified && !keyGiven {
		fmt.Fprintln(env.Stdout, "  encrypted templates not authenticated (no key given: --key-file)")
	}
	for _, w := range rep.Warnings {
		fmt.Fprintf(env.Stdout, "warning: %s\n", w)
	}
	if rep.WrongKey {
		fmt.Fprintln(env.Stdout, "  the key given is not this store's key (its key check and every template refuse it): templates not verified")
	}
	if rep.OK() && rep.WrongKey {
		fmt.Fprintf(env.Stdout, "structure ok (bbolt check: %v); templates not verified\n", rep.BoltCheck)
		return
	}
	if rep.OK() {
		fmt.Fprintf(env.Stdout, "ok (bbolt check: %v)\n", rep.BoltCheck)
		return
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(env.Stdout, "damaged: %s\n", p)
	}
	if rep.More > 0 {
		fmt.Fprintf(env.Stdout, "damaged: ... %d more\n", rep.More)
	}
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

// privateOutput keeps biometric templates from landing in a file other
// users can read: the shell creates `> FILE` with its umask (0644 as a
// rule) before the command runs. A new, empty file is narrowed to 0600 (and
// said on stderr); a file that already holds data is refused untouched.
// Pipes and terminals pass, with a warning on stderr: what reads them (a
// `| gzip > FILE`) makes its file with the shell's umask, out of reach.
func privateOutput(env *cli.Env) error {
	f, ok := env.Stdout.(*os.File)
	if !ok {
		warnUnrestricted(env, "not a file")
		return nil
	}
	fi, err := f.Stat()
	if err != nil {
		warnUnrestricted(env, "of unknown kind")
		return nil
	}
	if !fi.Mode().IsRegular() {
		warnUnrestricted(env, regfile.Kind(fi.Mode()))
		return nil
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if fi.Size() > 0 {
		return fmt.Errorf("--embeddings yes: the output file has mode %#o and already holds data: other users could read the templates; write to a new file, e.g. (umask 077; atm-agent db export --embeddings yes > FILE)", fi.Mode().Perm())
	}
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("--embeddings yes: the output file has mode %#o and cannot be narrowed to 0600: %w", fi.Mode().Perm(), err)
	}
	fmt.Fprintf(env.Stderr, "export: output file mode %#o narrowed to 0600 (it holds biometric templates)\n", fi.Mode().Perm())
	return nil
}

// warnUnrestricted says on stderr that templates go where the command
// cannot set the permissions (the export goes on: exit 0).
func warnUnrestricted(env *cli.Env, kind string) {
	fmt.Fprintf(env.Stderr, "export: warning: --embeddings yes writes biometric templates to standard output, %s, whose permissions atm-agent cannot set: "+
		"a file made from it (e.g. `| gzip > FILE`) gets the shell's umask, often 0644 (readable by every local user); "+
		"run it with umask 077, e.g. (umask 077; atm-agent db export --embeddings yes | gzip > FILE), or redirect to a file (> FILE), which is narrowed to 0600\n", kind)
}
