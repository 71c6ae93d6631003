// Package redact keeps credentials out of everything the agent prints or
// publishes: logs, /healthz, the retained MQTT status, error messages. One
// helper for every surface, so that a new one cannot forget a case.
package redact

import (
	"net/url"
	"strings"
)

// Mask replaces a secret.
const Mask = "xxxxx"

// URL returns s with the credentials of a URL's userinfo masked:
// rtsp://admin:secret@cam/stream -> rtsp://admin:xxxxx@cam/stream, and a
// userinfo without a password (often a token) -> rtsp://xxxxx@cam/stream.
// It does not depend on s parsing as a URL: everything between "://" and the
// last '@' of the authority is userinfo, so a password holding '@', '/',
// '#' or '%' is still masked. Anything without "://" and '@' is returned as is.
func URL(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	rest := s[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return s
	}
	user, _, hasPass := strings.Cut(rest[:at], ":")
	if !hasPass || user == "" {
		return s[:i+3] + Mask + rest[at:]
	}
	return s[:i+3] + user + ":" + Mask + rest[at:]
}

// secrets lists the forms in which the credentials of URL s can appear in
// a message: the whole URL, its userinfo, the password as written and
// percent-decoded.
func secrets(s string) []string {
	i := strings.Index(s, "://")
	if i < 0 {
		return nil
	}
	rest := s[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return nil
	}
	info := rest[:at]
	out := []string{s, info}
	if _, pass, ok := strings.Cut(info, ":"); ok && pass != "" {
		out = append(out, pass)
		if dec, err := url.PathUnescape(pass); err == nil && dec != pass {
			out = append(out, dec)
		}
	}
	return out
}

// String masks in msg every form of the credentials of the URLs given
// (whole URL first, so it reads as URL(u)).
func String(msg string, urls ...string) string {
	for _, u := range urls {
		sec := secrets(u)
		if len(sec) == 0 {
			continue
		}
		msg = strings.ReplaceAll(msg, sec[0], URL(u))
		for _, s := range sec[1:] {
			if len(s) >= 3 { // a one- or two-letter secret would mangle any text
				msg = strings.ReplaceAll(msg, s, Mask)
			}
		}
	}
	return msg
}

// Error wraps err so that its message has the credentials of urls masked;
// errors.Is and errors.As still see err.
func Error(err error, urls ...string) error {
	if err == nil {
		return nil
	}
	msg := String(err.Error(), urls...)
	if msg == err.Error() {
		return err
	}
	return &redacted{msg: msg, err: err}
}

type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.err }
