package main

import (
	"bytes"
	"context"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/internal/testenv"
	atmmodels "github.com/periocular/atm-agent/models"
)

// demoModels skips a long demo test under -short or without built models;
// it returns the checkout's root and models directory.
func demoModels(t *testing.T, why string) (root, models string) {
	t.Helper()
	if testing.Short() {
		t.Skip(why)
	}
	root = testenv.Root()
	models = filepath.Join(root, "build", "models")
	if _, err := os.Stat(filepath.Join(models, "manifest.yaml")); err != nil {
		t.Skipf("built models needed (make models): %v", err)
	}
	return root, models
}

// TestDemo runs the whole simulated day in-process (about 25 s of CPU), as
// from the installed package: outside a checkout, with no --models or
// --photos, it must find both at the installed paths (a fake install root
// holding the built models and the demo photos).
func TestDemo(t *testing.T) {
	root, models := demoModels(t, "demo replays ~46 visits through the real models")
	// The installed layout: only the models the package ships (the
	// pipeline's, as `atm-tools models ship` copies them) and the photos.
	fake := t.TempDir()
	if _, err := atmmodels.CopyPipeline(models, filepath.Join(fake, "usr/lib/atm-agent/models")); err != nil {
		t.Fatal(err)
	}
	photos := filepath.Join(fake, "usr/share/atm-tools/demo")
	if err := os.MkdirAll(filepath.Dir(photos), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "build", "src", "face-api", "demo"), photos); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ATM_AGENT_ROOT", fake)
	t.Setenv("ATM_MODELS_DIR", "")
	t.Chdir(t.TempDir())
	var out, errb bytes.Buffer
	db := filepath.Join(t.TempDir(), "day.db")
	code := runMain(context.Background(), []string{"demo", "--duration", "2s", "--seed", "1", "--db", db}, &out, &errb)
	s := out.String()
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, s, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if !strings.HasPrefix(lines[0], "SIMULATED") || !strings.HasPrefix(lines[len(lines)-1], "SIMULATED") {
		t.Errorf("output must say it is simulated at start and end:\n%s", s)
	}
	m := regexp.MustCompile(`visits stored (\d+) of (\d+) card inserts.*lost 0`).FindStringSubmatch(s)
	if m == nil || m[1] != m[2] {
		t.Errorf("not every card insert was stored:\n%s", s)
	}
	if n := strings.Count(s, "] visit demo-1-"); m != nil && strconv.Itoa(n) != m[2] {
		t.Errorf("%d visit lines for %s card inserts", n, m[2])
	}
	for _, rule := range []string{"same-face-repeat", "multiple-cards", "faceless-burst"} {
		if !strings.Contains(s, "ALERT via MQTT  "+rule) {
			t.Errorf("no %s alert arrived at the subscriber", rule)
		}
	}
	if !strings.Contains(s, "alerts stored 3, missing at the subscriber 0") || !regexp.MustCompile(`with 0 gaps`).MatchString(s) {
		t.Errorf("alerts or sequence numbers missing at the subscriber:\n%s", s)
	}
	// The end-of-day consolidation says how many visits without identity
	// it attached; on seed 1 none (docs/demo.md): P05 and P14 have no
	// identity, P03's unmasked visits are beyond the mixed-pair cut.
	if !regexp.MustCompile(`visits of people left without identity \d+ \(.*\); 0 attached to an identity at the consolidation`).MatchString(s) {
		t.Errorf("the summary does not say how many visits were left without identity and attached:\n%s", s)
	}
	t.Logf("\n%s", s[strings.Index(s, "=== Summary"):])

	// The same day again on the kept store: every visit id is stored
	// already, so the run is refused up front (it would wait out each
	// visit as a replay) and the store is left as it was.
	before, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := runMain(context.Background(), []string{"demo", "--duration", "2s", "--seed", "1", "--db", db}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "already holds a store") {
		t.Errorf("second run on the same --db: exit %d, want 2 (usage) saying the store is there\n%s", code, errb.String())
	}
	if after, err := os.ReadFile(db); err != nil || !bytes.Equal(before, after) {
		t.Errorf("the refused run changed the store (%v)", err)
	}
}

// TestDemoFleet runs the fleet act with two ATMs in-process (real models,
// embedded broker, bbolt stores, the fleet service on a loopback port): the
// fleet's JSON API must list both devices with the visits, identities and
// alerts each agent's own store holds, every sequence number received.
func TestDemoFleet(t *testing.T) {
	root, models := demoModels(t, "the fleet act replays ~95 visits through the real models")
	inspected := false
	fleetDemoInspect = func(ctx context.Context, f *fleetAct) error {
		inspected = true
		if !strings.HasPrefix(f.URL, "http://127.0.0.1:") {
			t.Errorf("fleet URL %q: want loopback", f.URL)
		}
		if r, err := http.Get(f.URL + "api/v1/devices"); err != nil || r.StatusCode != http.StatusUnauthorized {
			t.Errorf("the API without a login: %v, %v; want 401", r.StatusCode, err)
		}
		if _, err := login(ctx, f.URL, f.User, "wrong password"); err == nil {
			t.Error("a wrong password signed in")
		}
		v, err := f.view(ctx)
		if err != nil {
			return err
		}
		if len(v.Devices) != 2 {
			t.Fatalf("the fleet lists %d devices, want 2: %+v", len(v.Devices), v.Devices)
		}
		byID := map[string]fleetDevice{}
		for _, d := range v.Devices {
			byID[d.Device] = d
		}
		for _, a := range f.ATMs {
			d, ok := byID[a.dev.ID]
			if !ok {
				t.Errorf("%s missing from the fleet", a.dev.ID)
				continue
			}
			c, err := agentCounts(ctx, a)
			if err != nil {
				return err
			}
			if d.Site != a.dev.Site || d.State != "online" || d.Summary == nil {
				t.Errorf("%s: site %q state %q summary %v; want %s, online, a summary", a.dev.ID, d.Site, d.State, d.Summary != nil, a.dev.Site)
				continue
			}
			if got := d.Summary.Totals.Visits.D7; got != c.Visits || got != len(a.sc.Visits) {
				t.Errorf("%s: the fleet shows %d visits, the agent stored %d of %d", a.dev.ID, got, c.Visits, len(a.sc.Visits))
			}
			if got := d.Summary.Totals.Identities.D7; got != c.Identities {
				t.Errorf("%s: the fleet shows %d identities, the agent's store %d", a.dev.ID, got, c.Identities)
			}
			pub := a.dm.Publisher().Stats()
			if d.MaxSeq != pub.LastAckedSeq || d.Gaps != 0 || d.MaxSeq < 2 {
				t.Errorf("%s: fleet seq 1..%d with %d gaps; the agent's last acknowledged seq %d", a.dev.ID, d.MaxSeq, d.Gaps, pub.LastAckedSeq)
			}
			al, err := a.dm.Store().Alerts(ctx, a.day0.Add(-time.Hour))
			if err != nil {
				return err
			}
			want := map[string]string{}
			for _, x := range al {
				want[x.ID] = x.Rule
			}
			got := map[string]string{}
			for _, x := range v.Alerts[a.dev.ID] {
				got[x.AlertID] = x.Rule
			}
			if len(want) < 3 || !maps.Equal(got, want) {
				t.Errorf("%s: fleet alerts %v, the agent's store %v", a.dev.ID, got, want)
			}
		}
		return nil
	}
	var corrected *demoCorrections
	demoCorrected = func(c demoCorrections) { corrected = &c }
	t.Cleanup(func() { fleetDemoInspect, demoCorrected = nil, nil })
	var out, errb bytes.Buffer
	code := runMain(context.Background(), []string{"demo", "--fleet", "--once", "--atms", "2", "--duration", "2s",
		"--models", models, "--photos", filepath.Join(root, "build", "src", "face-api", "demo")}, &out, &errb)
	s := out.String()
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, s, errb.String())
	}
	if !inspected {
		t.Fatal("the fleet act never reached its summary")
	}
	// The analyst's part: a review asked live from an ATM, and every
	// error of the day corrected through the fleet's API and the signed
	// commands (seeds 1 and 2 split three people, measured 2026-12-07).
	if corrected == nil {
		t.Fatal("the fleet act never reached the analyst's corrections")
	}
	if corrected.Reviewed == "" || corrected.ReviewedVisits < 1 {
		t.Errorf("no identity reviewed: %+v", *corrected)
	}
	before, fixes := 0, corrected.Merges+corrected.Splits
	for dev, n := range corrected.SplitBefore {
		before += n + corrected.MergedBefore[dev]
		if corrected.SplitAfter[dev] != 0 || corrected.MergedAfter[dev] != 0 {
			t.Errorf("%s after the corrections: %d people split, %d false merges", dev, corrected.SplitAfter[dev], corrected.MergedAfter[dev])
		}
	}
	if before == 0 || fixes < before {
		t.Errorf("%d errors in the day, %d corrections: the test needs a day with errors to correct", before, fixes)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`fleet view: http://127\.0\.0\.1:\d+/\n  user demo, password \S{16} `),
		regexp.MustCompile(`the ATMs published (\d+) messages \(outboxes left 0\); the fleet ingested (\d+)`),
		regexp.MustCompile(`=== The fleet's view \(read back from its JSON API`),
		regexp.MustCompile(`demo-site-2 +demo-atm-2 +online +\d+`),
		regexp.MustCompile(`2 ATMs, \d+ alerts in the fleet store`),
		regexp.MustCompile(`review of p-\S+ on demo-atm-\d \(alert [a-z-]+\): \d+ visits?, asked live from the ATM`),
		regexp.MustCompile(`merged into p-\S+ \(\d+ visits?\): 1 visit moved`),
		regexp.MustCompile(`the fleet shows the corrected counts`),
		regexp.MustCompile(`live view: .make demo-fleet.`),
	} {
		if !want.MatchString(s) {
			t.Errorf("output lacks %s", want)
		}
	}
	if m := regexp.MustCompile(`published (\d+) messages .*ingested (\d+) `).FindStringSubmatch(s); m != nil && m[1] != m[2] {
		t.Errorf("published %s, ingested %s", m[1], m[2])
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if !strings.HasPrefix(lines[0], "SIMULATED") || !strings.HasPrefix(lines[len(lines)-1], "SIMULATED") {
		t.Errorf("output must say it is simulated at start and end")
	}
	t.Logf("\n%s", s[strings.Index(s, "the ATMs published"):])
}

func TestDemoFleetFlags(t *testing.T) {
	// A fleet directory whose second ATM has a store already (a run
	// before): refused before anything starts.
	fleetDir := t.TempDir()
	prev := fleetDemoStore(fleetDir, fleetDemoDevice(1))
	if err := os.MkdirAll(filepath.Dir(prev), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prev, []byte("a store"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"demo", "--fleet", "--listen", "0.0.0.0:8080"},
		{"demo", "--fleet", "--listen", "192.168.1.5:8080"},
		{"demo", "--fleet", "--atms", "0"},
		{"demo", "--fleet", "--db", "x.db"},
		{"demo", "--once"},
		{"demo", "--fleet", "--once", "--atms", "2", "--dir", fleetDir},
		{"demo", "--new-identity-quality", "1.5"},
		{"demo", "--new-identity-quality", "-0.1"},
		{"demo", "--new-identity-quality", "NaN"},
		{"demo", "--new-identity-quality", "high"},
	} {
		var errb bytes.Buffer
		if code := runMain(context.Background(), args, io.Discard, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)\n%s", args, code, errb.String())
		}
	}
}

// TestDemoNewIdentityQuality replays seed 1's day with the new-identity gate
// at 0 (--new-identity-quality): the gate the agent applies is the flag's,
// not vision.new_identity_quality's 0.5, so no face visit is refused an
// identity and nobody is left unidentified. At 0.5 the same day leaves P05
// and P14 without identity (docs/demo.md).
func TestDemoNewIdentityQuality(t *testing.T) {
	if testing.Short() {
		t.Skip("demo replays ~46 visits through the real models")
	}
	models := testenv.ModelsDir(t)
	var out, errb bytes.Buffer
	code := runMain(context.Background(), []string{"demo", "--duration", "2s", "--seed", "1", "--new-identity-quality", "0",
		"--models", models, "--photos", filepath.Join(testenv.ModelSrc(), "face-api", "demo")}, &out, &errb)
	s := out.String()
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, s, errb.String())
	}
	if !strings.Contains(s, "new identity quality 0.00 (--new-identity-quality; default 0.50)") {
		t.Errorf("the demo does not say which gate it uses:\n%s", s)
	}
	if strings.Contains(s, "too low to start one") {
		t.Errorf("a face visit was refused an identity under gate 0:\n%s", s)
	}
	if !strings.Contains(s, "; 0 people never identified") {
		t.Errorf("people left without identity under gate 0:\n%s", s)
	}
	t.Logf("\n%s", s[strings.Index(s, "=== Summary"):])
}
