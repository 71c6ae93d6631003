package mqttsync

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/sync/wire"
)

// TestMosquittoOverlongInputsFitSchemas: a status, state, summary and
// alert built from inputs longer than the schemas allow (a by-id camera
// path and an RTSP URL as camera names, a driver error of 2000
// characters, 40 reasons, long model ids and agent version, a rule name
// and txn_id over their limits) arrive through a real mosquitto valid
// against docs/schemas. Before, the camera name was the source as it is
// and the fleet refused every status and state of such a device
// ("maxLength: got 76, want 64").
func TestMosquittoOverlongInputsFitSchemas(t *testing.T) {
	skipShort(t)
	m := newMosquitto(t, "")
	col := newCollector(t, m.url("tcp"), "dash", "atm/test/#", false, nil)
	byID := "/dev/v4l/by-id/usb-Sonix_Technology_Co.__Ltd._USB_2.0_Camera_SN0001-video-index0"
	rtsp := "rtsp://127.0.0.1:5540/cam/realmonitor?channel=1&subtype=0&unicast=true&proto=Onvif&é=日本日本日本"
	long := strings.Repeat("très long, ", 200)
	reasons := make([]string, 40)
	for i := range reasons {
		reasons[i] = "camera: " + long
	}
	cams := []wire.CameraHealth{{Name: byID, Error: long}, {Name: rtsp, Error: "open camera: " + long}}
	for range 20 {
		cams = append(cams, wire.CameraHealth{Name: ""})
	}
	now := time.Now()
	ob := &memOutbox{}
	env := wire.NewEnvelope("s1", "atm-1", now)
	al := wire.NewAlert(env, visit.Alert{ID: "a-1", Rule: strings.Repeat("r", 300), Kind: "visits", IdentityID: "p-0001",
		TxnID: strings.Repeat("7", 65), Window: (2562047 * time.Hour).String(), WindowStart: now, Count: 5, Threshold: 5,
		FirstSeen: now, LastSeen: now, Raised: now})
	b, err := json.Marshal(al)
	if err != nil {
		t.Fatal(err)
	}
	ob.Add(wire.KindAlert, now, b)
	ob.Add(wire.KindSummary, now, payload(t, wire.KindSummary, 1, now))
	cfg := testConfig(m.url("tcp"))
	pub := withDeviceKey(t, &cfg)
	runPublisher(t, cfg, Deps{Outbox: ob, Status: func() wire.Status {
		return wire.Status{AgentVersion: strings.Repeat("v1.2.3-dirty-", 20), Models: []string{strings.Repeat("m", 500), "", "yunet"},
			Cameras: cams, Health: wire.HealthDegraded, Reasons: reasons, Outbox: &wire.OutboxStats{}}
	}})
	waitFor(t, 5*time.Second, "status, state, summary and alert", func() bool {
		return len(col.byKind("status")) > 0 && len(col.byKind("state")) > 0 && len(col.byKind("summary")) > 0 && len(col.byKind("alert")) > 0
	})
	for _, k := range []string{"status", "state", "summary", "alert"} {
		s := compileDocsSchema(t, k)
		for _, r := range col.byKind(k) {
			validateAgainst(t, s, r.Payload)
		}
	}
	verifyAll(t, col, pub, "s1", "atm-1") // signed, and fit with their sig
	var st wire.Status
	if err := json.Unmarshal(col.byKind("status")[0].Payload, &st); err != nil {
		t.Fatal(err)
	}
	if got, want := st.Cameras[0].Name, "…"+byID[len(byID)-63:]; got != want {
		t.Errorf("by-id camera named %q, want its end %q", got, want)
	}
	if !strings.HasSuffix(st.Cameras[0].Error, "…") || !strings.HasSuffix(st.Reasons[31], "9 more reasons") {
		t.Errorf("error %q and last reason %q: want cut with … and the reasons left out counted", st.Cameras[0].Error, st.Reasons[31])
	}
	var a wire.Alert
	if err := json.Unmarshal(col.byKind("alert")[0].Payload, &a); err != nil || a.TxnID != "" {
		t.Errorf("alert txn_id %q (err %v): want an over-long one left out", a.TxnID, err)
	}
}
