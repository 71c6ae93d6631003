package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/periocular/atm-agent/internal/regfile"
	"github.com/periocular/atm-agent/sync/fleet/ingest"
	"github.com/periocular/atm-agent/sync/fleet/service"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/boltstore"
	"github.com/periocular/atm-agent/sync/wire"
)

// cmdDevices is `atm-fleet devices key set|list|remove`: the pinned keys
// that sign each device's command replies (docs/fleet.md, "Device keys").
func cmdDevices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if helpAsked(args) {
		return commandHelp(stdout, "devices", args)
	}
	if len(args) < 2 || args[0] != "key" {
		return usageError("usage: atm-fleet devices key set|list|remove [--config FILE] ...")
	}
	op := args[1]
	fs := flag.NewFlagSet("devices key "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/atm-fleet/config.yaml", "config file (its store)")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	want := map[string]int{"set": 3, "list": 0, "remove": 2}
	n, ok := want[op]
	if !ok {
		return usageError(fmt.Sprintf("devices key %q: want set, list or remove", op))
	}
	if fs.NArg() != n {
		return usageError(fmt.Sprintf("devices key %s takes %d arguments, got %d", op, n, fs.NArg()))
	}
	var pub ed25519.PublicKey
	if op == "set" {
		var err error
		if pub, err = readDeviceKey(fs.Arg(2)); err != nil {
			return err
		}
	}
	cfg, err := service.LoadConfig(*path)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := service.OpenStore(ctx, cfg.Store, nil)
	if errors.Is(err, boltstore.ErrLocked) {
		return fmt.Errorf("%w\n%s", err, lockedHint(op, fs.Args(), pub))
	}
	if err != nil {
		return err
	}
	defer st.Close()
	switch op {
	case "set":
		k := storage.DeviceKey{Site: fs.Arg(0), Device: fs.Arg(1), PublicKey: pub, Pinned: time.Now().UTC(), By: whoami()}
		if err := st.PutDeviceKey(ctx, k, cliChange(k.Pinned)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s/%s: pinned %s\n", k.Site, k.Device, wire.Fingerprint(pub))
		rec, err := ingest.Recover(ctx, cfg.MQTT, st, k.Site, k.Device, pub, time.Now())
		if err != nil {
			return fmt.Errorf("the key is pinned, but its refused messages were not recovered (set it again to retry): %w", err)
		}
		fmt.Fprintf(stdout, "%s/%s: %d refused messages now verify and were applied (%d summaries or alerts new), %d others still do not verify\n",
			k.Site, k.Device, rec.Applied, rec.New, rec.Unverified)
		// Pinning before a device's first message is allowed (a new ATM),
		// but a misspelt name would leave the real one unauthenticated.
		if _, err := st.Device(ctx, k.Site, k.Device); errors.Is(err, storage.ErrNotFound) {
			fmt.Fprintf(stderr, "warning: %s\n", storage.UnheardPinWarning(k.Site, k.Device))
		} else if err != nil {
			return err
		}
	case "remove":
		if err := st.RemoveDeviceKey(ctx, fs.Arg(0), fs.Arg(1), cliChange(time.Now().UTC())); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s/%s: unpinned; its replies are taken unauthenticated (refused with commands.require_signed_replies)\n", fs.Arg(0), fs.Arg(1))
	case "list":
		keys, err := st.DeviceKeys(ctx)
		if err != nil {
			return err
		}
		for _, k := range keys {
			fmt.Fprintf(stdout, "%s\t%s\t%s\t%s\t%s\t%s\n", k.Site, k.Device, wire.Fingerprint(k.PublicKey), wire.EncodePublicKey(k.PublicKey),
				k.Pinned.Format(time.RFC3339), k.By)
		}
	}
	return nil
}

// cliChange is the audit log's record of a pin or unpin by the command's
// user (whoami), role "cli", from this host.
func cliChange(at time.Time) storage.KeyChange {
	host, _ := os.Hostname()
	return storage.KeyChange{User: whoami(), Role: "cli", Remote: host, At: at}
}

// lockedHint says what to do when the running service holds the embedded
// store: the same through its JSON API, as an administrator (the command
// has no credentials to call it itself), or stop the service. The names
// are path-escaped and single-quoted for the shell.
func lockedHint(op string, args []string, pub ed25519.PublicKey) string {
	const intro = "Another process holds the embedded store: the running service, most likely. Do it through its JSON API, signed in as an administrator " +
		"(docs/fleet.md, \"Device keys\"; $B is the service's address, $CS the session's csrf_token), or stop the service first (systemctl stop atm-fleet):\n"
	seg := func(s string) string { return strings.ReplaceAll(url.PathEscape(s), "'", "%27") }
	switch op {
	case "set":
		return intro + fmt.Sprintf(`  curl -s -b jar -X PUT -H "X-CSRF-Token: $CS" -d '{"public_key":"%s"}' "$B"'/api/v1/devices/%s/%s/key'`,
			wire.EncodePublicKey(pub), seg(args[0]), seg(args[1]))
	case "remove":
		return intro + fmt.Sprintf(`  curl -s -b jar -X DELETE -H "X-CSRF-Token: $CS" "$B"'/api/v1/devices/%s/%s/key'`, seg(args[0]), seg(args[1]))
	}
	return intro + `  curl -s -b jar "$B/api/v1/devices/SITE/DEVICE"    # its reply_key: the key pinned for that device`
}

// readDeviceKey takes the key as `atm-agent device-key show` prints it
// (the base64 of the 32 bytes) or a file holding it or its PEM.
func readDeviceKey(arg string) (ed25519.PublicKey, error) {
	if k, err := wire.ParsePublicKey([]byte(arg)); err == nil {
		return k, nil
	}
	b, err := readSmall(arg)
	if errors.Is(err, os.ErrNotExist) && !strings.ContainsAny(arg, "/.") {
		return nil, fmt.Errorf("%q is neither a public key (base64 of 32 bytes) nor a file", arg)
	}
	if err != nil {
		return nil, err
	}
	k, err := wire.ParsePublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", arg, err)
	}
	return k, nil
}

// readSmall reads a key file: a regular file (a device or a pipe would be
// read for ever) of at most 64 KiB.
func readSmall(path string) ([]byte, error) {
	f, err := regfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const limit = 64 << 10
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err == nil && len(b) > limit {
		err = fmt.Errorf("%s: over %d bytes: not a public key file", path, limit)
	}
	return b, err
}

// whoami names who pinned a key: the login (SUDO_USER under sudo), a
// control character in it (a tab would split a line of `devices key
// list`) replaced by '?'.
func whoami() string {
	name := fmt.Sprintf("uid %d", os.Getuid())
	if s := os.Getenv("SUDO_USER"); s != "" {
		name = s
	} else if u, err := user.Current(); err == nil {
		name = u.Username
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r >= 0x7f && r < 0xa0 {
			return '?'
		}
		return r
	}, name)
}
