package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/periocular/atm-agent/agent/daemon"
	"github.com/periocular/atm-agent/internal/cli"
	"github.com/periocular/atm-agent/sync/mqttsync"
)

func init() {
	commands["watch"] = cli.Command{Summary: "live table of a fleet's summaries and alerts from an MQTT broker", Run: watchCmd}
}

// watchCmd subscribes to <prefix>/+/+/# and redraws a table of devices,
// their status, summary totals, top identities and recent alerts. Broker and
// TLS settings come from an agent config file (its mqtt section) or flags.
func watchCmd(ctx context.Context, env *cli.Env, args []string) error {
	fs := cli.NewFlags(env, "watch", "watch [--config FILE] [--broker URL] [--prefix P] [--site S] [--device D]")
	cfgFile := fs.String("config", "", "agent config whose mqtt section gives broker, TLS and credentials")
	broker := fs.String("broker", "", "broker URL, e.g. tcp://127.0.0.1:1883 (overrides the config)")
	prefix := fs.String("prefix", "", "topic prefix (overrides the config)")
	var filter mqttsync.WatchFilter
	fs.StringVar(&filter.Site, "site", "", "only this site")
	fs.StringVar(&filter.Device, "device", "", "only this device")
	fs.IntVar(&filter.Top, "top", 3, "identities shown per device")
	fs.IntVar(&filter.Alerts, "alerts", 5, "recent alerts shown")
	fs.DurationVar(&filter.Refresh, "refresh", time.Second, "redraw period")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	cfg := mqttsync.DefaultConfig()
	if *cfgFile != "" {
		ac, err := daemon.LoadConfig(*cfgFile)
		if err != nil {
			return err
		}
		cfg = ac.MQTT.Config
	}
	if *broker != "" {
		cfg.Brokers = []string{*broker}
	}
	if *prefix != "" {
		cfg.Topic.Prefix = *prefix
	}
	if len(cfg.Brokers) == 0 {
		return fmt.Errorf("%w: no broker: give --broker or --config", cli.ErrUsage)
	}
	// The watcher is its own client: never reuse an agent's client id.
	cfg.ClientID = fmt.Sprintf("atm-agent-watch-%d", os.Getpid())
	if f, ok := env.Stdout.(*os.File); ok && isTerminal(f) {
		filter.Clear = true
	}
	err := mqttsync.Watch(ctx, cfg, filter, env.Stdout)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
