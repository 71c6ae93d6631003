package daemon

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/camera"
	"github.com/periocular/atm-agent/sync/fleet/fleettest"
	"github.com/periocular/atm-agent/sync/wire"
)

// alertRig is a daemon's configuration (real models and store, MQTT to a
// real mosquitto, an image-folder camera with one face photo, a visits
// rule of threshold 2) and a dashboard's view of its retained topics.
type alertRig struct {
	t      *testing.T
	broker string
	cfg    Config
}

func newAlertRig(t *testing.T) *alertRig {
	t.Helper()
	if testing.Short() {
		t.Skip("starts mosquitto and loads the models")
	}
	m := fleettest.StartMosquitto(t, "")
	cfg := mqttTestConfig(t, m.URL(), DeviceConfig{ID: "atm-la", Site: "test"})
	cfg.Camera.Source, cfg.Camera.Kind, cfg.Camera.Loop = faceFolder(t, "sample1.jpg"), camera.KindImages, true
	cfg.Alerts = rules.Config{Rules: []rules.Rule{{Name: "any-visit", Kind: rules.KindVisits, Threshold: 2, Window: time.Hour}}}
	// A minute: a state republished within the waits below is one
	// published on a change, not the periodic one.
	cfg.MQTT.StatusInterval = time.Minute
	return &alertRig{t: t, broker: m.URL(), cfg: cfg}
}

// start runs a daemon on the rig's configuration until the test ends or
// stop is called.
func (r *alertRig) start() (d *Daemon, stop func()) {
	r.t.Helper()
	cfg := r.cfg
	cfg.fill()
	d, err := New(cfg, Options{Version: "test", Logger: testLog(r.t)})
	if err != nil {
		r.t.Fatal(err)
	}
	return d, runDaemon(r.t, d)
}

// retained is the retained message of the device's topic kind (nil:
// none), decoded into v when there is one.
func (r *alertRig) retained(kind string, v any) []byte {
	r.t.Helper()
	b := retained(r.t, r.broker, "atm/test/atm-la/"+kind)
	if b != nil {
		if err := json.Unmarshal(b, v); err != nil {
			r.t.Fatal(err)
		}
	}
	return b
}

func (r *alertRig) state() (wire.DeviceState, []byte) {
	var ds wire.DeviceState
	b := r.retained("state", &ds)
	return ds, b
}

// waitState waits (15 s at most) for a retained state that cond accepts.
func (r *alertRig) waitState(what string, cond func(wire.DeviceState, []byte) bool) wire.DeviceState {
	r.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ds, b := r.state()
		if cond(ds, b) {
			return ds
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s: retained state %s", what, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// raise stores two visits of the same face (transaction ids RRN-001 and
// RRN-002), the second of which raises the alert, and returns the
// retained state's last_alert once it names it.
func (r *alertRig) raise(d *Daemon) *wire.StateAlert {
	r.t.Helper()
	r.waitState("online", func(ds wire.DeviceState, _ []byte) bool { return ds.State == wire.StateOnline })
	for i := range uint64(2) {
		d.Agent().Trigger(visit.Trigger{Source: "test", Context: visit.Context{TxnID: "RRN-00" + string(rune('1'+i))}})
		deadline := time.Now().Add(10 * time.Second)
		for d.Agent().Stats().Committed <= i {
			if time.Now().After(deadline) {
				r.t.Fatalf("visit %d not stored", i+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	la := r.waitState("the alert in the state", func(ds wire.DeviceState, _ []byte) bool { return ds.LastAlert != nil }).LastAlert
	if la.Rule != "any-visit" || la.Seq == 0 || la.IdentityID == "" || la.VisitID == "" || la.TxnID != "RRN-002" {
		r.t.Fatalf("last_alert %+v", la)
	}
	return la
}

// TestLastAlertSurvivesRestart: the daemon raises an alert and its
// retained state names it in last_alert. After a restart on the same
// store, the first state of the new run names the same alert (id, seq,
// raised) before any new one. Before, a restart cleared last_alert, and
// Home Assistant's Last alert sensor went unknown.
func TestLastAlertSurvivesRestart(t *testing.T) {
	r := newAlertRig(t)
	d, stop := r.start()
	before := r.raise(d)
	stop()

	d, stop = r.start()
	defer stop()
	after := r.waitState("the restarted agent's state", func(ds wire.DeviceState, _ []byte) bool {
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

// TestErasedAlertLeavesRetainedState: the daemon raises an alert, its
// retained state names it (identity, visit, the bank's txn_id) and its
// retained summary lists the identity. The identity is erased while the
// agent runs (purge_identity), or its alert expires (retention, 6 s,
// purged every second): within seconds, well before the minute of
// status_interval, the retained state has no last_alert and names none
// of the three, and after the erasure a fresh retained summary no longer
// lists the identity. Before, the running agent kept republishing the
// erased alert in its state (only a restart dropped it), and the
// summary listing the erased identity stayed retained until the next
// periodic one (agent.summary_interval, 5 minutes by default).
func TestErasedAlertLeavesRetainedState(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tweak func(*Config)
		erase func(*testing.T, *Daemon, string)
	}{
		{"purge_identity", func(*Config) {}, func(t *testing.T, d *Daemon, id string) {
			n, err := d.Agent().PurgeIdentity(context.Background(), id)
			if err != nil || n != 2 {
				t.Fatalf("PurgeIdentity(%s): %d visits, %v", id, n, err)
			}
		}},
		{"retention", func(c *Config) { c.Store.Retention, c.Agent.PurgeInterval = 6*time.Second, time.Second }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newAlertRig(t)
			tc.tweak(&r.cfg)
			d, stop := r.start()
			defer stop()
			la := r.raise(d)
			var sum wire.Summary
			if tc.erase != nil {
				if err := d.Agent().PublishSummary(context.Background()); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(10 * time.Second)
				for b := r.retained("summary", &sum); !strings.Contains(string(b), la.IdentityID); b = r.retained("summary", &sum) {
					if time.Now().After(deadline) {
						t.Fatalf("retained summary %s: does not list %s", b, la.IdentityID)
					}
					time.Sleep(100 * time.Millisecond)
				}
				tc.erase(t, d, la.IdentityID)
			}
			erased := time.Now()
			if tc.erase == nil {
				erased = la.Raised.Add(r.cfg.Store.Retention) // when it expired
			}
			names := func(b []byte) string {
				for _, s := range []string{la.IdentityID, la.VisitID, la.TxnID, la.AlertID} {
					if strings.Contains(string(b), s) {
						return s
					}
				}
				return ""
			}
			r.waitState("a state without the erased alert", func(ds wire.DeviceState, b []byte) bool {
				return ds.State == wire.StateOnline && ds.LastAlert == nil && names(b) == ""
			})
			t.Logf("retained state without the alert %v after its erasure or expiry", time.Since(erased).Round(100*time.Millisecond))
			if tc.erase == nil {
				return
			}
			deadline := time.Now().Add(10 * time.Second)
			var fresh wire.Summary
			for b := r.retained("summary", &fresh); fresh.Seq <= sum.Seq || names(b) != ""; b = r.retained("summary", &fresh) {
				if time.Now().After(deadline) {
					t.Fatalf("retained summary after the erasure %s: want one after seq %d without %s", b, sum.Seq, la.IdentityID)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if fresh.Totals.Visits.H1 != 0 || len(fresh.Identities) != 0 {
				t.Fatalf("summary after the erasure: %+v", fresh)
			}
		})
	}
}
