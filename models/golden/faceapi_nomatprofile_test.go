//go:build !matprofile

package golden

// faMatCount is -1 without -tags matprofile: Mat leaks are not tracked.
func faMatCount() int { return -1 }
