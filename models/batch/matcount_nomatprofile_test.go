//go:build !matprofile

package batch

const matProfiled = false

func liveMats() int { return 0 }
