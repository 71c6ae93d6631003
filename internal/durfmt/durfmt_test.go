package durfmt

import (
	"testing"
	"time"
)

func TestFormat(t *testing.T) {
	if got, want := Format(24*time.Hour), "1d"; got != want {
		t.Errorf("Format(24h) = %q, want %q", got, want)
	}
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 90 * time.Minute: "1h30m", 720 * time.Hour: "30d", 36 * time.Hour: "36h", 24 * time.Hour: "24h", 48 * time.Hour: "2d",
		168 * time.Hour: "7d", 5 * time.Minute: "5m", 90 * time.Second: "1m30s", 500 * time.Millisecond: "500ms", 0: "0s",
		time.Hour + time.Second: "1h0m1s",
	} {
		if got := WindowOf(d); got != want {
			t.Errorf("WindowOf(%v) = %q, want %q", d, got, want)
		}
		if got := Window(d.String()); got != want {
			t.Errorf("Window(%q) = %q, want %q", d.String(), got, want)
		}
	}
	if got := Window("soon"); got != "soon" {
		t.Errorf("Window(%q) = %q", "soon", got)
	}
}

// Config writes what time.ParseDuration reads back as the same duration,
// without the zero units Go adds and without days.
func TestConfig(t *testing.T) {
	for d, want := range map[time.Duration]string{
		720 * time.Hour: "720h", 8760 * time.Hour: "8760h", 24 * time.Hour: "24h", time.Hour: "1h", 12 * time.Hour: "12h", 90 * time.Minute: "1h30m",
		5 * time.Minute: "5m", 90 * time.Second: "1m30s", 20 * time.Millisecond: "20ms", 0: "0s", time.Hour + time.Second: "1h0m1s", -time.Hour: "-1h",
	} {
		got := Config(d)
		if got != want {
			t.Errorf("Config(%v) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(got); err != nil || back != d {
			t.Errorf("Config(%v) = %q reads back as %v, %v", d, got, back, err)
		}
	}
}
