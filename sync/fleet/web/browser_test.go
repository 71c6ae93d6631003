package web

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/periocular/atm-agent/internal/testenv/browser"
	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
)

const browserPrefix = "atm/browser"

// service is one run of the fleet service (store, ingest, web) on a fixed
// address, restartable on the same store file.
type service struct {
	st     *boltstore.Store
	in     *ingest.Ingester
	srv    *Server
	cancel context.CancelFunc
	done   chan struct{}
}

func startService(t *testing.T, dbPath, broker, addr string) *service {
	t.Helper()
	return startServiceCommands(t, dbPath, broker, addr, nil)
}

// startServiceCommands is startService with commands signed by key (nil:
// off), replies awaited 2 s, resent every 300 ms.
func startServiceCommands(t *testing.T, dbPath, broker, addr string, key ed25519.PrivateKey) *service {
	t.Helper()
	st, err := boltstore.Open(dbPath, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	icfg := ingest.DefaultConfig()
	icfg.Brokers, icfg.Prefix, icfg.ClientID = []string{broker}, browserPrefix, "fleet-browser"
	icfg.ReconnectBackoffMax, icfg.ConnectTimeout, icfg.KeepAlive = 500*time.Millisecond, 2*time.Second, 2*time.Second
	in, err := ingest.New(icfg, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	deps := Deps{IngestStats: func() any { return in.Stats() }, Retention: storage.Retention{History: time.Hour * 24, Alerts: time.Hour * 24}}
	if key != nil {
		ccfg := command.DefaultConfig()
		ccfg.Enabled, ccfg.PrivateKeyFile, ccfg.ReplyTimeout, ccfg.ResendInterval = true, "unused", 2*time.Second, 300*time.Millisecond
		cmd, err := command.New(ccfg, browserPrefix, key, in, nil)
		if err != nil {
			t.Fatal(err)
		}
		in.Route(cmd.ReplyFilter(), cmd.Handle)
		deps.Commands, deps.CommandStats = cmd, func() any { return cmd.Stats() }
	}
	wcfg := DefaultConfig()
	wcfg.Listen, wcfg.UsersFile = addr, "unused"
	srv, err := New(wcfg, st, testUsers(t), []byte(strings.Repeat("s", 32)), deps)
	if err != nil {
		t.Fatal(err)
	}
	ln := listenRetry(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	s := &service{st: st, in: in, srv: srv, cancel: cancel, done: make(chan struct{})}
	inDone := make(chan struct{})
	go func() { defer close(inDone); in.Run(ctx) }()
	go func() {
		defer close(s.done)
		defer func() { <-inDone }()
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	fleettest.WaitFor(t, 10*time.Second, "ingest subscribed", func() bool { return in.Stats().Connected })
	return s
}

func (s *service) stop(t *testing.T) {
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("web server did not stop within 10s")
	}
	s.st.Close()
}

// A real headless Chromium against the real service: sign-in, the fleet
// page lists the ATMs, an alert raised by an agent appears on the open
// alerts page without a reload (SSE), acknowledging it in the page persists
// across a restart of the service. Screenshots of every page go to
// $ATM_FLEET_SCREENSHOTS (docs/img/fleet when refreshing the docs) or a temp dir.
func TestBrowserLiveAlertAndAck(t *testing.T) {
	browser.Path(t) // skips early without Chromium
	m := fleettest.StartMosquitto(t, "")
	dir := t.TempDir()

	addr := fmt.Sprintf("127.0.0.1:%d", fleettest.FreePort(t))
	base := "http://" + addr
	dbPath := filepath.Join(dir, "fleet.db")
	svc := startService(t, dbPath, m.URL(), addr)

	a1 := fleettest.StartAgent(t, m.URL(), browserPrefix, "lyon-07", "atm-0042")
	a2 := fleettest.StartAgent(t, m.URL(), browserPrefix, "lyon-07", "atm-0043")
	a3 := fleettest.StartAgent(t, m.URL(), browserPrefix, "paris-01", "atm-0100", fleettest.CameraFault)
	a1.Summary(t, 4, "p-8c1f02d9", "p-11aa22bb")
	a2.Summary(t, 2, "p-0b0b0b0b")
	a3.Summary(t, 1)
	fleettest.WaitFor(t, 10*time.Second, "3 summaries ingested", func() bool { return svc.in.Stats().Applied == 3 })

	br := browser.Start(t, 1280, 900, "ATM_FLEET_SCREENSHOTS")
	shot, do, get := br.Shot, br.Do, br.Get
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	do("sign in and open the fleet page",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(css(`input[name=user]`)),
		shot("login"),
		signIn(),
		chromedp.WaitVisible(css(`#devices`)),
		chromedp.WaitVisible(css(`#live-state.on`)), // the SSE stream is open
		shot("fleet"),
	)
	fleetText := get(chromedp.Text(css(`#devices`)))
	for _, want := range []string{"lyon-07 / atm-0042", "lyon-07 / atm-0043", "paris-01 / atm-0100", "online", "fault"} {
		if !strings.Contains(fleetText, want) {
			t.Errorf("fleet page lacks %q:\n%s", want, fleetText)
		}
	}

	// The alerts page is open; an agent raises an alert; it appears without
	// a reload (the marker set on the window survives).
	do("open the alerts page", chromedp.Navigate(base+"/alerts"), chromedp.WaitVisible(css(`#live-state.on`)))
	get(chromedp.Evaluate[string](`window.__noReload = "still here"`))
	alertID := a1.Alert(t, "many-visits-24h", "p-8c1f02d9", 9)
	sel := fmt.Sprintf(`tr.alert[data-alert=%q]`, alertID)
	start := time.Now()
	do("the alert appears live", chromedp.WaitVisible(css(sel)))
	t.Logf("alert visible %v after the agent enqueued it", time.Since(start).Round(time.Millisecond))
	if marker := get(chromedp.Evaluate[string](`String(window.__noReload)`)); marker != "still here" {
		t.Fatalf("the page was reloaded (marker %q): the alert did not arrive live", marker)
	}
	do("screenshot", shot("alerts"))

	// Acknowledge it in the page.
	do("acknowledge",
		chromedp.SendKeys(css(sel+` input[name=note]`), "called the branch"),
		chromedp.Click(css(sel+` button[value=acknowledge]`)),
		chromedp.WaitVisible(css(sel+`.acknowledged`)),
	)
	row := get(chromedp.Text(css(sel)))
	if !strings.Contains(row, "ack ana") || !strings.Contains(row, "called the branch") || !strings.Contains(row, "txn T-") {
		t.Errorf("acknowledged row (with the visit's transaction id): %q", row)
	}
	do("device and identity pages",
		chromedp.Navigate(base+"/devices/lyon-07/atm-0042"),
		chromedp.WaitVisible(css(`svg.chart`)),
		shot("device"),
		chromedp.Navigate(base+"/devices/lyon-07/atm-0042/identities/p-8c1f02d9"),
		chromedp.WaitVisible(css(`table.timeline`)),
		shot("identity"),
	)

	// Restart the service on the same store file: the acknowledgement stays.
	svc.stop(t)
	svc = startService(t, dbPath, m.URL(), addr)
	defer svc.stop(t)
	do("after restart", chromedp.Navigate(base+"/alerts?state=all"), chromedp.WaitVisible(css(sel+`.acknowledged`)))
	row = get(chromedp.Text(css(sel)))
	if !strings.Contains(row, "ack ana") || !strings.Contains(row, "called the branch") {
		t.Errorf("after restart the row reads %q", row)
	}
	t.Logf("screenshots in %s", br.ShotsDir())
}

// alertApplier raises alerts of lyon-07/atm-1 (identity p-1) in st, a
// second apart by seq.
func alertApplier(t *testing.T, st storage.Store) func(seq uint64, id string) {
	now := time.Now().UTC()
	return func(seq uint64, id string) {
		t.Helper()
		if _, err := st.Apply(context.Background(), []storage.Message{storetest.Alert("lyon-07", "atm-1", seq, now.Add(time.Duration(seq)*time.Second), id, "p-1", 6)}); err != nil {
			t.Fatal(err)
		}
	}
}

// serveWeb serves the web side only on addr over st until the returned stop.
func serveWeb(t *testing.T, st storage.Store, addr string) (stop func()) {
	t.Helper()
	return serveWebKey(t, st, addr, strings.Repeat("s", 32))
}

// serveWebKey is serveWeb signing sessions with key (a different key ends
// every session, like a restart with a random key).
func serveWebKey(t *testing.T, st storage.Store, addr, key string) (stop func()) {
	t.Helper()
	wcfg := DefaultConfig()
	wcfg.Listen, wcfg.UsersFile = addr, "unused"
	srv, err := New(wcfg, st, testUsers(t), []byte(key), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenRetry(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	return func() { cancel(); <-done }
}

// A keyboard user on the alerts page keeps their place: while a control
// in the page has focus (here an Acknowledge button), a live update waits
// instead of replacing the page under it (which dropped the focus to the
// body); it is applied when the focus leaves. The live stream also comes
// back by itself after the service restarts: a new alert appears without
// a reload.
func TestBrowserLiveKeepsFocusAndRecovers(t *testing.T) {
	browser.Path(t)
	st := openBolt(t)
	apply := alertApplier(t, st)
	apply(1, "a-first")
	addr, stop, br := liveAlertsPage(t, st, "/alerts")
	do, get := br.Do, br.Get
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	get(chromedp.Evaluate[string](`window.__noReload = "still here"`))

	do("focus the Acknowledge button", chromedp.Focus(css(`tr.alert[data-alert="a-first"] button[value=acknowledge]`)))
	apply(2, "a-second")
	time.Sleep(1500 * time.Millisecond) // far longer than the 250 ms debounce and a refresh
	focused := get(chromedp.Evaluate[string](`(document.activeElement.closest('tr.alert') || {}).getAttribute ? document.activeElement.closest('tr.alert').getAttribute('data-alert') + ' ' + document.activeElement.value : 'focus lost to ' + document.activeElement.tagName`))
	if focused != "a-first acknowledge" {
		t.Errorf("after a live update the focus is on %q, want the a-first Acknowledge button", focused)
	}
	do("the update is applied when the focus leaves",
		chromedp.Evaluate[chromedp.Void](`document.activeElement.blur(); void 0`),
		chromedp.WaitVisible(css(`tr.alert[data-alert="a-second"]`)),
	)

	// Restart the web service on the same store: the stream reconnects
	// and the next alert arrives without a reload.
	(*stop)()
	*stop = serveWeb(t, st, addr)
	time.Sleep(3 * time.Second) // the stream's retry is 2 s
	apply(3, "a-third")
	do("an alert after the restart appears live", chromedp.WaitVisible(css(`tr.alert[data-alert="a-third"]`)), chromedp.WaitVisible(css(`#live-state.on`)))
	if marker := get(chromedp.Evaluate[string](`String(window.__noReload)`)); marker != "still here" {
		t.Fatalf("the page was reloaded (marker %q)", marker)
	}
}

// When the session ends under an open page (here the service restarts with
// a new session key, as the demo does with its random key), the live
// stream is refused (401) and the browser's EventSource gives up: the page
// must say so and offer to sign in again, back to the same page, instead
// of showing "reconnecting" forever.
func TestBrowserLiveSessionEnded(t *testing.T) {
	browser.Path(t)
	st := openBolt(t)
	if _, err := st.Apply(context.Background(), []storage.Message{storetest.Alert("lyon-07", "atm-1", 1, time.Now().UTC(), "a-first", "p-1", 6)}); err != nil {
		t.Fatal(err)
	}
	addr, stop, br := liveAlertsPage(t, st, "/alerts?state=all")
	do, get := br.Do, br.Get
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	(*stop)()
	*stop = serveWebKey(t, st, addr, strings.Repeat("n", 32))
	start := time.Now()
	ctx, cancel := context.WithTimeout(br.Context(), 15*time.Second)
	err := chromedp.Do(ctx, chromedp.WaitVisible(css(`#session-ended a`)))
	cancel()
	if err != nil {
		dot := get(chromedp.Evaluate[string](`document.getElementById('live-state').className + ' (' + document.getElementById('live-state').title + ')'`))
		t.Fatalf("15 s after the session ended the page shows no sign-in message (live dot: %s): %v", dot, err)
	}
	t.Logf("sign-in message shown %v after the restart", time.Since(start).Round(time.Millisecond))
	msg := get(chromedp.Text(css(`#session-ended`)))
	if !strings.Contains(msg, "Sign in again") {
		t.Errorf("message %q", msg)
	}
	href := get(chromedp.Evaluate[string](`document.querySelector('#session-ended a').getAttribute('href')`))
	if href != "/login?next=%2Falerts%3Fstate%3Dall" {
		t.Errorf("sign-in link %q, want back to /alerts?state=all", href)
	}
	if dot := get(chromedp.Evaluate[string](`document.getElementById('live-state').className`)); !strings.Contains(dot, "off") {
		t.Errorf("live dot %q, want off", dot)
	}

	// Following the link leads to the sign-in page, and signing in brings
	// the analyst back to the page they were on, live again.
	do("follow the link and sign in again",
		chromedp.Click(css(`#session-ended a`)),
		chromedp.WaitVisible(css(`form.login input[name=user]`)),
	)
	if u := get(chromedp.Evaluate[string](`location.pathname`)); u != "/login" {
		t.Errorf("the link led to %q, want /login", u)
	}
	do("sign in again",
		signIn(),
		chromedp.WaitVisible(css(`tr.alert[data-alert="a-first"]`)),
		chromedp.WaitVisible(css(`#live-state.on`)),
	)
	if u := get(chromedp.Evaluate[string](`location.pathname + location.search`)); u != "/alerts?state=all" {
		t.Errorf("after signing in again the page is %q, want /alerts?state=all", u)
	}
}

// signIn fills and sends the sign-in form as the test user ana.
func signIn() chromedp.Action[chromedp.Void] { return signInAs("ana") }

// signInAs fills and sends the sign-in form as a user of testUsers.
func signInAs(user string) chromedp.Action[chromedp.Void] {
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	return chromedp.Steps(
		chromedp.SendKeys(css(`input[name=user]`), user),
		chromedp.SendKeys(css(`input[name=password]`), "correct horse"),
		chromedp.Click(css(`form.login button`)),
	)
}

// liveAlertsPage serves the web UI on st at a free loopback port, signs
// in in a new browser and opens path, an alerts page holding the alert
// a-first, with its live stream on. *stop stops the service (the test
// may replace it by a restarted one); whatever it holds at the end runs.
func liveAlertsPage(t *testing.T, st storage.Store, path string) (addr string, stop *func(), br *browser.Browser) {
	t.Helper()
	return liveAlertsPageAs(t, st, path, "ana")
}

// liveAlertsPageAs is liveAlertsPage signed in as user.
func liveAlertsPageAs(t *testing.T, st storage.Store, path, user string) (addr string, stop *func(), br *browser.Browser) {
	t.Helper()
	addr = fmt.Sprintf("127.0.0.1:%d", fleettest.FreePort(t))
	s := serveWeb(t, st, addr)
	stop = &s
	t.Cleanup(func() { (*stop)() })
	br = browser.Start(t, 1280, 900, "")
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	br.Do("sign in and open "+path,
		chromedp.Navigate("http://"+addr+path),
		chromedp.WaitVisible(css(`input[name=user]`)),
		signInAs(user),
		chromedp.WaitVisible(css(`tr.alert[data-alert="a-first"]`)),
		chromedp.WaitVisible(css(`#live-state.on`)),
	)
	return addr, stop, br
}

// A viewer's alerts page shows the alerts live, with no Acknowledge or
// Resolve form and no Review link, also once a live update has redrawn it.
func TestBrowserViewerReadsOnly(t *testing.T) {
	browser.Path(t)
	st := openBolt(t)
	apply := alertApplier(t, st)
	apply(1, "a-first")
	_, _, br := liveAlertsPageAs(t, st, "/alerts", "vic")
	controls := `String(document.querySelectorAll('form.act, a.review, a[href="/admin"]').length)`
	if n := br.Get(chromedp.Evaluate[string](controls)); n != "0" {
		t.Errorf("a viewer's alerts page has %s act forms, Review or Settings links", n)
	}
	apply(2, "a-second")
	br.Do("a live update", chromedp.WaitVisible(chromedp.CSS(`tr.alert[data-alert="a-second"]`)))
	if n := br.Get(chromedp.Evaluate[string](controls)); n != "0" {
		t.Errorf("after a live update a viewer's alerts page has %s act forms, Review or Settings links", n)
	}
}

// listenRetry listens on addr, retrying for a while: the previous run's
// socket on the same port may linger a moment.
func listenRetry(t *testing.T, addr string) net.Listener {
	t.Helper()
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal(err)
	return nil
}
