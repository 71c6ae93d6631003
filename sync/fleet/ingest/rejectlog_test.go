package ingest

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// A publisher sending bad payloads in a loop wrote one WARN line per
// payload (8 MB of log in 2 s for 20,000 in a hostile review). One line
// per 10 s now, saying how many went without one; every reject is still
// stored and counted.
func TestRejectedPayloadsLoggedSparingly(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 12, 7, 9, 0, 0, 0, time.UTC)
	in := &Ingester{log: slog.New(slog.NewTextHandler(&buf, nil)), now: func() time.Time { return now }}
	r := storage.Reject{Topic: "atm/s/d/summary", Error: "not JSON"}
	for range 20000 {
		in.logReject(r, false)
		now = now.Add(100 * time.Microsecond) // 2 s in all
	}
	if n := strings.Count(buf.String(), "payload rejected"); n != 1 {
		t.Fatalf("%d lines for 20,000 rejects in 2 s, want 1", n)
	}
	now = now.Add(rejectLogEvery)
	in.logReject(r, false)
	if !strings.Contains(buf.String(), "rejected_without_a_line_since_the_last=19999") {
		t.Fatalf("the next line does not count the quiet ones:\n%s", buf.String())
	}
}
