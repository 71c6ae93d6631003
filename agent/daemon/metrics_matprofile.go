//go:build matprofile

package daemon

import (
	"github.com/prometheus/client_golang/prometheus"
	"gocv.io/x/gocv"
)

func init() {
	extraMetrics = append(extraMetrics, func(reg *prometheus.Registry) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "atm_agent_live_mats",
			Help: "OpenCV Mats currently allocated (matprofile builds only)."},
			func() float64 { return float64(gocv.MatProfile.Count()) }))
	})
}
