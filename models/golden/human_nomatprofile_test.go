//go:build !matprofile

package golden

// humanLiveMats is -1 without the matprofile tag (leaks are not counted).
func humanLiveMats() int { return -1 }
