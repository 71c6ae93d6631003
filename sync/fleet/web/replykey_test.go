package web

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// The device page and API say whether the device's command replies are
// authenticated: without a pinned key, "unauthenticated" and reply_key
// null; with one, its fingerprint, when it was pinned and, to an admin
// only, by whom.
func TestDeviceReplyKeyShown(t *testing.T) {
	st := openBolt(t)
	seed(t, st)
	_, hs := newTestServer(t, st)
	ana := newClient(t, hs.URL)
	ana.login("ana", "correct horse")
	api := func() map[string]json.RawMessage {
		t.Helper()
		_, body := ana.get("/api/v1/devices/lyon-07/atm-1")
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		return m
	}
	if m := api(); string(m["reply_key"]) != "null" {
		t.Errorf("no pin: reply_key %s", m["reply_key"])
	}
	if _, page := ana.get("/devices/lyon-07/atm-1"); !strings.Contains(page, "command replies unauthenticated") {
		t.Error("no pin: the device page does not say its replies are unauthenticated")
	}
	pub := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
	if err := st.PutDeviceKey(context.Background(), storage.DeviceKey{Site: "lyon-07", Device: "atm-1", PublicKey: pub,
		Pinned: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), By: "ops"}); err != nil {
		t.Fatal(err)
	}
	var k apiReplyKey
	if err := json.Unmarshal(api()["reply_key"], &k); err != nil || k.Fingerprint != wire.Fingerprint(pub) ||
		k.PublicKey != wire.EncodePublicKey(pub) {
		t.Errorf("pinned: reply_key %+v, %v", k, err)
	}
	_, page := ana.get("/devices/lyon-07/atm-1")
	if strings.Contains(page, "unauthenticated") || !strings.Contains(page, wire.Fingerprint(pub)) {
		t.Error("pinned: the device page does not show the key's fingerprint")
	}
	// Who pinned it (an admin's login): to an admin only.
	if strings.Contains(page, "by ops") || strings.Contains(string(api()["reply_key"]), `"by"`) {
		t.Errorf("an analyst is told who pinned the key: %s", api()["reply_key"])
	}
	ana.login("root", "correct horse")
	_, page = ana.get("/devices/lyon-07/atm-1")
	if json.Unmarshal(api()["reply_key"], &k) != nil || k.By != "ops" || !strings.Contains(page, "by ops") {
		t.Errorf("the admin is not told who pinned the key: %+v", k)
	}
}
