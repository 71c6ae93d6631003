package mqttsync

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Errors of seenSet.admit, for errors.Is.
var (
	errStale    = errors.New("ts outside the accepted clock skew")
	errReplayed = errors.New("message_id already accepted (replay)")
	errSeenFull = errors.New("too many commands inside the skew window")
	errLocked   = errors.New("command ids lost with a damaged seen file: commands refused until a full skew window has passed")
	errPersist  = errors.New("cannot record the command id")
)

// seenSet is the replay protection: the message ids of commands accepted
// within the skew window, with their ts. An id is written to disk (temp
// file, fsync, rename, fsync of the directory) before its command runs, so
// a command runs at most once, across restarts too. Ids whose ts is older
// than the window are dropped: their commands are refused as stale anyway.
//
// If the file exists but cannot be decoded, the ids in it are lost; every
// such id had a ts before start+skew, so refusing all commands until
// start+2*skew keeps them from being replayed.
type seenSet struct {
	path string
	skew time.Duration
	max  int

	mu          sync.Mutex
	ids         map[string]time.Time
	lockedUntil time.Time
}

type seenFile struct {
	Version int                  `json:"version"`
	IDs     map[string]time.Time `json:"ids"`
}

// openSeen loads path (a missing file is an empty set). A file that cannot
// be read is an error; one that cannot be decoded locks commands for two
// skew windows and is reported through warn.
func openSeen(path string, skew time.Duration, max int, now time.Time, warn func(msg string, args ...any)) (*seenSet, error) {
	s := &seenSet{path: path, skew: skew, max: max, ids: map[string]time.Time{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("mqtt commands: read seen_file: %w", err)
	}
	var f seenFile
	if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 {
		if err == nil {
			err = fmt.Errorf("version %d, want 1", f.Version)
		}
		s.lockedUntil = now.Add(2 * skew)
		warn("mqtt: seen_file is damaged; commands are refused until the ids it held can no longer be replayed",
			"file", path, "err", err, "until", s.lockedUntil.UTC().Format(time.RFC3339))
		return s, nil
	}
	for id, ts := range f.IDs {
		s.ids[id] = ts
	}
	s.prune(now)
	return s, nil
}

func (s *seenSet) prune(now time.Time) {
	for id, ts := range s.ids {
		if now.Sub(ts) > s.skew {
			delete(s.ids, id)
		}
	}
}

// admit accepts a command id once: it checks ts against now, refuses an id
// already accepted, and records the id durably before returning nil.
func (s *seenSet) admit(id string, ts, now time.Time) error {
	if d := now.Sub(ts); d > s.skew || d < -s.skew {
		return fmt.Errorf("%w: ts %s, device clock %s, max skew %v", errStale, ts.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), s.skew)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Before(s.lockedUntil) {
		return errLocked
	}
	if _, ok := s.ids[id]; ok {
		return fmt.Errorf("%w: %s", errReplayed, id)
	}
	s.prune(now)
	if len(s.ids) >= s.max {
		return fmt.Errorf("%w: %d ids held (max_seen)", errSeenFull, len(s.ids))
	}
	s.ids[id] = ts.UTC()
	if err := s.save(); err != nil {
		delete(s.ids, id)
		return fmt.Errorf("%w: %v", errPersist, err)
	}
	return nil
}

func (s *seenSet) save() error {
	b, err := json.Marshal(seenFile{Version: 1, IDs: s.ids})
	if err != nil {
		return err
	}
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(s.path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
