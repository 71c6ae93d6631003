package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/hal/sim"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/sync/fleet/service"
	"github.com/periocular/atm-agent/sync/fleet/web"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// The fleet act: several simulated ATMs (the demo's scenario with seeds
// seed, seed+1, ...) publish to the embedded broker, and the fleet service
// (sync/fleet/service, as atm-fleet runs it) ingests them into a bbolt
// store and serves its web UI on loopback with a throw-away login.

const (
	fleetDemoUser     = "demo"
	fleetDefaultAddr  = "127.0.0.1:8080"
	fleetDemoClientID = "atm-fleet-demo"
)

// fleetDemoInspect, when set (tests), runs after the fleet's summary while
// the act still runs.
var fleetDemoInspect func(ctx context.Context, f *fleetAct) error

// fleetATM is one simulated ATM of the act.
type fleetATM struct {
	*demoRun
	dev  daemon.DeviceConfig
	seed uint64
	done chan error // Run's result
}

// fleetAct is the running act: broker, fleet service and ATMs.
type fleetAct struct {
	URL, User, Password string
	Dir                 string
	ATMs                []*fleetATM
	svc                 *service.Service
}

// demoLoopback checks that addr listens on a loopback address: the demo's
// login is printed on the terminal.
func demoLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: --listen %q: %v", cli.ErrUsage, addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: --listen %q: the demo serves on loopback only (127.0.0.1 or ::1); run atm-fleet for a real deployment", cli.ErrUsage, addr)
	}
	return nil
}

// demoPassword is a random password for the throw-away demo user.
func demoPassword() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b) // never fails (Go >= 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

func runFleetDemo(ctx context.Context, env *cli.Env, o *demoOptions) error {
	t0 := time.Now()
	if o.ATMs < 1 || o.ATMs > 20 {
		return fmt.Errorf("%w: --atms %d: want 1..20", cli.ErrUsage, o.ATMs)
	}
	if err := o.defaults(); err != nil {
		return err
	}
	if o.DB != "" {
		return fmt.Errorf("%w: --db is for the one-ATM demo; the fleet act keeps its files with --dir DIR", cli.ErrUsage)
	}
	for i := range o.ATMs {
		if o.Dir == "" {
			break
		}
		if err := demoFreshStore("--dir", fleetDemoStore(o.Dir, fleetDemoDevice(i))); err != nil {
			return err
		}
	}
	listen := o.Listen
	if listen == "" {
		listen = fleetDefaultAddr
		if o.Once {
			listen = "127.0.0.1:0"
		}
	}
	if err := demoLoopback(listen); err != nil {
		return err
	}
	out := newDemoRun(env.Stdout) // for printing only
	out.printf("%s\n\n", demoBanner)
	faces, err := sim.LoadFaces(o.Models, o.Photos)
	if err != nil {
		return err
	}
	th, err := demoThresholds(o)
	if err != nil {
		return err
	}
	dir := o.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "atm-fleet-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--dir: %w", err)
	}
	log := demoLogger(env, o)

	broker, brokerURL, err := startBroker()
	if err != nil {
		return err
	}
	defer broker.Close()

	// The fleet service first: it subscribes before any ATM publishes
	// (alerts are not retained).
	f := &fleetAct{User: fleetDemoUser, Password: demoPassword(), Dir: dir}
	hash, err := web.HashPassword(f.Password)
	if err != nil {
		return err
	}
	users := filepath.Join(dir, "users.yaml")
	if err := os.WriteFile(users, fmt.Appendf(nil, "users:\n  - {name: %s, role: admin, password_hash: %q}\n", f.User, hash), 0o600); err != nil {
		return fmt.Errorf("write demo users file: %w", err)
	}
	cfg := service.DefaultConfig()
	cfg.Store.Path = filepath.Join(dir, "fleet.db")
	cfg.MQTT.Brokers = []string{brokerURL}
	cfg.MQTT.Prefix = demoPrefix
	cfg.MQTT.ClientID = fleetDemoClientID
	cfg.Web.Listen = listen
	cfg.Web.UsersFile = users
	// A throw-away key signs the analyst's review commands; the ATMs
	// accept its public half.
	cmdPub, err := demoCommandKey(dir)
	if err != nil {
		return err
	}
	cfg.Commands.Enabled, cfg.Commands.PrivateKeyFile = true, filepath.Join(dir, demoCommandKeyFile)
	svc, err := service.New(ctx, cfg, log.With("component", "fleet"))
	if err != nil {
		return err
	}
	defer svc.Close()
	f.svc = svc
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("fleet web: listen %s: %w (pick another with --listen 127.0.0.1:PORT)", listen, err)
	}
	f.URL = "http://" + ln.Addr().String() + "/"
	svcCtx, stopSvc := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSvc()
	svcDone := make(chan error, 1)
	go func() { svcDone <- svc.Serve(svcCtx, ln) }()
	stopService := func() error {
		stopSvc()
		select {
		case err := <-svcDone:
			return err
		case <-time.After(15 * time.Second):
			return errors.New("fleet service did not stop within 15 s")
		}
	}
	if err := waitFor(ctx, 10*time.Second, func() bool { return svc.IngestStats().Connected }); err != nil {
		stopService()
		return fmt.Errorf("fleet ingest not connected to %s: %w (%s)", brokerURL, err, svc.IngestStats().LastError)
	}

	speed := 0.0
	for i := range o.ATMs {
		a := &fleetATM{demoRun: newDemoRun(env.Stdout), seed: o.Seed + uint64(i), done: make(chan error, 1),
			dev: fleetDemoDevice(i)}
		a.tag, a.quiet = a.dev.ID+" ", !o.Verbose
		a.setScenario(faces, a.seed)
		speed = float64(a.sc.Day) / float64(o.Duration)
		f.ATMs = append(f.ATMs, a)
	}
	day := f.ATMs[0].day0.Format("2006-01-02")
	out.printf("fleet act: %d simulated ATMs, the same scenario with seeds %d..%d, %d faces from %d photos, day %s 08:00-20:00 replayed in %v\n",
		o.ATMs, o.Seed, o.Seed+uint64(o.ATMs-1), len(faces), len(sim.Photos), day, o.Duration)
	for _, a := range f.ATMs {
		out.printf("  %-11s site %-12s seed %-3d %d simulated customers, %d card inserts, store %s\n",
			a.dev.ID, a.dev.Site, a.seed, len(a.sc.People), len(a.sc.Visits), fleetDemoStore(dir, a.dev))
	}
	out.printf("embedded MQTT broker %s; fleet service: store %s, ingest %s/+/+/{status,summary,alert}\n",
		brokerURL, cfg.Store.Path, demoPrefix)
	if o.NewIdentityQuality != nil {
		out.printf("%s\n", o.gateLine())
	}
	out.printf("\nfleet view: %s\n  user %s, password %s (a throw-away admin for this run, on loopback only)\n\n", f.URL, f.User, f.Password)
	if !o.Verbose {
		out.printf("the visits that raise alerts (-v: every visit):\n")
	}

	agentsCtx, stopAgents := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAgents()
	started := 0
	stopAll := func() error {
		stopAgents()
		var errs []error
		for _, a := range f.ATMs[:started] {
			if err := <-a.done; err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.dev.ID, err))
			}
		}
		errs = append(errs, stopService())
		return errors.Join(errs...)
	}
	for _, a := range f.ATMs {
		dc := demoDaemonConfig(o, th, a.dev, fleetDemoStore(dir, a.dev), brokerURL)
		dc.MQTT.Commands.Enabled = true
		dc.MQTT.Commands.PublicKeys = []mqttsync.CommandKey{{Name: "demo-fleet", Key: cmdPub}}
		dc.MQTT.Commands.SeenFile = filepath.Join(filepath.Dir(dc.Store.Path), "commands-seen.json")
		dc.MQTT.Commands.DeviceKeyFile, dc.MQTT.Commands.CreateDeviceKey = filepath.Join(filepath.Dir(dc.Store.Path), daemon.DeviceKeyName), true
		if err := os.MkdirAll(filepath.Dir(dc.Store.Path), 0o700); err != nil {
			return errors.Join(err, stopAll())
		}
		if err := a.newDaemon(dc, speed, log.With("device", a.dev.ID)); err != nil {
			return errors.Join(err, stopAll())
		}
		go func() { a.done <- a.dm.Run(agentsCtx) }()
		started++
	}

	// The day on every ATM, then its end: consolidation and a summary.
	for _, a := range f.ATMs {
		select {
		case <-a.srcDone:
		case err := <-a.done:
			a.done <- err
			return errors.Join(fmt.Errorf("%s stopped: %v", a.dev.ID, err), stopAll())
		case <-ctx.Done():
			out.printf("\ninterrupted. %s\n", demoBanner)
			return stopAll()
		}
	}
	for _, a := range f.ATMs {
		if err := a.dm.Agent().Consolidate(agentsCtx); err != nil {
			out.printf("%s consolidation: %v\n", a.dev.ID, err)
		}
		if err := a.dm.Agent().PublishSummary(agentsCtx); err != nil {
			out.printf("%s summary: %v\n", a.dev.ID, err)
		}
	}
	// Every ATM's outbox drained and every message it published applied
	// by the fleet.
	published := func() (n uint64, depth int) {
		for _, a := range f.ATMs {
			d, _, _ := a.dm.Store().OutboxStats()
			depth += d
			n += a.dm.Publisher().Stats().Published
		}
		return n, depth
	}
	ingested := func() uint64 { s := svc.IngestStats(); return s.Applied + s.Duplicates }
	werr := waitFor(ctx, 20*time.Second, func() bool { n, depth := published(); return depth == 0 && ingested() >= n })
	n, depth := published()
	out.printf("\nthe ATMs published %d messages (outboxes left %d); the fleet ingested %d (%d applied, %d duplicates, %d rejected)\n",
		n, depth, ingested(), svc.IngestStats().Applied, svc.IngestStats().Duplicates, svc.IngestStats().Rejected)
	if werr != nil {
		out.printf("  (not everything arrived: %v)\n", werr)
	}

	if err := f.printAgents(ctx, out); err != nil {
		return errors.Join(err, stopAll())
	}
	sumErr := f.printFleet(ctx, out)
	if sumErr == nil {
		sumErr = f.correct(ctx, out)
	}
	if fleetDemoInspect != nil && sumErr == nil {
		sumErr = fleetDemoInspect(ctx, f)
	}
	if o.Once || sumErr != nil {
		out.printf("\nlive view: `make demo-fleet` (or `atm-tools demo --fleet`) runs this act again and serves the fleet view at http://%s/ until Ctrl-C;\n  open it in a browser and sign in with the user and password it prints (--listen 127.0.0.1:PORT for another port)\n", fleetDefaultAddr)
		out.printf("took %v\n\n%s\n", time.Since(t0).Round(100*time.Millisecond), demoBanner)
		return errors.Join(sumErr, stopAll())
	}
	out.printf("\nserving the fleet view at %s (user %s, password %s); the ATMs stay online. Ctrl-C to stop.\n", f.URL, f.User, f.Password)
	select {
	case <-ctx.Done():
	case err := <-svcDone:
		svcDone <- err
	}
	err = stopAll()
	out.printf("\nstopped. %s\n", demoBanner)
	return err
}

// waitFor polls cond every 100 ms until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// printAgents prints what each ATM stored, from its own store.
func (f *fleetAct) printAgents(ctx context.Context, out *demoRun) error {
	out.printf("\n=== What each SIMULATED ATM stored (its own bbolt store) ===\n")
	tw := tabwriter.NewWriter(out.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "device\tsite\tseed\tcard inserts\tvisits stored\tidentities\talerts\tpublished")
	for _, a := range f.ATMs {
		c, err := agentCounts(ctx, a)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d (%s)\t%d\n", a.dev.ID, a.dev.Site, a.seed, len(a.sc.Visits), c.Visits, c.Identities,
			len(c.Alerts), strings.Join(c.Alerts, ", "), a.dm.Publisher().Stats().Published)
	}
	return tw.Flush()
}

// atmCounts are one ATM's day as its own store holds it.
type atmCounts struct {
	Visits, Identities int
	Alerts             []string // rules, sorted
}

func agentCounts(ctx context.Context, a *fleetATM) (atmCounts, error) {
	st := a.dm.Store()
	vs, err := st.VisitsBetween(ctx, a.day0.Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		return atmCounts{}, fmt.Errorf("%s: %w", a.dev.ID, err)
	}
	al, err := st.Alerts(ctx, a.day0.Add(-time.Hour))
	if err != nil {
		return atmCounts{}, fmt.Errorf("%s: %w", a.dev.ID, err)
	}
	ids := map[string]bool{}
	for _, v := range vs {
		if v.IdentityID != "" {
			ids[v.IdentityID] = true
		}
	}
	c := atmCounts{Visits: len(vs), Identities: len(ids)}
	for _, x := range al {
		c.Alerts = append(c.Alerts, x.Rule)
	}
	sort.Strings(c.Alerts)
	return c, nil
}

// fleetDevice is the part of the JSON API's device the demo reads.
type fleetDevice struct {
	Site       string        `json:"site"`
	Device     string        `json:"device"`
	State      string        `json:"state"`
	OpenAlerts int           `json:"open_alerts"`
	MaxSeq     uint64        `json:"max_seq"`
	Gaps       uint64        `json:"gaps"`
	Duplicates uint64        `json:"duplicates"`
	Summary    *wire.Summary `json:"summary"`
}

// fleetClient is a signed-in client of the fleet's JSON API.
type fleetClient struct {
	base string
	hc   *http.Client
	csrf string // the session's token, for POSTs
}

// login signs in as a browser does: the sign-in page sets a CSRF cookie
// that the form posts back.
func login(ctx context.Context, base, user, password string) (*fleetClient, error) {
	jar, _ := cookiejar.New(nil)
	c := &fleetClient{base: strings.TrimSuffix(base, "/"), hc: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/login", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fleet sign-in page: %w", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	u, _ := url.Parse(c.base + "/login")
	tok := ""
	for _, ck := range jar.Cookies(u) {
		if ck.Name == "atm_fleet_login" {
			tok = ck.Value
		}
	}
	form := url.Values{"csrf": {tok}, "user": {user}, "password": {password}, "next": {"/api/v1/session"}}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	var sess struct {
		User string
		CSRF string `json:"csrf_token"`
	}
	if err := c.do(req, &sess); err != nil {
		return nil, fmt.Errorf("fleet sign-in: %w", err)
	}
	if sess.User != user {
		return nil, fmt.Errorf("fleet sign-in as %q refused", user)
	}
	c.csrf = sess.CSRF
	return c, nil
}

func (c *fleetClient) do(req *http.Request, v any) error {
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s %s: %s: %s", req.Method, req.URL.Path, resp.Status, strings.TrimSpace(string(b)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// get decodes the JSON at path (e.g. /api/v1/devices).
func (c *fleetClient) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	return c.do(req, v)
}

// post sends body as JSON to path with the session's CSRF token and
// decodes the answer into v.
func (c *fleetClient) post(ctx context.Context, path string, body, v any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-CSRF-Token", c.csrf)
	return c.do(req, v)
}

// fleetView is what the fleet's JSON API holds.
type fleetView struct {
	Devices []fleetDevice
	Alerts  map[string][]web.APIAlert // by device
}

func (f *fleetAct) view(ctx context.Context) (fleetView, error) {
	c, err := login(ctx, f.URL, f.User, f.Password)
	if err != nil {
		return fleetView{}, err
	}
	v := fleetView{Alerts: map[string][]web.APIAlert{}}
	if err := c.get(ctx, "/api/v1/devices", &v.Devices); err != nil {
		return v, err
	}
	var al []web.APIAlert
	if err := c.get(ctx, "/api/v1/alerts?state=all&limit=10000", &al); err != nil {
		return v, err
	}
	for _, a := range al {
		v.Alerts[a.Device] = append(v.Alerts[a.Device], a)
	}
	return v, nil
}

// printFleet prints the fleet's own summary, read back from its JSON API.
func (f *fleetAct) printFleet(ctx context.Context, out *demoRun) error {
	v, err := f.view(ctx)
	if err != nil {
		return err
	}
	out.printf("\n=== The fleet's view (read back from its JSON API: /api/v1/devices, /api/v1/alerts) ===\n")
	tw := tabwriter.NewWriter(out.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "site\tdevice\tstate\tvisits 7d\tidentities 7d\tmasked 7d\talerts (open)\trules\tseq\tgaps\tduplicates")
	alerts := 0
	for _, d := range v.Devices {
		var vis, ids, masked int
		if d.Summary != nil {
			vis, ids, masked = d.Summary.Totals.Visits.D7, d.Summary.Totals.Identities.D7, d.Summary.Totals.Masked.D7
		}
		var rules []string
		for _, a := range v.Alerts[d.Device] {
			rules = append(rules, a.Rule)
		}
		sort.Strings(rules)
		alerts += len(rules)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d (%d)\t%s\t1..%d\t%d\t%d\n", d.Site, d.Device, d.State, vis, ids, masked,
			len(rules), d.OpenAlerts, strings.Join(rules, ", "), d.MaxSeq, d.Gaps, d.Duplicates)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	out.printf("%d ATMs, %d alerts in the fleet store\n", len(v.Devices), alerts)
	if len(v.Devices) != len(f.ATMs) {
		return fmt.Errorf("the fleet lists %d devices, want %d", len(v.Devices), len(f.ATMs))
	}
	return nil
}

// fleetDemoDevice is the fleet act's i-th ATM (from 0).
func fleetDemoDevice(i int) daemon.DeviceConfig {
	return daemon.DeviceConfig{ID: fmt.Sprintf("demo-atm-%d", i+1), Site: fmt.Sprintf("demo-site-%d", i+1)}
}

// fleetDemoStore is where the fleet act keeps an ATM's store.
func fleetDemoStore(dir string, dev daemon.DeviceConfig) string {
	return filepath.Join(dir, dev.ID, "agent.db")
}
