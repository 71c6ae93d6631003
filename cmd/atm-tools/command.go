package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/sync/wire"
)

// `atm-tools command keygen|sign`: the integrator's side of signed MQTT
// commands (docs/mqtt.md). Neither talks to a broker: sign prints the
// message to publish on <prefix>/<site>/<device>/cmd.
func init() {
	commands["command"] = cli.Command{Summary: "make a command-signing key, or sign an MQTT command", Subs: map[string]cli.Command{
		"keygen": {Summary: "write a new Ed25519 command-signing key pair (PREFIX.key, PREFIX.pub)", Run: runCommandKeygen},
		"sign":   {Summary: "print a signed command to publish on the device's cmd topic", Run: runCommandSign},
	}}
}

func runCommandKeygen(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "command keygen", "command keygen --out PREFIX")
	out := fs.String("out", "", "write PREFIX.key (private, PKCS#8 PEM, mode 0600) and PREFIX.pub (public, PEM)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		fs.Usage()
		return cli.ErrUsage
	}
	pub, priv, err := wire.GenerateCommandKey()
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	kp, err := wire.MarshalPrivateKeyPEM(priv)
	if err != nil {
		return err
	}
	pp, err := wire.MarshalPublicKeyPEM(pub)
	if err != nil {
		return err
	}
	// O_EXCL: never overwrite a key.
	write := func(path string, b []byte, mode os.FileMode) error {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return fmt.Errorf("write key: %w", err)
		}
		if _, err := f.Write(b); err != nil {
			f.Close()
			return fmt.Errorf("write key %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("write key %s: %w", path, err)
		}
		return f.Close()
	}
	if err := write(*out+".key", kp, 0o600); err != nil {
		return err
	}
	if err := write(*out+".pub", pp, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "private key: %s.key (keep it on the signing side only)\npublic key:  %s.pub\nconfig:      mqtt.commands.public_keys: [{name: %s, key: %q}]\n",
		*out, *out, keyName(*out), base64.StdEncoding.EncodeToString(pub))
	return nil
}

func keyName(prefix string) string {
	s := prefix[strings.LastIndex(prefix, "/")+1:]
	if s == "" {
		return "central"
	}
	return s
}

func runCommandSign(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "command sign", "command sign --key FILE --site SITE --device DEVICE [--id ID] [--identity ID] [--into ID] [--visits V1,V2,...] COMMAND")
	keyFile := fs.String("key", "", "private key (PKCS#8 PEM, from command keygen or openssl genpkey -algorithm ed25519)")
	site := fs.String("site", "", "target site")
	device := fs.String("device", "", "target device")
	id := fs.String("id", "", "message id (default: random); unique per command, it is the reply's correlation_id")
	ident := fs.String("identity", "", "identity id (purge_identity, identity_visits, split_visits, merge_identities)")
	into := fs.String("into", "", "the identity that keeps the visits (merge_identities)")
	visits := fs.String("visits", "", "comma-separated visit ids to move off --identity (split_visits)")
	ts := fs.String("ts", "", "timestamp, RFC 3339 (default: now); the device refuses one outside its max_clock_skew")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *keyFile == "" || fs.NArg() != 1 {
		fs.Usage()
		return cli.ErrUsage
	}
	kb, err := os.ReadFile(*keyFile)
	if err != nil {
		return fmt.Errorf("read key: %w", err)
	}
	priv, err := wire.ParsePrivateKey(kb)
	if err != nil {
		return fmt.Errorf("%s: %w", *keyFile, err)
	}
	when := time.Now().UTC()
	if *ts != "" {
		if when, err = time.Parse(time.RFC3339, *ts); err != nil {
			return fmt.Errorf("--ts: %w", err)
		}
	}
	if *id == "" {
		*id = newCommandID()
	}
	cmd := wire.Command{Envelope: wire.Envelope{SchemaVersion: wire.CommandSchemaVersion, MessageID: *id,
		Device: *device, Site: *site, TS: when.UTC()}, Command: wire.CommandName(fs.Arg(0)), Args: wire.CommandArgs{ID: *ident, Into: *into}}
	if *visits != "" {
		cmd.Args.Visits = strings.Split(*visits, ",")
	}
	payload, err := json.Marshal(cmd)
	if err != nil {
		return err
	}
	// Sign only what the device would accept.
	if _, err := wire.DecodeCommand(payload); err != nil {
		return err
	}
	b, err := wire.SignCommand(priv, payload)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
	return err
}

func newCommandID() string {
	var b [12]byte
	rand.Read(b[:]) // never fails (Go >= 1.24)
	return "c-" + hex.EncodeToString(b[:])
}
