package store

import (
	"context"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/store/record"
)

// TestCompactReopenWaitsForAnotherReader: an in-place compaction closes
// the file and opens the new one; in between, another process (here a
// read-only bbolt open, as `db export` does) may take the file's lock and
// hold it longer than one lock timeout. The compaction waits for it and the
// store stays open; before, the first timeout left the agent's store
// closed until a restart.
func TestCompactReopenWaitsForAnotherReader(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t, Options{Timeout: 200 * time.Millisecond})
	v := crashVisit(1)
	if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID}}}); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	s.testHook = func(stage string) error {
		if stage != "compact reopen" {
			return nil
		}
		other, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			t.Errorf("the other reader could not open the file: %v", err)
			close(released)
			return nil
		}
		go func() { // held for about three of the store's lock timeouts
			time.Sleep(600 * time.Millisecond)
			other.Close()
			close(released)
		}()
		return nil
	}
	if err := s.Compact(ctx, ""); err != nil {
		t.Fatalf("compact while another reader held the file: %v", err)
	}
	<-released
	s.testHook = nil
	if _, err := s.Visit(ctx, v.ID); err != nil {
		t.Fatalf("store closed after the compaction: %v", err)
	}
}
