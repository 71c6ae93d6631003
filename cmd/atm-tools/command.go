package main

import (
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/sync/wire"
)

// `atm-tools command keygen|sign|open-reply`: the integrator's side of
// signed MQTT commands (docs/mqtt.md). None talks to a broker: sign prints
// the message to publish on <prefix>/<site>/<device>/cmd; open-reply reads
// the device's answer from <prefix>/<site>/<device>/reply.
func init() {
	commands["command"] = cli.Command{Summary: "make a command-signing key, sign an MQTT command, or open its sealed reply", Subs: map[string]cli.Command{
		"keygen":     {Summary: "write a new Ed25519 command-signing key pair (PREFIX.key, PREFIX.pub)", Run: runCommandKeygen},
		"sign":       {Summary: "print a signed command to publish on the device's cmd topic", Run: runCommandSign},
		"open-reply": {Summary: "print the result of a reply sealed to a command's --reply-key (the reply JSON on stdin)", Run: runCommandOpenReply},
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
	if err := writeKey(*out+".key", kp, 0o600); err != nil {
		return err
	}
	if err := writeKey(*out+".pub", pp, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "private key: %s.key (keep it on the signing side only)\npublic key:  %s.pub\nconfig:      mqtt.commands.public_keys: [{name: %s, key: %q}]\n",
		*out, *out, keyName(*out), base64.StdEncoding.EncodeToString(pub))
	return nil
}

// writeKey writes a new key file: O_EXCL, never overwriting a key.
func writeKey(path string, b []byte, mode os.FileMode) error {
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

func keyName(prefix string) string {
	s := prefix[strings.LastIndex(prefix, "/")+1:]
	if s == "" {
		return "central"
	}
	return s
}

func runCommandSign(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "command sign", "command sign --key FILE --site SITE --device DEVICE [--id ID] [--identity ID] [--into ID] [--visits V1,V2,...] [--reply-key FILE] COMMAND")
	keyFile := fs.String("key", "", "private key (PKCS#8 PEM, from command keygen or openssl genpkey -algorithm ed25519)")
	site := fs.String("site", "", "target site")
	device := fs.String("device", "", "target device")
	id := fs.String("id", "", "message id (default: random); unique per command, it is the reply's correlation_id")
	ident := fs.String("identity", "", "identity id (purge_identity, identity_visits, split_visits, merge_identities)")
	into := fs.String("into", "", "the identity that keeps the visits (merge_identities)")
	visits := fs.String("visits", "", "comma-separated visit ids to move off --identity (split_visits)")
	ts := fs.String("ts", "", "timestamp, RFC 3339 (default: now); the device refuses one outside its max_clock_skew")
	replyKeyFile := fs.String("reply-key", "", "ask for the reply's result sealed: write a new one-time X25519 private key to FILE (PKCS#8 PEM, mode 0600; "+
		"never overwritten) and put its public half in args.reply_key; open the reply with command open-reply --key FILE")
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
	var replyKey []byte
	if *replyKeyFile != "" {
		k, pub, err := wire.NewReplyKey()
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return err
		}
		// The headers name the command: open-reply opens its reply in
		// that context alone.
		ctx := cmd.SealContext()
		replyKey = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der, Headers: map[string]string{
			"Site": ctx.Site, "Device": ctx.Device, "Command": string(ctx.Command), "Message-Id": ctx.CorrelationID}})
		cmd.Args.ReplyKey = pub
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
	if replyKey != nil {
		if err := writeKey(*replyKeyFile, replyKey, 0o600); err != nil {
			return err
		}
	}
	_, err = fmt.Fprintf(env.Stdout, "%s\n", b)
	return err
}

// runCommandOpenReply opens a sealed reply by hand: the reply's JSON (on
// stdin, or --reply), the one-time key command sign --reply-key wrote,
// whose PEM headers name the command it was made for. The result is opened
// in that command's context (site, device, command, message id): a reply
// that names another, or was sealed in another, is refused.
func runCommandOpenReply(_ context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "command open-reply", "command open-reply --key FILE [--device-key FILE|KEY] [--reply FILE] (default: the reply on stdin)")
	replyFile := fs.String("reply", "-", "the reply's JSON, as received on the reply topic (-: stdin)")
	keyFile := fs.String("key", "", "the one-time reply key command sign --reply-key wrote (X25519, PKCS#8 PEM, headers naming the command)")
	deviceKey := fs.String("device-key", "", "the device's public key (atm-agent device-key show: base64, or a file of it or its PEM): the reply must carry its valid signature")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *keyFile == "" || fs.NArg() != 0 {
		fs.Usage()
		return cli.ErrUsage
	}
	k, want, err := readReplyKey(*keyFile)
	if err != nil {
		return err
	}
	var devPub ed25519.PublicKey
	if *deviceKey != "" {
		if devPub, err = readPublicKeyArg(*deviceKey); err != nil {
			return fmt.Errorf("--device-key: %w", err)
		}
	}
	src := io.Reader(os.Stdin)
	if *replyFile != "-" {
		f, err := os.Open(*replyFile)
		if err != nil {
			return err
		}
		defer f.Close()
		src = f
	}
	in, err := io.ReadAll(io.LimitReader(src, 1<<20))
	if err != nil {
		return err
	}
	var r wire.Reply
	if err := json.Unmarshal(in, &r); err != nil {
		return fmt.Errorf("reply: %w", err)
	}
	if got := r.SealContext(); got != want {
		return fmt.Errorf("the reply answers %s %s on %s/%s; the key was made for %s %s on %s/%s", got.Command, got.CorrelationID, got.Site, got.Device,
			want.Command, want.CorrelationID, want.Site, want.Device)
	}
	// The device's signature, checked before anything of the reply is
	// believed (a refusal too: whoever may publish on the reply topic
	// could have sent it).
	switch {
	case devPub != nil:
		if err := wire.VerifyReply(devPub, r); err != nil {
			return fmt.Errorf("not the device's answer: %w", err)
		}
		fmt.Fprintf(env.Stderr, "signed by the device key %s\n", wire.Fingerprint(devPub))
	case r.Sig != "":
		fmt.Fprintln(env.Stderr, "note: the reply is signed, but not checked: give --device-key (atm-agent device-key show on the ATM)")
	default:
		fmt.Fprintln(env.Stderr, "note: the reply is not signed (an agent before signed replies): anyone who may publish on its reply topic could have sent it")
	}
	if r.Sealed == "" {
		if r.Result != nil {
			return errors.New("the reply carries its result in clear, not sealed: not the answer of a device to a command with a reply key")
		}
		if !r.OK {
			return refusedErr(r)
		}
		return errors.New("the reply carries no result")
	}
	res, err := wire.OpenResult(k, want, r.Sealed)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(env.Stdout, "%s\n", res)
	return err
}

// readPublicKeyArg takes an Ed25519 public key as base64 or a file of it
// (or of its PEM).
func readPublicKeyArg(arg string) (ed25519.PublicKey, error) {
	if k, err := wire.ParsePublicKey([]byte(arg)); err == nil {
		return k, nil
	}
	b, err := os.ReadFile(arg)
	if err != nil {
		return nil, fmt.Errorf("neither a base64 public key nor a file: %w", err)
	}
	return wire.ParsePublicKey(b)
}

// refusedErr says a reply's refusal: its code (none from an agent before
// refusal codes) and its error.
func refusedErr(r wire.Reply) error {
	if r.Code == "" {
		return fmt.Errorf("the device refused the command: %s", r.Error)
	}
	ran := "it did not run"
	if r.Code.MayHaveRun() {
		ran = "it may have run"
	}
	return fmt.Errorf("the device refused the command (%s: %s): %s", r.Code, ran, r.Error)
}

func newCommandID() string {
	var b [12]byte
	rand.Read(b[:]) // never fails (Go >= 1.24)
	return "c-" + hex.EncodeToString(b[:])
}

// readReplyKey reads a key command sign --reply-key wrote: the X25519
// private key, and the context of the command its PEM headers name.
func readReplyKey(path string) (*ecdh.PrivateKey, wire.SealContext, error) {
	var ctx wire.SealContext
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, ctx, fmt.Errorf("read key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, ctx, fmt.Errorf("%s: not a PKCS#8 PEM private key", path)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, ctx, fmt.Errorf("%s: %w", path, err)
	}
	k, ok := parsed.(*ecdh.PrivateKey)
	if !ok || k.Curve() != ecdh.X25519() {
		return nil, ctx, fmt.Errorf("%s: not an X25519 key (command sign --reply-key writes one)", path)
	}
	ctx = wire.SealContext{Site: blk.Headers["Site"], Device: blk.Headers["Device"], Command: wire.CommandName(blk.Headers["Command"]),
		CorrelationID: blk.Headers["Message-Id"]}
	if _, err := ctx.Info(); err != nil {
		return nil, ctx, fmt.Errorf("%s: its headers do not name the command it was made for (Site, Device, Command, Message-Id): %w", path, err)
	}
	return k, ctx, nil
}
