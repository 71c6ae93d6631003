package wire

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Signed messages: status, state, summary and alert.
//
// An agent with a device key signs each of these messages as it publishes
// it, over the exact bytes it sends. The signed message is the unsigned
// one, a compact JSON object, with its closing "}" replaced by
//
//	,"sig":"<88 characters: the standard base64 (padded) of the signature>"}
//
// so sig is the object's last member, written without white space, and
// the message ends with exactly those 98 bytes. The signature is pure
// Ed25519 (RFC 8032) over
//
//	"atm-agent msg sig v1" 0x00 kind 0x00 site 0x00 device 0x00 unsigned
//
// where kind is the topic's last level (status, state, summary, alert),
// site and device the topic's, and unsigned the message without the sig
// member: its first len-98 bytes followed by "}". Nothing is decoded and
// encoded again: a verifier cuts the 98 bytes off the message as received.
// The kind, site and device bind the message to its topic: a device's
// signed alert republished on another device's topic, or its state as its
// status, does not verify. A message with a sig anywhere else (before other
// members, or twice) is refused. JSON white space after the closing "}"
// (space, tab, CR, LF: a copy saved by a shell tool ends with a newline)
// is not part of the message: the verifier cuts it off first.

// MsgSigLabel starts the signed bytes of every status, state, summary and
// alert.
const MsgSigLabel = "atm-agent msg sig v1"

// MsgSigOverhead is how many bytes signing adds to a message: a summary
// cut to fit max_message_size is cut to that much less.
const MsgSigOverhead = len(msgSigHead) + msgSigChars + len(`"`)

const (
	msgSigHead  = `,"sig":"`
	msgSigChars = 88 // base64 of 64 bytes, padded
	// msgSigTail is the length of the suffix a signed message ends with.
	msgSigTail = len(msgSigHead) + msgSigChars + len(`"}`)
)

// Errors of VerifyMessage, for errors.Is.
var (
	// ErrMsgUnsigned: the message carries no sig.
	ErrMsgUnsigned = errors.New("message is not signed")
	// ErrMsgSignature: sig is malformed, misplaced, or does not verify
	// with the key.
	ErrMsgSignature = errors.New("message signature does not verify with the device's key")
)

// MsgSigInput is the byte string a message's signature is made over:
// unsigned is the message without its sig member.
func MsgSigInput(kind, site, device string, unsigned []byte) ([]byte, error) {
	for _, f := range [...]struct{ name, v string }{{"kind", kind}, {"site", site}, {"device", device}} {
		if f.v == "" || strings.IndexByte(f.v, 0) >= 0 {
			return nil, fmt.Errorf("message signature: %s is empty or holds a NUL", f.name)
		}
	}
	b := make([]byte, 0, len(MsgSigLabel)+len(kind)+len(site)+len(device)+4+len(unsigned))
	for _, f := range [...]string{MsgSigLabel, kind, site, device} {
		b = append(b, f...)
		b = append(b, 0)
	}
	return append(b, unsigned...), nil
}

// SignMessage signs msg, a compact JSON object of at least one member
// without a sig (what json.Marshal gives), as published on the topic of
// kind of site/device, and returns the message with sig appended as its
// last member (MsgSigOverhead bytes longer).
func SignMessage(key ed25519.PrivateKey, kind, site, device string, msg []byte) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("sign message: not an Ed25519 private key")
	}
	n := len(msg)
	if n < 3 || msg[0] != '{' || msg[n-1] != '}' || msg[n-2] == '{' {
		return nil, errors.New("sign message: not a compact JSON object with members")
	}
	in, err := MsgSigInput(kind, site, device, msg)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, n+MsgSigOverhead)
	out = append(out, msg[:n-1]...)
	out = append(out, msgSigHead...)
	out = base64.StdEncoding.AppendEncode(out, ed25519.Sign(key, in))
	return append(out, `"}`...), nil
}

// VerifyMessage checks the signature of msg, received on the topic of kind
// of site/device, with the device's public key: ErrMsgUnsigned when it has
// no sig member, ErrMsgSignature when its sig is not the last member as
// SignMessage writes it, is not the only one, or does not verify. msg must
// be the bytes as received; JSON white space after its end is cut off
// first (JSON allows it, and the signature does not cover it).
func VerifyMessage(pub ed25519.PublicKey, kind, site, device string, msg []byte) error {
	unsigned, sig, err := splitSigned(bytes.TrimRight(msg, " \t\r\n"))
	if err != nil {
		return err
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: not an Ed25519 public key", ErrMsgSignature)
	}
	in, err := MsgSigInput(kind, site, device, unsigned)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMsgSignature, err)
	}
	if !ed25519.Verify(pub, in, sig) {
		return ErrMsgSignature
	}
	return nil
}

// splitSigned cuts a signed message into the unsigned one and the
// signature.
func splitSigned(msg []byte) (unsigned, sig []byte, err error) {
	n := len(msg)
	if n > msgSigTail && bytes.Equal(msg[n-msgSigTail:n-msgSigTail+len(msgSigHead)], []byte(msgSigHead)) && bytes.HasSuffix(msg, []byte(`"}`)) {
		sig, err = base64.StdEncoding.Strict().DecodeString(string(msg[n-2-msgSigChars : n-2]))
		if err != nil || len(sig) != ed25519.SignatureSize {
			return nil, nil, fmt.Errorf("%w: sig is not the base64 of an Ed25519 signature", ErrMsgSignature)
		}
		unsigned = append(msg[:n-msgSigTail:n-msgSigTail], '}')
		has, err := hasSig(unsigned)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrMsgSignature, err)
		}
		if has {
			return nil, nil, fmt.Errorf("%w: more than one sig member", ErrMsgSignature)
		}
		return unsigned, sig, nil
	}
	has, err := hasSig(msg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrMsgSignature, err)
	}
	if has {
		return nil, nil, fmt.Errorf("%w: sig is not the last member, written as %s<base64>\"}", ErrMsgSignature, msgSigHead)
	}
	return nil, nil, ErrMsgUnsigned
}

// hasSig says whether the JSON object b has a member named sig (its name
// as decoded: an escaped "s\u0069g" is one). It reads the top level's
// names only, without decoding the values (a decode into a map took three
// quarters of the check of a 50 KB summary); b must hold one object, its
// strings closed and its brackets balanced. What it reads past is not
// validated: a reader decoding the message refuses bad JSON anyway.
func hasSig(b []byte) (bool, error) {
	errBad := errors.New("not a JSON object")
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false, errBad
	}
	depth, key, found := 0, true, false
	for ; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			j := i + 1
			esc := false
			for ; j < len(b) && b[j] != '"'; j++ {
				if b[j] == '\\' {
					esc = true
					j++
				}
			}
			if j >= len(b) {
				return false, errBad
			}
			if depth == 1 && key {
				name := string(b[i+1 : j])
				if esc && json.Unmarshal(b[i:j+1], &name) != nil {
					return false, errBad
				}
				found = found || name == "sig"
				key = false
			}
			i = j
		case '{', '[':
			depth++
			key = c == '{' && depth == 1
		case '}', ']':
			depth--
			if depth == 0 {
				if skipSpace(b, i+1) != len(b) {
					return false, errBad
				}
				return found, nil
			}
		case ',':
			key = depth == 1
		}
	}
	return false, errBad
}
