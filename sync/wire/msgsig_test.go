package wire

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// signedSamples signs the status, state, summary and alert samples as the
// publisher does, for lyon-07/atm-0042.
func signedSamples(t testing.TB, key ed25519.PrivateKey) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for kind, b := range samples(t) {
		switch kind {
		case KindStatus, KindState, KindSummary, KindAlert:
			s, err := SignMessage(key, kind, "lyon-07", "atm-0042", b)
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			if len(s) != len(b)+MsgSigOverhead {
				t.Fatalf("%s: signing added %d bytes, MsgSigOverhead says %d", kind, len(s)-len(b), MsgSigOverhead)
			}
			out[kind] = s
		}
	}
	return out
}

func TestMsgSigRoundTripAndSchemas(t *testing.T) {
	key := exampleDeviceKey()
	pub := key.Public().(ed25519.PublicKey)
	schemas := compileSchemas(t)
	for kind, msg := range signedSamples(t, key) {
		if err := VerifyMessage(pub, kind, "lyon-07", "atm-0042", msg); err != nil {
			t.Errorf("%s: genuine message: %v", kind, err)
		}
		if err := validate(t, schemas[kind], msg); err != nil {
			t.Errorf("%s: signed message does not match its schema: %v", kind, err)
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal(msg, &top); err != nil || len(top["sig"]) != 90 {
			t.Errorf("%s: sig member %s, %v", kind, top["sig"], err)
		}
	}
}

// Every byte of a signed message is covered: changing any one of them
// (the signature's included) makes it fail.
func TestMsgSigEveryByteBinds(t *testing.T) {
	key := exampleDeviceKey()
	pub := key.Public().(ed25519.PublicKey)
	for kind, msg := range signedSamples(t, key) {
		for i := range msg {
			for _, x := range []byte{0x01, 0x20} {
				m := bytes.Clone(msg)
				m[i] ^= x
				if err := VerifyMessage(pub, kind, "lyon-07", "atm-0042", m); err == nil {
					t.Fatalf("%s: byte %d (%q) xor %#x still verifies", kind, i, msg[i], x)
				}
			}
		}
		// Nothing may be added or removed either (but JSON white space
		// after the end: TestMsgSigTrailingWhiteSpace).
		for name, m := range map[string][]byte{
			"space before }":   append(bytes.Clone(msg[:len(msg)-1]), ' ', '}'),
			"x after":          append(bytes.Clone(msg), 'x'),
			"first byte cut":   msg[1:],
			"space after {":    append([]byte("{ "), msg[1:]...),
			"sig member moved": moveSigFirst(t, msg),
		} {
			if err := VerifyMessage(pub, kind, "lyon-07", "atm-0042", m); !errors.Is(err, ErrMsgSignature) {
				t.Errorf("%s, %s: %v, want ErrMsgSignature", kind, name, err)
			}
		}
	}
}

// moveSigFirst makes the sig member the first of the object.
func moveSigFirst(t testing.TB, msg []byte) []byte {
	t.Helper()
	n := len(msg)
	sig := msg[n-msgSigTail+1 : n-1] // "sig":"..."
	return append(append(append([]byte("{"), sig...), ','), msg[1:n-msgSigTail]...)
}

// A signature binds its topic: another kind, site or device, or another
// device's key does not verify.
func TestMsgSigSplices(t *testing.T) {
	key := exampleDeviceKey()
	pub := key.Public().(ed25519.PublicKey)
	_, other, _ := ed25519.GenerateKey(nil)
	msgs := signedSamples(t, key)
	for kind, msg := range msgs {
		for _, k := range []string{KindStatus, KindState, KindSummary, KindAlert} {
			if k != kind {
				if err := VerifyMessage(pub, k, "lyon-07", "atm-0042", msg); !errors.Is(err, ErrMsgSignature) {
					t.Errorf("%s verified as %s: %v", kind, k, err)
				}
			}
		}
		for _, sd := range [][2]string{{"lyon-07", "atm-0043"}, {"lyon-08", "atm-0042"}, {"lyon-07\x00", "atm-0042"}} {
			if err := VerifyMessage(pub, kind, sd[0], sd[1], msg); !errors.Is(err, ErrMsgSignature) {
				t.Errorf("%s verified on %s/%s: %v", kind, sd[0], sd[1], err)
			}
		}
		if err := VerifyMessage(other.Public().(ed25519.PublicKey), kind, "lyon-07", "atm-0042", msg); !errors.Is(err, ErrMsgSignature) {
			t.Errorf("%s verified with another device's key: %v", kind, err)
		}
	}
	// The sig of one message on the body of another of the same device
	// and kind.
	a := msgs[KindAlert]
	var al Alert
	if err := json.Unmarshal(a, &al); err != nil {
		t.Fatal(err)
	}
	al.Count++
	b, _ := json.Marshal(al) // carries no sig: Alert has none
	forged := append(bytes.Clone(b[:len(b)-1]), a[len(a)-msgSigTail:]...)
	if err := VerifyMessage(pub, KindAlert, "lyon-07", "atm-0042", forged); !errors.Is(err, ErrMsgSignature) {
		t.Errorf("another alert's sig: %v", err)
	}
}

func TestMsgSigMisplacedOrDoubled(t *testing.T) {
	key := exampleDeviceKey()
	pub := key.Public().(ed25519.PublicKey)
	unsigned := samples(t)[KindAlert]
	good, err := SignMessage(key, KindAlert, "lyon-07", "atm-0042", unsigned)
	if err != nil {
		t.Fatal(err)
	}
	sigValue := string(good[len(good)-msgSigTail+len(msgSigHead)-1 : len(good)-1]) // "...."
	// An unsigned message that a forger gives a sig of its own before the
	// genuine one, under its name or an escaped one.
	for name, m := range map[string]string{
		"sig first":           `{"sig":` + sigValue + `,` + string(unsigned[1:]),
		"sig in the middle":   string(unsigned[:len(unsigned)-1]) + `,"sig":` + sigValue + `,"zz":1}`,
		"two sigs":            `{"sig":"x",` + string(good[1:]),
		"escaped name before": `{"s\u0069g":"x",` + string(good[1:]),
		"sig not a string":    string(unsigned[:len(unsigned)-1]) + `,"sig":5}`,
		"not JSON":            `{"a":` + string(good[len(good)-msgSigTail:]),
		"sig not base64":      string(unsigned[:len(unsigned)-1]) + `,"sig":"` + strings.Repeat("*", 88) + `"}`,
	} {
		if err := VerifyMessage(pub, KindAlert, "lyon-07", "atm-0042", []byte(m)); !errors.Is(err, ErrMsgSignature) {
			t.Errorf("%s: %v, want ErrMsgSignature", name, err)
		}
	}
	if err := VerifyMessage(pub, KindAlert, "lyon-07", "atm-0042", unsigned); !errors.Is(err, ErrMsgUnsigned) {
		t.Errorf("unsigned: %v, want ErrMsgUnsigned", err)
	}
	for name, m := range map[string]string{"empty object": `{}`, "array": `[1]`, "indented": "{\n \"a\": 1\n}\n"} {
		if _, err := SignMessage(key, KindAlert, "lyon-07", "atm-0042", []byte(m)); err == nil {
			t.Errorf("SignMessage took %s", name)
		}
	}
	if _, err := SignMessage(key[:10], KindAlert, "lyon-07", "atm-0042", unsigned); err == nil {
		t.Error("SignMessage took a cut key")
	}
}

// The documented example (docs/mqtt.md, "Signed messages") verifies
// with the example device key; its signed bytes are what the docs say.
func TestMsgSigExample(t *testing.T) {
	msg := mustRead(t, "schemas/examples/alert.signed.json")
	pub := exampleDeviceKey().Public().(ed25519.PublicKey)
	if err := VerifyMessage(pub, KindAlert, "lyon-07", "atm-0042", msg); err != nil {
		t.Fatalf("example: %v", err)
	}
	if bytes.HasSuffix(msg, []byte("\n")) {
		t.Error("the example ends with a newline: the docs' head -c -98 would cut the wrong bytes")
	}
	var a, b Alert
	if err := json.Unmarshal(msg, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mustRead(t, "schemas/examples/alert.json"), &b); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a, b) {
		t.Errorf("alert.signed.json is not alert.json signed:\n%v\n%v", a, b)
	}
}

// BenchmarkSignMessage: what signing costs the agent per summary (one of
// 200 identities, about the largest the default max_message_size lets
// through, and a small one), and what checking it costs the fleet.
func BenchmarkSignMessage(b *testing.B) {
	key := exampleDeviceKey()
	pub := key.Public().(ed25519.PublicKey)
	for _, n := range []int{5, 200} {
		sum := Summary{Envelope: NewEnvelope("lyon-07", "atm-0042", t0), Totals: Totals{Visits: WindowCounts{7, 61, 402}}}
		sum.SchemaVersion = SummarySchemaVersion
		for i := range n {
			sum.Identities = append(sum.Identities, IdentityCounts{ID: fmt.Sprintf("p-%08x", i), Visits: WindowCounts{3, 9, 14},
				Masked: WindowCounts{1, 2, 2}, DistinctCards: WindowCounts{2, 5, 6}, FirstSeen: t0.Add(-time.Hour), LastSeen: t0})
		}
		raw, _ := json.Marshal(sum)
		msg, err := Finalize(raw, 1042, "atm-0042-1042-3b9aca00", false)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("sign/%d_identities_%dB", n, len(msg)), func(b *testing.B) {
			for b.Loop() {
				if _, err := SignMessage(key, KindSummary, "lyon-07", "atm-0042", msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		signed, _ := SignMessage(key, KindSummary, "lyon-07", "atm-0042", msg)
		b.Run(fmt.Sprintf("verify/%d_identities_%dB", n, len(msg)), func(b *testing.B) {
			for b.Loop() {
				if err := VerifyMessage(pub, KindSummary, "lyon-07", "atm-0042", signed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzHasSig: on valid JSON, the scan of the top level's names agrees
// with encoding/json (go test ./sync/wire -fuzz FuzzHasSig).
func FuzzHasSig(f *testing.F) {
	for _, s := range []string{`{"sig":1}`, `{"a":{"sig":1}}`, `{"a":["sig",{"sig":2}],"s\u0069g":3}`, `{"a":"\"sig\"","b":"\\"}`,
		`{"a":[],"b":{},"sig":"x"}`, `{ "x" : { "y" : [ { } ] } , "sig" : null }`, `{"sig\u0000":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var top map[string]json.RawMessage
		if json.Unmarshal(b, &top) != nil || top == nil {
			return
		}
		_, want := top["sig"]
		got, err := hasSig(b)
		if err != nil || got != want {
			t.Fatalf("hasSig(%s) = %v, %v; encoding/json: %v", b, got, err, want)
		}
	})
}

// JSON white space after a signed message's end (a copy saved with a
// trailing newline) is cut off before verifying; white space inside it,
// or before its end, or a character that is not JSON white space, is not.
func TestMsgSigTrailingWhiteSpace(t *testing.T) {
	key := exampleDeviceKey()
	pub := key.Public().(ed25519.PublicKey)
	msg := signedSamples(t, key)[KindAlert]
	for _, tail := range []string{"\n", "\r\n", " ", "\t \n\n"} {
		if err := VerifyMessage(pub, KindAlert, "lyon-07", "atm-0042", append(bytes.Clone(msg), tail...)); err != nil {
			t.Errorf("followed by %q: %v", tail, err)
		}
	}
	for name, bad := range map[string][]byte{
		"a form feed after it":     append(bytes.Clone(msg), '\f'),
		"a NUL after it":           append(bytes.Clone(msg), 0),
		"a space before its end":   append(bytes.Clone(msg[:len(msg)-1]), ' ', '}'),
		"a newline inside its sig": append(append(bytes.Clone(msg[:len(msg)-10]), '\n'), msg[len(msg)-10:]...),
	} {
		if err := VerifyMessage(pub, KindAlert, "lyon-07", "atm-0042", bad); !errors.Is(err, ErrMsgSignature) {
			t.Errorf("%s: %v, want ErrMsgSignature", name, err)
		}
	}
}
