package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/sync/wire"
)

func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	env := &cli.Env{Prog: "atm-agent", Stdout: &o, Stderr: &e}
	err = commands[args[0]].Exec(context.Background(), env, args[1:])
	return o.String(), e.String(), err
}

// keygen, sign, and a config that names the key: the signed output
// verifies with the key the config loads and decodes as the command.
func TestCommandKeygenSignAndConfigCheck(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "central-2026")
	out, _, err := runCLI(t, "command", "keygen", "--out", prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "public_keys: [{name: central-2026, key: ") {
		t.Errorf("keygen output %q", out)
	}
	if st, err := os.Stat(prefix + ".key"); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key file: %v %v", st, err)
	}
	if _, _, err := runCLI(t, "command", "keygen", "--out", prefix); err == nil {
		t.Fatal("keygen overwrote an existing key")
	}

	signed, _, err := runCLI(t, "command", "sign", "--key", prefix+".key", "--site", "north", "--device", "atm-7", "--identity", "p-42", "purge_identity")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, "command", "sign", "--key", prefix+".key", "--site", "north", "--device", "atm-7", "purge_identity"); err == nil {
		t.Error("signed a purge_identity without an identity")
	}
	if _, _, err := runCLI(t, "command", "sign", "--key", prefix+".pub", "--site", "north", "--device", "atm-7", "ping"); err == nil {
		t.Error("signed with a public key")
	}
	split, _, err := runCLI(t, "command", "sign", "--key", prefix+".key", "--site", "north", "--device", "atm-7", "--identity", "p-42", "--visits", "v-1,v-7", "split_visits")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := runCLI(t, "command", "sign", "--key", prefix+".key", "--site", "north", "--device", "atm-7", "--identity", "p-42", "--into", "p-42", "merge_identities"); err == nil {
		t.Error("signed a merge of an identity into itself")
	}

	cfgFile := filepath.Join(dir, "agent.yaml")
	pwFile := filepath.Join(dir, "mqtt.pw") // config check reads it, as run does
	os.WriteFile(pwFile, []byte("secret\n"), 0o600)
	yaml := "device: {id: atm-7, site: north}\nstore: {path: " + filepath.Join(dir, "agent.db") + "}\n" +
		"mqtt:\n  enabled: true\n  brokers: [tcp://broker.example:1883]\n  username: atm-7\n  password_file: " + pwFile + "\n" +
		"  commands:\n    enabled: true\n    public_keys: [{name: central-2026, file: " + prefix + ".pub}]\n"
	os.WriteFile(cfgFile, []byte(yaml), 0o600)
	// What `atm-agent config check` runs (the daemon binary's command).
	cfg, err := daemon.LoadConfig(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.CheckFiles(); err != nil {
		t.Fatalf("config check: %v", err)
	}
	if w := strings.Join(cfg.Warnings(), "\n"); !strings.Contains(w, "mqtt: commands are enabled over plaintext tcp://broker.example:1883") ||
		!strings.Contains(w, "mqtt: the broker password is sent in clear") {
		t.Errorf("config warnings %q", w)
	}
	if cfg.MQTT.Commands.SeenFile != filepath.Join(dir, "commands-seen.json") {
		t.Errorf("seen_file default %q", cfg.MQTT.Commands.SeenFile)
	}
	keys, err := cfg.MQTT.Commands.LoadKeys()
	if err != nil {
		t.Fatal(err)
	}
	payload, _, err := wire.OpenSignedCommand([]byte(strings.TrimSpace(signed)), keys)
	if err != nil {
		t.Fatalf("signed output does not verify: %v\n%s", err, signed)
	}
	c, err := wire.DecodeCommand(payload)
	if err != nil || c.Command != wire.CmdPurgeIdentity || c.Args.ID != "p-42" || c.Device != "atm-7" || c.Site != "north" || !strings.HasPrefix(c.MessageID, "c-") {
		t.Fatalf("signed command %+v, %v", c, err)
	}
	payload, _, err = wire.OpenSignedCommand([]byte(strings.TrimSpace(split)), keys)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := wire.DecodeCommand(payload); err != nil || c.Command != wire.CmdSplitVisits || !slices.Equal(c.Args.Visits, []string{"v-1", "v-7"}) {
		t.Fatalf("signed split %+v, %v", c, err)
	}
	var env map[string]any
	json.Unmarshal([]byte(signed), &env)
	if env["schema_version"] != float64(2) {
		t.Errorf("envelope %v", env)
	}

	// A missing key file is found by config check, not at start.
	os.WriteFile(cfgFile, []byte(strings.Replace(yaml, prefix+".pub", prefix+".nope", 1)), 0o600)
	if _, err := configCheck(cfgFile); err == nil || !strings.Contains(err.Error(), "central-2026") {
		t.Errorf("config check with a missing key file: %v", err)
	}
	// insecure_skip_verify is warned about.
	os.WriteFile(cfgFile, []byte(strings.Replace(yaml, "tcp://broker.example:1883", "ssl://broker.example:8883", 1)+"  tls: {insecure_skip_verify: true}\n"), 0o600)
	errOut, err := configCheck(cfgFile)
	if err != nil || !strings.Contains(errOut, "insecure_skip_verify") || strings.Contains(errOut, "plaintext") {
		t.Errorf("config check with insecure_skip_verify: %v %q", err, errOut)
	}
}

// configCheck is what `atm-agent config check` runs: the warnings, or the
// error.
func configCheck(file string) (string, error) {
	cfg, err := daemon.LoadConfig(file)
	if err != nil {
		return "", err
	}
	if err := cfg.CheckFiles(); err != nil {
		return "", err
	}
	return strings.Join(cfg.Warnings(), "\n"), nil
}

// sign --reply-key writes a one-time key (0600, never overwritten) and
// puts its public half in the signed command; open-reply opens the
// device's sealed answer with it in the context its headers name, and
// refuses one in clear, one that names another command, or one sealed in
// another command's context.
func TestCommandSignReplyKeyAndOpenReply(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "central")
	if _, _, err := runCLI(t, "command", "keygen", "--out", prefix); err != nil {
		t.Fatal(err)
	}
	rk := filepath.Join(dir, "c1.reply.key")
	signed, _, err := runCLI(t, "command", "sign", "--key", prefix+".key", "--site", "north", "--device", "atm-7", "--id", "c-1",
		"--identity", "p-42", "--reply-key", rk, "identity_visits")
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(rk); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("reply key file: %v %v", st, err)
	}
	if _, _, err := runCLI(t, "command", "sign", "--key", prefix+".key", "--site", "north", "--device", "atm-7", "--reply-key", rk, "ping"); err == nil {
		t.Error("sign overwrote a reply key")
	}
	p, err := wire.ParseSignedCommand([]byte(strings.TrimSpace(signed)))
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := wire.DecodeCommand(p.Payload())
	if err != nil || cmd.Args.ReplyKey == "" {
		t.Fatalf("signed command %+v, %v: want a reply key", cmd, err)
	}

	// The device's answer, sealed as the agent seals it.
	answer := func(cmd wire.Command, result string) string {
		r := wire.Reply{Envelope: wire.NewEnvelope(cmd.Site, cmd.Device, time.Now()), CorrelationID: cmd.MessageID, Command: cmd.Command, OK: true,
			Result: json.RawMessage(result)}
		r.MessageID = "r-1"
		if err := r.Seal(cmd.Args.ReplyKey); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(r)
		f := filepath.Join(dir, "reply-"+cmd.MessageID+".json")
		os.WriteFile(f, b, 0o600)
		return f
	}
	const result = `{"identity":"p-42","total":1,"visits":[{"visit_id":"v-1","txn_id":"T-9","ts":"2026-12-07T10:00:00Z","masked":false}]}`
	sealed := answer(cmd, result)
	if b, _ := os.ReadFile(sealed); strings.Contains(string(b), "T-9") {
		t.Fatalf("the reply holds the result in clear: %s", b)
	}
	out, _, err := runCLI(t, "command", "open-reply", "--key", rk, "--reply", sealed)
	if err != nil || strings.TrimSpace(out) != result {
		t.Fatalf("open-reply: %q, %v", out, err)
	}
	other := cmd
	other.MessageID = "c-other"
	if _, _, err := runCLI(t, "command", "open-reply", "--key", rk, "--reply", answer(other, result)); err == nil || !strings.Contains(err.Error(), "the key was made for identity_visits c-1") {
		t.Errorf("a reply to another command: %v", err)
	}
	// Sealed in c-other's context, relabelled as the answer to c-1.
	b, _ := os.ReadFile(answer(other, result))
	relabelled := filepath.Join(dir, "relabelled.json")
	os.WriteFile(relabelled, bytes.ReplaceAll(b, []byte(`"c-other"`), []byte(`"c-1"`)), 0o600)
	if _, _, err := runCLI(t, "command", "open-reply", "--key", rk, "--reply", relabelled); err == nil || !strings.Contains(err.Error(), "does not open") {
		t.Errorf("a reply sealed in another command's context: %v", err)
	}
	clear := filepath.Join(dir, "clear.json")
	os.WriteFile(clear, []byte(`{"site":"north","device":"atm-7","command":"identity_visits","correlation_id":"c-1","ok":true,"result":`+result+`}`), 0o600)
	if _, _, err := runCLI(t, "command", "open-reply", "--key", rk, "--reply", clear); err == nil || !strings.Contains(err.Error(), "in clear") {
		t.Errorf("a reply in clear: %v", err)
	}
	if _, _, err := runCLI(t, "command", "open-reply", "--key", prefix+".key", "--reply", sealed); err == nil || !strings.Contains(err.Error(), "not an X25519 key") {
		t.Errorf("the signing key as a reply key: %v", err)
	}
	// --device-key: the device's signed reply opens; one unsigned, signed
	// by another key, or with the signature of another reply, does not.
	devKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	devPub := wire.EncodePublicKey(devKey.Public().(ed25519.PublicKey))
	signedAnswer := func(key ed25519.PrivateKey, edit func(*wire.Reply)) string {
		var r wire.Reply
		b, _ := os.ReadFile(answer(cmd, result))
		json.Unmarshal(b, &r)
		b, err := wire.SignReply(key, r)
		if err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(b, &r)
		if edit != nil {
			edit(&r)
		}
		b, _ = json.Marshal(r)
		f := filepath.Join(dir, "signed.json")
		os.WriteFile(f, b, 0o600)
		return f
	}
	out, errOut, err := runCLI(t, "command", "open-reply", "--key", rk, "--device-key", devPub, "--reply", signedAnswer(devKey, nil))
	if err != nil || strings.TrimSpace(out) != result || !strings.Contains(errOut, wire.Fingerprint(devKey.Public().(ed25519.PublicKey))) {
		t.Errorf("a signed reply: %q %q, %v", out, errOut, err)
	}
	_, otherKey, _ := ed25519.GenerateKey(nil)
	for name, f := range map[string]string{
		"unsigned":       sealed,
		"another key":    signedAnswer(otherKey, nil),
		"refusal forged": signedAnswer(devKey, func(r *wire.Reply) { r.OK, r.Sealed, r.Code, r.Error = false, "", wire.CodeNotFound, "no identity" }),
	} {
		if _, _, err := runCLI(t, "command", "open-reply", "--key", rk, "--device-key", devPub, "--reply", f); err == nil || !strings.Contains(err.Error(), "not the device's answer") {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A refusal says its code, and an older agent's (none) its words.
	for code, want := range map[wire.ReplyCode]string{
		wire.CodeNotFound: "the device refused the command (not_found: it did not run): no identity p-1",
		wire.CodeInternal: "the device refused the command (internal: it may have run): no identity p-1",
		"":                "the device refused the command: no identity p-1",
	} {
		refused := filepath.Join(dir, "refused.json")
		r := wire.Reply{Envelope: wire.NewEnvelope(cmd.Site, cmd.Device, time.Now()), CorrelationID: cmd.MessageID, Command: cmd.Command,
			Code: code, Error: "no identity p-1"}
		b, _ := json.Marshal(r)
		os.WriteFile(refused, b, 0o600)
		if _, _, err := runCLI(t, "command", "open-reply", "--key", rk, "--reply", refused); err == nil || err.Error() != want {
			t.Errorf("a refusal with code %q: %v, want %q", code, err, want)
		}
	}
}
