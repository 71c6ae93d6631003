// Package manroff escapes text for the man pages the binaries generate
// (internal/cli for atm-agent and atm-tools, cmd/atm-fleet).
package manroff

import "strings"

// Escape escapes text for a roff line: backslashes, hyphens (so that
// `--dir` is not hyphenated into typographic dashes) and a leading dot or
// quote.
func Escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}
