package dbcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

func TestDBCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	st, err := store.Open(path, store.Options{DeviceID: "atm-9"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i, id := range []string{"p-a", "p-a", "p-b"} {
		_, err := st.CommitVisit(context.Background(), record.Commit{
			Identities: []record.Identity{{ID: id, Status: "pending"}},
			Visit: &visit.Visit{Time: now.Add(time.Duration(i) * time.Second), IdentityID: id,
				Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: []float32{1, 0}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		env := &cli.Env{Prog: "atm-agent", Stdout: &out, Stderr: &out, Log: slog.New(slog.DiscardHandler)}
		err := Command().Exec(context.Background(), env, append(args, "--db", path))
		return out.String(), err
	}
	out, err := run("stats")
	if err != nil {
		t.Fatal(err)
	}
	var s store.Stats
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.VisitSeq != 3 || s.DeviceID != "atm-9" {
		t.Fatalf("stats %q: %v", out, err)
	}
	out, err = run("export")
	if err != nil || strings.Count(out, `"type":"visit"`) != 3 || strings.Contains(out, `"embedding":`) {
		t.Fatalf("export (%v): %s", err, out)
	}
	// Templates into a file the shell made 0644: a new file is narrowed to
	// 0600, one that holds data already is refused and left as it was.
	toFile := func(name, content string) (string, error) {
		t.Helper()
		file := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(file, 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		var errb bytes.Buffer
		env := &cli.Env{Prog: "atm-agent", Stdout: f, Stderr: &errb, Log: slog.New(slog.DiscardHandler)}
		err = Command().Exec(context.Background(), env, []string{"export", "--embeddings", "yes", "--db", path})
		f.Close()
		return file, err
	}
	file, err := toFile("new.jsonl", "")
	if fi, serr := os.Stat(file); err != nil || serr != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("export --embeddings yes into a new 0644 file: %v, mode %v", err, fi.Mode())
	}
	if b, _ := os.ReadFile(file); !strings.Contains(string(b), `"embedding":`) {
		t.Fatalf("export --embeddings yes wrote no templates: %s", b)
	}
	file, err = toFile("old.jsonl", "earlier data\n")
	if b, _ := os.ReadFile(file); err == nil || !strings.Contains(err.Error(), "umask 077") || string(b) != "earlier data\n" {
		t.Fatalf("export --embeddings yes into a used 0644 file: %v, content %q", err, b)
	}
	if out, err = run("purge", "--identity", "p-a"); err != nil || !strings.Contains(out, "2 visits") {
		t.Fatalf("purge: %v %s", err, out)
	}
	if _, err = run("purge"); err == nil {
		t.Fatal("purge without a target accepted")
	}
	if out, err = run("compact"); err != nil || !strings.Contains(out, "compacted") {
		t.Fatalf("compact: %v %s", err, out)
	}
	out, _ = run("export")
	if strings.Count(out, `"type":"visit"`) != 1 {
		t.Fatalf("after purge: %s", out)
	}
}

// After an embedder upgrade, `db stats` says how many stored templates
// belong to a model the agent no longer runs.
func TestDBStatsTemplatesOfOtherModels(t *testing.T) {
	dir := testenv.ModelsDir(t)
	tag, err := currentTemplateModel(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.db")
	st, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i, m := range []string{"old-embedder", "old-embedder", tag} {
		_, err := st.CommitVisit(context.Background(), record.Commit{Visit: &visit.Visit{Time: now.Add(time.Duration(i) * time.Second),
			Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Model: m, Embedding: []float32{1, 0}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	var out bytes.Buffer
	env := &cli.Env{Prog: "atm-agent", Stdout: &out, Stderr: &out, Log: slog.New(slog.DiscardHandler)}
	if err := Command().Exec(context.Background(), env, []string{"stats", "--db", path, "--models-dir", dir}); err != nil {
		t.Fatal(err)
	}
	var s dbStats
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if s.TemplateModel != tag || s.TemplatesNotLoaded == nil || *s.TemplatesNotLoaded != 2 || s.Templates["old-embedder"] != 2 || s.Templates[tag] != 1 {
		t.Errorf("stats: %s", out.String())
	}
	// Without a models dir the counts are still there, with the reason the
	// comparison is missing.
	out.Reset()
	if err := Command().Exec(context.Background(), env, []string{"stats", "--db", path, "--models-dir", t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"template_model_error"`) || strings.Contains(out.String(), "templates_not_loaded") {
		t.Errorf("stats without models: %s", out.String())
	}
}

// Operator commands on a damaged, missing or credential-keyed store.
func TestDBCommandsOperator(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.db")
	keyFile := filepath.Join(dir, "store.key")
	if err := os.WriteFile(keyFile, bytes.Repeat([]byte{5}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	key, _ := store.LoadKey(keyFile)
	st, err := store.Open(path, store.Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		_, err := st.CommitVisit(context.Background(), record.Commit{
			Identities: []record.Identity{{ID: "p-a", Status: "pending"}},
			Visit: &visit.Visit{Time: time.Now().Add(time.Duration(i) * time.Second), IdentityID: "p-a",
				Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: []float32{1, 0}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("store:\n  path: "+path+"\n  key_file: credential:store-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	run := func(args ...string) (string, int) {
		var out bytes.Buffer
		code := cli.Main(context.Background(), "atm-agent", map[string]cli.Command{"db": Command()}, append([]string{"db"}, args...), &out, &out)
		return out.String(), code
	}

	// A typo'd path: an error, and no file made.
	typo := filepath.Join(dir, "typo.db")
	for _, c := range []string{"stats", "export", "compact", "check"} {
		if out, code := run(c, "--db", typo); code == 0 {
			t.Fatalf("%s on a missing file: exit 0: %s", c, out)
		}
		if _, err := os.Stat(typo); err == nil {
			t.Fatalf("%s created %s", c, typo)
		}
	}
	// The documented credential: key: reading commands work without it;
	// those that need it say how to give it, and take --key-file.
	if out, code := run("stats", "--config", cfg); code != 0 || !strings.Contains(out, `"key_check": true`) {
		t.Fatalf("stats with a credential key outside the service: %d %s", code, out)
	}
	if out, code := run("compact", "--config", cfg); code == 0 || !strings.Contains(out, "--key-file") {
		t.Fatalf("compact without the credential: %d %s", code, out)
	}
	if out, code := run("compact", "--config", cfg, "--key-file", keyFile); code != 0 {
		t.Fatalf("compact --key-file: %d %s", code, out)
	}
	if out, code := run("check", "--config", cfg, "--key-file", keyFile); code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("check: %d %s", code, out)
	}

	// Damage one byte of a template: check names it and exits 65; salvage
	// keeps the 19 other visits with their templates.
	b, _ := os.ReadFile(path)
	rep, _ := store.CheckFile(context.Background(), path, store.CheckOptions{Key: key})
	if !rep.OK() {
		t.Fatal(rep.Problems)
	}
	damaged := filepath.Join(dir, "damaged.db")
	os.WriteFile(damaged, damageTemplate(t, b), 0o600)
	out, code := run("check", "--db", damaged, "--key-file", keyFile)
	if code != cli.ExitStoreDamaged || !strings.Contains(out, "damaged: bucket templates") {
		t.Fatalf("check of a damaged store: %d %s", code, out)
	}
	out, code = run("salvage", "--db", damaged, "--key-file", keyFile, "-o", filepath.Join(dir, "new.db"))
	if code != 0 || !strings.Contains(out, "visits kept 20, skipped 0; templates lost 1") {
		t.Fatalf("salvage: %d %s", code, out)
	}
	if out, code := run("check", "--db", filepath.Join(dir, "new.db"), "--key-file", keyFile); code != 0 {
		t.Fatalf("check of the salvaged store: %d %s", code, out)
	}

	// Key rotation as docs/operations.md does it: a new key file, rekey
	// with the current one, then only the new key opens the store.
	newKeyFile := filepath.Join(dir, "store.key.new")
	if err := os.WriteFile(newKeyFile, randomKey(t), 0o600); err != nil { // a new key must look random
		t.Fatal(err)
	}
	if out, code := run("rekey", "--config", cfg, "--new-key-file", newKeyFile); code == 0 || !strings.Contains(out, "--key-file") {
		t.Fatalf("rekey without the current key: %d %s", code, out)
	}
	if out, code := run("rekey", "--config", cfg, "--key-file", keyFile); code != cli.ExitUsage || !strings.Contains(out, "--new-key-file") {
		t.Fatalf("rekey without --new-key-file: %d %s", code, out)
	}
	if out, code := run("rekey", "--config", cfg, "--key-file", newKeyFile, "--new-key-file", newKeyFile); code == 0 {
		t.Fatalf("rekey with a wrong current key: exit 0: %s", out)
	}
	if out, code := run("rekey", "--config", cfg, "--key-file", keyFile, "--new-key-file", newKeyFile); code != 0 || !strings.Contains(out, "20 templates encrypted") {
		t.Fatalf("rekey: %d %s", code, out)
	}
	// A wrong key is no damage: exit 1 and the key named, not exit 65 and
	// "damaged", which sent operators to salvage a sound file.
	if out, code := run("check", "--config", cfg, "--key-file", keyFile); code != cli.ExitFailure || !strings.Contains(out, "not this store's key") ||
		!strings.Contains(out, "encryption key does not match") || strings.Contains(out, "damaged") || strings.Contains(out, "no key given") {
		t.Fatalf("check with the old key after rekey: %d %s", code, out)
	}
	if out, code := run("check", "--config", cfg, "--key-file", newKeyFile); code != 0 || strings.Contains(out, "not authenticated") {
		t.Fatalf("check with the new key after rekey: %d %s", code, out)
	}
}

// damageTemplate flips a byte inside the last sealed template of the file.
func damageTemplate(t *testing.T, b []byte) []byte {
	t.Helper()
	out := bytes.Clone(b)
	// Templates are the only records holding 2 float32 sealed: 1 flag
	// byte, 12 nonce, 8 ciphertext, 16 tag = 37 bytes after a 16-byte key.
	// Find a leaf element of value size 37 and flip its last byte.
	for off := 4096; off+16 <= len(out); off += 4096 {
		if out[off+8] != 0x02 { // leaf page
			continue
		}
		n := int(out[off+10]) | int(out[off+11])<<8
		for e := range n {
			el := off + 16 + 16*e
			pos := int(le32(out[el+4:]))
			ks, vs := int(le32(out[el+8:])), int(le32(out[el+12:]))
			if ks == 16 && vs == 37 && out[el+pos+ks] == 1 {
				out[el+pos+ks+vs-1] ^= 0xff
				return out
			}
		}
	}
	t.Fatal("no template found")
	return nil
}

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
