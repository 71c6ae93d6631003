package wire

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// testReplyKey is an X25519 public key as args.reply_key carries it (the
// last character's unused bits zero, as a strict decoder asks).
var testReplyKey = base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{9}, 31))[:41] + "AQ"

func TestSealOpenResult(t *testing.T) {
	priv, pub, err := NewReplyKey()
	if err != nil {
		t.Fatal(err)
	}
	if len(pub) != 43 {
		t.Fatalf("reply key %q: %d characters, want 43", pub, len(pub))
	}
	ctx := SealContext{Site: "lyon-07", Device: "atm-0042", Command: CmdIdentityVisits, CorrelationID: "c-0001"}
	result := []byte(`{"identity":"p-1","total":1,"visits":[{"visit_id":"v-1","txn_id":"T-88412","ts":"2025-03-14T09:26:53Z","masked":false}]}`)
	sealed, err := SealResult(pub, ctx, result)
	if err != nil {
		t.Fatal(err)
	}
	if len(sealed) != SealedLen(len(result)) {
		t.Errorf("sealed %d characters, SealedLen says %d", len(sealed), SealedLen(len(result)))
	}
	if strings.Contains(sealed, "T-88412") || strings.ContainsAny(sealed, "+/=") {
		t.Errorf("sealed %q: not opaque base64url", sealed)
	}
	got, err := OpenResult(priv, ctx, sealed)
	if err != nil || !bytes.Equal(got, result) {
		t.Fatalf("open: %q, %v", got, err)
	}
	again, _ := SealResult(pub, ctx, result)
	if again == sealed {
		t.Error("two seals of the same result are equal: no fresh encapsulation")
	}

	other, _, _ := NewReplyKey()
	ct, _ := base64.RawURLEncoding.DecodeString(sealed)
	flip := func(i int) string {
		b := bytes.Clone(ct)
		b[i] ^= 1
		return base64.RawURLEncoding.EncodeToString(b)
	}
	with := func(f func(*SealContext)) SealContext { c := ctx; f(&c); return c }
	for _, tc := range []struct {
		name   string
		priv   *ecdh.PrivateKey
		ctx    SealContext
		sealed string
		want   error
	}{
		{"wrong key", other, ctx, sealed, ErrSealed},
		{"another correlation id", priv, with(func(c *SealContext) { c.CorrelationID = "c-0002" }), sealed, ErrSealed},
		{"another device", priv, with(func(c *SealContext) { c.Device = "atm-0043" }), sealed, ErrSealed},
		{"another site", priv, with(func(c *SealContext) { c.Site = "lyon-08" }), sealed, ErrSealed},
		{"another command", priv, with(func(c *SealContext) { c.Command = CmdSplitVisits }), sealed, ErrSealed},
		{"fields shifted", priv, SealContext{Site: "lyon-07", Device: "atm-0042\x00identity_visits", Command: "c-0001", CorrelationID: "x"}, sealed, nil},
		{"tampered ciphertext", priv, ctx, flip(len(ct) - 20), ErrSealed},
		{"tampered tag", priv, ctx, flip(len(ct) - 1), ErrSealed},
		{"tampered encapsulated key", priv, ctx, flip(3), ErrSealed},
		{"truncated", priv, ctx, sealed[:len(sealed)-4], ErrSealed},
		{"shorter than the overhead", priv, ctx, sealed[:40], ErrSealed},
		{"empty", priv, ctx, "", ErrSealed},
		{"padded", priv, ctx, sealed + "=", ErrSealed},
		{"standard base64", priv, ctx, strings.ReplaceAll(strings.ReplaceAll(sealed, "-", "+"), "_", "/") + "+", ErrSealed},
		{"no key", nil, ctx, sealed, ErrSealed},
	} {
		got, err := OpenResult(tc.priv, tc.ctx, tc.sealed)
		if err == nil || got != nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %q, %v; want %v", tc.name, got, err, tc.want)
		}
	}

	for _, bad := range []string{"", pub[:42], pub + "A", pub + "=", strings.Repeat("+", 43), "!" + pub[1:]} {
		if _, err := SealResult(bad, ctx, result); !errors.Is(err, ErrReplyKey) {
			t.Errorf("seal to %q: %v, want ErrReplyKey", bad, err)
		}
	}
	if _, err := SealResult(pub, with(func(c *SealContext) { c.CorrelationID = "" }), result); err == nil {
		t.Error("sealed with no correlation id")
	}
	// A low-order point is a 32-byte key all the same: sealing to it fails
	// (the agent answers that error, never the result in clear).
	zero := base64.RawURLEncoding.EncodeToString(make([]byte, 32))
	if _, err := SealResult(zero, ctx, result); err == nil {
		t.Error("sealed to the all-zero key")
	}
}

func TestSealInfo(t *testing.T) {
	info, err := SealContext{Site: "s", Device: "d", Command: CmdPing, CorrelationID: "c-1"}.Info()
	if err != nil || string(info) != "atm-agent reply v1\x00s\x00d\x00ping\x00c-1" {
		t.Fatalf("info %q, %v", info, err)
	}
	r := Reply{Envelope: NewEnvelope("s", "d", t0), CorrelationID: "c-1", Command: CmdPing}
	c := Command{Envelope: Envelope{Site: "s", Device: "d", MessageID: "c-1"}, Command: CmdPing}
	if r.SealContext() != c.SealContext() {
		t.Errorf("reply context %+v, command context %+v", r.SealContext(), c.SealContext())
	}
}

// Reply.Seal: an ok reply's result sealed in the reply's context ({}
// when none), a refusal's none, nothing without a key, and on error no
// result at all.
func TestReplySeal(t *testing.T) {
	priv, key, _ := NewReplyKey()
	r := Reply{Envelope: NewEnvelope("s", "d", t0), CorrelationID: "c-1", Command: CmdIdentityVisits, OK: true, Result: []byte(`{"total":3}`)}
	clear := r
	if err := clear.Seal(""); err != nil || string(clear.Result) != `{"total":3}` || clear.Sealed != "" {
		t.Errorf("no key: %+v %v", clear, err)
	}
	sealed := r
	if err := sealed.Seal(key); err != nil || sealed.Result != nil {
		t.Fatalf("%+v %v", sealed, err)
	}
	if got, err := OpenResult(priv, r.SealContext(), sealed.Sealed); err != nil || string(got) != `{"total":3}` {
		t.Errorf("open: %q %v", got, err)
	}
	none := r
	none.Result = nil
	if err := none.Seal(key); err != nil {
		t.Fatal(err)
	}
	if got, err := OpenResult(priv, r.SealContext(), none.Sealed); err != nil || string(got) != `{}` {
		t.Errorf("no result: %q %v", got, err)
	}
	refusal := r
	refusal.OK, refusal.Error = false, "no identity"
	if err := refusal.Seal(key); err != nil || refusal.Result != nil || refusal.Sealed != "" {
		t.Errorf("refusal: %+v %v", refusal, err)
	}
	bad := r
	if err := bad.Seal(strings.Repeat("A", 43)); err == nil || bad.Result != nil || bad.Sealed != "" {
		t.Errorf("a key nothing can be sealed to: %+v %v", bad, err)
	}
}
