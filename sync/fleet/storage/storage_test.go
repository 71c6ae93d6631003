package storage

import (
	"math"
	"testing"
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
