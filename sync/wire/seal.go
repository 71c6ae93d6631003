package wire

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Sealed replies.
//
// A command may carry args.reply_key: the base64url (RFC 4648 section 5,
// no padding) of a 32-byte X25519 public key, one-time, made by the
// sender for this command alone (NewReplyKey). The agent then answers
// with the result sealed to that key instead of in clear: the reply's
// sealed field is the base64url (no padding) of the one-shot HPKE
// (RFC 9180, base mode) output, the 32-byte encapsulated key followed by
// the ciphertext and its 16-byte tag, of the result's JSON bytes, with
//
//	KEM  DHKEM(X25519, HKDF-SHA256)  (0x0020)
//	KDF  HKDF-SHA256                 (0x0001)
//	AEAD ChaCha20Poly1305            (0x0003)
//	info "atm-agent reply v1" 0x00 site 0x00 device 0x00 command 0x00 correlation_id
//
// (no aad). ChaCha20Poly1305 is fast on the controllers' ARM cores that
// have no AES instructions. info binds the result to the reply it is in:
// opened with another device's, another command's or another correlation
// id's info, it fails. The fields are those of the reply, which are those
// of the command it answers; none of them can hold a NUL.

// ReplySealLabel starts the info of every sealed result.
const ReplySealLabel = "atm-agent reply v1"

// ReplyKeySize is the size of a reply key (an X25519 public key).
const ReplyKeySize = 32

// SealOverhead is what sealing adds to a result before base64: the
// encapsulated key and the AEAD tag.
const SealOverhead = 32 + 16

// SealedLen is the length of the sealed field of a result of n bytes.
func SealedLen(n int) int { return base64.RawURLEncoding.EncodedLen(n + SealOverhead) }

// Errors of the seal helpers, for errors.Is.
var (
	// ErrReplyKey: args.reply_key is not a base64url X25519 public key.
	ErrReplyKey = errors.New("invalid reply key")
	// ErrSealed: a sealed result does not open with this key and context
	// (another key, another reply's context, altered or cut).
	ErrSealed = errors.New("sealed result does not open")
)

var replyKDF, replyAEAD = hpke.HKDFSHA256(), hpke.ChaCha20Poly1305()

// SealContext is what a sealed result is bound to: the reply's site,
// device, command and correlation id.
type SealContext struct {
	Site, Device  string
	Command       CommandName
	CorrelationID string
}

// SealContext returns the context of the reply's own fields.
func (r Reply) SealContext() SealContext {
	return SealContext{Site: r.Site, Device: r.Device, Command: r.Command, CorrelationID: r.CorrelationID}
}

// SealContext returns the context the reply to the command is sealed in.
func (c Command) SealContext() SealContext {
	return SealContext{Site: c.Site, Device: c.Device, Command: c.Command, CorrelationID: c.MessageID}
}

// Info is the HPKE info of the context.
func (s SealContext) Info() ([]byte, error) {
	fields := []string{ReplySealLabel, s.Site, s.Device, string(s.Command), s.CorrelationID}
	for i, f := range fields[1:] {
		if f == "" || strings.IndexByte(f, 0) >= 0 {
			return nil, fmt.Errorf("seal context: %s empty or holding a NUL", [...]string{"site", "device", "command", "correlation_id"}[i])
		}
	}
	return []byte(strings.Join(fields, "\x00")), nil
}

// NewReplyKey makes a one-time reply key: the private key stays with the
// sender, the encoded public key goes in args.reply_key.
func NewReplyKey() (*ecdh.PrivateKey, string, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	return k, EncodeReplyKey(k.PublicKey()), nil
}

// EncodeReplyKey encodes an X25519 public key as args.reply_key carries it.
func EncodeReplyKey(k *ecdh.PublicKey) string {
	return base64.RawURLEncoding.EncodeToString(k.Bytes())
}

// ParseReplyKey strictly decodes args.reply_key: base64url without
// padding, no other characters, exactly ReplyKeySize bytes.
func ParseReplyKey(s string) (*ecdh.PublicKey, error) {
	if want := base64.RawURLEncoding.EncodedLen(ReplyKeySize); len(s) != want {
		return nil, fmt.Errorf("%w: %d characters, want %d (base64url, no padding, of %d bytes)", ErrReplyKey, len(s), want, ReplyKeySize)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url without padding: %v", ErrReplyKey, err)
	}
	k, err := ecdh.X25519().NewPublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrReplyKey, err)
	}
	return k, nil
}

// SealResult seals a result's JSON bytes to replyKey (args.reply_key) in
// the reply's context, and returns the reply's sealed field.
func SealResult(replyKey string, ctx SealContext, result []byte) (string, error) {
	k, err := ParseReplyKey(replyKey)
	if err != nil {
		return "", err
	}
	info, err := ctx.Info()
	if err != nil {
		return "", err
	}
	pk, err := hpke.NewDHKEMPublicKey(k)
	if err != nil {
		return "", fmt.Errorf("seal result: %w", err)
	}
	ct, err := hpke.Seal(pk, replyKDF, replyAEAD, info, result)
	if err != nil {
		return "", fmt.Errorf("seal result: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(ct), nil
}

// Seal replaces the reply's result with its sealed form (SealResult, in
// the reply's own context) when replyKey (the command's args.reply_key) is
// set: an ok reply's result, {} when it has none; a refusal carries none.
// On error the reply carries no result at all, sealed or in clear.
func (r *Reply) Seal(replyKey string) error {
	if replyKey == "" {
		return nil
	}
	plain := r.Result
	r.Result, r.Sealed = nil, ""
	if !r.OK {
		return nil
	}
	if plain == nil {
		plain = json.RawMessage(`{}`)
	}
	sealed, err := SealResult(replyKey, r.SealContext(), plain)
	if err != nil {
		return err
	}
	r.Sealed = sealed
	return nil
}

// OpenResult opens a reply's sealed field with the reply key's private
// half in the context of the command it answers, and returns the result's
// JSON bytes.
func OpenResult(priv *ecdh.PrivateKey, ctx SealContext, sealed string) ([]byte, error) {
	if priv == nil || priv.Curve() != ecdh.X25519() {
		return nil, fmt.Errorf("%w: not an X25519 private key", ErrSealed)
	}
	info, err := ctx.Info()
	if err != nil {
		return nil, err
	}
	ct, err := base64.RawURLEncoding.Strict().DecodeString(sealed)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url without padding: %v", ErrSealed, err)
	}
	if len(ct) < SealOverhead {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d of the encapsulated key and tag", ErrSealed, len(ct), SealOverhead)
	}
	k, err := hpke.NewDHKEMPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSealed, err)
	}
	pt, err := hpke.Open(k, replyKDF, replyAEAD, info, ct)
	if err != nil {
		return nil, fmt.Errorf("%w: another key or context, or altered: %v", ErrSealed, err)
	}
	return pt, nil
}
