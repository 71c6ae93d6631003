package daemon

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// Decode errors speak in config keys, never Go types, and suggest the key
// meant; the whole file's mistakes come in one message.
func TestConfigErrorsInConfigTerms(t *testing.T) {
	in := `camera:
  burst_frame: 5
  warmup: 1h
  read_timeout: 5 minutes
vision:
  max_yaw: lots
alerts:
  rules:
    - {name: x, kind: visits, threshold: many, window: 1h}
mqt:
  enabled: true
`
	_, err := ParseConfig([]byte(in))
	if err == nil {
		t.Fatal("bad config accepted")
	}
	msg := err.Error()
	for _, want := range []string{
		"line 2: camera.burst_frame: unknown key (did you mean camera.burst_frames?)",
		"line 3: camera.warmup: unknown key (camera has: burst_duration, burst_frames,",
		`line 4: camera.read_timeout: "5 minutes" is not a duration (e.g. 500ms, 30s, 5m, 1h, 30d; at most 106751d)`,
		`line 6: vision.max_yaw: "lots" is not a number`,
		`line 9: alerts.rules[0].threshold: "many" is not a whole number`,
		"line 10: mqt: unknown key (did you mean mqtt?)",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if m := regexp.MustCompile(`\b(\w+\.Config|time\.Duration|int|float64|!!str)\b`).FindString(msg); m != "" {
		t.Errorf("error names a Go type (%s):\n%s", m, msg)
	}
}

// Durations take days, in block and flow style, quoted or not, without
// moving the line numbers of later errors.
func TestConfigDays(t *testing.T) {
	c, err := ParseConfig([]byte(`store:
  retention: 30d
alerts:
  rules:
    - {name: a, kind: visits, threshold: 5, window: 2d, cooldown: 1d12h}
agent:
  purge_interval: 1d
  consolidate_interval: "0.5d"
`))
	if err != nil {
		t.Fatal(err)
	}
	day := 24 * time.Hour
	if c.Store.Retention != 30*day || c.Agent.ConsolidateInterval != 12*time.Hour || c.Agent.PurgeInterval != day {
		t.Errorf("retention %v consolidate_interval %v purge_interval %v", c.Store.Retention, c.Agent.ConsolidateInterval, c.Agent.PurgeInterval)
	}
	if r := c.Alerts.Rules[0]; r.Window != 2*day || r.Cooldown != 36*time.Hour {
		t.Errorf("rule window %v cooldown %v", r.Window, r.Cooldown)
	}
	// A string key that looks like days stays a string.
	c, err = ParseConfig([]byte("device:\n  id: 30d\n"))
	if err != nil || c.Device.ID != "30d" {
		t.Errorf("device.id 30d: %v %q", err, c.Device.ID)
	}
	// Later errors keep their line.
	_, err = ParseConfig([]byte("store:\n  retention: 30d\n  lock_timeout: soon\n"))
	if err == nil || !strings.Contains(err.Error(), "line 3: store.lock_timeout") {
		t.Errorf("error line moved: %v", err)
	}
	if _, err := ParseConfig([]byte("store:\n  retention: 3x0d\n")); err == nil || !strings.Contains(err.Error(), "store.retention") {
		t.Errorf("3x0d: %v", err)
	}
	// Beyond what a duration holds: said so, not "must be positive (got
	// -2562047h47m16.854775808s)" (the float's conversion on amd64).
	if _, err := ParseConfig([]byte("store:\n  retention: 106752d\n")); err == nil || !strings.Contains(err.Error(), `"106752d" is not a duration (e.g. 500ms, 30s, 5m, 1h, 30d; at most 106751d)`) {
		t.Errorf("retention 106752d: %v", err)
	}
	if _, err := ParseConfig([]byte("store:\n  retention: 106751d23h59m\n")); err == nil || strings.Contains(err.Error(), "got -") {
		t.Errorf("retention 106751d23h59m: %v", err)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Hour: "1h", 90 * time.Minute: "1h30m", 720 * time.Hour: "30d", 36 * time.Hour: "36h",
		5 * time.Minute: "5m", 90 * time.Second: "1m30s", 500 * time.Millisecond: "500ms", 0: "0s", time.Hour + time.Second: "1h0m1s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
		if back, err := ParseDuration(FormatDuration(d)); err != nil || back != d {
			t.Errorf("ParseDuration(%q) = %v, %v", FormatDuration(d), back, err)
		}
	}
}

// Every key of the default file says what it is: a comment on its line
// (or, for a list's entries, on the list's key), and no duration is
// printed the long way (1h0m0s).
func TestDefaultYAMLEveryKeyCommented(t *testing.T) {
	key := regexp.MustCompile(`^\s*(- )?[a-z_]+:( |$)`)
	for i, line := range strings.Split(string(DefaultYAML()), "\n") {
		if !key.MatchString(line) {
			continue
		}
		code, _, _ := strings.Cut(line, "#")
		if strings.TrimSpace(strings.SplitN(code, ":", 2)[1]) == "" {
			continue // a section header: its keys carry the comments
		}
		if !strings.Contains(line, "#") {
			t.Errorf("line %d has no comment: %s", i+1, line)
		}
		if regexp.MustCompile(`\d+[hm]0m0s|\d+m0s\b`).MatchString(code) {
			t.Errorf("line %d: a duration printed the long way: %s", i+1, line)
		}
	}
}

// Validation messages print durations the short way too.
func TestValidationShortDurations(t *testing.T) {
	_, err := ParseConfig([]byte("store:\n  lock_timeout: 1d\n"))
	if err == nil || !strings.Contains(err.Error(), "at most 10m (got 1d)") {
		t.Errorf("got %v, want the durations as 10m and 1d", err)
	}
}

// A fraction for a whole-number key is an error, not cut silently (yaml.v3
// would decode 3.5 into 3); 3.0 is whole; durations and floats are not
// whole-number keys.
func TestConfigFractionForWholeNumber(t *testing.T) {
	_, err := ParseConfig([]byte(`camera:
  burst_frames: 3.5
alerts:
  rules:
    - {name: x, kind: visits, threshold: 2.9, window: 1h}
`))
	if err == nil {
		t.Fatal("fractions accepted")
	}
	for _, want := range []string{`line 2: camera.burst_frames: "3.5" is not a whole number`, `line 5: alerts.rules[0].threshold: "2.9" is not a whole number`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	c, err := ParseConfig([]byte("camera:\n  burst_frames: 3.0\nvision:\n  max_yaw: 0.5\n"))
	if err != nil || c.Camera.BurstFrames != 3 {
		t.Errorf("3.0 and a float key: %v, burst_frames %d", err, c.Camera.BurstFrames)
	}
}
