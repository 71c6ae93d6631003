package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSignedCommandOpen(t *testing.T) {
	priv := exampleKey()
	pub := priv.Public().(ed25519.PublicKey)
	_, other, _ := GenerateCommandKey()
	otherPub := other.Public().(ed25519.PublicKey)
	payload := []byte(`{"schema_version":2,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`)
	good, err := SignCommand(priv, payload)
	if err != nil {
		t.Fatal(err)
	}
	var env SignedCommand
	json.Unmarshal(good, &env)
	tampered := []byte(strings.Replace(string(payload), "ping", "purge", 1))
	withPayload := func(p []byte) []byte {
		b, _ := json.Marshal(SignedCommand{SchemaVersion: 2, Payload: base64.StdEncoding.EncodeToString(p), Sig: env.Sig})
		return b
	}
	tests := []struct {
		name string
		in   []byte
		keys []ed25519.PublicKey
		want error
	}{
		{"valid", good, []ed25519.PublicKey{pub}, nil},
		{"valid, second key", good, []ed25519.PublicKey{otherPub, pub}, nil},
		{"wrong key", good, []ed25519.PublicKey{otherPub}, ErrBadSignature},
		{"no keys", good, nil, ErrBadSignature},
		{"payload changed after signing", withPayload(tampered), []ed25519.PublicKey{pub}, ErrBadSignature},
		{"payload re-serialised (space added)", withPayload(append([]byte(" "), payload...)), []ed25519.PublicKey{pub}, ErrBadSignature},
		{"unsigned v1 command", []byte(`{"schema_version":1,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`), []ed25519.PublicKey{pub}, ErrUnsigned},
		{"bare v2 command", payload, []ed25519.PublicKey{pub}, ErrUnsigned},
		{"no sig", []byte(`{"schema_version":2,"payload":"` + env.Payload + `"}`), []ed25519.PublicKey{pub}, ErrUnsigned},
		{"sig not base64", []byte(`{"schema_version":2,"payload":"` + env.Payload + `","sig":"***"}`), []ed25519.PublicKey{pub}, ErrBadSignature},
		{"trailing data", append(bytes.Clone(good), '{', '}'), []ed25519.PublicKey{pub}, ErrUnsigned},
		{"extra field", []byte(strings.Replace(string(good), `{`, `{"key_id":"k",`, 1)), []ed25519.PublicKey{pub}, ErrUnsigned},
		{"oversize", append(bytes.Clone(good), bytes.Repeat([]byte(" "), MaxSignedCommandSize)...), []ed25519.PublicKey{pub}, ErrOversize},
		{"garbage", []byte("garbage"), []ed25519.PublicKey{pub}, ErrUnsigned},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := OpenSignedCommand(tc.in, tc.keys)
			if tc.want == nil {
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("got %q, %v; want %v", got, err, tc.want)
			}
		})
	}
	if _, err := SignCommand(priv, bytes.Repeat([]byte("x"), MaxCommandSize+1)); err == nil {
		t.Error("SignCommand accepted a payload over MaxCommandSize")
	}
	// The largest payload fits the envelope limit.
	big, err := SignCommand(priv, bytes.Repeat([]byte("x"), MaxCommandSize))
	if err != nil || len(big) > MaxSignedCommandSize {
		t.Errorf("a %d-byte payload signs to %d bytes (limit %d), %v", MaxCommandSize, len(big), MaxSignedCommandSize, err)
	}
}

func TestKeyEncodings(t *testing.T) {
	pub, priv, err := GenerateCommandKey()
	if err != nil {
		t.Fatal(err)
	}
	pp, _ := MarshalPublicKeyPEM(pub)
	kp, _ := MarshalPrivateKeyPEM(priv)
	for name, in := range map[string][]byte{"pem": pp, "base64": []byte(" " + base64.StdEncoding.EncodeToString(pub) + "\n")} {
		got, err := ParsePublicKey(in)
		if err != nil || !got.Equal(pub) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if got, err := ParsePrivateKey(kp); err != nil || !got.Equal(priv) {
		t.Errorf("private: %v", err)
	}
	for name, in := range map[string][]byte{"private as public": kp, "short": []byte(base64.StdEncoding.EncodeToString(pub[:31])), "text": []byte("hello")} {
		if _, err := ParsePublicKey(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := ParsePrivateKey(pp); err == nil {
		t.Error("public key accepted as private")
	}
}

// TestOpenSSLInterop signs with OpenSSL (what an integrator without Go
// would use) and verifies with the agent's code, and the other way round:
// the signed form is plain Ed25519 over the payload bytes.
func TestOpenSSLInterop(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	run := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command(openssl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
		return out
	}
	key, pubf, msg, sigf := filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.pub"), filepath.Join(dir, "cmd.json"), filepath.Join(dir, "sig")
	run("genpkey", "-algorithm", "ed25519", "-out", key)
	run("pkey", "-in", key, "-pubout", "-out", pubf)
	payload := []byte(`{"schema_version":2,"message_id":"c-ossl","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`)
	os.WriteFile(msg, payload, 0o600)
	run("pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", msg, "-out", sigf)
	sig, _ := os.ReadFile(sigf)
	pb, _ := os.ReadFile(pubf)
	pub, err := ParsePublicKey(pb)
	if err != nil {
		t.Fatal(err)
	}
	env, _ := json.Marshal(SignedCommand{SchemaVersion: 2, Payload: base64.StdEncoding.EncodeToString(payload), Sig: base64.StdEncoding.EncodeToString(sig)})
	got, _, err := OpenSignedCommand(env, []ed25519.PublicKey{pub})
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("OpenSSL-signed command: %v", err)
	}
	// A key written by the agent's keygen encoding is usable by OpenSSL.
	kb, _ := os.ReadFile(key)
	priv, err := ParsePrivateKey(kb)
	if err != nil {
		t.Fatalf("OpenSSL private key: %v", err)
	}
	ours, _ := MarshalPrivateKeyPEM(priv)
	os.WriteFile(key, ours, 0o600)
	run("pkeyutl", "-sign", "-inkey", key, "-rawin", "-in", msg, "-out", sigf)
	sig2, _ := os.ReadFile(sigf)
	if !bytes.Equal(sig2, ed25519.Sign(priv, payload)) {
		t.Fatal("OpenSSL and crypto/ed25519 signatures differ")
	}
}

// FuzzOpenSignedCommand: no input panics, and whatever is accepted really
// is signed by the key and within the size limits.
func FuzzOpenSignedCommand(f *testing.F) {
	priv := exampleKey()
	pub := priv.Public().(ed25519.PublicKey)
	good, _ := SignCommand(priv, []byte(`{"schema_version":2,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`))
	for _, s := range [][]byte{good, []byte(`{"schema_version":2,"payload":"","sig":""}`), []byte(`{}`), []byte(`null`), nil} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, k, err := OpenSignedCommand(b, []ed25519.PublicKey{pub})
		if err != nil {
			return
		}
		if k != 0 || len(b) > MaxSignedCommandSize {
			t.Fatalf("accepted key %d, %d bytes", k, len(b))
		}
		var env SignedCommand
		if json.Unmarshal(b, &env) != nil {
			t.Fatal("accepted a non-envelope")
		}
		sig, _ := base64.StdEncoding.DecodeString(env.Sig)
		if !ed25519.Verify(pub, p, sig) {
			t.Fatal("accepted a payload the signature does not cover")
		}
	})
}

// A public key that is not a curve point, or is of small order (with which
// one constant signature verifies on every message), is refused wherever a
// key is read: the agent's command keys and the fleet's pinned device keys.
func TestParsePublicKeyRefusesWeakPoints(t *testing.T) {
	identity := make([]byte, 32)
	identity[0] = 1
	zero := make([]byte, 32)
	order2 := bytes.Repeat([]byte{0xff}, 32) // p-1: the point of order 2 (y = -1)
	order2[0], order2[31] = 0xec, 0x7f
	notOnCurve := make([]byte, 32)
	notOnCurve[0] = 2 // y = 2 has no x on the curve
	for name, k := range map[string][]byte{"identity": identity, "zero": zero, "order 2": order2, "not a point": notOnCurve} {
		if _, err := ParsePublicKey([]byte(base64.StdEncoding.EncodeToString(k))); err == nil {
			t.Errorf("%s: accepted", name)
		}
		der, _ := x509.MarshalPKIXPublicKey(ed25519.PublicKey(k))
		if _, err := ParsePublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err == nil {
			t.Errorf("%s as PEM: accepted", name)
		}
	}
	// The forgery the check prevents: with the identity point as the
	// key, R = identity and S = 0 verify on any message.
	sig := make([]byte, 64)
	sig[0] = 1
	if !ed25519.Verify(ed25519.PublicKey(identity), []byte("any reply"), sig) {
		t.Fatal("the weak key's forgery does not verify: the test no longer shows the risk")
	}
	for range 20 {
		pub, _, _ := ed25519.GenerateKey(nil)
		if _, err := ParsePublicKey([]byte(base64.StdEncoding.EncodeToString(pub))); err != nil {
			t.Fatalf("a generated key refused: %v", err)
		}
	}
}
