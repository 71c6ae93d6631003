package wire

import (
	"strings"
	"testing"
)

func TestCheckJSON(t *testing.T) {
	rules := JSONRules{Forbidden: []string{"embedding", "pan"}, MaxDepth: 4}
	deep := strings.Repeat(`{"a":`, 5) + `1` + strings.Repeat(`}`, 5)
	for _, tc := range []struct {
		name, in, want string // want "": accepted
	}{
		{"plain", `{"alert_id":"a-1","n":1e400,"w":{"1h":1,"h24":2},"ids":[{"id":"p-1"},[]],"x":null}`, ""},
		{"depth at the bound", strings.Repeat(`{"a":`, 4) + `1` + strings.Repeat(`}`, 4), ""},
		{"upper case", `{"ALERT_ID":"x"}`, `field "ALERT_ID": field names are lower-case snake_case`},
		{"camel case", `{"faceEmbedding":[1]}`, `field "faceEmbedding"`},
		{"long s folds to s", `{"ſite":"x"}`, "(name not shown)"},
		{"card number shown not", `{"4111-1111":"x"}`, "(name not shown)"},
		{"empty name", `{"":1}`, "lower-case snake_case"},
		{"after a nested object", `{"a":{"b":1},"C":2}`, `field "C"`},
		{"after a nested array", `{"a":[{"b":1}],"a":2}`, `duplicate field "a"`},
		{"duplicate", `{"rule":"a","rule":"b"}`, `duplicate field "rule"`},
		{"same name in two objects", `{"a":{"id":1},"b":{"id":2},"id":3}`, ""},
		{"forbidden at the top", `{"pan":"4111"}`, `field "pan" is forbidden`},
		{"forbidden in an unknown field", `{"extra":{"embedding":[0.1]}}`, `field "embedding" is forbidden`},
		{"forbidden in an array", `{"extra":[1,{"embedding":1}]}`, `field "embedding" is forbidden`},
		{"forbidden as the last word", `{"extra":{"face_embedding":[0.1]}}`, `field "face_embedding" is forbidden`},
		{"forbidden as the first word", `{"pan_masked":"4111"}`, `field "pan_masked" is forbidden`},
		{"forbidden as a middle word", `{"raw_embedding_v2":[0.1]}`, `field "raw_embedding_v2" is forbidden`},
		{"a forbidden name inside a word", `{"company":"x","panel":1,"embeddings_count":2,"expand":3}`, ""},
		{"too deep", deep, "nested deeper than 4 levels"},
		{"NUL in a value", `{"rule":"r\u0000x"}`, "NUL"},
		{"NUL in an array", `{"a":["x","\u0000"]}`, "NUL"},
		{"NUL in a name", `{"a\u0000":1}`, "snake_case"},
		{"bad JSON", `{"a":}`, "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckJSON([]byte(tc.in), rules)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
