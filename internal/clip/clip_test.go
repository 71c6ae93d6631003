package clip

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClip(t *testing.T) {
	for _, c := range []struct {
		in         string
		max        int
		head, tail string
	}{
		{"abc", 3, "abc", "abc"},
		{"abcd", 3, "ab…", "…cd"},
		{"ééééé", 4, "ééé…", "…ééé"},
		{"a\xffbcd", 3, "a\xff…", "…cd"},
		{"", 3, "", ""},
		{"abc", 0, "", ""},
		{"abc", 1, "…", "…"},
	} {
		if got := Head(c.in, c.max); got != c.head {
			t.Errorf("Head(%q, %d) = %q, want %q", c.in, c.max, got, c.head)
		}
		if got := Tail(c.in, c.max); got != c.tail {
			t.Errorf("Tail(%q, %d) = %q, want %q", c.in, c.max, got, c.tail)
		}
	}
	long := strings.Repeat("日本", 200)
	for _, f := range []func(string, int) string{Head, Tail} {
		if got := f(long, 64); utf8.RuneCountInString(got) != 64 || !utf8.ValidString(got) {
			t.Errorf("clipped to %d code points (valid %v), want 64", utf8.RuneCountInString(got), utf8.ValidString(got))
		}
	}
}
