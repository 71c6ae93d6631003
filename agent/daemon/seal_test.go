package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/store/record"
)

// A store whose templates were written before a key was set (an upgrade
// from a version without encryption) has them sealed with the key when
// the agent starts: no plaintext template stays in the file's bytes, free
// pages included, and the visits read back with their templates.
func TestStartSealsPlainTemplates(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.db")
	s, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var plain [][]byte
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := range 20 {
		e := make([]float32, 512)
		for j := range e {
			e[j] = float32(1000 + 512*i + j)
		}
		v := &visit.Visit{ID: fmt.Sprint("v", i), Time: t0.Add(time.Duration(i) * time.Second), Trigger: "gpio",
			Descriptor: visit.Descriptor{Outcome: visit.FaceFound, Embedding: e, Model: "faceplugin", Mask: visit.Unmasked, Quality: 0.7, Frames: 5, Used: 3},
			IdentityID: "id1"}
		if _, err := s.CommitVisit(context.Background(), record.Commit{Visit: v, Identities: []record.Identity{{ID: "id1", Status: "pending"}}}); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4*len(e))
		for j, f := range e {
			binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(f))
		}
		plain = append(plain, b)
	}
	s.Close()
	inFile := func() int {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range plain {
			if bytes.Contains(b, p) {
				n++
			}
		}
		return n
	}
	if n := inFile(); n != len(plain) {
		t.Fatalf("%d of %d templates in the file before the start: the test needs them in plaintext", n, len(plain))
	}
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(dir, "store.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}

	cfg := DefaultConfig()
	cfg.Models.Dir = testenv.ModelsDir(t)
	cfg.Store.Path, cfg.Store.KeyFile = path, keyFile
	cfg.Trigger = TriggerConfig{}
	cfg.Metrics.Listen = ""
	cfg.fill()
	d, err := NewContext(context.Background(), cfg, Options{Logger: testLog(t), Camera: stillCamera{}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := d.st.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.TemplatesPlain != 0 || st.TemplatesEncrypted != len(plain) {
		t.Errorf("after start: %d templates in plaintext, %d sealed; want 0 and %d", st.TemplatesPlain, st.TemplatesEncrypted, len(plain))
	}
	v, err := d.st.Visit(context.Background(), "v7")
	if err != nil || len(v.Embedding) != 512 || v.Embedding[0] != float32(1000+512*7) {
		t.Errorf("visit v7 after sealing: %v, %d values", err, len(v.Embedding))
	}
	d.Close()
	if n := inFile(); n != 0 {
		t.Errorf("%d templates still in plaintext in the file's bytes after the start", n)
	}
}
