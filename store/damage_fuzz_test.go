package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/periocular/atm-agent/store/record"
)

var fuzzBase struct {
	once sync.Once
	b    []byte
}

// fuzzStore is a small real store (30 visits, 3 identities) as bytes.
func fuzzStore(f *testing.F) []byte {
	fuzzBase.once.Do(func() {
		p := filepath.Join(f.TempDir(), "base.db")
		s, err := Open(p, Options{})
		if err != nil {
			f.Fatal(err)
		}
		for i := range 30 {
			v := faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), fmt.Sprint("id", i%3))
			v.Embedding = emb(float32(i), 64)
			if _, err := s.CommitVisit(context.Background(), record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}}}); err != nil {
				f.Fatal(err)
			}
		}
		s.Close()
		fuzzBase.b, _ = os.ReadFile(p)
	})
	return fuzzBase.b
}

// FuzzOpenDamaged damages a real store at fuzzer-chosen places (up to
// four byte XORs and a truncation) and opens it: never a panic; either
// ErrDamaged with the file unchanged, or a non-empty store whose every read
// works; CheckFile and Salvage never panic either. The seeds run in every
// `go test`; `go test ./store -fuzz FuzzOpenDamaged` explores further.
func FuzzOpenDamaged(f *testing.F) {
	base := fuzzStore(f)
	ps := 4096
	f.Add(uint32(0), byte(0), uint32(0), byte(0), uint32(len(base)))            // intact
	f.Add(uint32(2*ps+8), byte(0x7f), uint32(0), byte(0), uint32(len(base)))    // a page type
	f.Add(uint32(3*ps+10), byte(0x03), uint32(0), byte(0), uint32(len(base)))   // a count
	f.Add(uint32(16), byte(0x10), uint32(ps+16), byte(0x10), uint32(len(base))) // both metas
	f.Add(uint32(0), byte(0), uint32(0), byte(0), uint32(len(base)/2))          // truncated
	f.Add(uint32(5*ps+200), byte(0x04), uint32(6*ps+900), byte(0x40), uint32(len(base)))
	f.Fuzz(func(t *testing.T, o1 uint32, x1 byte, o2 uint32, x2 byte, size uint32) {
		b := append([]byte(nil), base...)
		b[int(o1)%len(b)] ^= x1
		b[int(o2)%len(b)] ^= x2
		b = b[:int(size)%(len(b)+1)]
		p := filepath.Join(t.TempDir(), "agent.db")
		os.WriteFile(p, b, 0o600)
		s, err := Open(p, Options{Timeout: time.Second, Now: func() time.Time { return t0.Add(time.Hour) }})
		if err != nil {
			if after, _ := os.ReadFile(p); string(after) != string(b) {
				t.Fatal("refused, but the file changed")
			}
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("not ErrDamaged: %v", err)
			}
			if _, err := CheckFile(context.Background(), p, CheckOptions{BoltCheck: true}); err != nil {
				t.Fatal(err)
			}
			_, _ = Salvage(context.Background(), p, p+".new", Options{Timeout: time.Second})
			return
		}
		defer s.Close()
		ctx := context.Background()
		if st, err := s.Stats(ctx); err != nil || (len(b) > 0 && st.Buckets[string(bVisits)] == 0) {
			t.Fatalf("opened: stats %v, %d visits", err, st.Buckets[string(bVisits)])
		}
		if err := s.Export(ctx, io.Discard, ExportOptions{Embeddings: true}); err != nil {
			t.Fatalf("opened, export: %v", err)
		}
		for i := range 3 {
			if _, err := s.VisitsSince(ctx, fmt.Sprint("id", i), time.Time{}); err != nil {
				t.Fatalf("opened, visits since: %v", err)
			}
		}
	})
}
