package wire

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/periocular/atm-agent/agent/visit"
)

var update = flag.Bool("update", false, "rewrite schemas/examples from the sample payloads")

// compileSchemas compiles every embedded schema with format assertions on.
func compileSchemas(t testing.TB) map[string]*jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	out := map[string]*jsonschema.Schema{}
	for _, n := range SchemaNames {
		b, err := Schema(n)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		url := "mem://" + n + ".schema.json"
		if err := c.AddResource(url, doc); err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		s, err := c.Compile(url)
		if err != nil {
			t.Fatalf("compile %s: %v", n, err)
		}
		out[n] = s
	}
	return out
}

func validate(t testing.TB, s *jsonschema.Schema, b []byte) error {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("unmarshal instance: %v", err)
	}
	return s.Validate(inst)
}

var t0 = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)

// exampleKey is the key of the documented signed example: seed bytes
// 0x00..0x1f. Never configure it on a device.
func exampleKey() ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	return ed25519.NewKeyFromSeed(seed)
}

// exampleDeviceKey is the test-only device key of the reply example: its
// seed is the bytes 0x20..0x3f (public key in docs/mqtt.md).
func exampleDeviceKey() ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(0x20 + i)
	}
	return ed25519.NewKeyFromSeed(seed)
}

// samples builds one real payload per schema through the same path the agent
// and publisher use: struct -> json.Marshal -> Finalize.
func samples(t testing.TB) map[string][]byte {
	t.Helper()
	env := NewEnvelope("lyon-07", "atm-0042", t0)
	fin := func(v any, seq uint64, id string, hist bool) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		f, err := Finalize(b, seq, id, hist)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	st := Status{Envelope: env, State: StateOnline, AgentVersion: "0.3.1", Models: []string{"yunet-2023mar", "periocular-r50-v2"},
		StartedAt: t0.Add(-time.Hour), UptimeS: 3600,
		Cameras: []CameraHealth{{Name: "front", OK: true, LastFrame: t0.Add(-2 * time.Second)}, {Name: "side", OK: false, Error: "no frames for 30s", Reopens: 3}},
		Outbox:  &OutboxStats{Depth: 12, DroppedSummaries: 4, DroppedAlerts: 0}}
	st.Seq = 1041
	st.MessageID = "st-7f3a9c"
	st.SchemaVersion = StatusSchemaVersion
	nIDs := 212
	st.Health, st.Reasons, st.Identities = HealthDegraded, []string{"camera side: down"}, &nIDs
	sum := Summary{Envelope: env,
		Identities: []IdentityCounts{{ID: "p-8c1f02d9", Visits: WindowCounts{3, 9, 14}, Masked: WindowCounts{1, 2, 2}, DistinctCards: WindowCounts{2, 5, 6},
			FirstSeen: t0.Add(-6 * 24 * time.Hour), LastSeen: t0.Add(-5 * time.Minute)}},
		IdentitiesOmitted: 0, Faceless: WindowCounts{0, 2, 5},
		Totals: Totals{Visits: WindowCounts{7, 61, 402}, Identities: WindowCounts{5, 40, 210}, Masked: WindowCounts{1, 6, 33}}}
	sum.SchemaVersion = SummarySchemaVersion
	al := NewAlert(env, visit.Alert{ID: "a-visits24h-p-8c1f02d9-20250313", Rule: "many-visits-24h", Kind: "visits", IdentityID: "p-8c1f02d9",
		VisitID: "v-20250314-0931", TxnID: "T-88412",
		Window: "24h0m0s", WindowStart: t0.Add(-24 * time.Hour), Count: 9, Threshold: 8, FirstSeen: t0.Add(-20 * time.Hour), LastSeen: t0, Raised: t0})
	cmd := Command{Envelope: Envelope{SchemaVersion: CommandSchemaVersion, MessageID: "c-0001", Device: "atm-0042", Site: "lyon-07", TS: t0},
		Command: CmdPurgeIdentity, Args: CommandArgs{ID: "p-8c1f02d9"}}
	cb, _ := json.Marshal(cmd)
	signed, err := SignCommand(exampleKey(), cb)
	if err != nil {
		t.Fatal(err)
	}
	rep := Reply{Envelope: env, CorrelationID: "c-0001", Command: CmdPurgeIdentity, OK: true, Result: json.RawMessage(`{"visits_deleted":14}`)}
	rep.Seq, rep.MessageID = 1041, "r-55e2"
	sb, _ := json.Marshal(st)
	ds := DeviceState{Status: st,
		Summary: &StateSummary{TS: t0.Add(-4 * time.Minute), Seq: 1042, Totals: sum.Totals, Faceless: sum.Faceless, IdentitiesListed: 1},
		LastAlert: &StateAlert{AlertID: al.AlertID, Rule: al.Rule, Kind: al.Kind, IdentityID: al.IdentityID, VisitID: "v-20250314-0931",
			TxnID: "T-88412", Window: al.Window, Count: al.Count, Threshold: al.Threshold, Raised: al.Raised, Seq: 1043}}
	ds.SchemaVersion, ds.MessageID = StateSchemaVersion, "sd-7f3a9d"
	db, _ := json.Marshal(ds)
	rb, err := SignReply(exampleDeviceKey(), rep)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"status":         sb,
		"state":          db,
		"summary":        fin(sum, 1042, "atm-0042-1042-3b9aca00", false),
		"alert":          fin(al, 1043, "atm-0042-1043-77aa01", true),
		"command":        cb,
		"signed_command": signed,
		"reply":          rb,
	}
}

func TestRealPayloadsMatchSchemas(t *testing.T) {
	schemas := compileSchemas(t)
	for name, b := range samples(t) {
		t.Run(name, func(t *testing.T) {
			if err := validate(t, schemas[name], b); err != nil {
				t.Fatalf("%s payload does not match its schema: %v\n%s", name, err, b)
			}
		})
	}
}

// TestSchemasReject shows the schemas are not vacuous.
func TestSchemasReject(t *testing.T) {
	schemas := compileSchemas(t)
	s := samples(t)
	mutate := func(name string, f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(s[name], &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	tests := []struct {
		name, schema string
		b            []byte
	}{
		{"summary with embedding", "summary", mutate("summary", func(m map[string]any) {
			m["identities"].([]any)[0].(map[string]any)["embedding"] = []float64{0.1, 0.2}
		})},
		{"summary without seq", "summary", mutate("summary", func(m map[string]any) { delete(m, "seq") })},
		{"summary missing 7d", "summary", mutate("summary", func(m map[string]any) { delete(m["faceless"].(map[string]any), "7d") })},
		{"alert with card hash", "alert", mutate("alert", func(m map[string]any) { m["card_hash"] = "abc" })},
		{"alert bad time", "alert", mutate("alert", func(m map[string]any) { m["raised"] = "yesterday" })},
		{"status bad state", "status", mutate("status", func(m map[string]any) { m["state"] = "sleeping" })},
		{"status schema v3", "status", mutate("status", func(m map[string]any) { m["schema_version"] = 3 })},
		{"status v2 to the v1 schema", "status.v1", s["status"]},
		{"summary v2 to the v1 schema", "summary.v1", s["summary"]},
		{"state with embedding", "state", mutate("state", func(m map[string]any) { m["summary"].(map[string]any)["embedding"] = []float64{0.1} })},
		{"state bad health", "state", mutate("state", func(m map[string]any) { m["health"] = "fine" })},
		{"status wildcard device", "status", mutate("status", func(m map[string]any) { m["device"] = "atm/+" })},
		{"command ping with args", "command", mutate("command", func(m map[string]any) { m["command"] = "ping" })},
		{"command purge without id", "command", mutate("command", func(m map[string]any) { delete(m, "args") })},
		{"reply without ok", "reply", mutate("reply", func(m map[string]any) { delete(m, "ok") })},
		{"command v1", "command", mutate("command", func(m map[string]any) { m["schema_version"] = 1 })},
		{"signed command without sig", "signed_command", mutate("signed_command", func(m map[string]any) { delete(m, "sig") })},
		{"signed command short sig", "signed_command", mutate("signed_command", func(m map[string]any) { m["sig"] = "AAAA" })},
		{"signed command with key id", "signed_command", mutate("signed_command", func(m map[string]any) { m["key_id"] = "k1" })},
		{"unsigned command on the topic", "signed_command", s["command"]},
		{"reply with result and sealed", "reply", mutate("reply", func(m map[string]any) { m["sealed"] = strings.Repeat("A", 80) })},
		{"reply sealed in standard base64", "reply", mutate("reply", func(m map[string]any) { delete(m, "result"); m["sealed"] = strings.Repeat("+", 80) })},
		{"command short reply key", "command", mutate("command", func(m map[string]any) { m["args"].(map[string]any)["reply_key"] = testReplyKey[:42] })},
		{"command padded reply key", "command", mutate("command", func(m map[string]any) { m["args"].(map[string]any)["reply_key"] = testReplyKey[:42] + "=" })},
		{"command reply key with junk bits", "command", mutate("command", func(m map[string]any) { m["args"].(map[string]any)["reply_key"] = testReplyKey[:42] + "B" })},
		{"reply with a malformed code", "reply", mutate("reply", func(m map[string]any) {
			m["ok"], m["code"], m["error"] = false, "Oops!", "x"
			delete(m, "result")
		})},
		{"ok reply with a code", "reply", mutate("reply", func(m map[string]any) { m["code"] = "internal" })},
		{"ping with id beside a reply key", "command", mutate("command", func(m map[string]any) {
			m["command"], m["args"] = "ping", map[string]any{"id": "p-1", "reply_key": testReplyKey}
		})},
	}
	for _, tc := range tests {
		if err := validate(t, schemas[tc.schema], tc.b); err == nil {
			t.Errorf("%s: schema accepted %s", tc.name, tc.b)
		}
	}
}

// TestSchemasAcceptSealed: a reply_key on any command, and a reply that
// carries sealed instead of result, are what the schemas describe.
func TestSchemasAcceptSealed(t *testing.T) {
	schemas := compileSchemas(t)
	for _, name := range []CommandName{CmdPing, CmdPublishSummary, CmdPurgeIdentity, CmdIdentityVisits} {
		c := Command{Envelope: Envelope{SchemaVersion: CommandSchemaVersion, MessageID: "c-0002", Device: "atm-0042", Site: "lyon-07", TS: t0},
			Command: name, Args: CommandArgs{ReplyKey: testReplyKey}}
		if name == CmdPurgeIdentity || name == CmdIdentityVisits {
			c.Args.ID = "p-1"
		}
		b, _ := json.Marshal(c)
		if _, err := DecodeCommand(b); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if err := validate(t, schemas["command"], b); err != nil {
			t.Errorf("%s with a reply key: %v\n%s", name, err, b)
		}
	}
	_, pub, _ := NewReplyKey()
	r := Reply{Envelope: NewEnvelope("lyon-07", "atm-0042", t0), CorrelationID: "c-0002", Command: CmdIdentityVisits, OK: true}
	r.Seq, r.MessageID = 1041, "r-55e3"
	var err error
	if r.Sealed, err = SealResult(pub, r.SealContext(), []byte(`{"identity":"p-1","total":0,"visits":[]}`)); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	if err := validate(t, schemas["reply"], b); err != nil {
		t.Errorf("sealed reply: %v\n%s", err, b)
	}
}

// TestSchemaRefusals: a refusal with each code is valid, and so is one
// without a code (an agent before codes): the schema cannot require it,
// or the fleet, which validates replies, refused every older agent's.
func TestSchemaRefusals(t *testing.T) {
	schemas := compileSchemas(t)
	r := Reply{Envelope: NewEnvelope("lyon-07", "atm-0042", t0), CorrelationID: "c-0003", Command: CmdSplitVisits,
		Error: `split: identity "p-1": unknown identity`}
	r.Seq, r.MessageID = 1041, "r-55e4"
	// Every code of this build, none (an older agent), and one this build
	// does not know (a newer agent's: the set is open).
	for _, c := range append([]ReplyCode{"", "quota_exceeded"}, ReplyCodes...) {
		r.Code = c
		b, _ := json.Marshal(r)
		if err := validate(t, schemas["reply"], b); err != nil {
			t.Errorf("refusal with code %q: %v\n%s", c, err, b)
		}
	}
	b, _ := Schema("reply")
	for _, c := range ReplyCodes {
		if !bytes.Contains(b, []byte(`"`+string(c)+`"`)) {
			t.Errorf("reply.schema.json does not list the code %q", c)
		}
	}
}

func TestExamples(t *testing.T) {
	schemas := compileSchemas(t)
	if *update {
		for name, b := range samples(t) {
			var buf bytes.Buffer
			if err := json.Indent(&buf, b, "", "  "); err != nil {
				t.Fatal(err)
			}
			buf.WriteByte('\n')
			if err := os.WriteFile(filepath.Join("schemas", "examples", name+".json"), buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// The signed alert as published: its bytes, not indented, no
		// newline after (TestMsgSigExample).
		if err := os.WriteFile(filepath.Join("schemas", "examples", "alert.signed.json"), signedSamples(t, exampleDeviceKey())[KindAlert], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	types := map[string]func() any{
		"status": func() any { return new(Status) }, "summary": func() any { return new(Summary) },
		"alert": func() any { return new(Alert) }, "command": func() any { return new(Command) }, "reply": func() any { return new(Reply) },
		"signed_command": func() any { return new(SignedCommand) },
		"state":          func() any { return new(DeviceState) }, "status.v1": func() any { return new(Status) },
		"summary.v1": func() any { return new(Summary) },
	}
	for _, name := range SchemaNames {
		b, err := Schemas.ReadFile("schemas/examples/" + name + ".json")
		if err != nil {
			t.Fatalf("example %s missing (run go test -run TestExamples -update): %v", name, err)
		}
		if err := validate(t, schemas[name], b); err != nil {
			t.Errorf("example %s: %v", name, err)
		}
		// Every example field must be known to the Go type as well.
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(types[name]()); err != nil {
			t.Errorf("example %s does not decode strictly into the Go type: %v", name, err)
		}
	}
	if _, err := DecodeCommand(mustRead(t, "schemas/examples/command.json")); err != nil {
		t.Errorf("example command rejected by DecodeCommand: %v", err)
	}
	// The signed example verifies with the published example key and
	// carries a valid command.
	payload, _, err := OpenSignedCommand(mustRead(t, "schemas/examples/signed_command.json"), []ed25519.PublicKey{exampleKey().Public().(ed25519.PublicKey)})
	if err != nil {
		t.Fatalf("example signed command: %v", err)
	}
	if _, err := DecodeCommand(payload); err != nil {
		t.Errorf("example signed command's payload: %v", err)
	}
	// The reply example verifies with the example device key.
	var rep Reply
	if err := json.Unmarshal(mustRead(t, "schemas/examples/reply.json"), &rep); err != nil {
		t.Fatal(err)
	}
	if err := VerifyReply(exampleDeviceKey().Public().(ed25519.PublicKey), rep); err != nil {
		t.Errorf("example reply: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	b, err := Schemas.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDocsCopyIdentical keeps docs/schemas equal to the embedded schemas
// (regenerate with `go generate ./sync/wire`).
func TestDocsCopyIdentical(t *testing.T) {
	entries, err := Schemas.ReadDir("schemas")
	if err != nil {
		t.Fatal(err)
	}
	check := func(embedded, doc string) {
		want := mustRead(t, embedded)
		got, err := os.ReadFile(doc)
		if err != nil {
			t.Errorf("%v (run go generate ./sync/wire)", err)
			return
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s (run go generate ./sync/wire)", doc, embedded)
		}
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".schema.json") {
			check("schemas/"+e.Name(), filepath.Join("..", "..", "docs", "schemas", e.Name()))
		}
	}
	for _, n := range append(slices.Clone(SchemaNames), "alert.signed") {
		check("schemas/examples/"+n+".json", filepath.Join("..", "..", "docs", "schemas", "examples", n+".json"))
	}
}
