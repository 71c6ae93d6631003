package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/visit"
)

func TestDBCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	st, err := store.Open(path, store.Options{DeviceID: "atm-9"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i, id := range []string{"p-a", "p-a", "p-b"} {
		_, err := st.CommitVisit(context.Background(), store.Commit{
			Identities: []store.Identity{{ID: id, Status: "pending"}},
			Visit: &visit.Visit{Time: now.Add(time.Duration(i) * time.Second), IdentityID: id,
				Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: []float32{1, 0}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	st.Close()

	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		env := &cliEnv{stdout: &out, stderr: &out, log: slog.New(slog.DiscardHandler)}
		err := commands["db"].run(context.Background(), env, append(args, "--db", path))
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
	dir := builtModels(t)
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
		_, err := st.CommitVisit(context.Background(), store.Commit{Visit: &visit.Visit{Time: now.Add(time.Duration(i) * time.Second),
			Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Model: m, Embedding: []float32{1, 0}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	var out bytes.Buffer
	env := &cliEnv{stdout: &out, stderr: &out, log: slog.New(slog.DiscardHandler)}
	if err := commands["db"].run(context.Background(), env, []string{"stats", "--db", path, "--models-dir", dir}); err != nil {
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
	if err := commands["db"].run(context.Background(), env, []string{"stats", "--db", path, "--models-dir", t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"template_model_error"`) || strings.Contains(out.String(), "templates_not_loaded") {
		t.Errorf("stats without models: %s", out.String())
	}
}
