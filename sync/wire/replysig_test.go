package wire

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// signedReply signs r with key and decodes the published message as a
// reader does.
func signedReply(t *testing.T, key ed25519.PrivateKey, r Reply) Reply {
	t.Helper()
	b, err := SignReply(key, r)
	if err != nil {
		t.Fatal(err)
	}
	var got Reply
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestReplySignatureRoundTripAndBinding(t *testing.T) {
	key := exampleDeviceKey()
	pub := key.Public().(ed25519.PublicKey)
	_, other, _ := ed25519.GenerateKey(nil)
	base := Reply{Envelope: NewEnvelope("lyon-07", "atm-0042", t0), CorrelationID: "c-1", Command: CmdSplitVisits, OK: true,
		Sealed: strings.Repeat("A", 80)}
	base.MessageID, base.Seq = "r-1", 7
	refused := base
	refused.Sealed = ""
	refused.Refuse(WithCode(CodeConflict, errors.New(`visit "v-1" belongs to identity "p-2"`)))
	clear := base
	clear.Sealed, clear.Result = "", json.RawMessage(`{"visits_deleted": 14, "note": "<a&b>"}`)

	for name, r := range map[string]Reply{"sealed": base, "refused": refused, "clear": clear} {
		got := signedReply(t, key, r)
		if err := VerifyReply(pub, got); err != nil {
			t.Errorf("%s: genuine reply: %v", name, err)
		}
		if err := VerifyReply(other.Public().(ed25519.PublicKey), got); !errors.Is(err, ErrReplySignature) {
			t.Errorf("%s: verified with another device's key: %v", name, err)
		}
		// What the signature does not bind: the reply's own id, seq, ts.
		loose := got
		loose.MessageID, loose.Seq, loose.TS, loose.Historical = "r-2", 8, t0.Add(1), true
		if err := VerifyReply(pub, loose); err != nil {
			t.Errorf("%s: envelope fields changed: %v", name, err)
		}
	}

	// Every bound field changed breaks it.
	got := signedReply(t, key, base)
	gotRefused := signedReply(t, key, refused)
	gotClear := signedReply(t, key, clear)
	for name, change := range map[string]struct {
		from Reply
		f    func(*Reply)
	}{
		"site":             {got, func(r *Reply) { r.Site = "lyon-08" }},
		"device":           {got, func(r *Reply) { r.Device = "atm-0043" }},
		"command":          {got, func(r *Reply) { r.Command = CmdMergeIdentities }},
		"correlation_id":   {got, func(r *Reply) { r.CorrelationID = "c-2" }},
		"ok":               {got, func(r *Reply) { r.OK = false }},
		"sealed":           {got, func(r *Reply) { r.Sealed = strings.Repeat("A", 79) + "B" }},
		"sealed as result": {got, func(r *Reply) { r.Result, r.Sealed = json.RawMessage(`"`+r.Sealed+`"`), "" }},
		"sealed dropped":   {got, func(r *Reply) { r.Sealed = "" }},
		"code":             {gotRefused, func(r *Reply) { r.Code = CodeNotFound }},
		"code dropped":     {gotRefused, func(r *Reply) { r.Code = "" }},
		"error":            {gotRefused, func(r *Reply) { r.Error += "." }},
		"refusal to ok":    {gotRefused, func(r *Reply) { r.OK, r.Code, r.Error = true, "", "" }},
		"result":           {gotClear, func(r *Reply) { r.Result = json.RawMessage(`{"visits_deleted":15,"note":"\u003ca\u0026b\u003e"}`) }},
		"result escapes":   {gotClear, func(r *Reply) { r.Result = json.RawMessage(`{"visits_deleted":14,"note":"<a&b>"}`) }},
		"result dropped":   {gotClear, func(r *Reply) { r.Result = nil }},
		"sig":              {got, func(r *Reply) { r.Sig = strings.Repeat("A", 86) + "==" }},
		"sig malformed":    {got, func(r *Reply) { r.Sig = "not base64" }},
		"sig removed":      {got, func(r *Reply) { r.Sig = "" }},
	} {
		r := change.from
		change.f(&r)
		if err := VerifyReply(pub, r); err == nil {
			t.Errorf("%s changed: the signature still verifies", name)
		}
	}
	// Whitespace outside strings is not bound (a pretty-printed copy
	// verifies): the result as json.Indent leaves it.
	var ind bytes.Buffer
	if err := json.Indent(&ind, gotClear.Result, "", "  "); err != nil {
		t.Fatal(err)
	}
	pretty := gotClear
	pretty.Result = ind.Bytes()
	if err := VerifyReply(pub, pretty); err != nil {
		t.Errorf("indented result: %v", err)
	}
	if err := VerifyReply(pub, Reply{}); !errors.Is(err, ErrReplyUnsigned) {
		t.Errorf("unsigned reply: %v", err)
	}
	// A NUL in a bound string cannot be signed (the fields would run
	// into each other).
	nul := refused
	nul.Error = "a\x00b"
	if _, err := nul.SigInput(); err == nil {
		t.Error("an error holding a NUL was signed")
	}
	// Unsigned without a key: today's replies.
	b, err := SignReply(nil, base)
	if err != nil || bytes.Contains(b, []byte(`"sig"`)) {
		t.Errorf("SignReply(nil) = %s, %v", b, err)
	}
}

// TestReplySigInputExample pins the documented bytes of the reply
// example (docs/mqtt.md, "Signed replies").
func TestReplySigInputExample(t *testing.T) {
	var r Reply
	if err := json.Unmarshal(mustRead(t, "schemas/examples/reply.json"), &r); err != nil {
		t.Fatal(err)
	}
	in, err := r.SigInput()
	if err != nil {
		t.Fatal(err)
	}
	const want = "atm-agent reply sig v1\x00lyon-07\x00atm-0042\x00purge_identity\x00c-0001\x00true\x00\x00\x00result\x00{\"visits_deleted\":14}"
	if string(in) != want {
		t.Errorf("signed bytes %q, want %q", in, want)
	}
	if got := EncodePublicKey(exampleDeviceKey().Public().(ed25519.PublicKey)); got != "Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=" {
		t.Errorf("example device public key %s, as docs/mqtt.md gives it", got)
	}
}

// BenchmarkSignReply: what signing adds to the largest reply the agent
// sends (a 16 KB sealed identity_visits), and what checking it costs the
// fleet.
func BenchmarkSignReply(b *testing.B) {
	key := exampleDeviceKey()
	r := Reply{Envelope: NewEnvelope("lyon-07", "atm-0042", t0), CorrelationID: "c-1", Command: CmdIdentityVisits, OK: true,
		Sealed: strings.Repeat("A", 16000)}
	b.Run("sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := SignReply(key, r); err != nil {
				b.Fatal(err)
			}
		}
	})
	msg, _ := SignReply(key, r)
	var got Reply
	json.Unmarshal(msg, &got)
	pub := key.Public().(ed25519.PublicKey)
	b.Run("verify", func(b *testing.B) {
		for b.Loop() {
			if err := VerifyReply(pub, got); err != nil {
				b.Fatal(err)
			}
		}
	})
}
