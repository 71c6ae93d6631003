//go:build !linux

package store

import bolt "go.etcd.io/bbolt"

// releaseMapped is a no-op where the agent does not run.
func releaseMapped(*bolt.DB, *bolt.Tx) {}
