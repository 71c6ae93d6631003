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

// BenchmarkVisitScan stores 10,000 face visits with 384-d templates, then
// measures the bucket page bytes and a metadata scan (VisitsBetween over all
// visits, as the periodic summary does) on a freshly opened file: time and
// RssFile growth per visit.
func BenchmarkVisitScan(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "scan.db")
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		for i := range 50 {
			if err := s.putIdentity(tx, Identity{ID: fmt.Sprint("id", i)}, t0); err != nil {
				return err
			}
		}
		for i := range n {
			v := faceVisit(fmt.Sprint("v", i), t0.Add(time.Duration(i)*time.Minute), fmt.Sprint("id", i%50))
			v.Embedding = emb(float32(i), 384)
			if err := s.putVisit(tx, v); err != nil {
				return err
			}
		}
		return nil
	})
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
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		s, err := Open(path, Options{})
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
	b.Logf("visits bucket: %d B allocated (%d in use); templates bucket: %d B allocated (%d in use); RssFile +%d kB over a %d-visit scan",
		va, vi, ta, ti, rss, n)
}
