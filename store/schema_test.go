package store

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// setSchema writes v as the stored schema version, bypassing Open.
func setSchema(t testing.TB, path string, v uint64) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return putU64(tx.Bucket(bMeta), kSchema, v) }); err != nil {
		t.Fatal(err)
	}
}

// A schema version that does not fit an int (>= 2^63) is newer than this
// build like any other: before, it wrapped to a negative int, which read-
// only opens accepted (stats said -1, export dumped the file) and
// read-write opens indexed migrations[-1] with.
func TestSchemaVersionTooNewBeyondInt(t *testing.T) {
	for _, v := range []uint64{99, 1 << 63, math.MaxUint64} {
		t.Run(fmt.Sprint(v), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.db")
			s, err := Open(path, Options{})
			if err != nil {
				t.Fatal(err)
			}
			commitFace(t, s, "v1", t0, "A")
			s.Close()
			setSchema(t, path, v)
			for _, ro := range []bool{false, true} {
				s, err := Open(path, Options{ReadOnly: ro, NoCreate: ro})
				if err == nil {
					s.Close()
				}
				if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), fmt.Sprintf("version %d,", v)) {
					t.Errorf("open (read-only %v) with schema %d: %v, want ErrSchemaTooNew naming the version", ro, v, err)
				}
			}
			if got := schemaOf(t, path); uint64(got) != v {
				t.Errorf("the refused file's schema changed to %d", got)
			}
		})
	}
}
