package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/periocular/atm-agent/agent/visit"
)

// KindAlert is the outbox kind the bound policy protects.
const KindAlert = "alert"

// enqueue assigns Key and Seq and writes m.
func (s *Store) enqueue(tx *bolt.Tx, m *visit.OutboxMessage) (uint64, uint64, error) {
	if m.Kind == "" || m.Topic == "" {
		return 0, 0, fmt.Errorf("enqueue outbox message: kind and topic are required (kind %q, topic %q)", m.Kind, m.Topic)
	}
	meta := tx.Bucket(bMeta)
	key := getU64(meta, kOutboxKey) + 1
	seq := getU64(meta, kOutboxSeq) + 1
	if err := putU64(meta, kOutboxKey, key); err != nil {
		return 0, 0, err
	}
	if err := putU64(meta, kOutboxSeq, seq); err != nil {
		return 0, 0, err
	}
	m.Key, m.Seq = key, seq
	val, err := encodeOutbox(m)
	if err != nil {
		return 0, 0, fmt.Errorf("enqueue outbox message: %w", err)
	}
	kb := be64(key)
	if err := tx.Bucket(bOutbox).Put(kb, val); err != nil {
		return 0, 0, fmt.Errorf("enqueue outbox message: %w", err)
	}
	if m.Coalesce != "" {
		cb := tx.Bucket(bOutboxCoalesce)
		if prev := cb.Get([]byte(m.Coalesce)); prev != nil && tx.Bucket(bOutbox).Get(prev) != nil {
			if err := tx.Bucket(bOutboxSuperseded).Put(bytes.Clone(prev), nil); err != nil {
				return 0, 0, err
			}
		}
		if err := cb.Put([]byte(m.Coalesce), kb); err != nil {
			return 0, 0, err
		}
	}
	if err := addU64(meta, kOutboxCount, 1); err != nil {
		return 0, 0, err
	}
	if err := addU64(meta, kOutboxBytes, int64(len(m.Payload))); err != nil {
		return 0, 0, err
	}
	return key, seq, nil
}

// removeOutbox deletes one message and its index entries and adjusts the
// counters. It returns the removed message's header (payload omitted) and
// payload size, or ok=false when the key is not present.
func removeOutbox(tx *bolt.Tx, kb []byte) (m visit.OutboxMessage, size int, ok bool, err error) {
	ob := tx.Bucket(bOutbox)
	val := ob.Get(kb)
	if val == nil {
		return m, 0, false, nil
	}
	m, err = decodeOutbox(kb, val)
	if err != nil {
		return m, 0, false, err
	}
	size = len(m.Payload)
	m.Payload = nil
	if err := ob.Delete(kb); err != nil {
		return m, 0, false, err
	}
	if err := tx.Bucket(bOutboxSuperseded).Delete(kb); err != nil {
		return m, 0, false, err
	}
	if m.Coalesce != "" {
		cb := tx.Bucket(bOutboxCoalesce)
		if cur := cb.Get([]byte(m.Coalesce)); bytes.Equal(cur, kb) {
			if err := cb.Delete([]byte(m.Coalesce)); err != nil {
				return m, 0, false, err
			}
		}
	}
	meta := tx.Bucket(bMeta)
	if err := addU64(meta, kOutboxCount, -1); err != nil {
		return m, 0, false, err
	}
	if err := addU64(meta, kOutboxBytes, -int64(size)); err != nil {
		return m, 0, false, err
	}
	return m, size, true, nil
}

// outboxHead decodes only what the bound policy needs.
func outboxHead(val []byte) (kind string, size int, err error) {
	n, w := binary.Uvarint(val)
	if w <= 0 || uint64(len(val)-w) < n {
		return "", 0, fmt.Errorf("truncated outbox record")
	}
	var h outboxHeader
	if err := json.Unmarshal(val[w:w+int(n)], &h); err != nil {
		return "", 0, err
	}
	return h.Kind, len(val) - w - int(n), nil
}

// enforceBounds applies the policy when the outbox is over its bounds:
//  1. drop unsent non-alert messages superseded by a newer message with the
//     same Coalesce key, oldest first;
//  2. drop the oldest non-alert messages;
//  3. only above the alert caps, drop the oldest messages (by then all alerts).
//
// Every drop is counted per kind in meta ("dropped/<kind>").
func (s *Store) enforceBounds(tx *bolt.Tx) (map[string]uint64, error) {
	meta := tx.Bucket(bMeta)
	count := int64(getU64(meta, kOutboxCount))
	size := int64(getU64(meta, kOutboxBytes))
	over := func(maxN int, maxB int64) bool { return count > int64(maxN) || size > maxB }
	if !over(s.opts.OutboxMaxMessages, s.opts.OutboxMaxBytes) {
		return nil, nil
	}
	dropped := map[string]uint64{}
	ob := tx.Bucket(bOutbox)

	// pick walks keys from cursor c, selecting messages accepted by keep
	// until the bound is met, then removes them (no deletes while iterating).
	pick := func(c *bolt.Cursor, accept func(kind string) bool, maxN int, maxB int64) error {
		var victims [][]byte
		for k, _ := c.First(); k != nil && over(maxN, maxB); k, _ = c.Next() {
			val := ob.Get(k)
			if val == nil {
				continue
			}
			kind, sz, err := outboxHead(val)
			if err != nil {
				return fmt.Errorf("outbox bound: %w", err)
			}
			if !accept(kind) {
				continue
			}
			victims = append(victims, bytes.Clone(k))
			count--
			size -= int64(sz)
		}
		for _, k := range victims {
			m, _, ok, err := removeOutbox(tx, k)
			if err != nil {
				return fmt.Errorf("outbox bound: %w", err)
			}
			if ok {
				dropped[m.Kind]++
			}
		}
		return nil
	}
	notAlert := func(kind string) bool { return kind != KindAlert }
	if err := pick(tx.Bucket(bOutboxSuperseded).Cursor(), notAlert, s.opts.OutboxMaxMessages, s.opts.OutboxMaxBytes); err != nil {
		return nil, err
	}
	if err := pick(ob.Cursor(), notAlert, s.opts.OutboxMaxMessages, s.opts.OutboxMaxBytes); err != nil {
		return nil, err
	}
	if err := pick(ob.Cursor(), func(string) bool { return true }, s.opts.OutboxAlertCapMessages, s.opts.OutboxAlertCapBytes); err != nil {
		return nil, err
	}
	for kind, n := range dropped {
		if err := addU64(meta, []byte(droppedPfx+kind), int64(n)); err != nil {
			return nil, err
		}
	}
	if len(dropped) > 0 {
		s.opts.Logger.Warn("outbox full: messages dropped", "dropped", dropped, "depth", count, "bytes", size)
	}
	return dropped, nil
}

// OutboxReady receives after a commit that added outbox messages (a
// signal, not a count: several commits may give one receive). It is meant
// for one reader, the outbox drain (mqttsync.Deps.Ready).
func (s *Store) OutboxReady() <-chan struct{} { return s.outboxReady }

// OutboxPending returns up to max unsent messages, oldest (lowest Key) first.
func (s *Store) OutboxPending(ctx context.Context, max int) ([]visit.OutboxMessage, error) {
	var out []visit.OutboxMessage
	err := s.view(ctx, "outbox pending", func(tx *bolt.Tx) error {
		out = out[:0]
		c := tx.Bucket(bOutbox).Cursor()
		for k, v := c.First(); k != nil && len(out) < max; k, v = c.Next() {
			m, err := decodeOutbox(k, v)
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// OutboxAck deletes delivered messages. Unknown keys (already acked or
// dropped) are ignored.
func (s *Store) OutboxAck(ctx context.Context, keys ...uint64) error {
	if len(keys) == 0 {
		return nil
	}
	return s.update(ctx, "outbox ack", func(tx *bolt.Tx) error {
		for _, k := range keys {
			if _, _, _, err := removeOutbox(tx, be64(k)); err != nil {
				return err
			}
		}
		return nil
	})
}

// OutboxSentSeq is the highest seq below every message still in the outbox
// (the last seq assigned when it is empty): what a restarted publisher had
// delivered, since messages are drained in seq order. A message the bound
// policy dropped below it counts as gone, as it is for a dashboard.
func (s *Store) OutboxSentSeq(ctx context.Context) (uint64, error) {
	var seq uint64
	err := s.view(ctx, "outbox sent seq", func(tx *bolt.Tx) error {
		seq = getU64(tx.Bucket(bMeta), kOutboxSeq)
		k, v := tx.Bucket(bOutbox).Cursor().First()
		if k == nil {
			return nil
		}
		m, err := decodeOutbox(k, v)
		if err != nil {
			return err
		}
		seq = m.Seq - 1
		return nil
	})
	return seq, err
}

// maxStateSummary bounds a kept state summary (totals of three windows
// and a few counts: some 300 bytes).
const maxStateSummary = 4096

// checkStateSummary says whether b can be a kept state summary: one JSON
// object of at most maxStateSummary bytes.
func checkStateSummary(b []byte) error {
	if len(b) > maxStateSummary {
		return fmt.Errorf("state summary of %d bytes, limit %d", len(b), maxStateSummary)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || m == nil {
		return errors.New("state summary: not a JSON object")
	}
	return nil
}

// KeepStateSummary keeps what the retained MQTT state says of the last
// summary delivered (mqttsync.StateKeeper), so a restarted agent's state
// carries it before its next summary. It holds totals only: no identity
// id, so an erasure has nothing to remove from it.
func (s *Store) KeepStateSummary(ctx context.Context, b []byte) error {
	if err := checkStateSummary(b); err != nil {
		return err
	}
	return s.update(ctx, "keep state summary", func(tx *bolt.Tx) error {
		return tx.Bucket(bMeta).Put(kStateSummary, b)
	})
}

// StateSummary is the state summary KeepStateSummary kept (nil: none).
func (s *Store) StateSummary(ctx context.Context) ([]byte, error) {
	var b []byte
	err := s.view(ctx, "state summary", func(tx *bolt.Tx) error {
		b = bytes.Clone(tx.Bucket(bMeta).Get(kStateSummary))
		return nil
	})
	return b, err
}

// LastStoredAlert returns the last alert stored with an outbox message
// (the last alert raised, whether or not the broker has it yet) and that
// message's seq; ok false when there is none, or when it has been deleted
// since (an erasure, retention). The daemon puts it in the retained state
// at start, so a restart does not blank the state's last_alert.
func (s *Store) LastStoredAlert(ctx context.Context) (a visit.Alert, seq uint64, ok bool, err error) {
	err = s.view(ctx, "last stored alert", func(tx *bolt.Tx) error {
		v := tx.Bucket(bMeta).Get(kLastAlert)
		if len(v) <= 8 {
			return nil
		}
		b := tx.Bucket(bAlerts).Get(v[8:])
		if b == nil {
			return nil
		}
		if err := json.Unmarshal(b, &a); err != nil {
			return fmt.Errorf("decode alert %q: %w", v[8:], err)
		}
		seq, ok = binary.BigEndian.Uint64(v[:8]), true
		return nil
	})
	return a, seq, ok, err
}

// OutboxStats returns the outbox depth, its payload bytes and the number of
// messages dropped by the bound policy since the database was created, by
// kind. It returns zeros when the store is closed.
func (s *Store) OutboxStats() (count int, bytes int64, dropped map[string]uint64) {
	dropped = map[string]uint64{}
	_ = s.view(context.Background(), "outbox stats", func(tx *bolt.Tx) error {
		meta := tx.Bucket(bMeta)
		count = int(getU64(meta, kOutboxCount))
		bytes = int64(getU64(meta, kOutboxBytes))
		c := meta.Cursor()
		p := []byte(droppedPfx)
		for k, v := c.Seek(p); k != nil && strings.HasPrefix(string(k), droppedPfx); k, v = c.Next() {
			if len(v) == 8 {
				dropped[string(k[len(p):])] = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	return count, bytes, dropped
}
