package storage

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/periocular/atm-agent/sync/wire"
)

// Sites is the set of sites a user is scoped to: exact site names, and
// prefix patterns (a name ending in '*' matches every site whose name
// starts with what comes before the '*': "lisbon-*" matches "lisbon-01"
// and "lisbon-airport"). A nil *Sites allows every site.
type Sites struct {
	patterns []string
	exact    map[string]bool
	prefixes []string
}

// ParseSites checks a scope's patterns: at least one; each a site name (an
// MQTT topic level: no '/', '+', '#' or control characters), optionally
// ending in one '*' after at least one character. Other glob syntax ('*'
// elsewhere, '?', '[', ']', '{', '}', '\\') is refused rather than taken
// literally: a pattern that looks like a glob but matches nothing would
// silently hide sites.
func ParseSites(patterns []string) (*Sites, error) {
	if len(patterns) == 0 {
		return nil, errors.New("sites: an empty list: list at least one site, or write sites: all for every site")
	}
	s := &Sites{exact: map[string]bool{}}
	for _, p := range patterns {
		name, prefix := strings.CutSuffix(p, "*")
		switch {
		case p == "*":
			return nil, errors.New(`sites: "*" alone: write sites: all for every site`)
		case strings.ContainsAny(name, "*?[]{}\\"):
			return nil, fmt.Errorf("sites: %q: only a trailing '*' is understood (a prefix such as \"lisbon-*\"); '*' elsewhere, '?', '[', ']', '{', '}' and '\\' are not", p)
		}
		if err := wire.ValidateLevel("site", name); err != nil {
			return nil, fmt.Errorf("sites: %q: %w", p, err)
		}
		if slices.Contains(s.patterns, p) {
			return nil, fmt.Errorf("sites: %q listed twice", p)
		}
		s.patterns = append(s.patterns, p)
		if prefix {
			s.prefixes = append(s.prefixes, name)
		} else {
			s.exact[name] = true
		}
	}
	return s, nil
}

// Allows reports whether site is in the scope; a nil scope allows every
// site.
func (s *Sites) Allows(site string) bool {
	if s == nil || s.exact[site] {
		return true
	}
	for _, p := range s.prefixes {
		if strings.HasPrefix(site, p) {
			return true
		}
	}
	return false
}

// Patterns are the scope's patterns as given (nil for every site).
func (s *Sites) Patterns() []string {
	if s == nil {
		return nil
	}
	return slices.Clone(s.patterns)
}

// Exact are the scope's exact site names, sorted.
func (s *Sites) Exact() []string {
	if s == nil {
		return nil
	}
	out := make([]string, 0, len(s.exact))
	for n := range s.exact {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Prefixes are the scope's prefixes (its patterns without their '*').
func (s *Sites) Prefixes() []string {
	if s == nil {
		return nil
	}
	return slices.Clone(s.prefixes)
}

// String lists the patterns, "every site" for a nil scope.
func (s *Sites) String() string {
	if s == nil {
		return "every site"
	}
	return strings.Join(s.patterns, ", ")
}
