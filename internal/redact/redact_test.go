package redact

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://admin:xxxxx@10.0.0.5:554/stream1"},
		{"rtsp://admin:p@ss/w#rd@cam/live", "rtsp://admin:xxxxx@cam/live"},
		{"rtsp://admin:p%40ss@cam/live", "rtsp://admin:xxxxx@cam/live"},
		{"rtsp://tok3n@cam/live", "rtsp://xxxxx@cam/live"},
		{"tcp://user:pw@broker:1883", "tcp://user:xxxxx@broker:1883"},
		{"rtsp://cam/live", "rtsp://cam/live"},
		{"/dev/video0", "/dev/video0"},
		{"0", "0"},
		{"/srv/frames", "/srv/frames"},
	} {
		if got := URL(tc.in); got != tc.want {
			t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestStringAndError(t *testing.T) {
	src := "rtsp://admin:p%40ss-word@cam/live"
	msg := fmt.Sprintf("Error opening file: %s; auth p@ss-word failed for admin:p%%40ss-word", src)
	got := String(msg, src)
	for _, s := range []string{"p@ss-word", "p%40ss-word"} {
		if strings.Contains(got, s) {
			t.Errorf("%q still holds %q", got, s)
		}
	}
	if !strings.Contains(got, "rtsp://admin:xxxxx@cam/live") {
		t.Errorf("%q lacks the redacted URL", got)
	}
	err := Error(fmt.Errorf("open camera %q: %w", src, io.EOF), src)
	if strings.Contains(err.Error(), "p%40ss") || !errors.Is(err, io.EOF) {
		t.Errorf("Error: %v (is EOF: %v)", err, errors.Is(err, io.EOF))
	}
}
