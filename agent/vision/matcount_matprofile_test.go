//go:build matprofile

package vision

import "gocv.io/x/gocv"

const matProfiled = true

func liveMats() int { return gocv.MatProfile.Count() }
