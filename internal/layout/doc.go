// Package layout holds no code: its tests enforce the repository's shape —
// the top level the design card names, and the packages that must build
// without cgo (no gocv in the agent core, identity, store, sync, the
// triggers and the camera supervisor).
package layout
