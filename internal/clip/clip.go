// Package clip shortens strings to a length counted as JSON Schema's
// maxLength counts it: in Unicode code points (a byte that is not valid
// UTF-8 counts as one, as encoding/json writes it as one U+FFFD). A cut
// string is marked with "…" (one code point, inside the limit).
package clip

import "unicode/utf8"

// Ellipsis marks the place where a string was cut.
const Ellipsis = "…"

// Head returns s when it has at most max code points; otherwise its first
// max-1 code points followed by "…". It never cuts inside a character.
func Head(s string, max int) string {
	if max <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	n := 0
	for i := range s {
		if n == max-1 {
			return s[:i] + Ellipsis
		}
		n++
	}
	return s // not reached: s has more than max code points
}

// Tail returns s when it has at most max code points; otherwise "…"
// followed by its last max-1 code points: for names whose distinctive
// part is at the end (a /dev/v4l/by-id path's serial number and index).
func Tail(s string, max int) string {
	if max <= 0 {
		return ""
	}
	n := utf8.RuneCountInString(s)
	if n <= max {
		return s
	}
	skip := n - (max - 1)
	for i := range s {
		if skip == 0 {
			return Ellipsis + s[i:]
		}
		skip--
	}
	return Ellipsis // not reached
}
