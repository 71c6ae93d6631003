package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/internal/paths"
	"github.com/periocular/atm-agent/sync/mqttsync"
	"github.com/periocular/atm-agent/sync/wire"
)

// deviceKeyCommand makes and shows the device key that signs the agent's
// command replies (docs/mqtt.md, "Signed replies").
func deviceKeyCommand() cli.Command {
	return cli.Group("make or show the device key that signs command replies, status, summaries and alerts", map[string]cli.Command{
		"init": {Summary: "make the device key (mqtt.commands.device_key_file; never replaces one)", Run: deviceKeyInit},
		"show": {Summary: "print the device key's public key and fingerprint, to pin at the fleet", Run: deviceKeyShow},
	})
}

// deviceKeyArgs parses the flags of device-key NAME: the key file of the
// config (its default: device.key beside the store) or --file, and the
// config's site and device.
func deviceKeyArgs(env *cli.Env, name string, args []string) (path, site, device string, err error) {
	fs := cli.NewFlags(env, "device-key "+name, "device-key "+name+" [--config FILE] [--file KEY]")
	config := fs.String("config", paths.Config(), "the agent's config: its mqtt.commands.device_key_file (default: "+daemon.DeviceKeyName+" beside store.path)")
	file := fs.String("file", "", "the key file instead of the config's")
	if err := cli.ParseFlags(fs, args); err != nil {
		return "", "", "", err
	}
	if fs.NArg() != 0 {
		return "", "", "", fmt.Errorf("%w: no arguments, got %d", cli.ErrUsage, fs.NArg())
	}
	cfg, err := daemon.LoadConfig(*config)
	if err != nil {
		return "", "", "", err
	}
	path = *file
	if path == "" {
		path = cfg.MQTT.Commands.DeviceKeyFile
	}
	return path, cfg.MQTT.Topic.Site, cfg.MQTT.Topic.Device, nil
}

func deviceKeyInit(_ context.Context, env *cli.Env, args []string) error {
	path, site, device, err := deviceKeyArgs(env, "init", args)
	if err != nil {
		return err
	}
	// Made by root (the package's postinst, an operator): the agent's
	// user, who owns the folder, must read it.
	k, err := mqttsync.InitDeviceKey(path, true)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stderr, "atm-agent: made %s (mode 0600)\n", path)
	return printDeviceKey(env, k.Public().(ed25519.PublicKey), site, device)
}

func deviceKeyShow(_ context.Context, env *cli.Env, args []string) error {
	path, site, device, err := deviceKeyArgs(env, "show", args)
	if err != nil {
		return err
	}
	k, err := mqttsync.LoadDeviceKey(path)
	if errors.Is(err, mqttsync.ErrNoDeviceKey) {
		return fmt.Errorf("%w; with mqtt.commands on and the default path, atm-agent run makes it at start", err)
	}
	if err != nil {
		return err
	}
	return printDeviceKey(env, k.Public().(ed25519.PublicKey), site, device)
}

// printDeviceKey prints the public key as the fleet takes it, its
// fingerprint, and the fleet's command that pins it.
func printDeviceKey(env *cli.Env, pub ed25519.PublicKey, site, device string) error {
	// The config's default names (site-1, atm-0001): not yet edited; a
	// pin under them would be the wrong device's.
	if def := daemon.DefaultConfig().Device; site == def.Site && device == def.ID {
		fmt.Fprintf(env.Stderr, "note: the config still names the default device %s %s: set device.site and device.id (docs/operations.md step 2), then run device-key show again for the pin line; it names SITE DEVICE until then\n", site, device)
		site, device = "", ""
	}
	if site == "" {
		site = "SITE"
	}
	if device == "" {
		device = "DEVICE"
	}
	b64 := wire.EncodePublicKey(pub)
	_, err := fmt.Fprintf(env.Stdout, "public_key: %s\nfingerprint: %s\npin: atm-fleet devices key set %s %s %s\n", b64, wire.Fingerprint(pub), site, device, b64)
	return err
}
