//go:build matprofile

package golden

import "gocv.io/x/gocv"

// humanLiveMats is the number of gocv Mats not closed yet.
func humanLiveMats() int { return gocv.MatProfile.Count() }
