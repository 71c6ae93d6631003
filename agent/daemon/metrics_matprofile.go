//go:build matprofile

package daemon

import (
	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/internal/promtext"
)

func init() {
	extraMetrics = append(extraMetrics, func(reg *promtext.Registry) {
		reg.GaugeFunc("atm_agent_live_mats", "OpenCV Mats currently allocated (matprofile builds only).",
			func() float64 { return float64(gocv.MatProfile.Count()) })
	})
}
