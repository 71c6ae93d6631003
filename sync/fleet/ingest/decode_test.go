package ingest

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

func goodAlert(site, dev, id string, seq uint64, now time.Time) wire.Alert {
	a := wire.Alert{Envelope: wire.NewEnvelope(site, dev, now), AlertID: id, Rule: "many-visits-24h", Kind: "identity",
		IdentityID: "p-1", Window: "24h", WindowStart: now.Add(-time.Hour), Count: 7, Threshold: 5,
		FirstSeen: now.Add(-time.Hour), LastSeen: now, Raised: now}
	a.Seq, a.MessageID = seq, id+"-m"
	return a
}

// edit marshals v, lets f change it as a generic object, and marshals it
// again; raw members (keys in other cases, duplicates) are pasted in
// before the closing brace.
func edit(v any, f func(map[string]any), raw string) []byte {
	b, _ := json.Marshal(v)
	var obj map[string]any
	json.Unmarshal(b, &obj)
	if f != nil {
		f(obj)
	}
	b, _ = json.Marshal(obj)
	if raw != "" {
		b = append(append(b[:len(b)-1], ","+raw...), '}')
	}
	return b
}

// Payloads the schema read past, or that passed it, and that then broke
// the stores or bypassed the schema's limits: each is refused by Decode,
// with its reason, before anything is stored.
func TestDecodeRefuses(t *testing.T) {
	in := newWriter(t, struct{ storage.Store }{}) // Decode stores nothing
	in.cfg.Prefix = prefix
	now := time.Now().UTC()
	alert := goodAlert("s1", "d1", "a-1", 3, now)
	set := func(k string, v any) func(map[string]any) { return func(o map[string]any) { o[k] = v } }
	sum := wire.Summary{Envelope: wire.NewEnvelope("s1", "d1", now), Identities: []wire.IdentityCounts{{ID: "p-1", FirstSeen: now, LastSeen: now}}}
	sum.Seq, sum.MessageID = 4, "s-4"
	status := wire.Status{Envelope: wire.NewEnvelope("s1", "d1", now), State: wire.StateOnline, StartedAt: now}
	status.MessageID = "st-1"
	status.SchemaVersion = wire.StatusSchemaVersion
	sum.SchemaVersion = wire.SummarySchemaVersion
	big := strings.Repeat("X", 40000)
	for _, tc := range []struct {
		name, kind string
		payload    []byte
		want       string // "": accepted
	}{
		{"alert", "alert", edit(alert, nil, ""), ""},
		{"summary", "summary", edit(sum, nil, ""), ""},
		{"status", "status", edit(status, nil, ""), ""},
		{"a newer agent's field", "alert", edit(alert, set("camera_zone", map[string]any{"x": 1}), ""), ""},
		{"40 KB ALERT_ID", "alert", edit(alert, nil, `"ALERT_ID":"`+big+`"`), `field "ALERT_ID": field names are lower-case snake_case`},
		{"Rule", "alert", edit(alert, nil, `"Rule":"`+big+`"`), `field "Rule"`},
		{"card-number identity", "alert", edit(alert, nil, `"IDENTITY_ID":"4111 1111 1111 1111"`), `field "IDENTITY_ID"`},
		{"alert_id twice", "alert", edit(alert, nil, `"alert_id":"`+big+`"`), `duplicate field "alert_id"`},
		{"Embedding", "alert", edit(alert, nil, `"Embedding":[1]`), `field "Embedding"`},
		{"faceEmbedding", "alert", edit(alert, nil, `"faceEmbedding":[1]`), `field "faceEmbedding"`},
		{"embedding in an unknown field", "alert", edit(alert, set("extra", map[string]any{"embedding": []float64{0.1}}), ""), `field "embedding" is forbidden`},
		{"card_hash in an identity", "summary", edit(sum, func(o map[string]any) {
			o["identities"].([]any)[0].(map[string]any)["card_hash"] = "9f86"
		}, ""), `field "card_hash" is forbidden`},
		{"nested 20 deep", "alert", edit(alert, nil, `"extra":`+strings.Repeat(`[`, 20)+strings.Repeat(`]`, 20)), "nested deeper than 16"},
		{"NUL in rule", "alert", edit(alert, set("rule", "r\x00x"), ""), "NUL"},
		// PostgreSQL keeps counts in 32-bit columns: a larger one stopped
		// its ingest (a hostile review's ready-made poison message).
		{"count 3e9", "alert", edit(alert, set("count", 3_000_000_000), ""), "alert count 3000000000 outside 0..2147483647"},
		{"summary visits 3e9", "summary", edit(sum, func(o map[string]any) {
			o["totals"].(map[string]any)["visits"].(map[string]any)["h24"] = 3_000_000_000
		}, ""), "summary totals.visits.h24 3000000000 outside"},
		{"right-to-left override in alert_id", "alert", edit(alert, set("alert_id", "a-\u202e1"), ""), "alert alert_id holds a control or formatting character (U+202E"},
		{"newline in rule", "alert", edit(alert, set("rule", "r\nx"), ""), "alert rule holds a control"},
		{"NUL in kind", "alert", edit(alert, set("kind", "k\x00"), ""), "NUL"},
		{"NUL in window", "alert", edit(alert, set("window", "24h\x00"), ""), "NUL"},
		{"NUL in an unknown field", "status", edit(status, set("note", "\x00"), ""), "NUL"},
		{"seq 2^64-1", "alert", edit(alert, set("seq", json.Number("18446744073709551615")), ""), "alert seq 18446744073709551615 above 9223372036854775807"},
		{"seq 2^63", "summary", edit(sum, set("seq", json.Number("9223372036854775808")), ""), "summary seq 9223372036854775808 above"},
		{"seq 2^63-1", "alert", edit(alert, set("seq", json.Number("9223372036854775807")), ""), ""},
		{"raised 9999", "alert", edit(alert, set("raised", "9999-01-01T00:00:00Z"), ""), "alert raised 9999-01-01T00:00:00Z outside 2000-01-01..2200-01-01"},
		{"raised 1600", "alert", edit(alert, set("raised", "1600-01-01T00:00:00Z"), ""), "alert raised 1600-01-01T00:00:00Z outside"},
		{"window_start 0001", "alert", edit(alert, set("window_start", "0001-01-01T00:00:00Z"), ""), "alert window_start 0001-01-01"},
		{"first_seen 2300", "alert", edit(alert, set("first_seen", "2300-01-01T00:00:00Z"), ""), "alert first_seen 2300"},
		{"last_seen 1999", "alert", edit(alert, set("last_seen", "1999-12-31T23:59:59Z"), ""), "alert last_seen 1999-12-31T23:59:59Z"},
		{"ts 2200", "alert", edit(alert, set("ts", "2200-01-01T00:00:00Z"), ""), "alert ts 2200-01-01T00:00:00Z outside"},
		{"summary ts 1970", "summary", edit(sum, set("ts", "1970-01-01T00:00:00Z"), ""), "summary ts 1970"},
		{"identity last_seen 9999", "summary", edit(sum, func(o map[string]any) {
			o["identities"].([]any)[0].(map[string]any)["last_seen"] = "9999-12-31T00:00:00Z"
		}, ""), "summary identities.last_seen 9999-12-31"},
		{"status started_at 1900", "status", edit(status, set("started_at", "1900-01-01T00:00:00Z"), ""), "status started_at 1900"},
		{"status without started_at", "status", edit(status, func(o map[string]any) { delete(o, "started_at") }, ""), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := in.Decode(prefix+"/s1/d1/"+tc.kind, tc.payload, now)
			if tc.want == "" {
				if err != nil || (d.msg == nil && d.status == nil) {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var r *RejectError
			if !errors.As(err, &r) || !strings.Contains(r.Reject.Error, tc.want) {
				t.Fatalf("got %+v, %v; want a reject saying %q", d, err, tc.want)
			}
			if strings.Contains(r.Reject.Error, "4111") || len(r.Reject.Error) > 600 {
				t.Errorf("the reason carries the payload's data: %q", r.Reject.Error)
			}
		})
	}
}

// The payloads the agent's docs show (sync/wire/schemas/examples, made by
// the agent's own code) pass Decode: its checks refuse nothing an agent
// sends.
func TestDecodeAcceptsTheExamples(t *testing.T) {
	in := &Ingester{cfg: Config{Prefix: "atm", MaxPayload: 256 << 10}}
	var err error
	if in.schemas, err = CompileSchemas(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"status", "status.v1", "state", "summary", "summary.v1", "alert"} {
		b, err := wire.Schemas.ReadFile("schemas/examples/" + name + ".json")
		if err != nil {
			t.Fatal(err)
		}
		var env wire.Envelope
		if err := json.Unmarshal(b, &env); err != nil {
			t.Fatal(err)
		}
		kind, _, _ := strings.Cut(name, ".")
		topic := "atm/" + env.Site + "/" + env.Device + "/" + kind
		if _, err := in.Decode(topic, b, env.TS.Add(time.Second)); err != nil {
			t.Errorf("%s: the documented example is refused: %v", name, err)
		}
	}
}

// A refused payload that names card or biometric data, or holds a card
// number anywhere, is not kept in the reject (a hostile review read the
// card number back from the store file and the settings page).
func TestRejectKeepsNoCardData(t *testing.T) {
	in := &Ingester{cfg: Config{Prefix: "atm", MaxPayload: 256 << 10}}
	var err error
	if in.schemas, err = CompileSchemas(); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	a := goodAlert("s1", "d1", "a-1", 1, now)
	for _, tc := range []struct {
		name    string
		payload []byte
		kept    bool
	}{
		{"forbidden field", edit(a, func(m map[string]any) { m["card_number"] = "4111111111111111" }, ""), false},
		{"forbidden field, no digits", edit(a, func(m map[string]any) { m["extra"] = map[string]any{"embedding": []float64{0.1}} }, ""), false},
		{"card number in a refused value", edit(a, func(m map[string]any) { m["txn_id"] = "4111 1111 1111 1111"; delete(m, "rule") }, ""), false},
		{"refused without card data", edit(a, func(m map[string]any) { delete(m, "rule") }, ""), true},
	} {
		_, err := in.Decode("atm/s1/d1/alert", tc.payload, now)
		var r *RejectError
		if !errors.As(err, &r) {
			t.Fatalf("%s: %v, want a reject", tc.name, err)
		}
		if kept := r.Payload != WithheldPayload; kept != tc.kept || (!kept && strings.Contains(r.Payload, "4111")) {
			t.Errorf("%s: payload kept %q, want kept=%v", tc.name, r.Payload, tc.kept)
		}
	}
}
