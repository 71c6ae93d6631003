package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/edwards25519"
)

// Signed commands (command schema version 2).
//
// A command travels as a detached-signature envelope, one JSON object:
//
//	{"schema_version": 2, "payload": "<base64>", "sig": "<base64>"}
//
// payload is the standard base64 (RFC 4648 section 4, with padding) of the
// command's JSON bytes (a Command with schema_version 2); sig is the
// standard base64 of the 64-byte Ed25519 signature (RFC 8032, pure Ed25519,
// no context, no prehash) over exactly those decoded bytes. Nothing is
// canonicalised: the agent verifies the bytes it decodes from payload, then
// decodes the command from those same bytes. The key signs atm-agent
// commands and nothing else.

// CommandSchemaVersion is the version of the command payload and of its
// signed envelope. Version 1 (unsigned) commands are no longer accepted.
const CommandSchemaVersion = 2

// MaxSignedCommandSize bounds an accepted signed envelope (checked before
// anything is decoded). It leaves room for a MaxCommandSize payload in
// base64 plus the signature.
const MaxSignedCommandSize = 8192

// Errors of OpenSignedCommand, for errors.Is.
var (
	ErrOversize     = errors.New("command too large")
	ErrUnsigned     = errors.New("not a signed command")
	ErrBadSignature = errors.New("signature does not verify with any configured key")
)

// SignedCommand is the envelope of a signed command.
type SignedCommand struct {
	SchemaVersion int    `json:"schema_version"`
	Payload       string `json:"payload"`
	Sig           string `json:"sig"`
}

// SignCommand signs the exact bytes of a command payload and returns the
// envelope to publish on the command topic.
func SignCommand(priv ed25519.PrivateKey, payload []byte) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("sign command: not an Ed25519 private key")
	}
	if len(payload) > MaxCommandSize {
		return nil, fmt.Errorf("sign command: payload %d bytes, limit %d", len(payload), MaxCommandSize)
	}
	return json.Marshal(SignedCommand{SchemaVersion: CommandSchemaVersion,
		Payload: base64.StdEncoding.EncodeToString(payload),
		Sig:     base64.StdEncoding.EncodeToString(ed25519.Sign(priv, payload))})
}

// OpenSignedCommand checks the size of b, decodes the envelope strictly,
// and verifies the signature against each key in turn. It returns the
// signed payload bytes (not yet decoded or checked: see DecodeCommand) and
// the index of the key that verified it. It is ParseSignedCommand, then
// Verify.
func OpenSignedCommand(b []byte, keys []ed25519.PublicKey) (payload []byte, key int, err error) {
	env, err := ParseSignedCommand(b)
	if err != nil {
		return nil, -1, err
	}
	if key, err = env.Verify(keys); err != nil {
		return nil, -1, err
	}
	return env.payload, key, nil
}

// ParsedSignedCommand is an envelope decoded but not yet verified.
type ParsedSignedCommand struct {
	payload, sig []byte
}

// ParseSignedCommand checks the size of b and decodes the envelope
// strictly, without verifying the signature: all that costs little. The
// signature check (Verify, an Ed25519 verification for each key) is what a
// flood of forged commands costs; a caller can bound it between the two.
func ParseSignedCommand(b []byte) (ParsedSignedCommand, error) {
	if len(b) > MaxSignedCommandSize {
		return ParsedSignedCommand{}, fmt.Errorf("%w: %d bytes, limit %d", ErrOversize, len(b), MaxSignedCommandSize)
	}
	var env SignedCommand
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return ParsedSignedCommand{}, fmt.Errorf("%w: want {\"schema_version\":2,\"payload\":...,\"sig\":...}: %v", ErrUnsigned, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return ParsedSignedCommand{}, fmt.Errorf("%w: trailing data after object", ErrUnsigned)
	}
	if env.SchemaVersion != CommandSchemaVersion || env.Sig == "" || env.Payload == "" {
		return ParsedSignedCommand{}, fmt.Errorf("%w: want schema_version 2 with payload and sig (got schema_version %d)", ErrUnsigned, env.SchemaVersion)
	}
	sig, err := base64.StdEncoding.Strict().DecodeString(env.Sig)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return ParsedSignedCommand{}, fmt.Errorf("%w: sig is not a base64 Ed25519 signature", ErrBadSignature)
	}
	payload, err := base64.StdEncoding.Strict().DecodeString(env.Payload)
	if err != nil {
		return ParsedSignedCommand{}, fmt.Errorf("%w: payload is not standard base64: %v", ErrUnsigned, err)
	}
	return ParsedSignedCommand{payload: payload, sig: sig}, nil
}

// Verify checks the signature against each key in turn and returns the
// index of the key that verified it.
func (e ParsedSignedCommand) Verify(keys []ed25519.PublicKey) (key int, err error) {
	for i, k := range keys {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, e.payload, e.sig) {
			return i, nil
		}
	}
	return -1, ErrBadSignature
}

// Payload is the signed payload bytes; only Verify says they are signed.
func (e ParsedSignedCommand) Payload() []byte { return e.payload }

// GenerateCommandKey returns a new Ed25519 key pair for signing commands.
func GenerateCommandKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// MarshalPrivateKeyPEM encodes a private key as PKCS#8 PEM ("PRIVATE
// KEY"), the form `openssl pkey` reads.
func MarshalPrivateKeyPEM(k ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKeyPEM encodes a public key as PKIX PEM ("PUBLIC KEY").
func MarshalPublicKeyPEM(k ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePublicKey reads an Ed25519 public key: PKIX PEM ("PUBLIC KEY", as
// written by `atm-tools command keygen` or `openssl pkey -pubout`) or the
// standard base64 of the 32 raw bytes (surrounding space ignored).
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block %q, want \"PUBLIC KEY\"", blk.Type)
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse public key: %w", err)
		}
		pk, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key is %T, want Ed25519", k)
		}
		return pk, checkPoint(pk)
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, errors.New("neither PEM nor base64")
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%d bytes, an Ed25519 public key has %d", len(raw), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), checkPoint(raw)
}

// checkPoint refuses a public key that is not a point of the curve or is
// of small order (the identity, the all-zero encoding and the other six
// points the cofactor 8 kills): with such a key one constant signature
// verifies on every message, so pinning or configuring it would let
// anyone sign. A key made by ed25519.GenerateKey is never one.
func checkPoint(k []byte) error {
	p, err := new(edwards25519.Point).SetBytes(k)
	if err != nil {
		return errors.New("not a point of the Ed25519 curve: not a public key")
	}
	if new(edwards25519.Point).MultByCofactor(p).Equal(edwards25519.NewIdentityPoint()) == 1 {
		return errors.New("a small-order point (one signature would verify on every message): not a usable public key")
	}
	return nil
}

// ParsePrivateKey reads an Ed25519 private key in PKCS#8 PEM.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("no PEM \"PRIVATE KEY\" block (PKCS#8)")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	pk, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key is %T, want Ed25519", k)
	}
	return pk, nil
}
