package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// procRoot is where the processes are read (a test may point it
// elsewhere).
var procRoot = "/proc"

// checkFleetRun refuses a process that is not `atm-fleet run`: its
// executable (/proc/PID/exe, " (deleted)" after an upgrade replaced the
// file) must be named atm-fleet and its command line must be atm-fleet
// run. `users check --reload PID` signals nothing else, so a sudo rule
// for it cannot send SIGHUP (whose default action ends a process) to
// another daemon.
func checkFleetRun(pid int) error {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	exe, err := os.Readlink(filepath.Join(dir, "exe"))
	if err != nil {
		return fmt.Errorf("process %d: cannot tell what it runs: %w", pid, err)
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return fmt.Errorf("process %d: cannot read its command line: %w", pid, err)
	}
	args := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
	if filepath.Base(exe) != "atm-fleet" || filepath.Base(args[0]) != "atm-fleet" || len(args) < 2 || args[1] != "run" {
		return fmt.Errorf("process %d is not atm-fleet run: not signalled", pid)
	}
	return nil
}
