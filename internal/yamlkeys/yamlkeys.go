// Package yamlkeys tells a YAML config file's decode errors in its keys:
// yaml.v3 says "field x not found in type camera.Config" or "cannot
// unmarshal !!str `30d` into time.Duration"; Explain rewrites them with the
// key's dotted path, its line, a "did you mean" for a misspelt key (or the
// keys its section has) and what the value should look like. The agent's
// config (agent/daemon) and the fleet's (sync/fleet/service) use it.
package yamlkeys

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/internal/suggest"
)

var durationType = reflect.TypeOf(time.Duration(0))

// KeyPath is one position in the file: the dotted key and the Go type the
// config decodes there (nil when the key is unknown).
type KeyPath struct {
	Path string
	Type reflect.Type
}

// Fields lists the yaml keys of struct type t (inline fields expanded).
func Fields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return out
	}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if strings.Contains(opts, "inline") {
			for k, v := range Fields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// Walk visits every mapping key and scalar value of the document doc,
// decoded into root, with its dotted path and target type; fn gets the key
// node (nil for values in sequences) and the value node.
func Walk(doc *yaml.Node, root reflect.Type, fn func(key, val *yaml.Node, kp KeyPath)) {
	walk(doc, root, "", fn)
}

func walk(n *yaml.Node, t reflect.Type, path string, fn func(key, val *yaml.Node, kp KeyPath)) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			walk(c, t, path, fn)
		}
		return
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.MappingNode:
		var fields map[string]reflect.Type
		if t != nil && t.Kind() == reflect.Struct {
			fields = Fields(t)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			var ft reflect.Type
			if fields != nil {
				ft = fields[k.Value]
			} else if t != nil && t.Kind() == reflect.Map {
				ft = t.Elem()
			}
			fn(k, v, KeyPath{p, ft})
			walk(v, ft, p, fn)
		}
	case yaml.SequenceNode:
		var et reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			et = t.Elem()
		}
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			fn(nil, c, KeyPath{p, et})
			walk(c, et, p, fn)
		}
	}
}

// Marshal is yaml.Marshal of v with its time.Duration values written as
// a config file writes them (durfmt.Config: "720h", not yaml's
// "720h0m0s"), still read back by the config's decoding.
func Marshal(v any) ([]byte, error) {
	var doc yaml.Node
	if err := doc.Encode(v); err != nil {
		return nil, err
	}
	Walk(&doc, reflect.TypeOf(v), func(_, val *yaml.Node, kp KeyPath) {
		if kp.Type != durationType || val.Kind != yaml.ScalarNode {
			return
		}
		if d, err := time.ParseDuration(val.Value); err == nil {
			val.Value = durfmt.Config(d)
		}
	})
	return yaml.Marshal(&doc)
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)
	unmarshalRE    = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+) `(.*)` into (\\S+)$")
)

// Explain rewrites a yaml decode error of doc, decoded into root, in the
// file's keys; duration says what a duration looks like in the file (e.g.
// "a duration (e.g. 500ms, 30s, 5m, 1h)"). Any other error is returned as
// it is.
func Explain(err error, doc *yaml.Node, root reflect.Type, duration string) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) || doc == nil {
		return err
	}
	// What is at each line: the keys (for unknown fields) and the values.
	type at struct {
		kp     KeyPath
		parent string
		value  string
	}
	byLine := map[int][]at{}
	Walk(doc, root, func(k, v *yaml.Node, kp KeyPath) {
		parent := kp.Path[:max(0, strings.LastIndexAny(kp.Path, ".["))]
		if k != nil {
			byLine[k.Line] = append(byLine[k.Line], at{kp: kp, parent: parent, value: v.Value})
		}
		if v.Kind == yaml.ScalarNode && (k == nil || v.Line != k.Line) {
			byLine[v.Line] = append(byLine[v.Line], at{kp: kp, parent: parent, value: v.Value})
		}
	})
	parentType := func(path string) reflect.Type {
		var found reflect.Type
		if path == "" {
			return root
		}
		Walk(doc, root, func(_, _ *yaml.Node, kp KeyPath) {
			if kp.Path == path {
				found = kp.Type
			}
		})
		return found
	}
	var msgs []string
	for _, m := range te.Errors {
		if u := unknownFieldRE.FindStringSubmatch(m); u != nil {
			line, _ := strconv.Atoi(u[1])
			key := u[2]
			msg := fmt.Sprintf("line %d: %s: unknown key", line, key)
			for _, a := range byLine[line] {
				if a.kp.Type != nil || !strings.HasSuffix(a.kp.Path, key) {
					continue
				}
				msg = fmt.Sprintf("line %d: %s: unknown key", line, a.kp.Path)
				var names []string
				for n := range Fields(parentType(a.parent)) {
					names = append(names, n)
				}
				if s := suggest.Closest(key, names); s != "" {
					p := s
					if a.parent != "" {
						p = a.parent + "." + s
					}
					msg += fmt.Sprintf(" (did you mean %s?)", p)
				} else if a.parent != "" {
					msg += fmt.Sprintf(" (%s has: %s)", a.parent, strings.Join(slices.Sorted(slices.Values(names)), ", "))
				}
				break
			}
			msgs = append(msgs, msg)
			continue
		}
		if u := unmarshalRE.FindStringSubmatch(m); u != nil {
			line, _ := strconv.Atoi(u[1])
			val, goType := u[3], u[4]
			path := ""
			var typ reflect.Type
			for _, a := range byLine[line] {
				// Several keys can share a line ({a: 1, b: x}): the one
				// holding the refused value.
				if a.kp.Type != nil && (path == "" || a.value == val) {
					path, typ = a.kp.Path, a.kp.Type
				}
			}
			want := describeType(typ, goType, duration)
			if path == "" {
				msgs = append(msgs, fmt.Sprintf("line %d: %q is not %s", line, val, want))
			} else {
				msgs = append(msgs, fmt.Sprintf("line %d: %s: %q is not %s", line, path, val, want))
			}
			continue
		}
		msgs = append(msgs, m)
	}
	return errors.New(strings.Join(msgs, "\n  "))
}

// describeType says what a value of t looks like in the file.
func describeType(t reflect.Type, goType, duration string) string {
	if t == durationType || goType == "time.Duration" {
		return duration
	}
	kind := reflect.Invalid
	if t != nil {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		kind = t.Kind()
	} else {
		switch {
		case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"):
			kind = reflect.Int
		case strings.HasPrefix(goType, "float"):
			kind = reflect.Float64
		case goType == "bool":
			kind = reflect.Bool
		case goType == "string":
			kind = reflect.String
		case strings.HasPrefix(goType, "[]"):
			kind = reflect.Slice
		case strings.HasPrefix(goType, "map["):
			kind = reflect.Map
		}
	}
	switch kind {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "a whole number"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number, 0 or more"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	}
	return "a section of key: value lines"
}
