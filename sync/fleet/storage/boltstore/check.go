package boltstore

import (
	"errors"
	"fmt"

	"github.com/periocular/atm-agent/store"
)

// ErrCorrupt marks a store file that bbolt must not map (errors.Is): it
// would fault inside bbolt.Open on a truncated or damaged file instead of
// returning an error.
var ErrCorrupt = errors.New("corrupt store file")

// checkFile validates an existing store file before bbolt maps it, with the
// agent store's own file-level checks (store.CheckBoltHeader: a regular
// file, a valid meta page, a size holding every page it records, root and
// freelist inside). A missing or empty file is fine (bbolt creates it).
func checkFile(path string) error {
	if err := store.CheckBoltHeader(path); err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return nil
}
