package main

import (
	"strings"
	"testing"
)

func TestWatchErrors(t *testing.T) {
	if code, _, errs := runTool(t, "watch"); code != 2 || !strings.Contains(errs, "no broker") {
		t.Errorf("no broker: exit %d, %q", code, errs)
	}
	code, _, errs := runTool(t, "watch", "--broker", "tcp://127.0.0.1:1")
	if code != 1 || !strings.Contains(errs, "connect") {
		t.Errorf("unreachable broker: exit %d, %q", code, errs)
	}
}
