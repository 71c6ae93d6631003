//go:build matprofile

package batch

import "gocv.io/x/gocv"

const matProfiled = true

func liveMats() int { return gocv.MatProfile.Count() }
