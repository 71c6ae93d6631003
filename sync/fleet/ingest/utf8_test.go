package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// A payload that is not UTF-8 is refused (a reject with its reason,
// counted), through a real mosquitto: before, Go's decoder read each bad
// byte as U+FFFD, and two alerts whose alert_id were x\xff and x\xfe
// became one alert x\uFFFD raised twice; a rule r\xff\xff was stored as
// r\uFFFD\uFFFD. A valid U+FFFD (EF BF BD) is text like any other.
func TestIngestRefusesNonUTF8(t *testing.T) {
	m := fleettest.StartMosquitto(t, "")
	st := openBolt(t, filepath.Join(t.TempDir(), "fleet.db"))
	defer st.Close()
	in := start(t, m.URL(), st, "fleet-utf8", "")
	defer in.stop(t)

	example, err := wire.Schemas.ReadFile("schemas/examples/alert.json")
	if err != nil {
		t.Fatal(err)
	}
	// alert is the example alert of s1/d1 with seq, its message id, and
	// the raw bytes of its alert_id and rule.
	alert := func(seq int, id, rule string) []byte {
		var a map[string]any
		if err := json.Unmarshal(example, &a); err != nil {
			t.Fatal(err)
		}
		a["site"], a["device"], a["seq"], a["message_id"] = "s1", "d1", seq, "m-"+strconv.Itoa(seq)
		a["alert_id"], a["rule"] = "ALERT-ID", "RULE"
		b, _ := json.Marshal(a)
		b = bytes.Replace(b, []byte("ALERT-ID"), []byte(id), 1)
		return bytes.Replace(b, []byte("RULE"), []byte(rule), 1)
	}
	const topic = prefix + "/s1/d1/alert"
	bad := []struct {
		payload []byte
		at      string // the offset the reason names
	}{
		{alert(1, "x\xff", "many-visits-24h"), "x\xff"},
		{alert(2, "x\xfe", "many-visits-24h"), "x\xfe"},
		{alert(3, "a-3", "r\xff\xff"), "r\xff"},
	}
	for _, b := range bad {
		fleettest.Publish(t, m.URL(), topic, b.payload, false)
	}
	fleettest.Publish(t, m.URL(), topic, alert(4, "x\uFFFD", "many-visits-24h"), false)
	fleettest.WaitFor(t, 10*time.Second, "3 rejects and 1 alert", func() bool {
		s := in.Stats()
		return s.Rejected == 3 && s.Applied == 1
	})
	rj, err := st.Rejects(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rj) != len(bad) {
		t.Fatalf("%d rejects, want %d", len(rj), len(bad))
	}
	for i, b := range bad {
		r := rj[len(rj)-1-i] // newest first
		want := "not UTF-8 (an invalid byte at " + strconv.Itoa(bytes.Index(b.payload, []byte(b.at))+len(b.at)-1) + ")"
		if r.Topic != topic || !strings.Contains(r.Error, want) {
			t.Errorf("reject %d: %s %q, want %q", i, r.Topic, r.Error, want)
		}
	}
	alerts, err := st.Alerts(context.Background(), storage.AlertFilter{Site: "s1", Device: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(alerts) != 1 || alerts[0].AlertID != "x\uFFFD" || alerts[0].Raises != 1 || alerts[0].Seq != 4 {
		t.Errorf("alerts: %+v, want only the valid x\\uFFFD of seq 4, raised once", alerts)
	}
	if d := device(t, st, "s1", "d1"); d.Rejected != 3 {
		t.Errorf("device rejected %d, want 3", d.Rejected)
	}
}
