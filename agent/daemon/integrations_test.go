package daemon

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/internal/testenv"
	"github.com/periocular/atm-agent/sync/wire"
)

var (
	metricRef = regexp.MustCompile(`\b((?:atm_agent|go|process)_[a-z0-9_]+|up)\b\s*[{\[(]?`)
	histSuf   = regexp.MustCompile(`_(bucket|count|sum)$`)
)

// metricNames are the metric names a PromQL expression reads.
func metricNames(expr string) []string {
	var out []string
	for _, m := range metricRef.FindAllStringSubmatch(expr, -1) {
		out = append(out, m[1])
	}
	return out
}

// exposed says whether the /metrics body has a family of that name (a
// histogram's _bucket/_count/_sum series included).
func exposed(body, name string) bool {
	if name == "up" {
		return true // Prometheus' own
	}
	base := histSuf.ReplaceAllString(name, "")
	return strings.Contains(body, "\n# TYPE "+name+" ") || strings.Contains(body, "\n# TYPE "+base+" histogram")
}

// TestPackagedIntegrations checks what the .deb ships under
// /usr/share/atm-agent/: the Prometheus alert rules (promtool check rules
// when Debian's prometheus package is installed), the Grafana dashboard
// (its model, every query parsed by promtool too) and its provisioning
// file, and that every metric they read exists in the daemon's real
// /metrics.
func TestPackagedIntegrations(t *testing.T) {
	if testing.Short() {
		t.Skip("loads the models")
	}
	share := testenv.Path("scripts", "packaging", "share")
	rulesFile := filepath.Join(share, "prometheus", "atm-agent.rules.yml")
	dashFile := filepath.Join(share, "grafana", "dashboards", "atm-agent.json")
	provFile := filepath.Join(share, "grafana", "provisioning", "atm-agent.yaml")

	// Rules: the alerts the issue names are there.
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatal(err)
	}
	exprs := map[string]string{} // where -> expr
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			exprs["rule "+r.Alert] = r.Expr
		}
	}
	for _, want := range []string{"AtmAgentDown", "AtmAgentCameraDown", "AtmAgentOutboxBacklog", "AtmAgentCommitFailures"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s in %s", want, rulesFile)
		}
	}

	// Dashboard: a Grafana dashboard model with a datasource variable and
	// a query in every panel.
	var dash struct {
		UID           string `json:"uid"`
		Title         string `json:"title"`
		SchemaVersion int    `json:"schemaVersion"`
		Templating    struct {
			List []struct {
				Name, Type string
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos struct{ X, Y, W, H int }
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	b, err = os.ReadFile(dashFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&dash); err != nil {
		t.Fatal(err)
	}
	if dash.UID == "" || dash.Title == "" || dash.SchemaVersion < 30 || len(dash.Panels) == 0 {
		t.Fatalf("not a dashboard model: uid %q title %q schemaVersion %d, %d panels", dash.UID, dash.Title, dash.SchemaVersion, len(dash.Panels))
	}
	if !slices.ContainsFunc(dash.Templating.List, func(v struct{ Name, Type string }) bool { return v.Type == "datasource" }) {
		t.Error("no datasource variable: the dashboard would be tied to one data source uid")
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] || p.Type == "" || p.GridPos.W == 0 || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: duplicate id, no type, no size or no query", p.ID, p.Title)
		}
		ids[p.ID] = true
		for _, q := range p.Targets {
			if q.Expr == "" {
				t.Errorf("panel %q: empty query %s", p.Title, q.RefID)
			}
			exprs["panel "+p.Title+" "+q.RefID] = q.Expr
		}
	}

	// Provisioning points at where the .deb puts the dashboard.
	var prov struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if b, err = os.ReadFile(provFile); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &prov); err != nil {
		t.Fatal(err)
	}
	nfpm, err := os.ReadFile(testenv.Path("scripts", "packaging", "nfpm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(prov.Providers) != 1 || prov.Providers[0].Type != "file" ||
		!strings.Contains(string(nfpm), "dst: "+prov.Providers[0].Options.Path+"/atm-agent.json") {
		t.Errorf("provisioning %+v does not point at the packaged dashboard", prov)
	}
	for _, f := range []string{rulesFile, dashFile, provFile} {
		rel, _ := filepath.Rel(testenv.Path(), f)
		if !strings.Contains(string(nfpm), "src: "+rel) {
			t.Errorf("%s is not in nfpm.yaml", rel)
		}
	}

	// Every metric read exists in the daemon's real /metrics.
	body := "\n" + string(scrapeDaemon(t))
	for where, e := range exprs {
		names := metricNames(e)
		if len(names) == 0 {
			t.Errorf("%s reads no metric: %s", where, e)
		}
		for _, n := range names {
			if !exposed(body, n) {
				t.Errorf("%s reads %s, which /metrics does not have", where, n)
			}
		}
	}

	// promtool: the rules, and every dashboard query as a recording rule.
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Logf("promtool not installed (apt-get install prometheus): rules and queries not checked by it")
		return
	}
	if out, err := exec.Command(promtool, "check", "rules", rulesFile).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	type rec struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var recs []rec
	for where, e := range exprs {
		if strings.HasPrefix(where, "panel ") {
			e = strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(e)
			recs = append(recs, rec{"dashboard:query:" + regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(strings.ToLower(where), "_"), e})
		}
	}
	y, _ := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": recs}}})
	tmp := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	os.WriteFile(tmp, y, 0o600)
	if out, err := exec.Command(promtool, "check", "rules", tmp).CombinedOutput(); err != nil {
		t.Errorf("dashboard queries do not parse (promtool): %v\n%s", err, out)
	} else {
		t.Logf("promtool: %d alert rules and %d dashboard queries parse", len(alerts), len(recs))
	}
}

// TestNodeREDFlow checks the shipped Node-RED flow: a valid flow export
// (unique ids, wires and broker references that resolve), subscriptions
// to the agent's topics, and every payload field it reads present in the
// example payloads of docs/schemas.
func TestNodeREDFlow(t *testing.T) {
	b, err := os.ReadFile(testenv.Path("scripts", "packaging", "share", "node-red", "atm-agent-flow.json"))
	if err != nil {
		t.Fatal(err)
	}
	var nodes []map[string]any
	if err := json.Unmarshal(b, &nodes); err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	for _, n := range nodes {
		id, _ := n["id"].(string)
		typ, _ := n["type"].(string)
		if id == "" || typ == "" || types[id] != "" {
			t.Fatalf("node %v: no id or type, or a repeated id", n)
		}
		types[id] = typ
	}
	example := func(kind string) map[string]any {
		b, err := wire.Schemas.ReadFile("schemas/examples/" + kind + ".json")
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(b, &m)
		return m
	}
	payloadPath := regexp.MustCompile(`payload((?:\.[a-z_0-9]+)+)`)
	topicKind := map[string]string{"atm/+/+/state": "state", "atm/+/+/alert": "alert"}
	for _, n := range nodes {
		if z, ok := n["z"].(string); ok && types[z] != "tab" {
			t.Errorf("node %s: z %q is not a tab", n["id"], z)
		}
		if w, ok := n["wires"].([]any); ok {
			for _, out := range w {
				for _, to := range out.([]any) {
					if types[to.(string)] == "" {
						t.Errorf("node %s wires to unknown %v", n["id"], to)
					}
				}
			}
		}
		if n["type"] != "mqtt in" {
			continue
		}
		if types[n["broker"].(string)] != "mqtt-broker" {
			t.Errorf("mqtt in %s: broker %v is not an mqtt-broker node", n["id"], n["broker"])
		}
		kind := topicKind[n["topic"].(string)]
		if kind == "" || n["datatype"] != "json" {
			t.Errorf("mqtt in %s: topic %v datatype %v", n["id"], n["topic"], n["datatype"])
			continue
		}
		// Follow the wires: every payload field downstream exists in the
		// example of that kind.
		ex := example(kind)
		var visit func(id string)
		seen := map[string]bool{}
		visit = func(id string) {
			if seen[id] {
				return
			}
			seen[id] = true
			for _, m := range nodes {
				if m["id"] != id {
					continue
				}
				raw, _ := json.Marshal(m)
				for _, p := range payloadPath.FindAllStringSubmatch(string(raw), -1) {
					var v any = ex
					for _, part := range strings.Split(strings.TrimPrefix(p[1], "."), ".") {
						obj, _ := v.(map[string]any)
						if v = obj[part]; v == nil {
							t.Errorf("node %s reads %s, not in the %s example", id, p[0], kind)
							break
						}
					}
				}
				for _, out := range m["wires"].([]any) {
					for _, to := range out.([]any) {
						visit(to.(string))
					}
				}
			}
		}
		visit(n["id"].(string))
	}
}
