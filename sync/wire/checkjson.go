package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// JSONRules are what CheckJSON refuses beyond what it always refuses.
type JSONRules struct {
	// Forbidden names are refused in every object, at any depth, alone
	// or as whole words of a longer snake_case name: "embedding" refuses
	// "face_embedding" and "embedding_v2", not "embeddings_count" (list
	// plurals too).
	Forbidden []string
	// MaxDepth bounds the nesting of objects and arrays (0: unbounded).
	MaxDepth int
}

// CheckJSON walks the JSON in b once, token by token, and refuses what
// encoding/json would read one way and another parser (or the schema)
// another, and what a store cannot keep:
//   - a name given twice in one object (Go keeps the last, others the
//     first: {"device":"atm-0099",...,"device":"atm-0042"} is signed once
//     and read two ways);
//   - a name that is not lower-case snake_case, [a-z0-9_]+: Go matches
//     names to fields ignoring case and Unicode folding ("Device",
//     "DEVICE" and "ſite" with U+017F fill device and site), so a name a
//     schema reads past as unknown would overwrite a field it checked.
//     Every name of the wire's schemas is lower-case snake_case;
//   - a string holding NUL (U+0000): PostgreSQL's text refuses it;
//   - r.Forbidden names at any depth and nesting deeper than r.MaxDepth.
//

// ErrForbiddenField: a name the rules forbid (biometric or card data) is
// in the payload; the payload itself must not be kept.
var ErrForbiddenField = errors.New("is forbidden (at any depth): biometric and card data never leave the device")

// forbiddenName says whether name is one of forbidden, or holds one as
// whole words ("face_embedding", "card_number_masked").
func forbiddenName(name string, forbidden []string) bool {
	for _, f := range forbidden {
		if name == f || strings.HasPrefix(name, f+"_") || strings.HasSuffix(name, "_"+f) || strings.Contains(name, "_"+f+"_") {
			return true
		}
	}
	return false
}

// It does not check that b holds exactly one value.
func CheckJSON(b []byte, r JSONRules) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // any number is fine here; a float64 refuses 1e400
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // the next token is a key (or the closing '}')
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].obj {
				stack[len(stack)-1].key = true
			}
			continue
		}
		if top != nil && top.obj && top.key {
			name, _ := tok.(string) // an object key is always a string token
			if !snakeCase(name) {
				return fmt.Errorf("field %s: field names are lower-case snake_case ([a-z0-9_]+)", quoteName(name))
			}
			if top.keys[name] {
				return fmt.Errorf("duplicate field %s", quoteName(name))
			}
			if forbiddenName(name, r.Forbidden) {
				return fmt.Errorf("field %q %w", name, ErrForbiddenField)
			}
			top.keys[name] = true
			top.key = false
			continue
		}
		if top != nil && top.obj {
			top.key = true // this token is the value; after it, a key or '}'
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, key: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		}
		if r.MaxDepth > 0 && len(stack) > r.MaxDepth {
			return fmt.Errorf("nested deeper than %d levels", r.MaxDepth)
		}
		if s, ok := tok.(string); ok && strings.IndexByte(s, 0) >= 0 {
			return fmt.Errorf("a string holds a NUL character (\\u0000)")
		}
	}
}

func snakeCase(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return s != ""
}

// quoteName quotes a refused name for an error message when it looks like
// a name (ASCII letters, '_', '-', '.', up to 32 bytes); never a long one
// or one that could be data carried as a name (digits: a card number).
func quoteName(s string) string {
	if len(s) == 0 || len(s) > 32 {
		return "(name not shown)"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-' || c == '.') {
			return "(name not shown)"
		}
	}
	return strconv.Quote(s)
}
