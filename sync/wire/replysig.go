package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Signed replies.
//
// An agent signs every reply with its device key (Ed25519, pure, RFC
// 8032): the reply's sig field is the standard base64 (padded) of the
// 64-byte signature over
//
//	"atm-agent reply sig v1" 0x00 site 0x00 device 0x00 command 0x00
//	correlation_id 0x00 ok 0x00 code 0x00 error 0x00 body
//
// where ok is "true" or "false", code and error are the reply's (empty
// when absent), and body is "sealed" 0x00 <the sealed field's characters>,
// "result" 0x00 <the result's JSON text as it stands in the message,
// without the whitespace outside its strings (json.Compact): escapes are
// kept as they are>, or "none" 0x00 when the reply carries neither. Every string is
// the field's value as decoded from the JSON (UTF-8), not its escaped
// form. None of the fields before body may hold a NUL (the fleet refuses a
// NUL anywhere in a reply). It binds everything a reader acts on: which
// command of which device the reply answers, its outcome and its result;
// not the reply's own message_id, seq, ts or historical.

// ReplySigLabel starts the signed bytes of every reply.
const ReplySigLabel = "atm-agent reply sig v1"

// Errors of VerifyReply, for errors.Is.
var (
	// ErrReplyUnsigned: the reply carries no sig.
	ErrReplyUnsigned = errors.New("reply is not signed")
	// ErrReplySignature: sig is malformed or does not verify with the key.
	ErrReplySignature = errors.New("reply signature does not verify with the device's key")
)

// SigInput is the byte string a reply's signature is made over.
func (r Reply) SigInput() ([]byte, error) {
	ok := "false"
	if r.OK {
		ok = "true"
	}
	head := []string{ReplySigLabel, r.Site, r.Device, string(r.Command), r.CorrelationID, ok, string(r.Code), r.Error}
	names := [...]string{"label", "site", "device", "command", "correlation_id", "ok", "code", "error"}
	for i, f := range head {
		if strings.IndexByte(f, 0) >= 0 {
			return nil, fmt.Errorf("reply signature: %s holds a NUL", names[i])
		}
	}
	var b bytes.Buffer
	for _, f := range head {
		b.WriteString(f)
		b.WriteByte(0)
	}
	switch {
	case r.Sealed != "" && r.Result != nil:
		return nil, errors.New("reply signature: both result and sealed")
	case r.Sealed != "":
		b.WriteString("sealed\x00")
		b.WriteString(r.Sealed)
	case r.Result != nil:
		b.WriteString("result\x00")
		if err := json.Compact(&b, r.Result); err != nil {
			return nil, fmt.Errorf("reply signature: result: %w", err)
		}
	default:
		b.WriteString("none\x00")
	}
	return b.Bytes(), nil
}

// SignReply signs the reply with the device key and returns the message
// to publish. The reply is first put through its own JSON encoding (the
// result compacted, strings made valid UTF-8) so that the signature covers
// exactly what a reader decodes. A nil key publishes it unsigned.
func SignReply(key ed25519.PrivateKey, r Reply) ([]byte, error) {
	r.Sig = ""
	b, err := json.Marshal(r)
	if err != nil || key == nil {
		return b, err
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("sign reply: not an Ed25519 private key")
	}
	var back Reply
	if err := json.Unmarshal(b, &back); err != nil {
		return nil, fmt.Errorf("sign reply: %w", err)
	}
	in, err := back.SigInput()
	if err != nil {
		return nil, err
	}
	back.Sig = base64.StdEncoding.EncodeToString(ed25519.Sign(key, in))
	return json.Marshal(back)
}

// VerifyReply checks a decoded reply's sig with the device's public key:
// ErrReplyUnsigned when it has none, ErrReplySignature when it does not
// verify. The reply must have been decoded from the message as received
// (its Result the raw JSON text: only whitespace may change), never
// re-encoded.
func VerifyReply(pub ed25519.PublicKey, r Reply) error {
	if r.Sig == "" {
		return ErrReplyUnsigned
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(r.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: sig is not the base64 of an Ed25519 signature", ErrReplySignature)
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: not an Ed25519 public key", ErrReplySignature)
	}
	in, err := r.SigInput()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrReplySignature, err)
	}
	if !ed25519.Verify(pub, in, sig) {
		return ErrReplySignature
	}
	return nil
}

// Fingerprint is a short name of a public key for people to compare:
// "SHA256:" and the unpadded standard base64 of the SHA-256 of its 32
// bytes (as ssh-keygen -l shows host keys).
func Fingerprint(pub ed25519.PublicKey) string {
	h := sha256.Sum256(pub)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(h[:])
}

// EncodePublicKey is the standard base64 of a public key's 32 bytes, the
// form ParsePublicKey and the configs take inline.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}
