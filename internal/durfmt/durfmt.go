// Package durfmt prints durations the way the configuration writes them:
// "1h" not "1h0m0s", "7d" for a whole number of days. Messages keep Go's
// form on the wire (an alert's "window" is time.Duration.String, as the
// schema says); what people read (logs, the demo, atm-tools watch, config
// warnings) uses this one.
package durfmt

import (
	"fmt"
	"strings"
	"time"
)

// Format prints d the short way: "1h" not "1h0m0s", "30d" for a whole
// number of days, "1m30s", "500ms".
func Format(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return Config(d)
}

// Config prints d as a config file writes it, in a form time.ParseDuration
// (and so a config's decoding) reads back: Format without days ("720h"
// not "720h0m0s" nor "30d", "1h30m", "500ms").
func Config(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Window prints an alert rule's window, given as a duration or as Go
// writes one (an alert's "window": "1h0m0s" -> "1h", "168h0m0s" -> "7d"),
// as the default config writes windows: Format, except that one day is
// "24h", the name the summary's windows and the default rules give it. A
// string that is not a duration is returned as it is.
func Window(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil {
		return s
	}
	return WindowOf(d)
}

// WindowOf is Window of a duration.
func WindowOf(d time.Duration) string {
	if d == 24*time.Hour {
		return "24h"
	}
	return Format(d)
}
