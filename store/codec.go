package store

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/internal/secretfile"
)

// Visit record encoding (value in the visits bucket):
//
//	byte 0      format version (1)
//	byte 1      flags: bit 0 = inline embedding encrypted,
//	            bit 1 = template stored in the templates bucket (schema >= 2)
//	uvarint n   length of the JSON header
//	n bytes     JSON header: every visit field except the embedding
//	rest        inline embedding, schema 1 records only (migration 1 -> 2
//	            moves it to the templates bucket): same bytes as a template.
//
// Template encoding (value in the templates bucket, key = the visit's key):
//
//	byte 0      flags: bit 0 = encrypted
//	rest        embedding: float32 little-endian, 4 bytes per dimension;
//	            when encrypted: 12-byte random nonce || AES-256-GCM ciphertext
//	            of those bytes, with the visit key as additional data.
//
// Templates live apart so that metadata scans (summaries, alert rules, stats)
// read only the small visit records, not the pages holding templates.
//
// Outbox record encoding (value in the outbox bucket):
//
//	uvarint n   length of the JSON header (seq, kind, topic, created, coalesce)
//	n bytes     JSON header
//	rest        payload bytes as given by the agent

const (
	visitFormat      = 1
	flagEncrypted    = 1 // visit record (inline embedding) and template
	flagTemplate     = 2 // visit record: template in the templates bucket
	keyCheckPlain    = "atm-agent store key check v1"
	credentialPrefix = "credential:"
)

type visitHeader struct {
	ID         string            `json:"id"`
	Seq        uint64            `json:"seq"`
	Time       time.Time         `json:"t"`
	Trigger    string            `json:"trigger,omitempty"`
	Context    visit.Context     `json:"ctx,omitzero"`
	Outcome    visit.Outcome     `json:"outcome"`
	Model      string            `json:"model,omitempty"`
	Mask       visit.MaskState   `json:"mask"`
	MaskScore  float32           `json:"mask_score"`
	Quality    float32           `json:"quality"`
	Frames     int               `json:"frames"`
	Used       int               `json:"used"`
	IdentityID string            `json:"identity,omitempty"`
	Distance   float32           `json:"distance"`
	Extra      map[string]string `json:"extra,omitempty"` // reserved for later schema versions
}

type aeadCipher = cipher.AEAD

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("encryption key: want 32 bytes, got %d", len(key))
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("encryption key: %w", err)
	}
	return cipher.NewGCM(blk)
}

func seal(a cipher.AEAD, plain, ad []byte) ([]byte, error) {
	out := make([]byte, a.NonceSize(), a.NonceSize()+len(plain)+a.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return a.Seal(out, out[:a.NonceSize()], plain, ad), nil
}

func open(a cipher.AEAD, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < a.NonceSize()+a.Overhead() {
		return nil, errors.New("ciphertext too short")
	}
	return a.Open(nil, sealed[:a.NonceSize()], sealed[a.NonceSize():], ad)
}

func makeKeyCheck(a cipher.AEAD) ([]byte, error) {
	return seal(a, []byte(keyCheckPlain), []byte("keycheck"))
}

func verifyKeyCheck(a cipher.AEAD, c []byte) error {
	p, err := open(a, c, []byte("keycheck"))
	if err != nil || string(p) != keyCheckPlain {
		return ErrWrongKey
	}
	return nil
}

// encodeVisit returns the visit record and, when the visit has an
// embedding, its template (nil otherwise).
func (s *Store) encodeVisit(v *visit.Visit, key []byte) (rec, tmpl []byte, err error) {
	h := visitHeader{
		ID: v.ID, Seq: v.Seq, Time: v.Time.UTC(), Trigger: v.Trigger, Context: v.Context,
		Outcome: v.Outcome, Model: v.Model, Mask: v.Mask, MaskScore: v.MaskScore,
		Quality: v.Quality, Frames: v.Frames, Used: v.Used, IdentityID: v.IdentityID,
		Distance: v.Distance,
	}
	hj, err := json.Marshal(h)
	if err != nil {
		return nil, nil, fmt.Errorf("encode visit %s: %w", v.ID, err)
	}
	var flags byte
	if len(v.Embedding) > 0 {
		emb := make([]byte, 4*len(v.Embedding))
		for i, f := range v.Embedding {
			binary.LittleEndian.PutUint32(emb[4*i:], math.Float32bits(f))
		}
		var tflags byte
		if s.aead != nil {
			emb, err = seal(s.aead, emb, key)
			if err != nil {
				return nil, nil, fmt.Errorf("encrypt visit %s: %w", v.ID, err)
			}
			tflags |= flagEncrypted
		}
		tmpl = append(append(make([]byte, 0, 1+len(emb)), tflags), emb...)
		flags |= flagTemplate
	}
	return visitRecord(flags, hj, nil), tmpl, nil
}

// splitVisit returns a record's flags, JSON header and inline embedding
// bytes (empty for records of schema >= 2).
func splitVisit(key, val []byte) (flags byte, header, inline []byte, err error) {
	if len(val) < 3 || val[0] != visitFormat {
		return 0, nil, nil, fmt.Errorf("decode visit %x: unknown record format", key)
	}
	n, w := binary.Uvarint(val[2:])
	if w <= 0 || uint64(len(val)-2-w) < n {
		return 0, nil, nil, fmt.Errorf("decode visit %x: truncated header", key)
	}
	return val[1], val[2+w : 2+w+int(n)], val[2+w+int(n):], nil
}

// decodeVisit decodes a stored visit; the embedding is skipped (its template
// not read, nor decrypted) unless withEmbedding.
func (s *Store) decodeVisit(tx *bolt.Tx, key, val []byte, withEmbedding bool) (visit.Visit, error) {
	var v visit.Visit
	flags, hb, inline, err := splitVisit(key, val)
	if err != nil {
		return v, err
	}
	var h visitHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return v, fmt.Errorf("decode visit %x: %w", key, err)
	}
	v = visit.Visit{
		ID: h.ID, Seq: h.Seq, Time: h.Time.UTC(), Trigger: h.Trigger, Context: h.Context,
		Descriptor: visit.Descriptor{
			Outcome: h.Outcome, Model: h.Model, Mask: h.Mask, MaskScore: h.MaskScore,
			Quality: h.Quality, Frames: h.Frames, Used: h.Used,
		},
		IdentityID: h.IdentityID, Distance: h.Distance,
	}
	if !withEmbedding {
		return v, nil
	}
	emb, eflags := inline, flags
	if flags&flagTemplate != 0 {
		var t []byte
		if tb := tx.Bucket(bTemplates); tb != nil {
			t = tb.Get(key)
		}
		if len(t) < 1 {
			return v, fmt.Errorf("decode visit %s: template missing", h.ID)
		}
		eflags, emb = t[0], t[1:]
	}
	if len(emb) == 0 {
		return v, nil
	}
	v.Embedding, err = s.decodeEmbedding(key, eflags, emb)
	if err != nil {
		return v, fmt.Errorf("decode visit %s: %w", h.ID, err)
	}
	return v, nil
}

// decodeEmbedding decrypts (flags bit 0) and decodes embedding bytes.
func (s *Store) decodeEmbedding(key []byte, flags byte, emb []byte) ([]float32, error) {
	if flags&flagEncrypted != 0 {
		if s.aead == nil {
			return nil, ErrKeyRequired
		}
		p, err := open(s.aead, emb, key)
		if err != nil {
			return nil, fmt.Errorf("decrypt embedding: %w", err)
		}
		emb = p
	}
	if len(emb)%4 != 0 {
		return nil, fmt.Errorf("embedding length %d not a multiple of 4", len(emb))
	}
	out := make([]float32, len(emb)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(emb[4*i:]))
	}
	return out, nil
}

// relabelRecord rewrites only the identity fields of a stored record, keeping
// its flags and any inline embedding bytes untouched (the template, in its
// own bucket, is not touched at all). It returns the new record and the
// previous identity.
func (s *Store) relabelRecord(key, val []byte, identity string, distance *float32) ([]byte, string, error) {
	flags, hb, inline, err := splitVisit(key, val)
	if err != nil {
		return nil, "", err
	}
	var h visitHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, "", fmt.Errorf("decode visit %x: %w", key, err)
	}
	h.Time = h.Time.UTC()
	old := h.IdentityID
	h.IdentityID = identity
	if distance != nil {
		h.Distance = *distance
	}
	hj, err := json.Marshal(h)
	if err != nil {
		return nil, "", err
	}
	return visitRecord(flags, hj, inline), old, nil
}

// visitRecord assembles a visit record from its parts.
func visitRecord(flags byte, header, inline []byte) []byte {
	out := make([]byte, 0, 2+binary.MaxVarintLen64+len(header)+len(inline))
	out = append(out, visitFormat, flags)
	out = binary.AppendUvarint(out, uint64(len(header)))
	out = append(out, header...)
	return append(out, inline...)
}

type outboxHeader struct {
	Seq      uint64    `json:"seq"`
	Kind     string    `json:"kind"`
	Topic    string    `json:"topic"`
	Created  time.Time `json:"created"`
	Coalesce string    `json:"coalesce,omitempty"`
}

func encodeOutbox(m *visit.OutboxMessage) ([]byte, error) {
	hj, err := json.Marshal(outboxHeader{Seq: m.Seq, Kind: m.Kind, Topic: m.Topic, Created: m.Created.UTC(), Coalesce: m.Coalesce})
	if err != nil {
		return nil, err
	}
	out := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64+len(hj)+len(m.Payload)), uint64(len(hj)))
	out = append(out, hj...)
	return append(out, m.Payload...), nil
}

func decodeOutbox(key, val []byte) (visit.OutboxMessage, error) {
	var m visit.OutboxMessage
	n, w := binary.Uvarint(val)
	if w <= 0 || uint64(len(val)-w) < n {
		return m, fmt.Errorf("decode outbox %x: truncated header", key)
	}
	var h outboxHeader
	if err := json.Unmarshal(val[w:w+int(n)], &h); err != nil {
		return m, fmt.Errorf("decode outbox %x: %w", key, err)
	}
	m = visit.OutboxMessage{
		Key: binary.BigEndian.Uint64(key), Seq: h.Seq, Kind: h.Kind, Topic: h.Topic,
		Created: h.Created, Coalesce: h.Coalesce,
		Payload: bytes.Clone(val[w+int(n):]),
	}
	return m, nil
}

// LoadKey reads a 32-byte encryption key from a file holding either 32 raw
// bytes or 64 hex characters (surrounding whitespace ignored). A path of the
// form "credential:NAME" reads the systemd credential
// $CREDENTIALS_DIRECTORY/NAME (LoadCredential= / SetCredentialEncrypted=).
func LoadKey(path string) ([]byte, error) {
	if name, ok := strings.CutPrefix(path, credentialPrefix); ok {
		dir := os.Getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return nil, fmt.Errorf("load key %q: CREDENTIALS_DIRECTORY is not set (is the unit using LoadCredential=?)", path)
		}
		if name == "" || strings.ContainsAny(name, "/\\") || name == "." || name == ".." {
			return nil, fmt.Errorf("load key %q: invalid credential name", path)
		}
		path = filepath.Join(dir, name)
	}
	// A regular file only (a named pipe would block the read for good). A
	// key every local user can read protects nothing from them (a copy of
	// the store, a backup): refused, as ssh refuses such a private key. The
	// group may read it (root:atm-agent 0640 without LoadCredential=).
	f, err := secretfile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	defer clear(b)
	if len(b) == 32 {
		return bytes.Clone(b), nil
	}
	t := bytes.TrimSpace(b)
	if len(t) == 64 {
		k := make([]byte, 32)
		if _, err := hex.Decode(k, t); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("load key %q: want 32 raw bytes or 64 hex characters, got %d bytes", path, len(b))
}
