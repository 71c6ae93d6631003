package storage

import (
	"math"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/wire"
)

// Gaps never overflows: seqs 0, 2^64-1 and 5 leave 2^64-3 numbers unseen.
func TestGapsWithoutOverflow(t *testing.T) {
	cases := []struct {
		d    Device
		want uint64
	}{
		{Device{FirstSeq: 0, MaxSeq: math.MaxUint64, Unique: 3}, math.MaxUint64 - 2},
		{Device{FirstSeq: 0, MaxSeq: math.MaxUint64, Unique: 1}, math.MaxUint64},
		{Device{FirstSeq: 1, MaxSeq: math.MaxUint64, Unique: 2}, math.MaxUint64 - 2},
		{Device{FirstSeq: 0, MaxSeq: 0, Unique: 1}, 0},
		{Device{FirstSeq: 3, MaxSeq: 10, Unique: 5}, 3},
		{Device{FirstSeq: 3, MaxSeq: 10, Unique: 9}, 0},
		{Device{}, 0},
	}
	for _, c := range cases {
		if got := c.d.Gaps(); got != c.want {
			t.Errorf("%d..%d unique %d: gaps %d, want %d", c.d.FirstSeq, c.d.MaxSeq, c.d.Unique, got, c.want)
		}
	}
}

// LastHeard is the later of the last status and the last summary or
// alert; Stale needs an online status not heard from for longer than
// after (0: never stale).
func TestLastHeardAndStale(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, d := range []Device{{StatusReceived: t0, LastReceived: t0.Add(-time.Hour)}, {StatusReceived: t0.Add(-time.Hour), LastReceived: t0}} {
		if got := d.LastHeard(); !got.Equal(t0) {
			t.Errorf("LastHeard(%v, %v) = %v", d.StatusReceived, d.LastReceived, got)
		}
	}
	online := Device{Status: &wire.Status{State: wire.StateOnline}, StatusReceived: t0}
	stopped := Device{Status: &wire.Status{State: wire.StateStopped}, StatusReceived: t0}
	for _, c := range []struct {
		name  string
		d     Device
		now   time.Time
		after time.Duration
		want  bool
	}{
		{"online, exactly after", online, t0.Add(5 * time.Minute), 5 * time.Minute, false},
		{"online, a second more", online, t0.Add(5*time.Minute + time.Second), 5 * time.Minute, true},
		{"online, after 0", online, t0.Add(24 * time.Hour), 0, false},
		{"stopped, a day later", stopped, t0.Add(24 * time.Hour), 5 * time.Minute, false},
		{"no status", Device{LastReceived: t0}, t0.Add(24 * time.Hour), 5 * time.Minute, false},
	} {
		if got := c.d.Stale(c.now, c.after); got != c.want {
			t.Errorf("%s: Stale %v, want %v", c.name, got, c.want)
		}
	}
}
