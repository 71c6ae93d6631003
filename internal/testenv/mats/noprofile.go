//go:build !matprofile

package mats

// Live is 0 without -tags matprofile (Mats are not counted).
func Live() int { return 0 }

func profile() string { return "" }

// Profiled says whether Mats are counted (-tags matprofile).
const Profiled = false
