package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestFinalize(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		seq     uint64
		id      string
		hist    bool
		want    map[string]any
		wantErr bool
	}{
		{"sets fields", `{"a":1}`, 7, "m-7", true, map[string]any{"a": 1.0, "seq": 7.0, "message_id": "m-7", "historical": true}, false},
		{"replaces stale fields", `{"seq":0,"message_id":"","historical":true,"x":"y"}`, 18446744073709551615, "m:1", false,
			map[string]any{"seq": 18446744073709551615.0, "message_id": "m:1", "historical": false, "x": "y"}, false},
		{"array", `[1]`, 1, "m", false, nil, true},
		{"null", `null`, 1, "m", false, nil, true},
		{"trailing", `{"a":1} x`, 1, "m", false, nil, true},
		{"broken", `{"a":`, 1, "m", false, nil, true},
		{"empty id", `{}`, 1, "", false, nil, true},
		{"bad id", `{}`, 1, "a b", false, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Finalize([]byte(tc.in), tc.seq, tc.id, tc.hist)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want error, got %s", out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
	// Large integers must survive untouched (no float64 round trip).
	out, err := Finalize([]byte(`{"n":9007199254740993}`), 1, "m", false)
	if err != nil || !bytes.Contains(out, []byte(`9007199254740993`)) {
		t.Fatalf("number changed: %s %v", out, err)
	}
}

// A payload queued under a former device name is published under the
// current one: FinalizeStamp replaces device and site, and leaves them
// when the stamp has none.
func TestFinalizeStampRenames(t *testing.T) {
	in := []byte(`{"device":"atm-0042","site":"lyon-07","seq":0,"n":1}`)
	out, err := FinalizeStamp(in, Stamp{Seq: 5, MessageID: "5-ab", Historical: true, Site: "lyon-08", Device: "atm-0043"})
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got["device"] != "atm-0043" || got["site"] != "lyon-08" || got["seq"] != 5.0 || got["message_id"] != "5-ab" || got["historical"] != true || got["n"] != 1.0 {
		t.Fatalf("stamped %s", out)
	}
	if out, err = FinalizeStamp(in, Stamp{Seq: 5, MessageID: "5-ab"}); err != nil || !bytes.Contains(out, []byte(`"device":"atm-0042"`)) || !bytes.Contains(out, []byte(`"site":"lyon-07"`)) {
		t.Fatalf("without a device in the stamp: %s %v", out, err)
	}
}

func TestTopics(t *testing.T) {
	if _, err := NewTopics("atm", "zürich-hb", "atm-0042"); err != nil {
		t.Errorf("a site with a letter outside ASCII refused: %v", err)
	}
	tp, err := NewTopics("atm/eu", "lyon-07", "atm-0042")
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		tp.Status(): "atm/eu/lyon-07/atm-0042/status", tp.Summary(): "atm/eu/lyon-07/atm-0042/summary",
		tp.Alert(): "atm/eu/lyon-07/atm-0042/alert", tp.Command(): "atm/eu/lyon-07/atm-0042/cmd",
		tp.Reply(): "atm/eu/lyon-07/atm-0042/reply",
	} {
		if got != want {
			t.Errorf("got %q want %q", got, want)
		}
	}
	if got, err := tp.For("alert"); err != nil || got != tp.Alert() {
		t.Errorf("For(alert) = %q, %v", got, err)
	}
	for _, bad := range []string{"", "a/+", "#", "a//b", "a\x00"} {
		if _, err := tp.For(bad); err == nil {
			t.Errorf("For(%q) accepted", bad)
		}
	}
	bad := []struct{ prefix, site, device string }{
		{"", "s", "d"}, {"atm/", "s", "d"}, {"/atm", "s", "d"}, {"atm//x", "s", "d"}, {"atm/+", "s", "d"},
		{"atm/#", "s", "d"}, {"$SYS", "s", "d"}, {"a\x00b", "s", "d"}, {strings.Repeat("a", 129), "s", "d"},
		{"a/b/c/d/e/f/g/h/i", "s", "d"}, {"atm", "", "d"}, {"atm", "s/x", "d"}, {"atm", "s", "+"},
		{"atm", "s", "#"}, {"atm", "s", strings.Repeat("d", 65)}, {"atm", "\xff", "d"}, {"atm", "s", "$d"},
		{"atm", "s\n", "d"},
		// Look-alikes: a zero-width space, a right-to-left override, spaces.
		{"atm", "s", "atm\u200b1"}, {"atm", "s\u202e1", "d"}, {"atm", "s", "atm 1 "}, {"atm", "s\u00a0", "d"},
	}
	for _, b := range bad {
		if _, err := NewTopics(b.prefix, b.site, b.device); !errors.Is(err, ErrTopic) {
			t.Errorf("NewTopics(%q,%q,%q) = %v, want ErrTopic", b.prefix, b.site, b.device, err)
		}
	}
}

func TestParseTopic(t *testing.T) {
	tests := []struct {
		topic string
		want  TopicParts
		ok    bool
	}{
		{"atm/eu/s1/d1/status", TopicParts{"s1", "d1", "status"}, true},
		{"atm/eu/s1/d1/alert", TopicParts{"s1", "d1", "alert"}, true},
		{"atm/eu/s1/d1", TopicParts{}, false},
		{"atm/eu/s1/d1/a/b", TopicParts{}, false},
		{"atm/eux/s1/d1/status", TopicParts{}, false},
		{"other/s1/d1/status", TopicParts{}, false},
		{"atm/eu//d1/status", TopicParts{}, false},
	}
	for _, tc := range tests {
		got, err := ParseTopic("atm/eu", tc.topic)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseTopic(%q) = %+v, %v", tc.topic, got, err)
		}
	}
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"atm/eu/s1/d1/status", "atm/eu/+/d/x", "atm/eu/s/d/", "atm/eu/\x00/d/k", "atm/eu/s/d/k/l", "atm/eu/\xff/d/k"} {
		f.Add("atm/eu", s)
	}
	f.Add("", "")
	f.Add("$SYS", "$SYS/a/b/c")
	f.Fuzz(func(t *testing.T, prefix, topic string) {
		p, err := ParseTopic(prefix, topic)
		if err != nil {
			return
		}
		// Whatever parses must rebuild to the same topic through the builder.
		tp, err := NewTopics(prefix, p.Site, p.Device)
		if err != nil {
			t.Fatalf("parsed %q but NewTopics rejects its parts: %v", topic, err)
		}
		got, err := tp.For(p.Kind)
		if err != nil || got != topic {
			t.Fatalf("rebuilt %q, %v; want %q", got, err, topic)
		}
		if strings.ContainsAny(p.Site+p.Device+p.Kind, "+#/\x00") || !utf8.ValidString(topic) {
			t.Fatalf("invalid level accepted: %+v", p)
		}
	})
}

func FuzzNewTopics(f *testing.F) {
	f.Add("atm/eu", "lyon", "atm-1")
	f.Add("atm/+", "s", "d")
	f.Add("a//b", "s", "d")
	f.Add("atm", "s\x00", "d")
	f.Fuzz(func(t *testing.T, prefix, site, device string) {
		tp, err := NewTopics(prefix, site, device)
		if err != nil {
			return
		}
		for _, topic := range []string{tp.Status(), tp.Summary(), tp.Alert(), tp.Command(), tp.Reply()} {
			if strings.ContainsAny(topic, "+#\x00") || strings.Contains(topic, "//") || strings.HasPrefix(topic, "$") {
				t.Fatalf("bad topic %q built", topic)
			}
			p, err := ParseTopic(prefix, topic)
			if err != nil || p.Site != site || p.Device != device {
				t.Fatalf("ParseTopic(%q) = %+v, %v", topic, p, err)
			}
		}
	})
}

func TestDecodeCommand(t *testing.T) {
	const head = `"schema_version":2,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z"`
	tests := []struct {
		name string
		in   string
		want CommandName
		id   string
	}{
		{"ping", `{` + head + `,"command":"ping"}`, CmdPing, ""},
		{"ping with seq and empty args", `{` + head + `,"seq":3,"historical":false,"command":"ping","args":{}}`, CmdPing, ""},
		{"publish", `{` + head + `,"command":"publish_summary"}`, CmdPublishSummary, ""},
		{"purge", `{` + head + `,"command":"purge_identity","args":{"id":"p-1"}}`, CmdPurgeIdentity, "p-1"},
		{"unknown field", `{` + head + `,"command":"ping","x":1}`, "", ""},
		{"unknown arg", `{` + head + `,"command":"purge_identity","args":{"id":"p-1","all":true}}`, "", ""},
		{"purge no id", `{` + head + `,"command":"purge_identity"}`, "", ""},
		{"purge bad id", `{` + head + `,"command":"purge_identity","args":{"id":"../x"}}`, "", ""},
		{"ping with id", `{` + head + `,"command":"ping","args":{"id":"p-1"}}`, "", ""},
		{"unknown command", `{` + head + `,"command":"reboot"}`, "", ""},
		{"v1 (unsigned era)", `{"schema_version":1,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`, "", ""},
		{"no message id", `{"schema_version":2,"device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`, "", ""},
		{"no ts", `{"schema_version":2,"message_id":"c-1","device":"atm-1","site":"s1","command":"ping"}`, "", ""},
		{"wildcard device", `{"schema_version":2,"message_id":"c-1","device":"+","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`, "", ""},
		{"two objects", `{` + head + `,"command":"ping"}{}`, "", ""},
		{"null", `null`, "", ""},
		{"array", `[]`, "", ""},
		{"too big", `{` + head + `,"command":"ping"` + strings.Repeat(" ", MaxCommandSize) + `}`, "", ""},
		// Read one way by Go (case-insensitive names, the last of two wins)
		// and another by a parser that keeps the first: refused.
		{"case", `{` + head + `,"Command":"ping"}`, "", ""},
		{"device twice", `{"schema_version":2,"message_id":"c-1","device":"atm-0099","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping","device":"atm-1"}`, "", ""},
		{"arg twice", `{` + head + `,"command":"purge_identity","args":{"id":"p-9","id":"p-1"}}`, "", ""},
		{"arg in upper case", `{` + head + `,"command":"purge_identity","args":{"ID":"p-1"}}`, "", ""},
		// After a nested object, and in Unicode folding ("ſ", U+017F,
		// folds to "s"): the names after "args" were not checked.
		{"case after args", `{` + head + `,"command":"purge_identity","args":{"id":"p-1"},"Device":"atm-0099"}`, "", ""},
		{"device twice after args", `{` + head + `,"command":"purge_identity","args":{"id":"p-1"},"device":"atm-0099"}`, "", ""},
		{"long s", `{` + head + `,"command":"ping","ſite":"s9"}`, "", ""},
		{"visits", `{` + head + `,"command":"identity_visits","args":{"id":"p-1"}}`, CmdIdentityVisits, "p-1"},
		{"split", `{` + head + `,"command":"split_visits","args":{"id":"p-1","visits":["v-1","v-2"]}}`, CmdSplitVisits, "p-1"},
		{"merge", `{` + head + `,"command":"merge_identities","args":{"id":"p-1","into":"p-2"}}`, CmdMergeIdentities, "p-1"},
		{"split no visits", `{` + head + `,"command":"split_visits","args":{"id":"p-1"}}`, "", ""},
		{"split empty visits", `{` + head + `,"command":"split_visits","args":{"id":"p-1","visits":[]}}`, "", ""},
		{"split visit twice", `{` + head + `,"command":"split_visits","args":{"id":"p-1","visits":["v-1","v-1"]}}`, "", ""},
		{"split bad visit", `{` + head + `,"command":"split_visits","args":{"id":"p-1","visits":["v 1"]}}`, "", ""},
		{"split too many", `{` + head + `,"command":"split_visits","args":{"id":"p-1","visits":["v-0"` + manyVisits(MaxSplitVisits) + `]}}`, "", ""},
		{"split with into", `{` + head + `,"command":"split_visits","args":{"id":"p-1","into":"p-2","visits":["v-1"]}}`, "", ""},
		{"merge into itself", `{` + head + `,"command":"merge_identities","args":{"id":"p-1","into":"p-1"}}`, "", ""},
		{"merge no into", `{` + head + `,"command":"merge_identities","args":{"id":"p-1"}}`, "", ""},
		{"merge with visits", `{` + head + `,"command":"merge_identities","args":{"id":"p-1","into":"p-2","visits":["v-1"]}}`, "", ""},
		{"visits with into", `{` + head + `,"command":"identity_visits","args":{"id":"p-1","into":"p-2"}}`, "", ""},
		{"purge with visits", `{` + head + `,"command":"purge_identity","args":{"id":"p-1","visits":["v-1"]}}`, "", ""},
		{"ping with visits", `{` + head + `,"command":"ping","args":{"visits":["v-1"]}}`, "", ""},
		// reply_key: on any command, a strict base64url X25519 key.
		{"visits sealed", `{` + head + `,"command":"identity_visits","args":{"id":"p-1","reply_key":"` + testReplyKey + `"}}`, CmdIdentityVisits, "p-1"},
		{"ping sealed", `{` + head + `,"command":"ping","args":{"reply_key":"` + testReplyKey + `"}}`, CmdPing, ""},
		{"publish sealed", `{` + head + `,"command":"publish_summary","args":{"reply_key":"` + testReplyKey + `"}}`, CmdPublishSummary, ""},
		{"empty reply key", `{` + head + `,"command":"ping","args":{"reply_key":""}}`, "", ""},
		{"short reply key", `{` + head + `,"command":"ping","args":{"reply_key":"` + testReplyKey[:42] + `"}}`, "", ""},
		{"long reply key", `{` + head + `,"command":"ping","args":{"reply_key":"` + testReplyKey + `AA"}}`, "", ""},
		{"padded reply key", `{` + head + `,"command":"ping","args":{"reply_key":"` + testReplyKey + `="}}`, "", ""},
		{"std base64 reply key", `{` + head + `,"command":"ping","args":{"reply_key":"` + strings.Repeat("+", 43) + `"}}`, "", ""},
		{"reply key with junk bits", `{` + head + `,"command":"ping","args":{"reply_key":"` + testReplyKey[:42] + `B"}}`, "", ""},
		{"reply key twice", `{` + head + `,"command":"ping","args":{"reply_key":"` + testReplyKey + `","reply_key":"` + testReplyKey + `"}}`, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := DecodeCommand([]byte(tc.in))
			if tc.want == "" {
				if !errors.Is(err, ErrCommand) {
					t.Fatalf("want ErrCommand, got %+v, %v", c, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Command != tc.want || c.Args.ID != tc.id || c.MessageID != "c-1" {
				t.Fatalf("got %+v", c)
			}
		})
	}
}

// manyVisits is n more distinct visit ids, each with a leading comma.
func manyVisits(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `,"v-%d"`, i+1)
	}
	return b.String()
}

func FuzzDecodeCommand(f *testing.F) {
	for _, s := range []string{
		`{"schema_version":2,"message_id":"c-1","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"ping"}`,
		`{"schema_version":2,"message_id":"c-2","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"purge_identity","args":{"id":"p-1"}}`,
		`{"schema_version":2,"message_id":"c-3","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"publish_summary","args":{}}`,
		`{"schema_version":2,"command":"purge_identity","args":{"id":""}}`,
		`{"schema_version":2,"message_id":"c-4","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"split_visits","args":{"id":"p-1","visits":["v-1"]}}`,
		`{"schema_version":2,"message_id":"c-5","device":"atm-1","site":"s1","ts":"2025-03-14T09:26:53Z","command":"merge_identities","args":{"id":"p-1","into":"p-2"}}`,
		`null`, `[]`, `{}`, `{"args":null}`, `"x"`, ``,
	} {
		f.Add([]byte(s))
	}
	schemas := compileSchemas(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			return
		}
		// Anything the strict decoder accepts must satisfy the published
		// schema, and survive a marshal/decode round trip unchanged.
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate(t, schemas["command"], out); err != nil {
			t.Fatalf("accepted command violates schema: %v\n%s", err, out)
		}
		c2, err := DecodeCommand(out)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if c2.Command != c.Command || !reflect.DeepEqual(c2.Args, c.Args) || c2.MessageID != c.MessageID || !c2.TS.Equal(c.TS) {
			t.Fatalf("round trip changed %+v -> %+v", c, c2)
		}
	})
}

// FuzzWindowCounts: whatever the fast path reads, encoding/json (the
// reflection path it short-cuts) reads the same; the writer's output and
// the version 1 form take the fast path.
func FuzzWindowCounts(f *testing.F) {
	out, _ := json.Marshal(WindowCounts{H1: 1, H24: 22, D7: 333})
	for _, s := range []string{string(out), `{"1h":1,"24h":2,"7d":3}`, `{"h24":5,"24h":9}`, ` { "d7" : -0 , "h1":0 } `,
		`{}`, `null`, `{"1H":1}`, `{"1h":1.0}`, `{"1h":01}`, `{"1h":1,}`, `{"1h":"1"}`, `{"\u0031h":4}`, `{"1h":1}x`, `{"1h":1e2}`,
		`{"1h":9999999999}`, `{"x":1}`} {
		f.Add([]byte(s))
	}
	if _, ok := parseWindowCounts(out); !ok {
		f.Errorf("the writer's own output %s misses the fast path", out)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := parseWindowCounts(b)
		var k windowKeys
		err := json.Unmarshal(b, &k)
		if !ok {
			return
		}
		if err != nil {
			t.Fatalf("%q: fast path read %+v, encoding/json refuses it: %v", b, fast, err)
		}
		want := WindowCounts{H1: k.H1, H24: k.H24, D7: k.D7}
		for _, x := range []struct{ dst, src *int }{{&want.H1, k.NH1}, {&want.H24, k.NH24}, {&want.D7, k.ND7}} {
			if x.src != nil {
				*x.dst = *x.src
			}
		}
		if fast != want {
			t.Fatalf("%q: fast path %+v, encoding/json %+v", b, fast, want)
		}
	})
}
