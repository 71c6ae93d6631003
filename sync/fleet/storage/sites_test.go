package storage

import (
	"strings"
	"testing"
)

func TestParseSites(t *testing.T) {
	s, err := ParseSites([]string{"lisbon-*", "faro", "porto_1"})
	if err != nil {
		t.Fatal(err)
	}
	for site, want := range map[string]bool{"lisbon-01": true, "lisbon-": true, "lisbon": false, "faro": true, "faro-2": false,
		"porto_1": true, "portoX1": false, "": false} {
		if got := s.Allows(site); got != want {
			t.Errorf("Allows(%q) = %v, want %v", site, got, want)
		}
	}
	var every *Sites
	if !every.Allows("anything") || every.String() != "every site" || every.Patterns() != nil {
		t.Error("a nil scope must allow every site")
	}
	for _, bad := range [][]string{{}, nil, {"*"}, {""}, {"lis*bon"}, {"lisbon-**"}, {"lisbon-?"}, {"site[12]"}, {"{a,b}"},
		{`a\*`}, {"a/b"}, {"a+"}, {"faro", "faro"}} {
		if _, err := ParseSites(bad); err == nil {
			t.Errorf("ParseSites(%q): no error", bad)
		} else if !strings.HasPrefix(err.Error(), "sites: ") {
			t.Errorf("ParseSites(%q): %v: want it to name sites", bad, err)
		}
	}
}
