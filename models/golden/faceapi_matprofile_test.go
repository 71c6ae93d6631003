//go:build matprofile

package golden

import "gocv.io/x/gocv"

// faMatCount is the number of live gocv Mats (-tags matprofile only).
func faMatCount() int { return gocv.MatProfile.Count() }
