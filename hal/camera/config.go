package camera

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MinProbeInterval is the shortest camera.probe_interval (other than 0,
// off): probes closer together would read the device nearly as often as
// a burst does.
const MinProbeInterval = 100 * time.Millisecond

// MaxNameLen is the longest camera name the status carries (the schema's
// maxLength of cameras[].name, in characters).
const MaxNameLen = 64

// Source kinds. KindAuto picks one from the source string each time the
// camera is opened (see ResolveKind).
const (
	KindAuto   = "auto"
	KindDevice = "device" // V4L2 device: "/dev/video0" or an index "0"
	KindStream = "stream" // URL: rtsp://, http://, ...
	KindFile   = "file"   // a video file
	KindImages = "images" // a directory of .jpg/.jpeg/.png files, replayed in name order
)

// Config configures one camera. Durations are YAML strings such as "500ms".
type Config struct {
	// Source is a device path (/dev/video0), a device index (0), a stream URL,
	// a video file or an image directory.
	Source string `yaml:"source"`
	// Name is the camera's label in the status and state (cameras[].name):
	// at most MaxNameLen characters. Empty: the source with credentials
	// masked, and, when longer, its last MaxNameLen-1 characters after "…"
	// (DefaultName).
	Name string `yaml:"name"`
	// Kind forces the source kind; "auto" (default) derives it from Source.
	Kind string `yaml:"kind"`
	// Width, Height and FPS are requested from devices and streams (0: driver default).
	Width  int     `yaml:"width"`
	Height int     `yaml:"height"`
	FPS    float64 `yaml:"fps"`
	// Loop rewinds files and image directories at their end. Without it the
	// end of a replay is reported as ErrEndOfStream and the camera stays down.
	Loop bool `yaml:"loop"`
	// BurstFrames frames are grabbed per trigger, spread over BurstDuration.
	BurstFrames   int           `yaml:"burst_frames"`
	BurstDuration time.Duration `yaml:"burst_duration"`
	// FlushFrames buffered frames are grabbed and discarded before a burst
	// from a device or stream (replays have no stale frames).
	FlushFrames int `yaml:"flush_frames"`
	// ReadTimeout bounds one read (stall watchdog); OpenTimeout bounds an open.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	OpenTimeout time.Duration `yaml:"open_timeout"`
	// MaxReadFailures consecutive failed reads close and reopen the device
	// (a stall always does).
	MaxReadFailures int `yaml:"max_read_failures"`
	// ReopenMin and ReopenMax bound the exponential reopen backoff.
	ReopenMin time.Duration `yaml:"reopen_min"`
	ReopenMax time.Duration `yaml:"reopen_max"`
	// CloseTimeout is how long Run waits, at shutdown, for device goroutines
	// stuck inside OpenCV.
	CloseTimeout time.Duration `yaml:"close_timeout"`
	// ProbeInterval: when no burst has read the open device for this long,
	// Run reads one frame and discards it, so a camera that fails between
	// visits is reported (and reopened) before a customer's visit finds it
	// down. 0 turns the probe off; withDefaults leaves it so (DefaultConfig
	// sets 30s). Replays that do not loop are never probed: each of their
	// frames belongs to a burst.
	ProbeInterval time.Duration `yaml:"probe_interval"`
}

// DefaultConfig returns the defaults; Source is left empty.
func DefaultConfig() Config {
	return Config{
		Kind:            KindAuto,
		BurstFrames:     5,
		BurstDuration:   500 * time.Millisecond,
		FlushFrames:     4,
		ReadTimeout:     2 * time.Second,
		OpenTimeout:     10 * time.Second,
		MaxReadFailures: 3,
		ReopenMin:       500 * time.Millisecond,
		ReopenMax:       30 * time.Second,
		CloseTimeout:    2 * time.Second,
		ProbeInterval:   30 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Kind == "" {
		c.Kind = d.Kind
	}
	if c.BurstFrames == 0 {
		c.BurstFrames = d.BurstFrames
	}
	if c.BurstDuration == 0 {
		c.BurstDuration = d.BurstDuration
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = d.ReadTimeout
	}
	if c.OpenTimeout == 0 {
		c.OpenTimeout = d.OpenTimeout
	}
	if c.MaxReadFailures == 0 {
		c.MaxReadFailures = d.MaxReadFailures
	}
	if c.ReopenMin == 0 {
		c.ReopenMin = d.ReopenMin
	}
	if c.ReopenMax == 0 {
		c.ReopenMax = d.ReopenMax
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = d.CloseTimeout
	}
	return c
}

// Validate reports configuration mistakes in words an operator understands.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.Source) == "" {
		errs = append(errs, errors.New("camera.source is empty: set a device (/dev/video0), a stream URL, a video file or an image directory"))
	}
	if n := utf8.RuneCountInString(c.Name); n > MaxNameLen || !utf8.ValidString(c.Name) || strings.ContainsFunc(c.Name, unicode.IsControl) {
		errs = append(errs, fmt.Errorf("camera.name %q: want at most %d characters, no control characters (%d)", c.Name, MaxNameLen, n))
	}
	switch c.Kind {
	case "", KindAuto, KindDevice, KindStream, KindFile, KindImages:
	default:
		errs = append(errs, fmt.Errorf("camera.kind %q: want auto, device, stream, file or images", c.Kind))
	}
	if c.Width < 0 || c.Height < 0 || c.Width > 16384 || c.Height > 16384 {
		errs = append(errs, fmt.Errorf("camera.width %d, height %d: want 0 (driver default) to 16384", c.Width, c.Height))
	}
	if !(c.FPS >= 0 && c.FPS <= 1000) {
		errs = append(errs, fmt.Errorf("camera.fps %v: want 0 (driver default) to 1000", c.FPS))
	}
	if c.BurstFrames < 0 || c.BurstFrames > 100 {
		errs = append(errs, fmt.Errorf("camera.burst_frames %d: want 1..100", c.BurstFrames))
	}
	if c.FlushFrames < 0 || c.FlushFrames > 100 {
		errs = append(errs, fmt.Errorf("camera.flush_frames %d: want 0..100", c.FlushFrames))
	}
	for _, f := range []struct {
		name string
		d    time.Duration
		max  time.Duration
	}{
		{"burst_duration", c.BurstDuration, 10 * time.Second},
		{"read_timeout", c.ReadTimeout, 5 * time.Minute},
		{"open_timeout", c.OpenTimeout, 10 * time.Minute},
		{"reopen_min", c.ReopenMin, time.Hour},
		{"reopen_max", c.ReopenMax, time.Hour},
		{"close_timeout", c.CloseTimeout, time.Minute},
	} {
		if f.d < 0 || f.d > f.max {
			errs = append(errs, fmt.Errorf("camera.%s %s: want 0 (default) to %s", f.name, f.d, f.max))
		}
	}
	if p := c.ProbeInterval; p != 0 && (p < MinProbeInterval || p > 24*time.Hour) {
		errs = append(errs, fmt.Errorf("camera.probe_interval %s: want 0 (off) or %s to 24h", p, MinProbeInterval))
	}
	if c.MaxReadFailures < 0 || c.MaxReadFailures > 1000 {
		errs = append(errs, fmt.Errorf("camera.max_read_failures %d: want 0 (default) to 1000", c.MaxReadFailures))
	}
	if c.ReopenMax != 0 && c.ReopenMin > c.ReopenMax {
		errs = append(errs, fmt.Errorf("camera.reopen_min %s is above reopen_max %s", c.ReopenMin, c.ReopenMax))
	}
	return errors.Join(errs...)
}

// ResolveKind returns the kind of cfg's source. With KindAuto: an integer or a
// /dev/ path is a device, a string with "://" a stream, an existing directory
// an image directory, anything else a video file. A missing directory thus
// resolves to "file" and fails to open until it is back, which is the wanted
// behaviour for a vanished replay source.
func ResolveKind(cfg Config) string {
	if cfg.Kind != "" && cfg.Kind != KindAuto {
		return cfg.Kind
	}
	s := cfg.Source
	if _, err := strconv.Atoi(s); err == nil || strings.HasPrefix(s, "/dev/") {
		return KindDevice
	}
	if strings.Contains(s, "://") {
		return KindStream
	}
	if fi, err := os.Stat(s); err == nil && fi.IsDir() {
		return KindImages
	}
	return KindFile
}
