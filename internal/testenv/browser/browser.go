// Package browser drives a real headless Chromium for the project's page
// tests (the fleet UI, the cluster report): it finds the browser, starts it
// through chromedp and gives tests bounded steps and screenshots.
package browser

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// StepTimeout bounds each Do and Get.
const StepTimeout = 30 * time.Second

// Browser is one headless Chromium with one tab.
type Browser struct {
	t     testing.TB
	ctx   context.Context
	shots string
}

// Path returns Debian's Chromium, or skips the test when there is none.
func Path(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	t.Skip("no Chromium (apt-get install chromium; make test does)")
	return ""
}

// Start launches Chromium (Path) headless with a w x h window; screenshots
// go to the directory named by the environment variable shotsEnv, or a
// temporary one. The browser is closed when the test ends.
func Start(t testing.TB, w, h int, shotsEnv string, extra ...chromedp.ExecAllocatorOption) *Browser {
	t.Helper()
	exe := Path(t)
	shots := os.Getenv(shotsEnv)
	if shots == "" {
		shots = t.TempDir()
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(w, h))
	opts = append(opts, extra...)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	// The first call starts the browser; it must not carry a timeout.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &Browser{t: t, ctx: bctx, shots: shots}
}

// ShotsDir is where Shot writes.
func (b *Browser) ShotsDir() string { return b.shots }

// Context is the tab's context, for steps Do and Get do not cover.
func (b *Browser) Context() context.Context { return b.ctx }

// Shot writes a full-page screenshot as NAME.png in the screenshot folder.
func (b *Browser) Shot(name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		png, err := chromedp.FullScreenshot(100)(ctx, tg)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644)
	})
}

// Do runs steps within StepTimeout and fails the test, naming what, on an
// error.
func (b *Browser) Do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// Get runs a that yields a string within StepTimeout.
func (b *Browser) Get(a chromedp.Action[string]) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, StepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.t.Fatal(err)
	}
	return v
}
