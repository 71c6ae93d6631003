package daemon

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/wire"
)

// TestLastAlertSurvivesRestart: the daemon (real models, store, agent,
// MQTT to a real mosquitto; an image-folder camera with one face photo)
// raises an alert (the same face twice, a visits rule of threshold 2), and its retained state names it in
// last_alert. After a restart on the same store, the first state of the
// new run names the same alert (id, seq, raised) before any new one.
// Before, a restart cleared last_alert, and Home Assistant's Last alert
// sensor went unknown.
func TestLastAlertSurvivesRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts mosquitto and loads the models")
	}
	m := fleettest.StartMosquitto(t, "")
	cfg := mqttTestConfig(t, m.URL(), DeviceConfig{ID: "atm-la", Site: "test"})
	cfg.Camera.Source, cfg.Camera.Kind, cfg.Camera.Loop = faceFolder(t, "sample1.jpg"), camera.KindImages, true
	cfg.Alerts = rules.Config{Rules: []rules.Rule{{Name: "any-visit", Kind: rules.KindVisits, Threshold: 2, Window: time.Hour}}}
	cfg.MQTT.StatusInterval = time.Minute
	cfg.fill()
	state := func() wire.DeviceState {
		var ds wire.DeviceState
		if b := retained(t, m.URL(), "atm/test/atm-la/state"); b != nil {
			if err := json.Unmarshal(b, &ds); err != nil {
				t.Fatal(err)
			}
		}
		return ds
	}
	waitState := func(what string, cond func(wire.DeviceState) bool) wire.DeviceState {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			ds := state()
			if cond(ds) {
				return ds
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: retained state %+v", what, ds)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	d, err := New(cfg, Options{Version: "test", Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	stop := runDaemon(t, d)
	waitState("online", func(ds wire.DeviceState) bool { return ds.State == wire.StateOnline })
	for i := range uint64(2) {
		d.Agent().Trigger(visit.Trigger{Source: "test"})
		deadline := time.Now().Add(10 * time.Second)
		for d.Agent().Stats().Committed <= i {
			if time.Now().After(deadline) {
				t.Fatalf("visit %d not stored", i+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	before := waitState("the alert in the state", func(ds wire.DeviceState) bool { return ds.LastAlert != nil }).LastAlert
	if before.Rule != "any-visit" || before.Seq == 0 {
		t.Fatalf("last_alert %+v", before)
	}
	stop()

	d, err = New(cfg, Options{Version: "test", Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer runDaemon(t, d)()
	after := waitState("the restarted agent's state", func(ds wire.DeviceState) bool {
		return ds.State == wire.StateOnline && ds.StartedAt.After(before.Raised) // the new run's
	})
	if after.LastAlert == nil || after.LastAlert.AlertID != before.AlertID || after.LastAlert.Seq != before.Seq ||
		!after.LastAlert.Raised.Equal(before.Raised) || after.LastAlert.IdentityID != before.IdentityID {
		t.Fatalf("last_alert after the restart %+v, want %+v", after.LastAlert, before)
	}
	if s := d.Agent().Stats(); s.Triggers != 0 {
		t.Fatalf("%d triggers after the restart: the alert must come from the store", s.Triggers)
	}
}
