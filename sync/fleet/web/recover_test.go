package web

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"html"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/periocular/atm-agent/internal/testenv/browser"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// A device whose alert was refused as signed by another key than the one
// pinned (a reinstalled ATM): the device API and page say so and since
// when; pinning its new key through the API applies the alert and says
// how many; the device is no longer said to be refused.
func TestPinRecoversRefusedMessages(t *testing.T) {
	st, want, newKey := refusedDevice(t)
	srv, hs := newTestServer(t, st)
	cfg := ingest.DefaultConfig()
	cfg.Brokers, cfg.Prefix = []string{"tcp://127.0.0.1:1"}, "atm"
	srv.d.Recover = func(ctx context.Context, site, device string, pub ed25519.PublicKey) (ingest.Recovered, error) {
		return ingest.Recover(ctx, cfg, st, site, device, pub, time.Now())
	}
	ctx := context.Background()

	root := newClient(t, hs.URL)
	csrf := root.login("root", "correct horse")
	_, dev := root.json("GET", "/api/v1/devices/lyon-07/atm-1", "", "")
	if ref, _ := dev["refused"].(map[string]any); ref == nil || ref["reason"] != "other_key" || !strings.HasPrefix(fmt.Sprint(ref["text"]), want) {
		t.Fatalf("device API refused: %v, want other_key and %q", dev["refused"], want)
	}
	if _, page := root.get("/devices/lyon-07/atm-1"); !strings.Contains(html.UnescapeString(page), want) {
		t.Errorf("the device page does not say %q", want)
	}

	body := fmt.Sprintf(`{"public_key":%q}`, wire.EncodePublicKey(newKey.Public().(ed25519.PublicKey)))
	r, out := root.json("PUT", "/api/v1/devices/lyon-07/atm-1/key", "application/json", body, "X-CSRF-Token", csrf)
	if rec, _ := out["recovered"].(map[string]any); r.StatusCode != 200 || rec == nil || rec["applied"] != 1.0 || rec["new"] != 1.0 || rec["unverified"] != 0.0 {
		t.Fatalf("pin the new key: %d %v, want 1 applied, 1 new", r.StatusCode, out)
	}
	a, err := st.Alert(ctx, storage.AlertKey{Site: "lyon-07", Device: "atm-1", AlertID: "a-new-key"})
	if err != nil || !a.Authenticated {
		t.Fatalf("the recovered alert: %+v, %v", a, err)
	}
	if _, dev = root.json("GET", "/api/v1/devices/lyon-07/atm-1", "", ""); dev["refused"] != nil {
		t.Errorf("refused after the recovery: %v", dev["refused"])
	}
}

// refusedDevice is a store where lyon-07/atm-1 (seeded) has its old key
// pinned and an alert signed by newKey held as refused: want is what the
// device says of it.
func refusedDevice(t *testing.T) (st storage.Store, want string, newKey ed25519.PrivateKey) {
	t.Helper()
	st = openBolt(t)
	seed(t, st)
	_, oldKey, _ := ed25519.GenerateKey(nil)
	_, newKey, _ = ed25519.GenerateKey(nil)
	ctx := context.Background()
	if err := st.PutDeviceKey(ctx, storage.DeviceKey{Site: "lyon-07", Device: "atm-1", PublicKey: oldKey.Public().(ed25519.PublicKey), Pinned: time.Now(), By: "root"},
		storage.KeyChange{User: "test", Role: "cli"}); err != nil {
		t.Fatal(err)
	}
	_, signed := fleettest.AlertPayload(t, newKey, "lyon-07", "atm-1", "a-new-key", "p-7", 6, 9)
	recv := time.Now().UTC().Truncate(time.Second)
	if err := st.PutReject(ctx, storage.Reject{Received: recv, Topic: "atm/lyon-07/atm-1/alert", Site: "lyon-07", Device: "atm-1",
		Error: "alert not authenticated: " + wire.ErrMsgSignature.Error() + " (device key ... is pinned for lyon-07/atm-1)", Payload: string(signed)}); err != nil {
		t.Fatal(err)
	}
	return st, "messages signed by another key than the pinned one since " + recv.Format(time.RFC3339) + " (1 refused): a new device key?", newKey
}

// The device page, in a real browser, says why the device is refused,
// and to an administrator what to do.
func TestBrowserDeviceSaysRefused(t *testing.T) {
	browser.Path(t)
	st, want, _ := refusedDevice(t)
	addr := fmt.Sprintf("127.0.0.1:%d", fleettest.FreePort(t))
	t.Cleanup(serveWeb(t, st, addr))
	br := browser.Start(t, 1280, 900, "")
	br.Do("sign in and open the device page",
		chromedp.Navigate("http://"+addr+"/devices/lyon-07/atm-1"),
		chromedp.WaitVisible(chromedp.CSS(`input[name=user]`)),
		signInAs("root"),
		chromedp.WaitVisible(chromedp.CSS(`p.refused`)),
	)
	got := br.Get(chromedp.Evaluate[string](`document.querySelector('p.refused').innerText`))
	if !strings.HasPrefix(got, want) || !strings.Contains(got, "atm-fleet devices key set") {
		t.Errorf("the device page says %q, want %q and how to pin the new key", got, want)
	}
}
