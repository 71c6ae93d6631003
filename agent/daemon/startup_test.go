package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/periocular/atm-agent/internal/regfile"
	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/store"
)

// within runs f and fails the test when it has not returned in 10 s: a read
// of a named pipe used to block for good, in a system call SIGTERM does not
// end (timeout(1) could not stop `config check`).
func within(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked after 10s", what)
		return nil
	}
}

func mkfifo(t *testing.T, p string) string {
	t.Helper()
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The config, the models' manifest, the store key, the trigger and metrics
// tokens, and the files other packages read at start (MQTT password, the
// replay schedule, the metrics TLS certificate): a named pipe (or a directory, a device) in their place
// is refused at once, naming the setting and what the path is, by `config
// check` (LoadConfig, CheckFiles) and by `run` (NewContext).
func TestStartupRefusesFilesThatAreNotRegular(t *testing.T) {
	dir := t.TempDir()
	models := filepath.Join(dir, "models")
	os.Mkdir(models, 0o700)
	mkfifo(t, filepath.Join(models, "manifest.yaml"))
	fifo := mkfifo(t, filepath.Join(dir, "fifo"))

	err := within(t, "LoadConfig of a FIFO", func() error { _, err := LoadConfig(fifo); return err })
	if !errors.Is(err, regfile.ErrNotRegular) || !strings.Contains(err.Error(), "read config: "+fifo+": not a regular file but a named pipe (FIFO)") {
		t.Errorf("LoadConfig(FIFO): %v", err)
	}
	if _, err := LoadConfig(dir); !strings.Contains(err.Error(), "not a regular file but a directory") {
		t.Errorf("LoadConfig(directory): %v", err)
	}

	base := "device: {id: a, site: b}\nmodels: {dir: " + dir + "/nomodels}\nstore: {path: " + dir + "/agent.db}\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"manifest", "device: {id: a, site: b}\nmodels: {dir: " + models + "}\nstore: {path: " + dir + "/agent.db}\n", "read model manifest: " + models + "/manifest.yaml: "},
		{"store key", base + "store: {path: " + dir + "/agent.db, key_file: " + fifo + "}\n", "store.key_file: load key: "},
		{"store key a device", base + "store: {path: " + dir + "/agent.db, key_file: /dev/zero}\n", "store.key_file: load key: /dev/zero: not a regular file but a character device"},
		{"trigger token", base + "trigger:\n  http: {enabled: true, socket: " + dir + "/t.sock, listen: \"127.0.0.1:0\", token_file: " + fifo + "}\n", "trigger.http: read token file: "},
		{"metrics token", base + "metrics: {listen: \"127.0.0.1:0\", token_file: " + fifo + "}\n", "metrics.token_file: "},
		{"metrics certificate", base + "metrics: {listen: \"127.0.0.1:0\", tls: {cert_file: " + fifo + ", key_file: " + fifo + "}}\n", "metrics.tls.cert_file: "},
		{"mqtt password", base + "mqtt: {enabled: true, brokers: [\"tcp://127.0.0.1:1883\"], username: u, password_file: " + fifo + "}\n", "mqtt.password_file: "},
		{"replay schedule", base + "trigger:\n  http: {enabled: false}\n  replay: {enabled: true, file: " + fifo + "}\n", "trigger.replay.file: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := tc.yaml
			if strings.Count(y, "store:") == 2 { // the case's store section replaces base's
				i := strings.Index(y, "store:")
				j := i + strings.Index(y[i:], "\n") + 1
				y = y[:i] + y[j:]
			}
			c, err := ParseConfig([]byte(y))
			if err != nil {
				t.Fatal(err)
			}
			check := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, regfile.ErrNotRegular) || !strings.Contains(err.Error(), tc.want) ||
					!strings.Contains(err.Error(), ": not a regular file but ") {
					t.Errorf("%s: %v, want %q ... not a regular file", what, err, tc.want)
				}
			}
			check("config check", within(t, "config check", c.CheckFiles))
			if tc.name == "manifest" || tc.name == "metrics certificate" || tc.name == "mqtt password" || tc.name == "replay schedule" {
				// run stops at these before loading the models.
				err := within(t, "run's start", func() error {
					d, err := NewContext(context.Background(), c, Options{Logger: testLog(t)})
					if err == nil {
						d.Close()
					}
					return err
				})
				check("run", err)
			}
		})
	}
}

// `run` waiting for the store's lock (another agent holds it; lock_timeout
// up to 10 minutes) stops waiting when its context ends (SIGTERM, SIGINT)
// and says so. Before, it slept through the whole lock timeout, deaf to
// SIGTERM, until systemd killed it with SIGKILL.
func TestNewStopsWaitingForTheStoreLock(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	cfg := DefaultConfig()
	cfg.Models.Dir = testenv.ModelsDir(t)
	cfg.Store.Path = filepath.Join(t.TempDir(), "agent.db")
	cfg.Store.LockTimeout = 10 * time.Minute
	cfg.Trigger = TriggerConfig{}
	cfg.Metrics.Listen = ""
	cfg.fill()
	other, err := store.Open(cfg.Store.Path, store.Options{}) // the other agent
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		d, err := NewContext(ctx, cfg, Options{Logger: testLog(t), Camera: stillCamera{}})
		if err == nil {
			d.Close()
		}
		done <- err
	}()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("NewContext still waiting for the lock 2 minutes after the cancel (lock_timeout 10m)")
	}
	if !errors.Is(err, store.ErrLockWaitCancelled) || !errors.Is(err, context.Canceled) ||
		!strings.Contains(err.Error(), "stopped waiting for the database lock held by another process") {
		t.Fatalf("NewContext: %v, want the lock wait stopped", err)
	}
	t.Logf("returned after %v: %v", time.Since(start).Round(time.Millisecond), err)
}

// A relative path is resolved against the working directory, not the
// config file's folder: config check (Warnings) says so for each one.
func TestRelativePathsWarned(t *testing.T) {
	c := DefaultConfig()
	c.fill()
	c.Store.Path = "rel2.db"
	c.Models.Dir = "models"
	c.Trigger.HTTP.Socket = "run/t.sock"
	w := strings.Join(c.Warnings(), "\n")
	wd, _ := os.Getwd()
	for _, key := range []string{`store.path "rel2.db"`, `models.dir "models"`, `trigger.http.socket "run/t.sock"`} {
		if !strings.Contains(w, key+" is a relative path: it is resolved against the working directory (now "+wd+"), not the config file's folder") {
			t.Errorf("no warning for %s in %q", key, w)
		}
	}
	if d := DefaultConfig(); len(d.relativePathWarnings()) != 0 {
		t.Errorf("defaults warned: %q", d.relativePathWarnings())
	}
}
