//go:build !matprofile

package vision

const matProfiled = false

func liveMats() int { return 0 }
