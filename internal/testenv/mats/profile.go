//go:build matprofile

package mats

import (
	"bytes"

	"gocv.io/x/gocv"
)

// Live is the number of gocv Mats not closed yet.
func Live() int { return gocv.MatProfile.Count() }

func profile() string {
	var b bytes.Buffer
	_ = gocv.MatProfile.WriteTo(&b, 1)
	return b.String()
}

// Profiled says whether Mats are counted (-tags matprofile).
const Profiled = true
