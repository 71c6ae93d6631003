package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/periocular/atm-agent/agent"
	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/agent/identity"
	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/agent/vision"
	"github.com/periocular/atm-agent/agent/visit"
	"github.com/periocular/atm-agent/hal/sim"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/internal/paths"
	"github.com/periocular/atm-agent/models"
	"github.com/periocular/atm-agent/store"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

const demoBanner = "SIMULATED SCENARIO: no camera, no card reader, no real customers. Faces are cut from face-api's demo photos; masks are painted; times are compressed."

func init() {
	commands["demo"] = cli.Command{Summary: "replay a simulated ATM day through the real pipeline (no hardware)", Run: func(ctx context.Context, env *cli.Env, args []string) error {
		fs := cli.NewFlags(env, "demo", "demo [--models DIR] [--photos DIR] [--seed N] [--duration 40s] [--db FILE] [--new-identity-quality Q] | demo --fleet [--atms 3] [--listen 127.0.0.1:8080] [--once] [--dir DIR]")
		o := demoOptions{}
		fs.StringVar(&o.Models, "models", "", "model directory (default: $ATM_MODELS_DIR, build/models in a source checkout, else /usr/lib/atm-agent/models)")
		fs.StringVar(&o.Photos, "photos", "", "face-api demo photos (default: build/src/face-api/demo in a source checkout, else /usr/share/atm-tools/demo)")
		fs.Uint64Var(&o.Seed, "seed", 1, "scenario seed (same seed, same day)")
		fs.DurationVar(&o.Duration, "duration", 40*time.Second, "wall time the simulated 12-hour day is compressed into")
		fs.StringVar(&o.DB, "db", "", "keep the bbolt store in this file (default: a temporary file, removed)")
		fs.StringVar(&o.Thresholds, "thresholds", "", "identity thresholds UU,MM,MU (default: the manifest's calibration)")
		fs.Func("new-identity-quality", fmt.Sprintf("visit quality a face needs to start an identity, 0..1 (default: vision.new_identity_quality, %g)", vision.DefaultConfig().NewIdentityQuality), func(v string) error {
			q, err := strconv.ParseFloat(v, 64)
			if err != nil || !(q >= 0 && q <= 1) {
				return fmt.Errorf("%q: want a number in 0..1", v)
			}
			o.NewIdentityQuality = &q
			return nil
		})
		fs.BoolVar(&o.Verbose, "v", false, "show the agent's own log lines")
		fs.BoolVar(&o.Fleet, "fleet", false, "the fleet act: several simulated ATMs publish to the embedded broker and the fleet service ingests them and serves its web UI (docs/fleet.md)")
		fs.IntVar(&o.ATMs, "atms", 3, "simulated ATMs in the fleet act (seeds --seed, --seed+1, ...)")
		fs.StringVar(&o.Listen, "listen", "", "fleet web UI address, loopback only (default 127.0.0.1:8080; with --once a free port)")
		fs.BoolVar(&o.Once, "once", false, "fleet act: print the fleet's summary after the day and exit instead of serving until Ctrl-C")
		fs.StringVar(&o.Dir, "dir", "", "fleet act: keep the ATMs' and the fleet's stores in this directory (default: a temporary one, removed)")
		if err := cli.ParseFlags(fs, args); err != nil {
			return err
		}
		if o.Fleet {
			return runFleetDemo(ctx, env, &o)
		}
		if o.Once || o.Listen != "" || o.Dir != "" {
			return fmt.Errorf("%w: --once, --listen and --dir go with --fleet", cli.ErrUsage)
		}
		return runDemo(ctx, env, &o)
	}}
}

type demoOptions struct {
	Models, Photos, DB string
	Seed               uint64
	Duration           time.Duration
	Verbose            bool
	Thresholds         string
	thresholdsFrom     string
	// NewIdentityQuality overrides vision.new_identity_quality (nil: the
	// pipeline's default).
	NewIdentityQuality *float64

	// The fleet act.
	Fleet, Once bool
	ATMs        int
	Listen, Dir string
}

// defaults fills in the installed or checkout paths and checks --duration.
func (o *demoOptions) defaults() error {
	if o.Models == "" {
		o.Models = paths.Models()
	}
	if o.Photos == "" {
		o.Photos = paths.Photos()
	}
	if o.Duration < time.Second {
		return fmt.Errorf("%w: --duration %v: at least 1s", cli.ErrUsage, o.Duration)
	}
	return nil
}

// gateLine tells the visit quality a face needs to start an identity and
// where it comes from.
func (o *demoOptions) gateLine() string {
	if o.NewIdentityQuality != nil {
		return fmt.Sprintf("new identity quality %.2f (--new-identity-quality; default %.2f)", *o.NewIdentityQuality, vision.DefaultConfig().NewIdentityQuality)
	}
	return fmt.Sprintf("new identity quality %.2f (vision.new_identity_quality)", vision.DefaultConfig().NewIdentityQuality)
}

// provisionalThresholds are used when the manifest has no calibration for
// the embedder yet (default.yaml shows the same values).
var provisionalThresholds = identity.Thresholds{UU: 0.35, MM: 0.30, MU: 0}

// demoThresholds returns the --thresholds override, the provisional values
// when the manifest has none, or nil to use the manifest's.
func demoThresholds(o *demoOptions) (*identity.Thresholds, error) {
	if o.Thresholds != "" {
		var t identity.Thresholds
		if _, err := fmt.Sscanf(o.Thresholds, "%g,%g,%g", &t.UU, &t.MM, &t.MU); err != nil {
			return nil, fmt.Errorf("%w: --thresholds %q: want UU,MM,MU", cli.ErrUsage, o.Thresholds)
		}
		o.thresholdsFrom = "--thresholds"
		return &t, nil
	}
	man, err := models.LoadManifest(filepath.Join(o.Models, "manifest.yaml"))
	if err != nil {
		return nil, fmt.Errorf("models: %w (run `make models` or pass --models)", err)
	}
	if em, ok := man.Find(man.Pipeline.Embedder); ok && em.Thresholds != nil {
		return nil, nil
	}
	t := provisionalThresholds
	o.thresholdsFrom = "provisional: the manifest has no calibration yet; run `atm-tools eval calibrate`"
	return &t, nil
}

// demoRules are the default rules with a faceless threshold a short demo
// reaches.
func demoRules() []rules.Rule {
	rs := rules.DefaultRules()
	for i := range rs {
		if rs[i].Kind == rules.KindFaceless {
			rs[i].Threshold = 3
		}
	}
	return rs
}

// demoRun is the state shared by the demo's camera, trigger source,
// observer and MQTT subscriber.
type demoRun struct {
	out   io.Writer
	outMu sync.Mutex
	sc    sim.Scenario
	faces []sim.Face
	day0  time.Time // simulated start of the day

	dm      *daemon.Daemon
	srcDone chan struct{}
	tag     string // the device before each line (fleet act)
	quiet   bool   // print only the visits that raise alerts (fleet act)

	mu      sync.Mutex
	current sim.Visit
	done    chan string // visit ids, from the observer
	idSeen  map[string]bool

	// subscriber side
	recvMu   sync.Mutex
	received map[string]int // kind -> unique messages
	msgIDs   map[string]bool
	dups     int
	seqs     map[uint64]bool
	alertIDs map[string]bool
}

func (d *demoRun) printf(format string, a ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.out, format, a...)
}

func (d *demoRun) clock(t time.Time) string { return t.Local().Format("15:04") }

// Burst implements agent.Camera: the frames of the visit being replayed.
func (d *demoRun) Burst(ctx context.Context) ([]visit.Frame, error) {
	d.mu.Lock()
	v := d.current
	d.mu.Unlock()
	return d.sc.Frames(d.faces, v, 5), ctx.Err()
}

// Run implements agent.Source: the day's card inserts at compressed time,
// each after the previous visit is stored (a real card insert never comes
// while the previous customer is still at the machine).
func (d *demoRun) run(speed float64) func(ctx context.Context, emit agent.Emit) error {
	return func(ctx context.Context, emit agent.Emit) error {
		start := time.Now()
		for _, v := range d.sc.Visits {
			wait := time.Until(start.Add(time.Duration(float64(v.Offset) / speed)))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(max(wait, 0)):
			}
			d.mu.Lock()
			d.current = v
			d.mu.Unlock()
			emit(visit.Trigger{ID: v.ID, Time: d.day0.Add(v.Offset), Source: "demo",
				Context: visit.Context{CardHash: v.Card, TxnID: v.ID}})
			timeout := time.After(30 * time.Second)
		wait:
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-timeout:
					d.printf("  (visit %s not stored within 30 s; going on)\n", v.ID)
					break wait
				case id := <-d.done:
					if id == v.ID {
						break wait
					}
				}
			}
		}
		return nil
	}
}

func (d *demoRun) truth(id string) (sim.Visit, bool) {
	for _, v := range d.sc.Visits {
		if v.ID == id {
			return v, true
		}
	}
	return sim.Visit{}, false
}

// identitiesByPerson sets the stored visits against the day's truth: the
// identities of each simulated person (with their visit counts) and the
// people of each identity.
func (d *demoRun) identitiesByPerson(vs []visit.Visit) (idsOf map[int]map[string]int, personsOf map[string]map[int]bool) {
	idsOf, personsOf = map[int]map[string]int{}, map[string]map[int]bool{}
	for _, v := range vs {
		tv, ok := d.truth(v.ID)
		if !ok || tv.Person < 0 || v.IdentityID == "" {
			continue
		}
		if idsOf[tv.Person] == nil {
			idsOf[tv.Person] = map[string]int{}
		}
		idsOf[tv.Person][v.IdentityID]++
		if personsOf[v.IdentityID] == nil {
			personsOf[v.IdentityID] = map[int]bool{}
		}
		personsOf[v.IdentityID][tv.Person] = true
	}
	return idsOf, personsOf
}

func (d *demoRun) who(v sim.Visit) string {
	if v.Person < 0 {
		return "(" + v.Shot.String() + ")"
	}
	s := d.sc.People[v.Person].Name
	if v.Mask >= 0 {
		s += " masked"
	}
	return s
}

// demoObserver prints one line per stored visit.
type demoObserver struct{ d *demoRun }

func (o demoObserver) Visit(v visit.Visit, s agent.Stages, newAlerts int) {
	d := o.d
	tv, _ := d.truth(v.ID)
	card := ""
	if v.Context.CardHash != "" {
		card = " card " + v.Context.CardHash[:6]
	}
	res := v.Outcome.String()
	if v.IdentityID != "" {
		d.mu.Lock()
		isNew := !d.idSeen[v.IdentityID]
		d.idSeen[v.IdentityID] = true
		d.mu.Unlock()
		tag := ""
		if isNew {
			tag = " NEW"
		}
		res = fmt.Sprintf("identity %s%s  mask=%s q=%.2f", v.IdentityID, tag, v.Mask, v.Quality)
	} else if v.Outcome == visit.FaceFound {
		res = fmt.Sprintf("face, no identity (quality %.2f too low to start one)", v.Quality)
	}
	if newAlerts > 0 && d.quiet {
		res += fmt.Sprintf("  => %d new alert(s)", newAlerts)
	}
	if !d.quiet || newAlerts > 0 {
		d.printf("%s[%s] visit %-14s truth %-14s%-12s -> %s  (%d ms)\n", d.tag, d.clock(v.Time), v.ID, d.who(tv), card, res, s.Total.Milliseconds())
	}
	select {
	case d.done <- v.ID:
	default:
	}
}
func (demoObserver) Coalesced()                      {}
func (demoObserver) CommitFailed(string)             {}
func (demoObserver) Consolidated(int, time.Duration) {}
func (demoObserver) Purged(int)                      {}

// startBroker runs an embedded MQTT broker on a free loopback port.
func startBroker() (*mochi.Server, string, error) {
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, "", err
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "demo", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		return nil, "", fmt.Errorf("embedded broker: %w", err)
	}
	go srv.Serve()
	return srv, "tcp://" + tcp.Address(), nil
}

// subscribe connects a dashboard-like subscriber that counts and prints
// what arrives.
func (d *demoRun) subscribe(url, filter string) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker(url).SetClientID("demo-dashboard").
		SetCleanSession(true).SetConnectTimeout(5 * time.Second).SetAutoReconnect(true)
	c := paho.NewClient(opts)
	if t := c.Connect(); !t.WaitTimeout(5*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("demo subscriber: connect %s: %v", url, t.Error())
	}
	t := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		kind := m.Topic()[strings.LastIndexByte(m.Topic(), '/')+1:]
		var env wire.Envelope
		_ = json.Unmarshal(m.Payload(), &env)
		d.recvMu.Lock()
		if kind != wire.KindStatus && env.MessageID != "" {
			if d.msgIDs[env.MessageID] {
				d.dups++
				d.recvMu.Unlock()
				return
			}
			d.msgIDs[env.MessageID] = true
			d.seqs[env.Seq] = true
		}
		d.received[kind]++
		d.recvMu.Unlock()
		if kind == wire.KindAlert {
			var a wire.Alert
			if json.Unmarshal(m.Payload(), &a) == nil {
				d.recvMu.Lock()
				d.alertIDs[a.AlertID] = true
				d.recvMu.Unlock()
				who := a.IdentityID
				if who == "" {
					who = "device-wide"
				}
				d.printf("  ALERT via MQTT  %-17s %-26s %d in %s (threshold %d), seq %d\n", a.Rule, who, a.Count, durfmt.Window(a.Window), a.Threshold, a.Seq)
			}
		}
	})
	if !t.WaitTimeout(5*time.Second) || t.Error() != nil {
		c.Disconnect(100)
		return nil, fmt.Errorf("demo subscriber: subscribe: %v", t.Error())
	}
	return c, nil
}

func runDemo(ctx context.Context, env *cli.Env, o *demoOptions) error {
	t0 := time.Now()
	if err := demoFreshStore("--db", o.DB); err != nil {
		return err
	}
	if err := o.defaults(); err != nil {
		return err
	}
	d := newDemoRun(env.Stdout)
	d.printf("%s\n\n", demoBanner)

	faces, err := sim.LoadFaces(o.Models, o.Photos)
	if err != nil {
		return err
	}
	d.setScenario(faces, o.Seed)
	speed := float64(d.sc.Day) / float64(o.Duration)
	d.printf("scenario: seed %d, %d faces found in %d photos, %d simulated customers, %d card inserts on %s 08:00-20:00, replayed in %v\n",
		o.Seed, len(faces), len(sim.Photos), len(d.sc.People), len(d.sc.Visits), d.day0.Format("2006-01-02"), o.Duration)
	for _, r := range demoRules() {
		d.printf("rule %-17s %-15s >= %d within %v\n", r.Name, r.Kind, r.Threshold, durfmt.WindowOf(r.Window))
	}
	th, err := demoThresholds(o)
	if err != nil {
		return err
	} else if th != nil {
		d.printf("identity thresholds uu %.2f mm %.2f mu %.2f (%s)\n", th.UU, th.MM, th.MU, o.thresholdsFrom)
	}
	d.printf("%s\n", o.gateLine())
	storePath := o.DB
	if storePath == "" {
		tmp, err := os.MkdirTemp("", "atm-agent-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		storePath = filepath.Join(tmp, "demo.db")
	}
	log := demoLogger(env, o)

	broker, url, err := startBroker()
	if err != nil {
		return err
	}
	defer broker.Close()
	cfg := demoDaemonConfig(o, th, daemon.DeviceConfig{ID: "demo-atm", Site: "demo-site"}, storePath, url)
	topics, _ := cfg.MQTT.Topics()
	sub, err := d.subscribe(url, strings.TrimSuffix(topics.Status(), wire.KindStatus)+"#")
	if err != nil {
		return err
	}
	defer sub.Disconnect(200)

	if err := d.newDaemon(cfg, speed, log); err != nil {
		return err
	}
	dm, srcDone := d.dm, d.srcDone
	st, ag, pub := dm.Store(), dm.Agent(), dm.Publisher()
	d.printf("store %s, embedded MQTT broker %s, subscriber on %s#\n\n", cfg.Store.Path, url, strings.TrimSuffix(topics.Status(), wire.KindStatus))

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- dm.Run(runCtx) }()

	select {
	case <-srcDone:
	case err := <-runDone:
		return fmt.Errorf("agent stopped: %v", err)
	case <-ctx.Done():
		cancel()
		<-runDone
		d.printf("\ninterrupted. %s\n", demoBanner)
		return nil
	}
	// End of day: consolidate identities and publish a summary, as the
	// agent does on its timers.
	if err := ag.Consolidate(runCtx); err != nil {
		d.printf("consolidation: %v\n", err)
	}
	if err := ag.PublishSummary(runCtx); err != nil {
		d.printf("summary: %v\n", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		depth, _, _ := st.OutboxStats()
		d.recvMu.Lock()
		got := len(d.msgIDs)
		d.recvMu.Unlock()
		if depth == 0 && uint64(got) >= pub.Stats().Published {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	// The report reads the store while the daemon still runs (Run closes
	// it on return); every visit is stored by now.
	reportErr := d.report(ctx, st, ag, pub, time.Since(t0))
	cancel()
	if err := <-runDone; err != nil {
		return err
	}
	return reportErr
}

// newDemoRun returns an ATM's demo state writing to out.
func newDemoRun(out io.Writer) *demoRun {
	return &demoRun{out: out, done: make(chan string, 4), idSeen: map[string]bool{},
		received: map[string]int{}, msgIDs: map[string]bool{}, seqs: map[uint64]bool{}, alertIDs: map[string]bool{}}
}

// setScenario builds the seeded day over faces. The simulated day is the
// last full 08:00-20:00 before now, so every visit is in the past and
// inside the store's retention.
func (d *demoRun) setScenario(faces []sim.Face, seed uint64) {
	d.faces = faces
	d.sc = sim.Day(faces, seed)
	ref := time.Now().Add(-20*time.Hour - 30*time.Minute)
	d.day0 = time.Date(ref.Year(), ref.Month(), ref.Day(), 8, 0, 0, 0, time.Local)
}

// newDaemon builds the ATM's daemon through the composition root, with
// this run as camera, trigger source and observer. d.srcDone closes when
// the day's last card insert has been handled.
func (d *demoRun) newDaemon(cfg daemon.Config, speed float64, log *slog.Logger) error {
	d.srcDone = make(chan struct{})
	src := d.run(speed)
	dm, err := daemon.New(cfg, daemon.Options{Version: cli.Version, Logger: log, Camera: d, Observer: demoObserver{d},
		Sources: []agent.Source{sourceFunc(func(ctx context.Context, emit agent.Emit) error {
			defer close(d.srcDone)
			return src(ctx, emit)
		})}})
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.Device.ID, err)
	}
	d.dm = dm
	return nil
}

func demoLogger(env *cli.Env, o *demoOptions) *slog.Logger {
	logLevel := slog.LevelWarn + 4 // silent unless -v
	if o.Verbose {
		logLevel = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: logLevel}))
}

// demoDaemonConfig is the default config turned into a demo ATM's: no
// hardware trigger or metrics port, the demo's rules and thresholds, its
// own store, MQTT to the embedded broker.
func demoDaemonConfig(o *demoOptions, th *identity.Thresholds, dev daemon.DeviceConfig, storePath, brokerURL string) daemon.Config {
	cfg := daemon.DefaultConfig()
	cfg.Device = dev
	cfg.Models.Dir = o.Models
	if th != nil {
		cfg.Identity.Thresholds = th
	}
	if o.NewIdentityQuality != nil {
		cfg.Vision.NewIdentityQuality = *o.NewIdentityQuality
	}
	cfg.Store.Path = storePath
	cfg.Trigger = daemon.TriggerConfig{}
	cfg.Metrics.Listen = ""
	cfg.Alerts.Rules = demoRules()
	cfg.MQTT.Enabled = true
	cfg.MQTT.Brokers = []string{brokerURL}
	cfg.MQTT.Topic = mqttsync.TopicConfig{Prefix: demoPrefix, Site: cfg.Device.Site, Device: cfg.Device.ID}
	cfg.MQTT.DrainInterval = 200 * time.Millisecond
	return cfg
}

// demoPrefix is the demo ATMs' MQTT topic prefix.
const demoPrefix = "atm"

type sourceFunc func(ctx context.Context, emit agent.Emit) error

func (f sourceFunc) Run(ctx context.Context, emit agent.Emit) error { return f(ctx, emit) }

// report prints the ground truth against what the agent stored and sent.
func (d *demoRun) report(ctx context.Context, st *store.Store, ag *agent.Agent, pub *mqttsync.Publisher, took time.Duration) error {
	vs, err := st.VisitsBetween(ctx, d.day0.Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		return err
	}
	alerts, err := st.Alerts(ctx, d.day0.Add(-time.Hour))
	if err != nil {
		return err
	}
	alertsOf := map[string][]string{}
	for _, a := range alerts {
		alertsOf[a.IdentityID] = append(alertsOf[a.IdentityID], a.Rule)
	}
	type row struct {
		truth, masked, stored int
		// What the agent called the stored visits of masked truth: masked,
		// unknown; and unmasked visits it called masked.
		storedMasked, seenMasked, seenUnknown, falseMasked int
		ids                                                map[string]int
		noIdentity                                         int
	}
	rows := make([]row, len(d.sc.People))
	for i := range rows {
		rows[i].ids = map[string]int{}
	}
	for _, v := range d.sc.Visits {
		if v.Person >= 0 {
			rows[v.Person].truth++
			if v.Mask >= 0 {
				rows[v.Person].masked++
			}
		}
	}
	faceless := map[string]int{}
	facelessTruth := 0
	for _, v := range d.sc.Visits {
		if v.Person < 0 {
			facelessTruth++
		}
	}
	for _, v := range vs {
		tv, ok := d.truth(v.ID)
		if !ok {
			continue
		}
		if tv.Person < 0 {
			faceless[v.Outcome.String()]++
			continue
		}
		r := &rows[tv.Person]
		r.stored++
		if tv.Mask >= 0 {
			r.storedMasked++
		}
		switch {
		case tv.Mask >= 0 && v.Mask == visit.Masked:
			r.seenMasked++
		case tv.Mask >= 0 && v.Mask == visit.MaskUnknown:
			r.seenUnknown++
		case tv.Mask < 0 && v.Mask == visit.Masked:
			r.falseMasked++
		}
		if v.IdentityID == "" {
			r.noIdentity++
		}
	}
	idsOf, personsOf := d.identitiesByPerson(vs)
	for p, ids := range idsOf {
		rows[p].ids = ids
	}

	d.printf("\n=== Summary of the SIMULATED day (ground truth vs. what the agent stored) ===\n")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "person\tsource photo\tpattern\tvisits\tmasked\tstored\tseen masked/unknown\tidentities (visits)\tno identity\talerts")
	var tot row
	for i, p := range d.sc.People {
		r := rows[i]
		var ids []string
		var al []string
		for id, n := range r.ids {
			ids = append(ids, fmt.Sprintf("%s (%d)", id, n))
			al = append(al, alertsOf[id]...)
		}
		sort.Strings(ids)
		sort.Strings(al)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d/%d\t%s\t%d\t%s\n", p.Name, d.faces[p.Face].Source, p.Role, r.truth, r.masked, r.stored,
			r.seenMasked, r.seenUnknown, strings.Join(ids, ", "), r.noIdentity, strings.Join(al, ", "))
		tot.truth, tot.masked, tot.stored = tot.truth+r.truth, tot.masked+r.masked, tot.stored+r.stored
		tot.seenMasked, tot.seenUnknown, tot.falseMasked = tot.seenMasked+r.seenMasked, tot.seenUnknown+r.seenUnknown, tot.falseMasked+r.falseMasked
		tot.storedMasked += r.storedMasked
	}
	var fl []string
	for k, n := range faceless {
		fl = append(fl, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(fl)
	fmt.Fprintf(tw, "(no face)\t-\tcovered camera / nobody in view\t%d\t-\t%s\t-\t-\t%s\n", facelessTruth, strings.Join(fl, ", "), strings.Join(alertsOf[""], ", "))
	tw.Flush()

	merged := 0
	for _, ps := range personsOf {
		if len(ps) > 1 {
			merged++
		}
	}
	split, faceNoID := 0, 0
	var never []string // people with stored visits and no identity at all
	for i, r := range rows {
		if len(r.ids) > 1 {
			split++
		}
		faceNoID += r.noIdentity
		if r.stored > 0 && len(r.ids) == 0 {
			never = append(never, d.sc.People[i].Name)
		}
	}
	neverSaid := "none"
	if len(never) > 0 {
		neverSaid = strings.Join(never, ", ")
	}
	s := ag.Stats()
	d.recvMu.Lock()
	var maxSeq uint64
	for q := range d.seqs {
		maxSeq = max(maxSeq, q)
	}
	gaps := 0
	for q := uint64(1); q <= maxSeq; q++ {
		if !d.seqs[q] {
			gaps++
		}
	}
	missingAlerts := 0
	for _, a := range alerts {
		if !d.alertIDs[a.ID] {
			missingAlerts++
		}
	}
	recv := fmt.Sprintf("alerts %d, summaries %d, status %d; duplicates %d; seq 1..%d with %d gaps",
		d.received[wire.KindAlert], d.received[wire.KindSummary], d.received[wire.KindStatus], d.dups, maxSeq, gaps)
	d.recvMu.Unlock()
	d.printf("\nvisits stored %d of %d card inserts (face %d, noface %d, lowquality %d, camera_error %d); duplicates %d, lost %d\n",
		len(vs), len(d.sc.Visits), s.Visits[visit.FaceFound], s.Visits[visit.NoFace], s.Visits[visit.LowQuality], s.Visits[visit.CameraError], s.Duplicates, s.CommitErrors)
	d.printf("identities %d for %d simulated customers: %d shared by two or more people (false merges), %d people split over several ids; %d people never identified (%s)\n",
		len(personsOf), len(d.sc.People), merged, split, len(never), neverSaid)
	d.printf("visits of people left without identity %d (too poor a face to start one, or no face found); %d attached to an identity at the consolidation\n", faceNoID, s.Attached)
	d.printf("mask state: of %d stored masked visits (%d in the day), %d stored as masked, %d unknown, %d unmasked; unmasked visits stored as masked %d\n",
		tot.storedMasked, tot.masked, tot.seenMasked, tot.seenUnknown, tot.storedMasked-tot.seenMasked-tot.seenUnknown, tot.falseMasked)
	d.printf("alerts stored %d, missing at the subscriber %d\n", len(alerts), missingAlerts)
	d.printf("MQTT: published (PUBACKed) %d; received by the subscriber: %s\n", pub.Stats().Published, recv)
	d.printf("took %v\n\n%s\n", took.Round(100*time.Millisecond), demoBanner)
	return nil
}

// demoFreshStore refuses a store file a demo run has written before: a
// seed's day has the same visit ids every run, and the agent stores a visit
// id once (a replayed trigger is a duplicate), so the day would find
// nothing to do and wait out each visit.
func demoFreshStore(flag, path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%s: %w", flag, err)
	case fi.Size() > 0:
		return fmt.Errorf("%w: %s: %s already holds a store: the demo's day has the same visit ids on every run, and the agent stores a visit id once, so it would replay nothing; give a new path or remove it (atm-agent db stats --db %s shows what it holds)", cli.ErrUsage, flag, path, path)
	}
	return nil
}
