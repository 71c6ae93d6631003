// Package redact keeps credentials out of everything the agent prints or
// publishes: logs, /healthz, the retained MQTT status, error messages. One
// helper for every surface, so that a new one cannot forget a case.
package redact

import (
	"net/url"
	"strings"
	"unicode"
)

// Mask replaces a secret.
const Mask = "xxxxx"

// URL returns s with the credentials of a URL masked: those of its
// userinfo, rtsp://admin:secret@cam/stream -> rtsp://admin:xxxxx@cam/stream
// (a userinfo without a password, often a token: rtsp://xxxxx@cam/stream),
// and the value of every query parameter whose name is a credential's
// (CredentialParam): rtsp://cam/live?channel=1&user=admin&password=secret
// -> rtsp://cam/live?channel=1&user=xxxxx&password=xxxxx.
// It does not depend on s parsing as a URL: everything between "://" and the
// last '@' of the authority is userinfo, so a password holding '@', '/',
// '#' or '%' is still masked. Anything without "://" is returned as is.
func URL(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	head, rest := s[:i+3], s[i+3:]
	rest = maskQuery(rest)
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return head + rest
	}
	user, _, hasPass := strings.Cut(rest[:at], ":")
	if !hasPass || user == "" {
		return head + Mask + rest[at:]
	}
	return head + user + ":" + Mask + rest[at:]
}

// CredentialParam reports whether a query parameter named name carries a
// credential: a password, a token, a key, a signature or a user name
// (cameras take user=, usr=, username= beside password=, pwd=). Case,
// '-' and '_' are ignored: X-Amz-Signature, api_key and APIKey match;
// channel, subtype and profile do not.
func CredentialParam(name string) bool {
	if dec, err := url.QueryUnescape(name); err == nil {
		name = dec
	}
	n := strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == '.' || r == ' ' {
			return -1
		}
		return unicode.ToLower(r)
	}, name)
	switch n {
	case "pass", "pw", "pwd", "psw", "key", "sig", "auth", "user", "usr", "login", "jwt":
		return true
	}
	for _, part := range []string{"password", "passwd", "passphrase", "secret", "token", "signature", "credential",
		"apikey", "authorization", "username", "userid", "session"} {
		if strings.Contains(n, part) {
			return true
		}
	}
	return strings.HasSuffix(n, "key") || strings.HasSuffix(n, "auth")
}

// queryParams returns the parameters of the query of rest (the part of a
// URL after "://"), none when it has no query.
func queryParams(rest string) []string {
	q := strings.IndexByte(rest, '?')
	if q < 0 {
		return nil
	}
	query, _, _ := strings.Cut(rest[q+1:], "#")
	return strings.FieldsFunc(query, func(r rune) bool { return r == '&' || r == ';' })
}

// maskQuery masks the values of the credential parameters of rest's query
// (everything else, order and separators included, is kept).
func maskQuery(rest string) string {
	q := strings.IndexByte(rest, '?')
	if q < 0 {
		return rest
	}
	query, frag, hasFrag := strings.Cut(rest[q+1:], "#")
	if hasFrag {
		frag = "#" + frag
	}
	var b strings.Builder
	b.WriteString(rest[:q+1])
	for i, p := range splitKeep(query) {
		if i%2 == 1 { // a separator
			b.WriteString(p)
			continue
		}
		if k, v, ok := strings.Cut(p, "="); ok && v != "" && CredentialParam(k) {
			p = k + "=" + Mask
		}
		b.WriteString(p)
	}
	return b.String() + frag
}

// splitKeep splits a query at '&' and ';', returning parameters and the
// separators between them in turn (parameter, separator, parameter...).
func splitKeep(query string) []string {
	var out []string
	last := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '&' || query[i] == ';' {
			out = append(out, query[last:i], query[i:i+1])
			last = i + 1
		}
	}
	return append(out, query[last:])
}

// secrets lists the forms in which the credentials of URL s can appear in
// a message: the whole URL, its userinfo, the password as written and
// percent-decoded, and likewise each credential query value (user names
// aside: a name such as "admin" is no secret alone, and masking the word
// everywhere would mangle messages; the URL form masks it).
func secrets(s string) []string {
	i := strings.Index(s, "://")
	if i < 0 {
		return nil
	}
	rest := s[i+3:]
	out := []string{s}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		info := rest[:at]
		out = append(out, info)
		if _, pass, ok := strings.Cut(info, ":"); ok && pass != "" {
			out = append(out, pass)
			if dec, err := url.PathUnescape(pass); err == nil && dec != pass {
				out = append(out, dec)
			}
		}
	}
	for _, p := range queryParams(rest) {
		k, v, ok := strings.Cut(p, "=")
		if !ok || v == "" || !CredentialParam(k) || userParam(k) {
			continue
		}
		out = append(out, v)
		if dec, err := url.QueryUnescape(v); err == nil && dec != v {
			out = append(out, dec)
		}
	}
	if len(out) == 1 && URL(s) == s {
		return nil
	}
	return out
}

// userParam reports whether a credential parameter names the user.
func userParam(name string) bool {
	n := strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(name))
	return n == "user" || n == "usr" || n == "login" || n == "username" || n == "userid"
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
