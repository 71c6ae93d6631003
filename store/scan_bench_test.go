package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/store/record"

	bolt "go.etcd.io/bbolt"
)

// rssFileKB is RssFile of this process (file-backed resident pages, which
// is where bbolt's mmap shows up); -1 when /proc is not available.
func rssFileKB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssFile:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return -1
}

// BenchmarkVisitScan stores 10,000 face visits with 384-d templates, one
// transaction per visit as the agent commits them, then measures the bucket
// page bytes and a metadata scan (VisitsBetween over all visits, as the
// periodic summary does) on a freshly opened file: time and RssFile growth
// per visit. RssFile counts every page the kernel maps around a fault
// (fault-around, 64 KB), so it depends on where the visit pages lie in the
// file: "as-written" is the layout of a running agent, "compacted" the one
// after `atm-agent db compact` (buckets written contiguously).
func BenchmarkVisitScan(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "scan.db")
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	fillVisits(b, s, n, 50)
	compacted := filepath.Join(b.TempDir(), "compacted.db")
	if err := s.Compact(ctx, compacted); err != nil {
		b.Fatal(err)
	}
	s.Close()

	for _, tc := range []struct{ name, path string }{{"as-written", path}, {"compacted", compacted}} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := Open(tc.path, Options{})
			if err != nil {
				b.Fatal(err)
			}
			bytesOf := func(name []byte) (alloc, inuse int) {
				_ = s.db.View(func(tx *bolt.Tx) error {
					if bk := tx.Bucket(name); bk != nil {
						st := bk.Stats()
						alloc = st.BranchAlloc + st.LeafAlloc
						inuse = st.BranchInuse + st.LeafInuse
					}
					return nil
				})
				return alloc, inuse
			}
			va, vi := bytesOf(bVisits)
			ta, ti := bytesOf([]byte("templates"))
			s.Close()

			var rss int64
			for b.Loop() {
				b.StopTimer()
				s, err := Open(tc.path, Options{})
				if err != nil {
					b.Fatal(err)
				}
				before := rssFileKB()
				b.StartTimer()
				got, err := s.VisitsBetween(ctx, t0, t0.Add(n*time.Minute))
				b.StopTimer()
				rss = rssFileKB() - before
				if err != nil || len(got) != n {
					b.Fatalf("scan: %d visits, %v", len(got), err)
				}
				s.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(va)/n, "visits-B/visit")
			b.ReportMetric(float64(ta)/n, "templates-B/visit")
			b.ReportMetric(float64(rss)*1024/n, "rssfile-B/visit")
			b.Logf("file %d B; visits bucket: %d B allocated (%d in use); templates bucket: %d B allocated (%d in use); RssFile +%d kB over a %d-visit scan",
				fileSize(tc.path), va, vi, ta, ti, rss, n)
		})
	}
}

// fillVisits writes n face visits with 384-d templates a minute apart from
// t0, one transaction each as the agent commits them (without fsync, to keep
// the setup short; page allocation is unchanged), spread over people
// identities (none when 0).
func fillVisits(tb testing.TB, s *Store, n, people int) {
	tb.Helper()
	s.db.NoSync = true
	defer func() { s.db.NoSync = false }()
	for i := range n {
		err := s.db.Update(func(tx *bolt.Tx) error {
			id := ""
			if people > 0 {
				id = fmt.Sprint("id", i%people)
				if i < people {
					if err := s.putIdentity(tx, record.Identity{ID: id}, t0); err != nil {
						return err
					}
				}
			}
			v := faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), id)
			v.Embedding = emb(float32(i), 384)
			return s.putVisit(tx, v)
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkPurgeExpiredCompacts: the daemon's retention purge on a store of
// 10,000 face visits with 384-d templates, half of them expired: the
// deletion alone (Purge) against PurgeExpired, which also compacts the file
// so no expired template stays in its free pages. Reports the file size
// before and after.
func BenchmarkPurgeExpiredCompacts(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	now := t0.Add(n * time.Minute)
	for _, compact := range []bool{false, true} {
		name := "purge"
		if compact {
			name = "purge+compact"
		}
		b.Run(name, func(b *testing.B) {
			var before, after int64
			for range b.N {
				b.StopTimer()
				path := filepath.Join(b.TempDir(), "agent.db")
				s, err := Open(path, Options{Retention: n / 2 * time.Minute, Now: func() time.Time { return now }})
				if err != nil {
					b.Fatal(err)
				}
				fillVisits(b, s, n, 50)
				if fi, err := os.Stat(path); err == nil {
					before = fi.Size()
				}
				b.StartTimer()
				var purged int
				if compact {
					purged, err = s.PurgeExpired(ctx)
				} else {
					purged, err = s.Purge(ctx, now.Add(-n/2*time.Minute))
				}
				b.StopTimer()
				if err != nil || purged != n/2 {
					b.Fatalf("purged %d, %v", purged, err)
				}
				if fi, err := os.Stat(path); err == nil {
					after = fi.Size()
				}
				s.Close()
			}
			b.ReportMetric(float64(before)/(1<<20), "MB-before")
			b.ReportMetric(float64(after)/(1<<20), "MB-after")
		})
	}
}

// BenchmarkUnassigned: the scan each consolidation runs for the face visits
// without identity (Unassigned), on 10,000 face visits with 384-d templates
// encrypted at rest, of which one in ten has no identity, against Members
// (every template decrypted, as a restore reads them).
func BenchmarkUnassigned(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	s, err := Open(filepath.Join(b.TempDir(), "agent.db"), Options{Key: key32(4), Now: func() time.Time { return t0.Add(n * time.Minute) }})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	fillVisits(b, s, n, 50)
	var c record.Commit
	for i := 0; i < n; i += 10 {
		c.Relabels = append(c.Relabels, record.Relabel{VisitID: fmt.Sprint("v", i)})
	}
	if _, err := s.CommitVisit(ctx, c); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		scan func(context.Context) ([]visit.Member, error)
		want int
	}{{"unassigned", s.Unassigned, n / 10}, {"members", s.Members, n}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if ms, err := tc.scan(ctx); err != nil || len(ms) != tc.want {
					b.Fatalf("%d members, %v", len(ms), err)
				}
			}
		})
	}
}
