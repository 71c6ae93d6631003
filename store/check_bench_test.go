package store

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/periocular/atm-agent/store/record"
)

// BenchmarkOpenCheck: Open of a 10,000-visit store (128-dim templates,
// 500 identities), which checks every page and record before bbolt maps
// the file, and CheckFile with bbolt's Tx.Check (`db check`).
//
//	CGO_ENABLED=0 go test ./store -run '^$' -bench OpenCheck -benchtime 5x
func BenchmarkOpenCheck(b *testing.B) {
	path := filepath.Join(b.TempDir(), "agent.db")
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for j := range 10000 {
		v := faceVisit(fmt.Sprint("v", j), t0.Add(time.Duration(j)*time.Second), fmt.Sprint("id", j%500))
		v.Embedding = emb(float32(j), 128)
		if _, err := s.CommitVisit(ctx, record.Commit{Visit: v, Identities: []record.Identity{{ID: v.IdentityID, Status: "pending"}}}); err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	b.Run("open", func(b *testing.B) {
		for range b.N {
			s, err := Open(path, Options{})
			if err != nil {
				b.Fatal(err)
			}
			s.Close()
		}
		b.ReportMetric(float64(fileSize(path))/(1<<20), "MiB")
	})
	b.Run("dbcheck", func(b *testing.B) {
		for range b.N {
			rep, err := CheckFile(ctx, path, CheckOptions{BoltCheck: true})
			if err != nil || !rep.OK() {
				b.Fatal(err, rep.Problems)
			}
		}
	})
}
