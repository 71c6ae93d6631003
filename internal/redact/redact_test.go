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
		// Credentials in the query string (Dahua, Foscam, signed URLs).
		{"rtsp://127.0.0.1:5540/cam/realmonitor?channel=1&user=admin&password=S3cretPw",
			"rtsp://127.0.0.1:5540/cam/realmonitor?channel=1&user=xxxxx&password=xxxxx"},
		{"rtsp://cam/realmonitor?channel=1&subtype=0", "rtsp://cam/realmonitor?channel=1&subtype=0"},
		{"http://cam/videostream.cgi?USR=admin&PWD=S3cret&resolution=32", "http://cam/videostream.cgi?USR=xxxxx&PWD=xxxxx&resolution=32"},
		{"http://cam/live?Pass=a;token=b;profile=c", "http://cam/live?Pass=xxxxx;token=xxxxx;profile=c"},
		{"https://s3/x.mp4?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc&X-Amz-Expires=60",
			"https://s3/x.mp4?X-Amz-Credential=xxxxx&X-Amz-Signature=xxxxx&X-Amz-Expires=60"},
		{"ws://broker/mqtt?api_key=k1&apiKey=k2&access_token=t&sig=s&auth=a&secret=z&passwd=p&pwd=q&username=u",
			"ws://broker/mqtt?api_key=xxxxx&apiKey=xxxxx&access_token=xxxxx&sig=xxxxx&auth=xxxxx&secret=xxxxx&passwd=xxxxx&pwd=xxxxx&username=xxxxx"},
		{"rtsp://admin:pw@cam/live?password=pw2#frag", "rtsp://admin:xxxxx@cam/live?password=xxxxx#frag"},
		{"rtsp://cam/live?password=&key", "rtsp://cam/live?password=&key"}, // nothing to hide
		{"/srv/frames?password=x", "/srv/frames?password=x"},               // a path, not a URL
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

// Parameter names: credentials in their vendors' spellings, and the
// ordinary parameters of camera URLs, which stay readable.
func TestCredentialParam(t *testing.T) {
	for _, n := range []string{"password", "PASSWORD", "passwd", "pwd", "pass", "token", "access_token", "key", "apikey",
		"api_key", "API-Key", "secret", "client_secret", "auth", "signature", "sig", "X-Amz-Signature", "user", "username", "usr", "pass%77ord"} {
		if !CredentialParam(n) {
			t.Errorf("CredentialParam(%q) = false, want true", n)
		}
	}
	for _, n := range []string{"channel", "subtype", "profile", "resolution", "stream", "codec", "fps", "transport", "unicast"} {
		if CredentialParam(n) {
			t.Errorf("CredentialParam(%q) = true, want false", n)
		}
	}
}

// A message (an OpenCV or MQTT error) holding a query credential in any
// form loses it; the user name is masked in the URL only.
func TestStringQueryCredentials(t *testing.T) {
	src := "rtsp://127.0.0.1:5540/cam/realmonitor?channel=1&user=admin&password=S3cret%2FPw&token=T0kenValue"
	msg := "open camera " + src + ": 401 for password S3cret/Pw (sent S3cret%2FPw), token T0kenValue, user admin"
	got := String(msg, src)
	for _, s := range []string{"S3cret", "T0kenValue"} {
		if strings.Contains(got, s) {
			t.Errorf("%q still holds %q", got, s)
		}
	}
	if want := "rtsp://127.0.0.1:5540/cam/realmonitor?channel=1&user=xxxxx&password=xxxxx&token=xxxxx"; !strings.Contains(got, want) {
		t.Errorf("%q lacks %q", got, want)
	}
	if !strings.HasSuffix(got, "user admin") {
		t.Errorf("%q: the user name outside the URL should be kept", got)
	}
}
