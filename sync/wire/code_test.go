package wire

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// DecodeCommand's refusals carry their code: what an older agent cannot
// read (an unknown command, an unknown field at any level) is
// unsupported, anything else bad_command; ErrCommand stays in the chain.
func TestDecodeCommandCodes(t *testing.T) {
	const head = `"schema_version":2,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z"`
	for _, tc := range []struct {
		name, in string
		want     ReplyCode
	}{
		{"unknown command", `{` + head + `,"command":"reboot"}`, CodeUnsupported},
		{"unknown field", `{` + head + `,"command":"ping","x":1}`, CodeUnsupported},
		{"unknown arg", `{` + head + `,"command":"purge_identity","args":{"id":"p-1","all":true}}`, CodeUnsupported},
		{"purge no id", `{` + head + `,"command":"purge_identity"}`, CodeBadCommand},
		{"bad visits", `{` + head + `,"command":"split_visits","args":{"id":"p-1","visits":[]}}`, CodeBadCommand},
		{"v1", `{"schema_version":1,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`, CodeBadCommand},
		{"case", `{` + head + `,"Command":"ping"}`, CodeBadCommand},
		{"not JSON", `{`, CodeBadCommand},
		{"too big", `{` + head + strings.Repeat(" ", MaxCommandSize) + `}`, CodeBadCommand},
	} {
		_, err := DecodeCommand([]byte(tc.in))
		if got := CodeOf(err); got != tc.want || !errors.Is(err, ErrCommand) {
			t.Errorf("%s: %v (code %q), want code %q wrapping ErrCommand", tc.name, err, got, tc.want)
		}
	}
}

func TestCodeOf(t *testing.T) {
	base := errors.New("x")
	for _, tc := range []struct {
		err  error
		want ReplyCode
	}{
		{nil, ""},
		{base, CodeInternal},
		{WithCode(CodeNotFound, base), CodeNotFound},
		{fmt.Errorf("split: %w", WithCode(CodeConflict, base)), CodeConflict},
		// The outermost code is answered.
		{WithCode(CodeBusy, WithCode(CodeNotFound, base)), CodeBusy},
		// Empty: answered without one (an older agent simulated).
		{WithCode("", base), ""},
	} {
		if got := CodeOf(tc.err); got != tc.want {
			t.Errorf("CodeOf(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if WithCode(CodeBusy, nil) != nil {
		t.Error("WithCode of nil is not nil")
	}
	for _, c := range ReplyCodes {
		if !c.Known() || c.Retry() != (c == CodeBusy) || c.MayHaveRun() != (c == CodeTooLarge || c == CodeInternal) {
			t.Errorf("%s: Known %v Retry %v MayHaveRun %v", c, c.Known(), c.Retry(), c.MayHaveRun())
		}
	}
	if ReplyCode("").MayHaveRun() || ReplyCode("").Retry() {
		t.Error("no code (an older agent's refusal) says the command may have run, or to retry")
	}
	if c := ReplyCode("quota_exceeded"); !c.MayHaveRun() || c.Retry() {
		t.Errorf("a code this build does not know: MayHaveRun %v Retry %v, want read as internal", c.MayHaveRun(), c.Retry())
	}
	if ReplyCode("oops").Known() {
		t.Error("an unknown code is Known")
	}
}

func TestReplyRefuse(t *testing.T) {
	r := Reply{OK: true, Result: []byte(`{"x":1}`)}
	r.Refuse(WithCode(CodeConflict, errors.New(strings.Repeat("e", 600))))
	if r.OK || r.Code != CodeConflict || len(r.Error) != MaxReplyError || r.Result != nil {
		t.Errorf("refused: %+v", r)
	}
	r.Refuse(errors.New("e" + strings.Repeat("é", 300))) // 601 bytes: byte 512 is inside an é
	if len(r.Error) != MaxReplyError-1 || !utf8.ValidString(r.Error) {
		t.Errorf("cut inside a character: %d bytes, valid UTF-8 %v", len(r.Error), utf8.ValidString(r.Error))
	}
	r.Refuse(errors.New("store"))
	if r.Code != CodeInternal || r.Error != "store" {
		t.Errorf("refused without a code: %+v", r)
	}
}
