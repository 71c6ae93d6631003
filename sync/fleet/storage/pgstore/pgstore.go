// Package pgstore is the fleet service's PostgreSQL store (pgx): several
// instances on one database see the same devices, alerts and
// acknowledgements, and each is told of the others' changes through
// LISTEN/NOTIFY.
package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// channel is the NOTIFY channel carrying storage.Change JSON.
const channel = "atm_fleet_changes"

// schemaVersion is recorded in atm_fleet_meta.
const schemaVersion = 1

// migrationLock is the advisory lock key held while creating the schema, so
// two instances starting at once do not race.
const migrationLock = 0x61746d666c656574 // "atmfleet"

var schema = []string{
	`CREATE TABLE IF NOT EXISTS atm_fleet_meta (key text PRIMARY KEY, value text NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS atm_fleet_devices (
		site text NOT NULL, device text NOT NULL,
		status jsonb, status_received timestamptz,
		summary jsonb, summary_seq bigint NOT NULL DEFAULT 0,
		first_seq bigint NOT NULL DEFAULT 0, max_seq bigint NOT NULL DEFAULT 0,
		uniq bigint NOT NULL DEFAULT 0, dups bigint NOT NULL DEFAULT 0, rejected bigint NOT NULL DEFAULT 0,
		last_received timestamptz,
		PRIMARY KEY (site, device))`,
	`CREATE TABLE IF NOT EXISTS atm_fleet_messages (
		site text NOT NULL, device text NOT NULL, message_id text NOT NULL,
		seq bigint NOT NULL, kind text NOT NULL, received timestamptz NOT NULL,
		PRIMARY KEY (site, device, message_id))`,
	`CREATE INDEX IF NOT EXISTS atm_fleet_messages_received ON atm_fleet_messages (received)`,
	`CREATE TABLE IF NOT EXISTS atm_fleet_alerts (
		site text NOT NULL, device text NOT NULL, alert_id text NOT NULL,
		rule text NOT NULL, kind text NOT NULL, identity_id text NOT NULL, win text NOT NULL,
		window_start timestamptz NOT NULL, count integer NOT NULL, threshold integer NOT NULL,
		first_seen timestamptz NOT NULL, last_seen timestamptz NOT NULL, raised timestamptz NOT NULL,
		message_id text NOT NULL, seq bigint NOT NULL, historical boolean NOT NULL,
		received timestamptz NOT NULL, raises integer NOT NULL,
		state text NOT NULL,
		ack_by text NOT NULL DEFAULT '', ack_note text NOT NULL DEFAULT '', ack_at timestamptz,
		resolved_by text NOT NULL DEFAULT '', resolved_note text NOT NULL DEFAULT '', resolved_at timestamptz,
		PRIMARY KEY (site, device, alert_id))`,
	`ALTER TABLE atm_fleet_alerts ADD COLUMN IF NOT EXISTS visit_id text NOT NULL DEFAULT ''`,
	`ALTER TABLE atm_fleet_alerts ADD COLUMN IF NOT EXISTS txn_id text NOT NULL DEFAULT ''`,
	`CREATE INDEX IF NOT EXISTS atm_fleet_alerts_raised ON atm_fleet_alerts (raised DESC)`,
	`CREATE INDEX IF NOT EXISTS atm_fleet_alerts_received ON atm_fleet_alerts (received)`,
	`CREATE TABLE IF NOT EXISTS atm_fleet_summaries (
		site text NOT NULL, device text NOT NULL, seq bigint NOT NULL, ts timestamptz NOT NULL,
		visits_1h integer NOT NULL, visits_24h integer NOT NULL, visits_7d integer NOT NULL,
		identities_24h integer NOT NULL, masked_24h integer NOT NULL, faceless_24h integer NOT NULL,
		PRIMARY KEY (site, device, seq))`,
	`CREATE TABLE IF NOT EXISTS atm_fleet_identity_points (
		site text NOT NULL, device text NOT NULL, identity text NOT NULL, seq bigint NOT NULL, ts timestamptz NOT NULL,
		visits jsonb NOT NULL, masked jsonb NOT NULL, distinct_cards jsonb NOT NULL,
		first_seen timestamptz NOT NULL, last_seen timestamptz NOT NULL,
		PRIMARY KEY (site, device, identity, seq))`,
	`CREATE TABLE IF NOT EXISTS atm_fleet_audit (
		id bigserial PRIMARY KEY, at timestamptz NOT NULL, user_name text NOT NULL, role text NOT NULL,
		action text NOT NULL, site text NOT NULL, device text NOT NULL, alert_id text NOT NULL,
		note text NOT NULL, remote text NOT NULL)`,
	`ALTER TABLE atm_fleet_devices ADD COLUMN IF NOT EXISTS last_ts timestamptz`,
	`ALTER TABLE atm_fleet_devices ADD COLUMN IF NOT EXISTS seq_restart timestamptz`,
	`CREATE TABLE IF NOT EXISTS atm_fleet_rejects (
		id bigserial PRIMARY KEY, received timestamptz NOT NULL, topic text NOT NULL,
		site text NOT NULL, device text NOT NULL, error text NOT NULL, payload text NOT NULL)`,
	// Signed-out web sessions (storage.SessionHash of the id), each until
	// the session's own expiry.
	`CREATE TABLE IF NOT EXISTS atm_fleet_revoked_sessions (
		id_hash bytea PRIMARY KEY, expires timestamptz NOT NULL)`,
	// The web users in force and their generations (SyncUsers).
	`CREATE TABLE IF NOT EXISTS atm_fleet_web_users (
		name text PRIMARY KEY, generation text NOT NULL)`,
	// Whether the device's last status and summary, and the message that
	// raised an alert, were signed by the device's pinned key.
	`ALTER TABLE atm_fleet_devices ADD COLUMN IF NOT EXISTS status_authenticated boolean NOT NULL DEFAULT false`,
	`ALTER TABLE atm_fleet_devices ADD COLUMN IF NOT EXISTS summary_authenticated boolean NOT NULL DEFAULT false`,
	`ALTER TABLE atm_fleet_alerts ADD COLUMN IF NOT EXISTS authenticated boolean NOT NULL DEFAULT false`,
	// The order of a device's statuses (storage.NextStatus).
	`ALTER TABLE atm_fleet_devices ADD COLUMN IF NOT EXISTS status_max_ts timestamptz`,
	`ALTER TABLE atm_fleet_devices ADD COLUMN IF NOT EXISTS status_will_ts timestamptz`,
	// The pinned keys that sign each device's command replies.
	`CREATE TABLE IF NOT EXISTS atm_fleet_device_keys (
		site text NOT NULL, device text NOT NULL, public_key bytea NOT NULL, pinned timestamptz NOT NULL, pinned_by text NOT NULL,
		PRIMARY KEY (site, device))`,
}

// maxRejects bounds the kept rejected payloads (oldest dropped first).
const maxRejects = storage.MaxHeldRejects

// Store is the PostgreSQL implementation of storage.Store.
type Store struct {
	pool *pgxpool.Pool
	log  *slog.Logger
	storage.Hub

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	phantoms int // removed by Open
}

var _ storage.Store = (*Store)(nil)

// Open connects (dsn: a libpq URL or key=value string), creates the schema
// if needed and starts listening for other instances' changes.
func Open(ctx context.Context, dsn string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: parse dsn: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres %s: %w", cfg.ConnConfig.Host, err)
	}
	phantoms, err := migrate(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, err
	}
	lctx, cancel := context.WithCancel(context.Background())
	s := &Store{pool: pool, log: log, cancel: cancel, done: make(chan struct{}), phantoms: phantoms}
	ready := make(chan error, 1)
	go s.listen(lctx, ready)
	select {
	case err := <-ready:
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("open postgres: listen: %w", err)
		}
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("open postgres: listen: %w", ctx.Err())
	}
	return s, nil
}

// migrate creates the schema and runs the one-time cleanups; it returns
// how many phantom devices it removed.
func migrate(ctx context.Context, pool *pgxpool.Pool) (int, error) {
	var phantoms int
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
			return fmt.Errorf("migrate: lock: %w", err)
		}
		for _, q := range schema {
			if _, err := tx.Exec(ctx, q); err != nil {
				return fmt.Errorf("migrate: %.60s: %w", q, err)
			}
		}
		var v string
		err := tx.QueryRow(ctx, `SELECT value FROM atm_fleet_meta WHERE key = 'schema'`).Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err = tx.Exec(ctx, `INSERT INTO atm_fleet_meta (key, value) VALUES ('schema', $1)`, fmt.Sprint(schemaVersion)); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("migrate: read schema version: %w", err)
		case v != fmt.Sprint(schemaVersion):
			return fmt.Errorf("migrate: database has fleet schema %s, this build knows %d", v, schemaVersion)
		}
		phantoms, err = removePhantoms(ctx, tx)
		return err
	})
	return phantoms, err
}

// removePhantoms deletes, once per database (under the migration lock),
// the device rows that earlier versions created for rejected payloads
// ("phantom" devices: a name that never sent a valid message showed up in
// the fleet): a row with no status, no summary, no accepted or duplicate
// message, and no dedup record, alert or summary under its name. The meta
// key phantom_devices_removed records that it ran (and how many it removed).
func removePhantoms(ctx context.Context, tx pgx.Tx) (int, error) {
	var done string
	err := tx.QueryRow(ctx, `SELECT value FROM atm_fleet_meta WHERE key = 'phantom_devices_removed'`).Scan(&done)
	if err == nil {
		return 0, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("migrate: phantom devices: %w", err)
	}
	tag, err := tx.Exec(ctx, `DELETE FROM atm_fleet_devices d
		WHERE d.status IS NULL AND d.summary IS NULL AND d.uniq = 0 AND d.dups = 0 AND d.last_received IS NULL
		AND NOT EXISTS (SELECT 1 FROM atm_fleet_messages m WHERE m.site = d.site AND m.device = d.device)
		AND NOT EXISTS (SELECT 1 FROM atm_fleet_alerts a WHERE a.site = d.site AND a.device = d.device)
		AND NOT EXISTS (SELECT 1 FROM atm_fleet_summaries s WHERE s.site = d.site AND s.device = d.device)`)
	if err != nil {
		return 0, fmt.Errorf("migrate: remove phantom devices: %w", err)
	}
	n := int(tag.RowsAffected())
	if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_meta (key, value) VALUES ('phantom_devices_removed', $1)`, fmt.Sprint(n)); err != nil {
		return 0, fmt.Errorf("migrate: phantom devices: %w", err)
	}
	return n, nil
}

// RemovedPhantoms is how many phantom device rows Open removed (see
// removePhantoms): non-zero only on the first open of a database that an
// earlier version wrote them to.
func (s *Store) RemovedPhantoms() int { return s.phantoms }

// listen holds one connection LISTENing on the change channel and fans the
// notifications out; it reconnects with a capped backoff until Close.
func (s *Store) listen(ctx context.Context, ready chan<- error) {
	defer close(s.done)
	backoff := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, func() {
			if first {
				first = false
				ready <- nil
			}
			backoff = 100 * time.Millisecond
		})
		if first {
			ready <- err
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("fleet postgres: change listener lost, retrying", "err", err, "in", backoff)
		// Others' changes may have been missed: tell pages to refresh.
		s.Publish(storage.Change{Kind: "resync"})
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context, up func()) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	up()
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			// The connection's state is unknown after an error: do not
			// hand it back to the pool.
			conn.Conn().Close(context.Background())
			return err
		}
		var c storage.Change
		if err := json.Unmarshal([]byte(n.Payload), &c); err != nil {
			s.log.Warn("fleet postgres: bad change notification", "payload", n.Payload, "err", err)
			continue
		}
		s.Publish(c)
	}
}

// Close stops the listener and closes the pool.
func (s *Store) Close() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		s.pool.Close()
	})
	return nil
}

func notify(ctx context.Context, tx pgx.Tx, c storage.Change) error {
	b, _ := json.Marshal(c)
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, string(b))
	return err
}

// retryable reports errors worth retrying the whole transaction for.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

func (s *Store) tx(ctx context.Context, op string, fn func(tx pgx.Tx) error) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = pgx.BeginFunc(ctx, s.pool, fn)
		if err == nil || !retryable(err) {
			break
		}
	}
	if err != nil {
		// Data exceptions (class 22: a value too long or out of range, a
		// NUL byte), integrity violations (23) and program limits (54: an
		// index row too large) come from the record, not from the
		// database's state.
		var pe *pgconn.PgError
		if errors.As(err, &pe) && len(pe.Code) == 5 && slices.Contains([]string{"22", "23", "54"}, pe.Code[:2]) {
			return fmt.Errorf("%s: %w: %w", op, storage.ErrBadRecord, err)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	return nil
}

func seqOf(v uint64) (int64, error) {
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("seq %d beyond PostgreSQL bigint", v)
	}
	return int64(v), nil
}

// Apply implements storage.Store. Messages are applied in (site, device,
// seq) order so that concurrent instances lock rows in the same order.
func (s *Store) Apply(ctx context.Context, msgs []storage.Message) ([]bool, error) {
	order := make([]int, len(msgs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		x, y := msgs[order[a]], msgs[order[b]]
		if x.Site != y.Site {
			return x.Site < y.Site
		}
		if x.Device != y.Device {
			return x.Device < y.Device
		}
		return x.Seq < y.Seq
	})
	fresh := make([]bool, len(msgs))
	err := s.tx(ctx, "apply messages", func(tx pgx.Tx) error {
		clear(fresh)
		for _, i := range order {
			ok, err := applyOne(ctx, tx, msgs[i])
			if err != nil {
				return fmt.Errorf("%s %s/%s seq %d: %w", msgs[i].Kind, msgs[i].Site, msgs[i].Device, msgs[i].Seq, err)
			}
			fresh[i] = ok
		}
		for _, c := range storage.ChangesOf(msgs, fresh) {
			if err := notify(ctx, tx, c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return fresh, nil
}

func applyOne(ctx context.Context, tx pgx.Tx, m storage.Message) (bool, error) {
	seq, err := seqOf(m.Seq)
	if err != nil {
		return false, err
	}
	tag, err := tx.Exec(ctx, `INSERT INTO atm_fleet_messages (site, device, message_id, seq, kind, received)
		VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`, m.Site, m.Device, m.MessageID, seq, m.Kind, m.Received.UTC())
	if err != nil {
		return false, err
	}
	if tag.RowsAffected() == 0 {
		if m.Retained {
			return false, nil
		}
		_, err := tx.Exec(ctx, `INSERT INTO atm_fleet_devices (site, device, dups) VALUES ($1, $2, 1)
			ON CONFLICT (site, device) DO UPDATE SET dups = atm_fleet_devices.dups + 1`, m.Site, m.Device)
		return false, err
	}
	var summary []byte
	summarySeq := int64(0)
	if m.Summary != nil {
		if summary, err = json.Marshal(m.Summary); err != nil {
			return false, err
		}
		summarySeq = seq
	}
	// A restart of the sequence (storage.Restarted: a seq below the highest
	// with a ts newer than any seen) starts the accounting again at this
	// seq; a summary replaces the latest one when its seq is higher, on a
	// restart, or when the latest is left from an earlier sequence.
	// A message older than the last restart (storage.Earlier) is stored
	// but not counted. The ts of a message dated too far past its receipt
	// (storage.Ahead) is passed as NULL: it neither restarts the sequence
	// nor moves last_ts.
	const restart = `(d.uniq > 0 AND EXCLUDED.max_seq < d.max_seq AND d.last_ts IS NOT NULL AND EXCLUDED.last_ts IS NOT NULL AND EXCLUDED.last_ts > d.last_ts)`
	const earlier = `(d.seq_restart IS NOT NULL AND EXCLUDED.last_ts IS NOT NULL AND EXCLUDED.last_ts < d.seq_restart)`
	var ts *time.Time
	if !storage.Ahead(m) {
		t := m.TS.UTC()
		ts = &t
	}
	const newer = `EXCLUDED.summary IS NOT NULL AND NOT ` + earlier + ` AND (EXCLUDED.summary_seq > d.summary_seq OR d.summary_seq > d.max_seq OR d.summary IS NULL OR ` + restart + `)`
	_, err = tx.Exec(ctx, `INSERT INTO atm_fleet_devices AS d (site, device, first_seq, max_seq, uniq, last_received, summary, summary_seq, last_ts, summary_authenticated)
		VALUES ($1, $2, $3, $3, 1, $4, $5, $6, $7, $8)
		ON CONFLICT (site, device) DO UPDATE SET
			first_seq = CASE WHEN `+earlier+` THEN d.first_seq WHEN d.uniq = 0 OR `+restart+` THEN EXCLUDED.first_seq ELSE LEAST(d.first_seq, EXCLUDED.first_seq) END,
			max_seq = CASE WHEN `+earlier+` THEN d.max_seq WHEN `+restart+` THEN EXCLUDED.max_seq ELSE GREATEST(d.max_seq, EXCLUDED.max_seq) END,
			uniq = CASE WHEN `+earlier+` THEN d.uniq WHEN `+restart+` THEN 1 ELSE d.uniq + 1 END,
			seq_restart = CASE WHEN `+restart+` THEN EXCLUDED.last_ts ELSE d.seq_restart END,
			last_received = GREATEST(d.last_received, EXCLUDED.last_received),
			last_ts = GREATEST(d.last_ts, EXCLUDED.last_ts),
			summary = CASE WHEN `+newer+` THEN EXCLUDED.summary ELSE d.summary END,
			summary_seq = CASE WHEN `+newer+` THEN EXCLUDED.summary_seq ELSE d.summary_seq END,
			summary_authenticated = CASE WHEN `+newer+` THEN EXCLUDED.summary_authenticated ELSE d.summary_authenticated END`,
		m.Site, m.Device, seq, m.Received.UTC(), summary, summarySeq, ts, m.Summary != nil && m.Authenticated)
	if err != nil {
		return false, err
	}
	switch {
	case m.Summary != nil:
		p, ids := storage.PointsFromSummary(m.Summary)
		if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_summaries (site, device, seq, ts, visits_1h, visits_24h, visits_7d,
			identities_24h, masked_24h, faceless_24h) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT DO NOTHING`,
			m.Site, m.Device, seq, p.TS, p.Visits1h, p.Visits24h, p.Visits7d, p.Identities24h, p.Masked24h, p.Faceless24h); err != nil {
			return false, err
		}
		for id, ip := range ids {
			if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_identity_points (site, device, identity, seq, ts, visits, masked,
				distinct_cards, first_seen, last_seen) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT DO NOTHING`,
				m.Site, m.Device, id, seq, ip.TS, ip.Visits, ip.Masked, ip.DistinctCards, ip.FirstSeen, ip.LastSeen); err != nil {
				return false, err
			}
		}
	case m.Alert != nil:
		a := m.Alert
		if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_alerts AS a (site, device, alert_id, rule, kind, identity_id, win,
			window_start, count, threshold, first_seen, last_seen, raised, message_id, seq, historical, received, raises, state, visit_id, txn_id, authenticated)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,1,'open',$18,$19,$20)
			ON CONFLICT (site, device, alert_id) DO UPDATE SET
				raises = a.raises + 1, count = GREATEST(a.count, EXCLUDED.count), last_seen = GREATEST(a.last_seen, EXCLUDED.last_seen)`,
			m.Site, m.Device, a.AlertID, a.Rule, a.Kind, a.IdentityID, a.Window, a.WindowStart.UTC(), a.Count, a.Threshold,
			a.FirstSeen.UTC(), a.LastSeen.UTC(), a.Raised.UTC(), m.MessageID, seq, m.Historical, m.Received.UTC(),
			a.VisitID, a.TxnID, m.Authenticated); err != nil {
			return false, err
		}
	}
	return true, nil
}

// PutStatus implements storage.Store.
func (s *Store) PutStatus(ctx context.Context, st storage.Status) error {
	return s.PutStatuses(ctx, []storage.Status{st})
}

// PutStatuses implements storage.BatchWriter: one transaction for all, in
// arrival order, each applied when storage.NextStatus takes it.
func (s *Store) PutStatuses(ctx context.Context, sts []storage.Status) error {
	if len(sts) == 0 {
		return nil
	}
	return s.tx(ctx, "put status", func(tx pgx.Tx) error {
		devs := map[[2]string]*storage.Device{}
		seen := map[storage.Change]bool{}
		for _, st := range sts {
			k := [2]string{st.Site, st.Device}
			d := devs[k]
			if d == nil {
				var err error
				if d, err = lockStatus(ctx, tx, st.Site, st.Device); err != nil {
					return err
				}
				devs[k] = d
			}
			if !storage.NextStatus(d, st) {
				continue
			}
			raw, err := json.Marshal(d.Status)
			if err != nil {
				return fmt.Errorf("put status: %w", err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_devices (site, device, status, status_received, status_authenticated, status_max_ts, status_will_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (site, device) DO UPDATE SET status = EXCLUDED.status, status_received = EXCLUDED.status_received,
				status_authenticated = EXCLUDED.status_authenticated, status_max_ts = EXCLUDED.status_max_ts, status_will_ts = EXCLUDED.status_will_ts`,
				st.Site, st.Device, raw, d.StatusReceived, d.StatusAuthenticated, nullTime(d.StatusMaxTS), nullTime(d.StatusWillTS)); err != nil {
				return err
			}
			c := storage.Change{Kind: "status", Site: st.Site, Device: st.Device}
			if seen[c] {
				continue
			}
			seen[c] = true
			if err := notify(ctx, tx, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// nullTime is t, or NULL when t is zero.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// lockStatus reads what storage.NextStatus orders a device's statuses by,
// locking its row until the transaction ends (an empty device when none).
func lockStatus(ctx context.Context, tx pgx.Tx, site, device string) (*storage.Device, error) {
	d := &storage.Device{Site: site, Device: device}
	var status []byte
	var recv, maxTS, willTS *time.Time
	err := tx.QueryRow(ctx, `SELECT status, status_received, status_max_ts, status_will_ts FROM atm_fleet_devices WHERE site = $1 AND device = $2 FOR UPDATE`,
		site, device).Scan(&status, &recv, &maxTS, &willTS)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return d, nil
	case err != nil:
		return nil, err
	}
	if status != nil {
		d.Status = new(wire.Status)
		if err := json.Unmarshal(status, d.Status); err != nil {
			return nil, fmt.Errorf("decode status of %s/%s: %w", site, device, err)
		}
	}
	setTimes(recv, &d.StatusReceived, maxTS, &d.StatusMaxTS, willTS, &d.StatusWillTS)
	return d, nil
}

// setTimes sets each destination to its source (a nullable column read) in
// UTC, leaving it zero for NULL: the arguments go in pairs, source first.
func setTimes(pairs ...*time.Time) {
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i] != nil {
			*pairs[i+1] = pairs[i].UTC()
		}
	}
}

// PutReject implements storage.Store.
func (s *Store) PutReject(ctx context.Context, r storage.Reject) error {
	return s.PutRejects(ctx, []storage.Reject{r})
}

// PutRejects implements storage.BatchWriter: one transaction for all. A
// reject is counted on its device only when the device exists: it never
// creates one.
func (s *Store) PutRejects(ctx context.Context, rs []storage.Reject) error {
	if len(rs) == 0 {
		return nil
	}
	for i := range rs {
		r := &rs[i]
		if len(r.Payload) > storage.MaxRejectPayload {
			r.Payload = r.Payload[:storage.MaxRejectPayload]
		}
		r.Payload = strings.ToValidUTF8(strings.ReplaceAll(r.Payload, "\x00", ""), "\uFFFD")
	}
	return s.tx(ctx, "put reject", func(tx pgx.Tx) error {
		for _, r := range rs {
			if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_rejects (received, topic, site, device, error, payload) VALUES ($1,$2,$3,$4,$5,$6)`,
				r.Received.UTC(), strings.ToValidUTF8(r.Topic, "\uFFFD"), r.Site, r.Device, r.Error, r.Payload); err != nil {
				return err
			}
			if r.Site == "" {
				continue
			}
			if _, err := tx.Exec(ctx, `UPDATE atm_fleet_devices SET rejected = rejected + 1 WHERE site = $1 AND device = $2`, r.Site, r.Device); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `DELETE FROM atm_fleet_rejects WHERE id <= (SELECT max(id) FROM atm_fleet_rejects) - $1`, maxRejects)
		return err
	})
}

const deviceCols = `d.site, d.device, d.status, d.status_received, d.summary, d.first_seq, d.max_seq, d.uniq, d.dups, d.rejected,
	d.last_received, d.last_ts, d.seq_restart, d.status_authenticated, d.summary_authenticated, d.status_max_ts, d.status_will_ts, (SELECT count(*) FROM atm_fleet_alerts a WHERE a.site = d.site AND a.device = d.device AND a.state <> 'resolved')`

func scanDevice(row pgx.Row) (storage.Device, error) {
	var d storage.Device
	var status, summary []byte
	var statusRecv, lastRecv, lastTS, seqRestart, maxTS, willTS *time.Time
	var first, maxSeq, uniq, dups, rej int64
	if err := row.Scan(&d.Site, &d.Device, &status, &statusRecv, &summary, &first, &maxSeq, &uniq, &dups, &rej, &lastRecv, &lastTS, &seqRestart,
		&d.StatusAuthenticated, &d.SummaryAuthenticated, &maxTS, &willTS, &d.OpenAlerts); err != nil {
		return d, err
	}
	d.FirstSeq, d.MaxSeq, d.Unique, d.Duplicates, d.Rejected = uint64(first), uint64(maxSeq), uint64(uniq), uint64(dups), uint64(rej)
	setTimes(statusRecv, &d.StatusReceived, lastRecv, &d.LastReceived, lastTS, &d.LastTS, seqRestart, &d.SeqRestart, maxTS, &d.StatusMaxTS, willTS, &d.StatusWillTS)
	if status != nil {
		d.Status = new(wire.Status)
		if err := json.Unmarshal(status, d.Status); err != nil {
			return d, fmt.Errorf("decode status of %s/%s: %w", d.Site, d.Device, err)
		}
	}
	if summary != nil {
		d.Summary = new(wire.Summary)
		if err := json.Unmarshal(summary, d.Summary); err != nil {
			return d, fmt.Errorf("decode summary of %s/%s: %w", d.Site, d.Device, err)
		}
	}
	return d, nil
}

// Devices implements storage.Store.
func (s *Store) Devices(ctx context.Context) ([]storage.Device, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deviceCols+` FROM atm_fleet_devices d ORDER BY d.site, d.device`)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []storage.Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// Device implements storage.Store.
func (s *Store) Device(ctx context.Context, site, device string) (storage.Device, error) {
	d, err := scanDevice(s.pool.QueryRow(ctx, `SELECT `+deviceCols+` FROM atm_fleet_devices d WHERE d.site = $1 AND d.device = $2`, site, device))
	if errors.Is(err, pgx.ErrNoRows) {
		return d, storage.DeviceNotFound(site, device)
	}
	if err != nil {
		return d, fmt.Errorf("get device: %w", err)
	}
	return d, nil
}

const alertCols = `site, device, alert_id, rule, kind, identity_id, win, window_start, count, threshold, first_seen, last_seen,
	raised, message_id, seq, historical, received, raises, state, ack_by, ack_note, ack_at, resolved_by, resolved_note, resolved_at,
	visit_id, txn_id, authenticated`

func scanAlert(row pgx.Row) (storage.Alert, error) {
	var a storage.Alert
	var seq int64
	var state string
	var ackAt, resAt *time.Time
	err := row.Scan(&a.Site, &a.Device, &a.AlertID, &a.Rule, &a.Kind, &a.IdentityID, &a.Window, &a.WindowStart, &a.Count,
		&a.Threshold, &a.FirstSeen, &a.LastSeen, &a.Raised, &a.MessageID, &seq, &a.Historical, &a.Received, &a.Raises,
		&state, &a.AckBy, &a.AckNote, &ackAt, &a.ResolvedBy, &a.ResolvedNote, &resAt, &a.VisitID, &a.TxnID, &a.Authenticated)
	if err != nil {
		return a, err
	}
	a.Seq, a.State = uint64(seq), storage.AlertState(state)
	for _, t := range []*time.Time{&a.WindowStart, &a.FirstSeen, &a.LastSeen, &a.Raised, &a.Received} {
		*t = t.UTC()
	}
	if ackAt != nil {
		a.AckAt = ackAt.UTC()
	}
	if resAt != nil {
		a.ResolvedAt = resAt.UTC()
	}
	return a, nil
}

// Alerts implements storage.Store: newest raised first, or oldest
// received first (f.Order).
func (s *Store) Alerts(ctx context.Context, f storage.AlertFilter) ([]storage.Alert, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.State != "" {
		add("state = $%d", string(f.State))
	}
	if f.Active {
		add("state <> $%d", string(storage.AlertResolved))
	}
	if f.Site != "" {
		add("site = $%d", f.Site)
	}
	if f.Device != "" {
		add("device = $%d", f.Device)
	}
	if f.Sites != nil {
		// A user's scope: exact names, or prefixes (compared as text,
		// not LIKE patterns: a '_' or '%' in a site name is literal).
		args = append(args, f.Sites.Exact(), f.Sites.Prefixes())
		where = append(where, fmt.Sprintf("(site = ANY($%d::text[]) OR EXISTS (SELECT 1 FROM unnest($%d::text[]) AS p(prefix) WHERE left(site, length(p.prefix)) = p.prefix))",
			len(args)-1, len(args)))
	}
	if f.Rule != "" {
		add("rule = $%d", f.Rule)
	}
	if f.IdentityID != "" {
		add("identity_id = $%d", f.IdentityID)
	}
	if !f.Since.IsZero() {
		add("raised >= $%d", f.Since.UTC())
	}
	if !f.ReceivedSince.IsZero() {
		add("received >= $%d", f.ReceivedSince.UTC())
	}
	col, dir, past := "raised", "DESC", "<"
	if f.Order == storage.ByReceived {
		col, dir, past = "received", "ASC", ">"
	}
	if f.After != nil {
		// The listing's order, as ORDER BY below gives it.
		args = append(args, f.After.At.UTC(), f.After.Key.Site, f.After.Key.Device, f.After.Key.AlertID)
		n := len(args)
		where = append(where, fmt.Sprintf(`(%[1]s %[2]s $%[3]d OR (%[1]s = $%[3]d AND (site COLLATE "C", device COLLATE "C", alert_id COLLATE "C") > ($%[4]d, $%[5]d, $%[6]d)))`,
			col, past, n-3, n-2, n-1, n))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = storage.DefaultAlertLimit
	}
	q := `SELECT ` + alertCols + ` FROM atm_fleet_alerts`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, limit, max(f.Offset, 0))
	q += fmt.Sprintf(" ORDER BY %s %s, site COLLATE \"C\", device COLLATE \"C\", alert_id COLLATE \"C\" LIMIT $%d OFFSET $%d", col, dir, len(args)-1, len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list alerts: %w", err)
	}
	defer rows.Close()
	var out []storage.Alert
	for rows.Next() {
		a, err := scanAlert(rows)
		if err != nil {
			return nil, fmt.Errorf("list alerts: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list alerts: %w", err)
	}
	return out, nil
}

// Alert implements storage.Store.
func (s *Store) Alert(ctx context.Context, k storage.AlertKey) (storage.Alert, error) {
	a, err := scanAlert(s.pool.QueryRow(ctx, `SELECT `+alertCols+` FROM atm_fleet_alerts WHERE site = $1 AND device = $2 AND alert_id = $3`,
		k.Site, k.Device, k.AlertID))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, storage.AlertNotFound(k)
	}
	if err != nil {
		return a, fmt.Errorf("get alert: %w", err)
	}
	return a, nil
}

// RemoveDevice implements storage.Store, in one transaction.
func (s *Store) RemoveDevice(ctx context.Context, r storage.Removal) error {
	return s.tx(ctx, "remove device", func(tx pgx.Tx) error {
		d, err := scanDevice(tx.QueryRow(ctx, `SELECT `+deviceCols+` FROM atm_fleet_devices d WHERE d.site = $1 AND d.device = $2 FOR UPDATE`,
			r.Site, r.Device))
		if errors.Is(err, pgx.ErrNoRows) {
			return storage.DeviceNotFound(r.Site, r.Device)
		}
		if err != nil {
			return err
		}
		if err := storage.CheckRemovable(d, r); err != nil {
			return err
		}
		for _, t := range []string{"atm_fleet_devices", "atm_fleet_messages", "atm_fleet_summaries", "atm_fleet_identity_points"} {
			if _, err := tx.Exec(ctx, `DELETE FROM `+t+` WHERE site = $1 AND device = $2`, r.Site, r.Device); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_audit (at, user_name, role, action, site, device, alert_id, note, remote)
			VALUES ($1,$2,$3,$4,$5,$6,'',$7,$8)`, r.At.UTC(), r.User, r.Role, storage.ActionRemoveDevice, r.Site, r.Device,
			storage.RemovalNote(d, r), r.Remote); err != nil {
			return err
		}
		return notify(ctx, tx, storage.Change{Kind: "device", Site: r.Site, Device: r.Device})
	})
}

// PurgeIdentity implements storage.Store, in one transaction.
func (s *Store) PurgeIdentity(ctx context.Context, p storage.IdentityPurge) (int, error) {
	n := 0
	err := s.tx(ctx, "purge identity", func(tx pgx.Tx) error {
		var summary []byte
		err := tx.QueryRow(ctx, `SELECT summary FROM atm_fleet_devices WHERE site = $1 AND device = $2 FOR UPDATE`, p.Site, p.Device).Scan(&summary)
		found := !errors.Is(err, pgx.ErrNoRows)
		if err != nil && found {
			return err
		}
		if summary != nil {
			var sum wire.Summary
			if err := json.Unmarshal(summary, &sum); err != nil {
				return fmt.Errorf("decode summary of %s/%s: %w", p.Site, p.Device, err)
			}
			if storage.DropIdentity(&sum, p.Identity) {
				b, _ := json.Marshal(&sum)
				if _, err := tx.Exec(ctx, `UPDATE atm_fleet_devices SET summary = $3 WHERE site = $1 AND device = $2`, p.Site, p.Device, b); err != nil {
					return err
				}
			}
		}
		pts, err := tx.Exec(ctx, `DELETE FROM atm_fleet_identity_points WHERE site = $1 AND device = $2 AND identity = $3`,
			p.Site, p.Device, p.Identity)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM atm_fleet_alerts WHERE site = $1 AND device = $2 AND identity_id = $3`, p.Site, p.Device, p.Identity)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		// The held rejects naming it (storage.RejectNames).
		var ofDevice int64 // rejects of the device (not of no device) erased
		if err := tx.QueryRow(ctx, `WITH gone AS (DELETE FROM atm_fleet_rejects WHERE ((site = $1 AND device = $2) OR site = '')
			AND (strpos(payload, '"' || $3 || '"') > 0 OR strpos(error, $3) > 0) RETURNING site)
			SELECT count(*) FILTER (WHERE site <> '') FROM gone`, p.Site, p.Device, p.Identity).Scan(&ofDevice); err != nil {
			return err
		}
		if !found && n == 0 && pts.RowsAffected() == 0 && ofDevice == 0 {
			return storage.DeviceNotFound(p.Site, p.Device)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_audit (at, user_name, role, action, site, device, alert_id, note, remote)
			VALUES ($1,$2,$3,$4,$5,$6,'',$7,$8)`, p.At.UTC(), p.User, p.Role, storage.ActionPurgeIdentity, p.Site, p.Device,
			storage.PurgeNote(p, n), p.Remote); err != nil {
			return err
		}
		return notify(ctx, tx, storage.Change{Kind: "device", Site: p.Site, Device: p.Device})
	})
	return n, err
}

// Act implements storage.Store. The row is locked (SELECT ... FOR UPDATE),
// so of two instances acknowledging at once exactly one succeeds.
func (s *Store) Act(ctx context.Context, act storage.Action) (storage.Alert, error) {
	if err := act.Validate(); err != nil {
		return storage.Alert{}, err
	}
	var out storage.Alert
	err := s.tx(ctx, act.Action+" alert", func(tx pgx.Tx) error {
		a, err := scanAlert(tx.QueryRow(ctx, `SELECT `+alertCols+` FROM atm_fleet_alerts WHERE site = $1 AND device = $2 AND alert_id = $3 FOR UPDATE`,
			act.Key.Site, act.Key.Device, act.Key.AlertID))
		if errors.Is(err, pgx.ErrNoRows) {
			return storage.AlertNotFound(act.Key)
		}
		if err != nil {
			return err
		}
		if storage.Repeated(act, a) {
			out = a
			return nil
		}
		if !storage.Allowed(act.Action, a.State) {
			who := a.AckBy
			if a.State == storage.AlertResolved {
				who = a.ResolvedBy
			}
			return fmt.Errorf("alert %s is %s (by %s): %w", a.AlertKey, a.State, who, storage.StateErr(a))
		}
		at := act.At.UTC()
		switch act.Action {
		case storage.ActionAck:
			a.State, a.AckBy, a.AckNote, a.AckAt = storage.AlertAcknowledged, act.User, act.Note, at
			_, err = tx.Exec(ctx, `UPDATE atm_fleet_alerts SET state = $4, ack_by = $5, ack_note = $6, ack_at = $7
				WHERE site = $1 AND device = $2 AND alert_id = $3`, a.Site, a.Device, a.AlertID, string(a.State), act.User, act.Note, at)
		case storage.ActionResolve:
			a.State, a.ResolvedBy, a.ResolvedNote, a.ResolvedAt = storage.AlertResolved, act.User, act.Note, at
			_, err = tx.Exec(ctx, `UPDATE atm_fleet_alerts SET state = $4, resolved_by = $5, resolved_note = $6, resolved_at = $7
				WHERE site = $1 AND device = $2 AND alert_id = $3`, a.Site, a.Device, a.AlertID, string(a.State), act.User, act.Note, at)
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_audit (at, user_name, role, action, site, device, alert_id, note, remote)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)`, at, act.User, act.Role, act.Action, act.Key.Site, act.Key.Device, act.Key.AlertID,
			act.Note, act.Remote); err != nil {
			return err
		}
		out = a
		return notify(ctx, tx, storage.Change{Kind: "action", Site: a.Site, Device: a.Device, Alert: a.AlertID})
	})
	return out, err
}

// RecordCorrection implements storage.Store.
func (s *Store) RecordCorrection(ctx context.Context, c storage.Correction) error {
	if err := c.Validate(); err != nil {
		return err
	}
	return s.tx(ctx, "record correction", func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_audit (at, user_name, role, action, site, device, alert_id, note, remote)
			VALUES ($1,$2,$3,$4,$5,$6,'',$7,$8)`, c.At.UTC(), c.User, c.Role, c.Action, c.Site, c.Device,
			storage.CorrectionNote(c), c.Remote); err != nil {
			return err
		}
		return notify(ctx, tx, storage.Change{Kind: "action", Site: c.Site, Device: c.Device})
	})
}

// Audit implements storage.Store: newest first.
func (s *Store) Audit(ctx context.Context, limit int) ([]storage.AuditEntry, error) {
	if limit <= 0 {
		limit = 200
	}
	rows, err := s.pool.Query(ctx, `SELECT id, at, user_name, role, action, site, device, alert_id, note, remote
		FROM atm_fleet_audit ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.AuditEntry, error) {
		var e storage.AuditEntry
		var id int64
		err := r.Scan(&id, &e.At, &e.User, &e.Role, &e.Action, &e.Key.Site, &e.Key.Device, &e.Key.AlertID, &e.Note, &e.Remote)
		e.ID, e.At = uint64(id), e.At.UTC()
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	return out, nil
}

// Summaries implements storage.Store.
func (s *Store) Summaries(ctx context.Context, site, device string, since time.Time) ([]storage.SummaryPoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT seq, ts, visits_1h, visits_24h, visits_7d, identities_24h, masked_24h, faceless_24h
		FROM atm_fleet_summaries WHERE site = $1 AND device = $2 AND ts >= $3 ORDER BY ts, seq`, site, device, since.UTC())
	if err != nil {
		return nil, fmt.Errorf("read summaries: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.SummaryPoint, error) {
		var p storage.SummaryPoint
		var seq int64
		err := r.Scan(&seq, &p.TS, &p.Visits1h, &p.Visits24h, &p.Visits7d, &p.Identities24h, &p.Masked24h, &p.Faceless24h)
		p.Seq, p.TS = uint64(seq), p.TS.UTC()
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("read summaries: %w", err)
	}
	return out, nil
}

// IdentityPoints implements storage.Store.
func (s *Store) IdentityPoints(ctx context.Context, site, device, identity string, since time.Time) ([]storage.IdentityPoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT seq, ts, visits, masked, distinct_cards, first_seen, last_seen
		FROM atm_fleet_identity_points WHERE site = $1 AND device = $2 AND identity = $3 AND ts >= $4 ORDER BY ts, seq`,
		site, device, identity, since.UTC())
	if err != nil {
		return nil, fmt.Errorf("read identity series: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.IdentityPoint, error) {
		var p storage.IdentityPoint
		var seq int64
		err := r.Scan(&seq, &p.TS, &p.Visits, &p.Masked, &p.DistinctCards, &p.FirstSeen, &p.LastSeen)
		p.Seq, p.TS, p.FirstSeen, p.LastSeen = uint64(seq), p.TS.UTC(), p.FirstSeen.UTC(), p.LastSeen.UTC()
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("read identity series: %w", err)
	}
	return out, nil
}

// Rejects implements storage.Store.
func (s *Store) Rejects(ctx context.Context, limit int) ([]storage.Reject, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.pool.Query(ctx, `SELECT received, topic, site, device, error, payload FROM atm_fleet_rejects ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("read rejects: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.Reject, error) {
		var x storage.Reject
		err := r.Scan(&x.Received, &x.Topic, &x.Site, &x.Device, &x.Error, &x.Payload)
		x.Received = x.Received.UTC()
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("read rejects: %w", err)
	}
	return out, nil
}

// Prune implements storage.Store.
func (s *Store) Prune(ctx context.Context, now time.Time, r storage.Retention) (storage.PruneStats, error) {
	var st storage.PruneStats
	hist, alerts := now.Add(-r.History).UTC(), now.Add(-r.Alerts).UTC()
	err := s.tx(ctx, "prune", func(tx pgx.Tx) error {
		st = storage.PruneStats{}
		for _, q := range []struct {
			n   *int
			sql string
			at  time.Time
		}{
			{&st.Messages, `DELETE FROM atm_fleet_messages WHERE received < $1`, hist},
			{&st.Summaries, `DELETE FROM atm_fleet_summaries WHERE ts < $1`, hist},
			{&st.IdentityPoints, `DELETE FROM atm_fleet_identity_points WHERE ts < $1`, hist},
			{&st.Rejects, `DELETE FROM atm_fleet_rejects WHERE received < $1`, hist},
			{&st.Alerts, `DELETE FROM atm_fleet_alerts WHERE state = 'resolved' AND resolved_at < $1`, alerts},
			{&st.Audit, `DELETE FROM atm_fleet_audit WHERE at < $1`, alerts},
			{&st.Sessions, `DELETE FROM atm_fleet_revoked_sessions WHERE expires < $1`, now.UTC().Truncate(time.Second)},
		} {
			tag, err := tx.Exec(ctx, q.sql, q.at)
			if err != nil {
				return fmt.Errorf("%s: %w", q.sql, err)
			}
			*q.n = int(tag.RowsAffected())
		}
		return nil
	})
	return st, err
}

// RevokeSession implements storage.Store.
func (s *Store) RevokeSession(ctx context.Context, id string, expires time.Time) error {
	return s.tx(ctx, "revoke session", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO atm_fleet_revoked_sessions (id_hash, expires) VALUES ($1, $2)
			ON CONFLICT (id_hash) DO UPDATE SET expires = GREATEST(atm_fleet_revoked_sessions.expires, EXCLUDED.expires)`,
			storage.SessionHash(id), expires.UTC())
		return err
	})
}

// SessionRevoked implements storage.Store.
func (s *Store) SessionRevoked(ctx context.Context, id string) (bool, error) {
	var found bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM atm_fleet_revoked_sessions WHERE id_hash = $1)`,
		storage.SessionHash(id)).Scan(&found)
	if err != nil {
		return false, fmt.Errorf("check session: %w", err)
	}
	return found, nil
}

// SyncUsers implements storage.Store.
func (s *Store) SyncUsers(ctx context.Context, names []string) (map[string]string, error) {
	gens := make(map[string]string, len(names))
	names = append([]string{}, names...) // not nil: ANY(NULL) would delete no one
	err := s.tx(ctx, "record the web users", func(tx pgx.Tx) error {
		clear(gens) // a retried transaction starts again
		if _, err := tx.Exec(ctx, `DELETE FROM atm_fleet_web_users WHERE NOT (name = ANY($1))`, names); err != nil {
			return err
		}
		for _, n := range names {
			if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_web_users (name, generation) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`,
				n, storage.NewUserGeneration()); err != nil {
				return err
			}
		}
		rows, err := tx.Query(ctx, `SELECT name, generation FROM atm_fleet_web_users WHERE name = ANY($1)`, names)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n, g string
			if err := rows.Scan(&n, &g); err != nil {
				return err
			}
			gens[n] = g
		}
		return rows.Err()
	})
	return gens, err
}

// PutDeviceKey implements storage.Store.
func (s *Store) PutDeviceKey(ctx context.Context, k storage.DeviceKey, c storage.KeyChange) error {
	if err := k.Validate(); err != nil {
		return err
	}
	return s.tx(ctx, "pin device key", func(tx pgx.Tx) error {
		before, err := lockDeviceKey(ctx, tx, k.Site, k.Device)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO atm_fleet_device_keys (site, device, public_key, pinned, pinned_by) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (site, device) DO UPDATE SET public_key = EXCLUDED.public_key, pinned = EXCLUDED.pinned, pinned_by = EXCLUDED.pinned_by`,
			k.Site, k.Device, []byte(k.PublicKey), k.Pinned.UTC(), k.By); err != nil {
			return err
		}
		return auditKey(ctx, tx, storage.ActionPinKey, k.Site, k.Device, storage.KeyNote(before, &k), c)
	})
}

// lockDeviceKey is the key pinned for a device (nil: none), its row locked
// until the transaction ends.
func lockDeviceKey(ctx context.Context, tx pgx.Tx, site, device string) (*storage.DeviceKey, error) {
	k, err := scanDeviceKey(tx.QueryRow(ctx, `SELECT `+deviceKeyCols+` FROM atm_fleet_device_keys WHERE site = $1 AND device = $2 FOR UPDATE`, site, device))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &k, nil
}

// auditKey appends a pin's or unpin's audit entry.
func auditKey(ctx context.Context, tx pgx.Tx, action, site, device, note string, c storage.KeyChange) error {
	_, err := tx.Exec(ctx, `INSERT INTO atm_fleet_audit (at, user_name, role, action, site, device, alert_id, note, remote)
		VALUES ($1,$2,$3,$4,$5,$6,'',$7,$8)`, c.At.UTC(), c.User, c.Role, action, site, device, note, c.Remote)
	return err
}

const deviceKeyCols = `site, device, public_key, pinned, pinned_by`

func scanDeviceKey(row pgx.Row) (storage.DeviceKey, error) {
	var k storage.DeviceKey
	var pub []byte
	if err := row.Scan(&k.Site, &k.Device, &pub, &k.Pinned, &k.By); err != nil {
		return k, err
	}
	k.PublicKey, k.Pinned = pub, k.Pinned.UTC()
	return k, nil
}

// DeviceKey implements storage.Store.
func (s *Store) DeviceKey(ctx context.Context, site, device string) (storage.DeviceKey, error) {
	k, err := scanDeviceKey(s.pool.QueryRow(ctx, `SELECT `+deviceKeyCols+` FROM atm_fleet_device_keys WHERE site = $1 AND device = $2`, site, device))
	if errors.Is(err, pgx.ErrNoRows) {
		return k, storage.DeviceKeyNotFound(site, device)
	}
	if err != nil {
		return k, fmt.Errorf("device key: %w", err)
	}
	return k, nil
}

// DeviceKeys implements storage.Store.
func (s *Store) DeviceKeys(ctx context.Context) ([]storage.DeviceKey, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deviceKeyCols+` FROM atm_fleet_device_keys ORDER BY site, device`)
	if err != nil {
		return nil, fmt.Errorf("device keys: %w", err)
	}
	defer rows.Close()
	var out []storage.DeviceKey
	for rows.Next() {
		k, err := scanDeviceKey(rows)
		if err != nil {
			return nil, fmt.Errorf("device keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("device keys: %w", err)
	}
	return out, nil
}

// RemoveDeviceKey implements storage.Store.
func (s *Store) RemoveDeviceKey(ctx context.Context, site, device string, c storage.KeyChange) error {
	return s.tx(ctx, "unpin device key", func(tx pgx.Tx) error {
		before, err := lockDeviceKey(ctx, tx, site, device)
		if err != nil {
			return err
		}
		if before == nil {
			return storage.DeviceKeyNotFound(site, device)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM atm_fleet_device_keys WHERE site = $1 AND device = $2`, site, device); err != nil {
			return err
		}
		return auditKey(ctx, tx, storage.ActionUnpinKey, site, device, storage.KeyNote(before, nil), c)
	})
}
