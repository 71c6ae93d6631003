package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// TestSignedPurgeCommand: the real binary with MQTT commands on, a real
// store and Debian's mosquitto. An unsigned purge_identity and one signed
// by another key (made with `atm-tools command keygen/sign`, as an
// integrator would) purge nothing; the signed one removes exactly the
// identity's visits; replaying it after a restart of the agent is refused.
func TestSignedPurgeCommand(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "agent.db")
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 6)
	url := mosquitto(t)
	cli := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(toolsBin, args...).Output()
		if err != nil {
			t.Fatalf("atm-tools %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	cli("command", "keygen", "--out", filepath.Join(dir, "central"))
	cli("command", "keygen", "--out", filepath.Join(dir, "attacker"))

	cfg := baseConfig(modelsDir(t), db, freePort(t)) + fmt.Sprintf(`camera:
  source: %s
  kind: images
  loop: true
trigger:
  http:
    enabled: false
  replay:
    enabled: true
    interval: 300ms
    count: 6
mqtt:
  enabled: true
  brokers: [%s]
  drain_interval: 200ms
  commands:
    enabled: true
    public_keys: [{name: central, file: %s}]
`, frames, url, filepath.Join(dir, "central.pub"))
	cfgFile := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgFile, []byte(cfg), 0o644)
	if out, err := exec.Command(agentBin, "config", "check", cfgFile).CombinedOutput(); err != nil || strings.Contains(string(out), "warning: mqtt") {
		t.Fatalf("config check: %v\n%s", err, out) // loopback broker: no MQTT warning
	}

	// The attacker and the central side share the broker.
	var mu sync.Mutex
	var replies []map[string]any
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("e2e-central"))
	if tok := cl.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(100)
	cl.Subscribe("atm/e2e-site/e2e-atm/reply", 1, func(_ paho.Client, m paho.Message) {
		var r map[string]any
		json.Unmarshal(m.Payload(), &r)
		mu.Lock()
		replies = append(replies, r)
		mu.Unlock()
	}).WaitTimeout(5 * time.Second)
	publish := func(b string) {
		t.Helper()
		if tok := cl.Publish("atm/e2e-site/e2e-atm/cmd", 1, false, []byte(b)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}

	p := start(t, "run", "--config", cfgFile)
	waitFor(t, 90*time.Second, "six visits and the command subscription", func() bool {
		s := p.log.String()
		return strings.Count(s, "msg=visit ") >= 6 && strings.Contains(s, "mqtt connected")
	})
	// The identity with the most visits.
	counts := map[string]int{}
	for _, m := range regexp.MustCompile(`msg=visit .* identity=(p-[a-z0-9]+)`).FindAllStringSubmatch(p.log.String(), -1) {
		counts[m[1]]++
	}
	target, n := "", 0
	for id, c := range counts {
		if c > n {
			target, n = id, c
		}
	}
	if target == "" {
		t.Fatalf("no identity in the visits:\n%s", p.log.String())
	}
	sign := func(key, id string) string {
		return cli("command", "sign", "--key", filepath.Join(dir, key+".key"), "--site", "e2e-site", "--device", "e2e-atm",
			"--id", id, "--identity", target, "purge_identity")
	}
	publish(fmt.Sprintf(`{"schema_version":1,"message_id":"c-unsigned","device":"e2e-atm","site":"e2e-site","ts":%q,"command":"purge_identity","args":{"id":%q}}`,
		time.Now().UTC().Format(time.RFC3339), target))
	publish(sign("attacker", "c-attacker"))
	waitFor(t, 10*time.Second, "both refused", func() bool {
		s := p.log.String()
		return strings.Contains(s, "reason=unsigned") && strings.Contains(s, "reason=bad_signature")
	})
	good := sign("central", "c-central")
	publish(good)
	var reply map[string]any
	waitFor(t, 10*time.Second, "the reply", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range replies {
			if r["correlation_id"] == "c-central" {
				reply = r
				return true
			}
		}
		return false
	})
	res, _ := reply["result"].(map[string]any)
	if reply["ok"] != true || res["visits_removed"] != float64(n) {
		t.Fatalf("reply %v, want ok with visits_removed %d (the identity's visits; the refused commands removed none)", reply, n)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if _, ok := p.wait(6 * time.Second); !ok {
		t.Fatal("no exit after SIGTERM")
	}

	// Replayed after a restart: refused, and no reply.
	q := start(t, "run", "--config", cfgFile)
	waitFor(t, 60*time.Second, "restarted and subscribed", func() bool { return strings.Contains(q.log.String(), "mqtt connected") })
	time.Sleep(300 * time.Millisecond)
	publish(good)
	waitFor(t, 10*time.Second, "the replay refused", func() bool { return strings.Contains(q.log.String(), "reason=replayed") })
	q.cmd.Process.Signal(syscall.SIGTERM)
	q.wait(6 * time.Second)
	mu.Lock()
	nreplies := len(replies)
	mu.Unlock()
	if nreplies != 1 {
		t.Errorf("%d replies, want 1 (to the signed command only)", nreplies)
	}

	st := openStore(t, db)
	defer st.Close()
	vs, err := st.VisitsBetween(context.Background(), time.Now().Add(-48*time.Hour), time.Now().Add(48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.IdentityID == target {
			t.Errorf("visit %s of purged identity %s still stored", v.ID, target)
		}
	}
	t.Logf("identity %s: %d visits; unsigned and wrong-key purges refused, signed purge removed %v, replay after restart refused; %d visits in the store at the end (the restarted replay schedule stores its triggers again, as new identities)", target, n, res["visits_removed"], len(vs))
}
