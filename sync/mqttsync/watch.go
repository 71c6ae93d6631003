package mqttsync

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/internal/redact"
	"github.com/periocular/atm-agent/sync/wire"
)

// WatchFilter narrows and shapes `atm-tools watch`.
type WatchFilter struct {
	Site, Device string        // "" means every site / device
	Top          int           // identities shown per device (default 3)
	Alerts       int           // recent alerts shown (default 5)
	Refresh      time.Duration // redraw period (default 1s)
	Clear        bool          // clear the screen (ANSI) before each redraw
}

// Fleet is what Watch has seen so far. Its methods are safe for concurrent use.
type Fleet struct {
	mu      sync.Mutex
	devices map[string]*DeviceView
	alerts  []wire.Alert
	max     int
	version uint64
}

// DeviceView is one device's latest state.
type DeviceView struct {
	Site, Device string
	Status       wire.Status
	Summary      *wire.Summary
	MaxSeq       uint64
	Gaps         uint64 // sequence numbers not (yet) seen below MaxSeq
	Duplicates   uint64 // messages seen again (same message_id)
	seen         map[uint64]bool
	ids          map[string]bool
}

// NewFleet returns an empty fleet keeping the last maxAlerts alerts.
func NewFleet(maxAlerts int) *Fleet {
	return &Fleet{devices: map[string]*DeviceView{}, max: max(maxAlerts, 1)}
}

// Add records one message received on topic below prefix. Malformed
// messages are reported and otherwise ignored.
func (f *Fleet) Add(prefix, topic string, payload []byte) error {
	tp, err := wire.ParseTopic(prefix, topic)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	key := tp.Site + "/" + tp.Device
	d := f.devices[key]
	if d == nil {
		d = &DeviceView{Site: tp.Site, Device: tp.Device, seen: map[uint64]bool{}, ids: map[string]bool{}}
		f.devices[key] = d
	}
	f.version++
	switch tp.Kind {
	case wire.KindStatus:
		var s wire.Status
		if err := json.Unmarshal(payload, &s); err != nil {
			return fmt.Errorf("status from %s: %w", key, err)
		}
		d.Status = s
		return nil
	case wire.KindSummary, wire.KindAlert:
	default:
		return nil
	}
	var env wire.Envelope
	if err := json.Unmarshal(payload, &env); err != nil {
		return fmt.Errorf("%s from %s: %w", tp.Kind, key, err)
	}
	if d.ids[env.MessageID] {
		// A retained summary comes again on every resubscribe: a repeat,
		// not a duplicate delivery.
		if tp.Kind != wire.KindSummary {
			d.Duplicates++
		}
		return nil
	}
	d.ids[env.MessageID] = true
	d.track(env.Seq)
	if tp.Kind == wire.KindSummary {
		var s wire.Summary
		if err := json.Unmarshal(payload, &s); err != nil {
			return fmt.Errorf("summary from %s: %w", key, err)
		}
		if d.Summary == nil || s.Seq > d.Summary.Seq {
			d.Summary = &s
		}
		return nil
	}
	var a wire.Alert
	if err := json.Unmarshal(payload, &a); err != nil {
		return fmt.Errorf("alert from %s: %w", key, err)
	}
	f.alerts = append(f.alerts, a)
	if len(f.alerts) > f.max {
		f.alerts = f.alerts[len(f.alerts)-f.max:]
	}
	return nil
}

// track updates gap accounting: Gaps is the count of sequence numbers
// between the first and the highest seen that are still missing.
func (d *DeviceView) track(seq uint64) {
	if seq == 0 || d.seen[seq] {
		return
	}
	d.seen[seq] = true
	switch {
	case d.MaxSeq == 0:
		d.MaxSeq = seq
	case seq > d.MaxSeq:
		d.Gaps += seq - d.MaxSeq - 1
		d.MaxSeq = seq
	case d.Gaps > 0:
		d.Gaps-- // a late message filled a hole
	}
}

// Render writes the fleet as a plain text table.
func (f *Fleet) Render(w io.Writer, now time.Time, top, alerts int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	keys := make([]string, 0, len(f.devices))
	for k := range f.devices {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "atm fleet  %s  devices=%d\n\n", now.UTC().Format(time.RFC3339), len(keys))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tDEVICE\tSTATUS\tSEEN\tOUTBOX\tVISITS 1h/24h/7d\tFACELESS 24h\tSEQ\tGAPS\tDUP\tTOP IDENTITIES (24h)")
	for _, k := range keys {
		d := f.devices[k]
		state, seen, outbox := "?", "-", "-"
		if d.Status.State != "" {
			state = string(d.Status.State)
			if d.Status.Health == wire.HealthDegraded && d.Status.State == wire.StateOnline {
				state += " DEGRADED"
				if len(d.Status.Reasons) > 0 {
					state += " (" + d.Status.Reasons[0] + ")"
				}
			}
			seen = now.Sub(d.Status.TS).Truncate(time.Second).String()
			if o := d.Status.Outbox; o != nil {
				outbox = fmt.Sprintf("%d (drop s%d/a%d)", o.Depth, o.DroppedSummaries, o.DroppedAlerts)
			}
		}
		visits, faceless, tops := "-", "-", "-"
		if s := d.Summary; s != nil {
			v := s.Totals.Visits
			visits = fmt.Sprintf("%d/%d/%d", v.H1, v.H24, v.D7)
			faceless = fmt.Sprint(s.Faceless.H24)
			ids := append([]wire.IdentityCounts(nil), s.Identities...)
			sort.SliceStable(ids, func(i, j int) bool { return ids[i].Visits.H24 > ids[j].Visits.H24 })
			var parts []string
			for i := 0; i < len(ids) && i < top; i++ {
				parts = append(parts, fmt.Sprintf("%s:%d", ids[i].ID, ids[i].Visits.H24))
			}
			if len(parts) > 0 {
				tops = strings.Join(parts, " ")
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", d.Site, d.Device, state, seen, outbox,
			visits, faceless, d.MaxSeq, d.Gaps, d.Duplicates, tops)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nRECENT ALERTS")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RAISED\tSITE\tDEVICE\tRULE\tIDENTITY\tCOUNT/THRESHOLD\tWINDOW\tLATE")
	for i := len(f.alerts) - 1; i >= 0 && i >= len(f.alerts)-alerts; i-- {
		a := f.alerts[i]
		late := ""
		if a.Historical {
			late = "historical"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", a.Raised.UTC().Format("01-02 15:04:05"), a.Site, a.Device,
			a.Rule, a.IdentityID, a.Count, a.Threshold, durfmt.Window(a.Window), late)
	}
	tw.Flush()
}

// Watch subscribes to <prefix>/<site|+>/<device|+>/# and redraws the fleet
// table on out every filter.Refresh until ctx ends. It returns nil on
// cancellation and an error if the broker cannot be reached.
func Watch(ctx context.Context, cfg Config, filter WatchFilter, out io.Writer) error {
	if filter.Top <= 0 {
		filter.Top = 3
	}
	if filter.Alerts <= 0 {
		filter.Alerts = 5
	}
	if filter.Refresh <= 0 {
		filter.Refresh = time.Second
	}
	sub := cfg.Topic.Prefix + "/+/+/#"
	if filter.Site != "" || filter.Device != "" {
		site, dev := "+", "+"
		if filter.Site != "" {
			if err := wire.ValidateLevel("site", filter.Site); err != nil {
				return err
			}
			site = filter.Site
		}
		if filter.Device != "" {
			if err := wire.ValidateLevel("device", filter.Device); err != nil {
				return err
			}
			dev = filter.Device
		}
		sub = cfg.Topic.Prefix + "/" + site + "/" + dev + "/#"
	}
	if err := wire.ValidatePrefix(cfg.Topic.Prefix); err != nil {
		return err
	}
	// The watcher needs no device identity of its own.
	if cfg.Topic.Site == "" {
		cfg.Topic.Site = "watch"
	}
	if cfg.Topic.Device == "" {
		cfg.Topic.Device = "watch"
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	opts, err := clientOptions(cfg, randomID("atm-watch"))
	if err != nil {
		return err
	}
	opts.SetConnectRetry(false)
	fleet := NewFleet(filter.Alerts)
	var errMu sync.Mutex
	var lastErr string
	opts.SetOnConnectHandler(func(c mqtt.Client) {
		c.Subscribe(sub, 1, func(_ mqtt.Client, m mqtt.Message) {
			if err := fleet.Add(cfg.Topic.Prefix, m.Topic(), m.Payload()); err != nil {
				errMu.Lock()
				lastErr = err.Error()
				errMu.Unlock()
			}
		})
	})
	c := mqtt.NewClient(opts)
	if err := waitToken(ctx, c.Connect(), cfg.ConnectTimeout+time.Second); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return redact.Error(fmt.Errorf("watch: connect %v: %w", redactAll(cfg.Brokers), err), cfg.Brokers...)
	}
	defer c.Disconnect(100)
	t := time.NewTicker(filter.Refresh)
	defer t.Stop()
	var drawn uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		fleet.mu.Lock()
		v := fleet.version
		fleet.mu.Unlock()
		if v == drawn && drawn != 0 {
			continue
		}
		drawn = v
		var b strings.Builder
		if filter.Clear {
			b.WriteString("\x1b[H\x1b[2J")
		} else {
			b.WriteString("\n")
		}
		fleet.Render(&b, time.Now(), filter.Top, filter.Alerts)
		errMu.Lock()
		if lastErr != "" {
			fmt.Fprintf(&b, "\nlast bad message: %s\n", lastErr)
		}
		errMu.Unlock()
		if _, err := io.WriteString(out, b.String()); err != nil {
			return fmt.Errorf("watch: write: %w", err)
		}
	}
}
