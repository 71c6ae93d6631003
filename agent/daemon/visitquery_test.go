package daemon

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/hal/trigger"
)

// TestVisitOutcomeWhileRunning: GET /v1/visits/{txn_id} on the daemon's
// socket (real models, store, agent, image-folder camera with a face):
// pending (404 visit_pending, Retry-After) until the visit is stored, then
// its id, time, outcome, mask and whether an identity was assigned, and
// nothing else (no identity id, template or card); a coalesced txn_id
// names the visit it joined; an unknown one is 404 visit_unknown; after a
// restart the stored visit is still answered. Before, the outcome was in
// `db export` only, which needs the agent stopped.
func TestVisitOutcomeWhileRunning(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	sock := filepath.Join(t.TempDir(), "trigger.sock")
	cfg := modelsTestConfig(t)
	cfg.Trigger.HTTP.Enabled, cfg.Trigger.HTTP.Socket = true, sock
	cfg.Camera.Source, cfg.Camera.Kind, cfg.Camera.Loop = faceFolder(t, "sample1.jpg"), camera.KindImages, true
	cfg.fill()
	hc := socketClient(sock)
	call := func(method, path, body string) (int, http.Header, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://agent"+path, bytes.NewBufferString(body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header, m
	}
	start := func() func() {
		d, err := New(cfg, Options{Version: "test", Logger: testLog(t)})
		if err != nil {
			t.Fatal(err)
		}
		stop := runDaemon(t, d)
		waitServing(t, hc)
		return stop
	}
	// outcome polls GET /v1/visits/{txn} until the visit is stored; the
	// first answer must be pending or stored.
	outcome := func(txn string) map[string]any {
		t.Helper()
		path := "/v1/visits/" + url.PathEscape(txn)
		deadline := time.Now().Add(15 * time.Second)
		for {
			code, h, m := call("GET", path, "")
			switch {
			case code == http.StatusOK:
				return m
			case code == http.StatusNotFound && m["code"] == trigger.CodeVisitPending && h.Get("Retry-After") == "1":
			default:
				t.Fatalf("GET %s: %d %v", path, code, m)
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: still pending", path)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	stop := start()
	code, _, a := call("POST", "/v1/visit", `{"txn_id":"Q 1","card_hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST: %d %v", code, a)
	}
	code, _, b := call("POST", "/v1/visit", `{"txn_id":"Q-2"}`) // queued behind Q 1
	_, _, c := call("POST", "/v1/visit", `{"txn_id":"Q-3"}`)    // joins Q-2
	if code != http.StatusAccepted || c["status"] != trigger.StatusCoalesced || c["id"] != b["id"] {
		t.Fatalf("Q-2 %d %v, Q-3 %v: want Q-3 coalesced into Q-2", code, b, c)
	}
	got := outcome("Q 1")
	keys := make([]string, 0, len(got))
	for k := range got {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"coalesced", "id", "identified", "mask", "outcome", "time", "txn_id"}; !slices.Equal(keys, want) {
		t.Errorf("fields %v, want exactly %v (no identity id, template or card)", keys, want)
	}
	if got["id"] != a["id"] || got["txn_id"] != "Q 1" || got["outcome"] != "face" || got["identified"] != true ||
		got["coalesced"] != false || (got["mask"] != "masked" && got["mask"] != "unmasked") || got["time"] != a["time"] {
		t.Errorf("Q 1: %v, want visit %v, face, identified", got, a)
	}
	if q3 := outcome("Q-3"); q3["id"] != b["id"] || q3["coalesced"] != true || q3["txn_id"] != "Q-3" {
		t.Errorf("Q-3: %v, want the visit %v it joined, coalesced", q3, b["id"])
	}
	if code, _, m := call("GET", "/v1/visits/Q-never", ""); code != http.StatusNotFound || m["code"] != trigger.CodeVisitUnknown {
		t.Errorf("unknown txn_id: %d %v", code, m)
	}
	if code, _, m := call("GET", "/v1/visits/4111111111111111", ""); code != http.StatusBadRequest || m["code"] != trigger.CodeLooksLikePAN {
		t.Errorf("a card number as txn_id: %d %v", code, m)
	}
	stop()

	defer start()()
	if again := outcome("Q 1"); again["id"] != a["id"] || again["outcome"] != "face" {
		t.Errorf("after a restart: %v", again)
	}
}
