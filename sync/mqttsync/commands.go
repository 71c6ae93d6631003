package mqttsync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/periocular/atm-agent/sync/wire"
)

// onCommand handles one message on the command topic. It runs on a paho
// goroutine (order does not matter) and is bounded by commands.timeout.
func (p *Publisher) onCommand(c mqtt.Client, m mqtt.Message) {
	if m.Topic() != p.topics.Command() {
		p.log.Warn("mqtt: command on unexpected topic ignored", "topic", m.Topic())
		return
	}
	if m.Retained() {
		// A retained command would run again on every reconnect.
		p.log.Warn("mqtt: retained command ignored")
		return
	}
	cmd, err := wire.DecodeCommand(m.Payload())
	if err == nil && (cmd.Device != p.cfg.Topic.Device || cmd.Site != p.cfg.Topic.Site) {
		err = fmt.Errorf("command for %s/%s sent to %s/%s", cmd.Site, cmd.Device, p.cfg.Topic.Site, p.cfg.Topic.Device)
	}
	if err != nil {
		// Answer only when the correlation id is usable.
		var loose struct {
			MessageID string           `json:"message_id"`
			Command   wire.CommandName `json:"command"`
		}
		if json.Unmarshal(m.Payload(), &loose) != nil || wire.ValidateID(loose.MessageID, 128) != nil {
			p.log.Warn("mqtt: invalid command dropped", "err", err)
			return
		}
		if len(loose.Command) > 64 {
			loose.Command = ""
		}
		p.reply(c, loose.MessageID, loose.Command, nil, err)
		return
	}
	p.mu.Lock()
	parent := p.runCtx
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(parent, p.cfg.Commands.Timeout)
	defer cancel()
	var result any
	switch cmd.Command {
	case wire.CmdPing:
		result = map[string]any{"pong": true, "last_acked_seq": p.lastSeq.Load()}
	default:
		result, err = p.d.Commands.HandleCommand(ctx, cmd)
		if cmd.Command == wire.CmdPublishSummary && err == nil {
			p.Notify()
		}
	}
	p.log.Info("mqtt command", "command", cmd.Command, "id", cmd.MessageID, "ok", err == nil)
	p.reply(c, cmd.MessageID, cmd.Command, result, err)
}

func (p *Publisher) reply(c mqtt.Client, corr string, name wire.CommandName, result any, cmdErr error) {
	r := wire.Reply{Envelope: wire.NewEnvelope(p.cfg.Topic.Site, p.cfg.Topic.Device, p.now()),
		CorrelationID: corr, Command: name, OK: cmdErr == nil}
	r.MessageID = randomID("r")
	r.Seq = p.lastSeq.Load()
	if cmdErr != nil {
		r.Error = cmdErr.Error()
		if len(r.Error) > 512 {
			r.Error = r.Error[:512]
		}
	}
	if result != nil {
		b, err := json.Marshal(result)
		if err == nil && len(b) > 0 && b[0] == '{' {
			r.Result = b
		} else if err == nil {
			r.Result, _ = json.Marshal(map[string]json.RawMessage{"value": b})
		} else {
			r.OK, r.Error = false, "marshal result: "+err.Error()
		}
	}
	b, err := json.Marshal(r)
	if err == nil {
		p.mu.Lock()
		ctx := p.runCtx
		p.mu.Unlock()
		err = waitToken(context.WithoutCancel(ctx), c.Publish(p.topics.Reply(), 1, false, b), p.cfg.PublishTimeout)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		p.setErr(fmt.Errorf("publish reply: %w", err))
	}
}
