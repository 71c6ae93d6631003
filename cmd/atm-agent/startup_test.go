package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/store"
)

// runCLICtx runs a command in-process under ctx, failing the test when it
// has not returned 10 s after ctx ended (SIGTERM reaches commands as ctx).
func runCLICtx(t *testing.T, ctx context.Context, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- runMain(ctx, args, &out, &errb) }()
	select {
	case code := <-done:
		return code, errb.String()
	case <-time.After(10 * time.Second):
		t.Fatalf("atm-agent %s still running after 10s", strings.Join(args, " "))
		return 0, ""
	}
}

// A named pipe given as the config file, or named in it as the models'
// manifest or the store key, made `config check` and `run` block for good
// in a read that SIGTERM does not end (timeout(1) could not stop them; only
// SIGKILL did). Each is now refused at once, saying what the path is.
func TestStartupRefusesNamedPipes(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	models := filepath.Join(dir, "models")
	os.Mkdir(models, 0o700)
	if err := syscall.Mkfifo(filepath.Join(models, "manifest.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name, yaml string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	manifestCfg := write("fifo-manifest.yaml", "device: {id: a, site: b}\nmodels: {dir: "+models+"}\nstore: {path: "+dir+"/agent.db}\ntrigger: {http: {enabled: false}, replay: {enabled: true, interval: 1s}}\nmetrics: {listen: \"\"}\n")
	keyCfg := write("key.yaml", "device: {id: a, site: b}\nmodels: {dir: "+dir+"/nomodels}\nstore: {path: "+dir+"/agent.db, key_file: "+fifo+"}\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"config check: the config", []string{"config", "check", fifo}, "read config: " + fifo + ": not a regular file but a named pipe (FIFO)"},
		{"run: the config", []string{"run", "--config", fifo}, "read config: " + fifo + ": not a regular file but a named pipe (FIFO)"},
		{"config check: the manifest", []string{"config", "check", manifestCfg}, "read model manifest: " + models + "/manifest.yaml: not a regular file but a named pipe (FIFO)"},
		{"run: the manifest", []string{"run", "--config", manifestCfg}, "read model manifest: " + models + "/manifest.yaml: not a regular file but a named pipe (FIFO)"},
		{"config check: the store key", []string{"config", "check", keyCfg}, "store.key_file: load key: " + fifo + ": not a regular file but a named pipe (FIFO)"},
		{"db stats: the key", []string{"db", "stats", "--db", dir + "/agent.db", "--key-file", fifo}, fifo + ": not a regular file but a named pipe (FIFO)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := runCLICtx(t, context.Background(), tc.args...)
			want := 1
			if tc.name == "run: the config" {
				want = 78 // a config run refuses (cli.ExitConfig)
			}
			if code != want || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, want, tc.want)
			}
		})
	}
}

// `db stats` waiting for the lock the agent holds (store.lock_timeout 10m)
// ends on SIGTERM/SIGINT (the command's context) with a message saying so,
// not after the 10 minutes.
func TestDBCommandStopsWaitingForTheLock(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "agent.db")
	agent, err := store.Open(db, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("device: {id: a, site: b}\nmodels: {dir: "+dir+"}\nstore: {path: "+db+", lock_timeout: 10m}\n"), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	code, stderr := runCLICtx(t, ctx, "db", "stats", "--config", cfg)
	if code != 1 || !strings.Contains(stderr, "stopped waiting for the database lock held by another process") {
		t.Fatalf("exit %d, stderr %q; want 1, stopped waiting", code, stderr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("returned after %v, want soon after the cancel at 300ms", d)
	}
}
