package daemon

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/internal/suggest"
)

// The config file speaks in keys (`camera.burst_frames`), never in Go
// types: yaml.v3's decode errors ("field x not found in type
// camera.Config", "cannot unmarshal !!str `30d` into time.Duration") are
// rewritten here with the key's path, a "did you mean" for a misspelt key
// and what the value should look like. Durations also take days ("30d",
// "1d12h"), which Go's time.ParseDuration does not.

var durationType = reflect.TypeOf(time.Duration(0))

// keyPath is one position in the file: the dotted key and the Go type the
// config decodes there (nil when the key is unknown).
type keyPath struct {
	path string
	typ  reflect.Type
}

// yamlFields lists the yaml keys of struct type t (inline fields expanded).
func yamlFields(t reflect.Type) map[string]reflect.Type {
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
			for k, v := range yamlFields(f.Type) {
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

// walkConfig visits every mapping key and scalar value of the document with
// its dotted path and target type; fn gets the key node (nil for values in
// sequences) and the value node.
func walkConfig(n *yaml.Node, t reflect.Type, path string, fn func(key, val *yaml.Node, kp keyPath)) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			walkConfig(c, t, path, fn)
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
			fields = yamlFields(t)
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
			fn(k, v, keyPath{p, ft})
			walkConfig(v, ft, p, fn)
		}
	case yaml.SequenceNode:
		var et reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			et = t.Elem()
		}
		for i, c := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			fn(nil, c, keyPath{p, et})
			walkConfig(c, et, p, fn)
		}
	}
}

// fractionErrors lists the whole-number keys given a fraction (3.5), which
// yaml.v3 would silently cut to 3; 3.0 is a whole number.
func fractionErrors(doc *yaml.Node) []string {
	var msgs []string
	walkConfig(doc, reflect.TypeOf(Config{}), "", func(_, v *yaml.Node, kp keyPath) {
		t := kp.typ
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t == nil || t == durationType || v.Kind != yaml.ScalarNode || v.ShortTag() != "!!float" {
			return
		}
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		default:
			return
		}
		if f, err := strconv.ParseFloat(v.Value, 64); err == nil && f == math.Trunc(f) {
			return
		}
		msgs = append(msgs, fmt.Sprintf("line %d: %s: %q is not a whole number", v.Line, kp.path, v.Value))
	})
	return msgs
}

var daysRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)d(.*)$`)

// ParseDuration is time.ParseDuration that also takes days: "30d",
// "1.5d", "1d12h" (a day is 24 hours; no calendar).
func ParseDuration(s string) (time.Duration, error) {
	m := daysRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return time.ParseDuration(s)
	}
	days, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, err
	}
	// time.Duration holds about 106,751 days; a float beyond it converts
	// to whatever the CPU gives (a negative value on amd64).
	ns := days * 24 * float64(time.Hour)
	if math.IsNaN(ns) || math.Abs(ns) >= math.MaxInt64 {
		return 0, fmt.Errorf("invalid duration %q: longer than %d days", s, int64(math.MaxInt64/int64(24*time.Hour)))
	}
	d := time.Duration(ns)
	if m[2] != "" {
		rest, err := time.ParseDuration(m[2])
		if err != nil || rest < 0 {
			return 0, fmt.Errorf("invalid duration %q", s)
		}
		if d > math.MaxInt64-rest {
			return 0, fmt.Errorf("invalid duration %q: longer than %d days", s, int64(math.MaxInt64/int64(24*time.Hour)))
		}
		d += rest
	}
	return d, nil
}

// FormatDuration prints d the short way (durfmt.Format): "1h" not
// "1h0m0s", "24h", "30d" for a whole number of days above one, "1m30s",
// "500ms".
func FormatDuration(d time.Duration) string { return durfmt.Format(d) }

// rewriteDays returns b with every duration value written in days (or
// days plus a rest) replaced by its hours, in place on its line, so that
// line numbers of later errors are unchanged.
func rewriteDays(b []byte, doc *yaml.Node) []byte {
	type repl struct {
		line, col, n int
		text         string
	}
	var rs []repl
	walkConfig(doc, reflect.TypeOf(Config{}), "", func(_, v *yaml.Node, kp keyPath) {
		if kp.typ != durationType || v.Kind != yaml.ScalarNode || !daysRE.MatchString(v.Value) {
			return
		}
		d, err := ParseDuration(v.Value)
		if err != nil {
			return
		}
		n := len(v.Value)
		if v.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
			n += 2
		}
		rs = append(rs, repl{v.Line, v.Column, n, strconv.Quote(d.String())})
	})
	if len(rs) == 0 {
		return b
	}
	lines := strings.SplitAfter(string(b), "\n")
	// Right to left within a line, so earlier columns stay valid.
	for i := len(rs) - 1; i >= 0; i-- {
		r := rs[i]
		if r.line-1 >= len(lines) {
			continue
		}
		l := lines[r.line-1]
		start := byteOffset(l, r.col-1)
		if start+r.n > len(l) {
			continue
		}
		lines[r.line-1] = l[:start] + r.text + l[start+r.n:]
	}
	return []byte(strings.Join(lines, ""))
}

// byteOffset converts yaml's 0-based rune column to a byte offset.
func byteOffset(line string, col int) int {
	i := 0
	for off := range line {
		if i == col {
			return off
		}
		i++
	}
	return len(line)
}

var (
	unknownFieldRE = regexp.MustCompile(`^line (\d+): field (\S+) not found in type \S+$`)
	unmarshalRE    = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+) `(.*)` into (\\S+)$")
)

// configError rewrites a yaml decode error in config terms.
func configError(err error, doc *yaml.Node) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) || doc == nil {
		return err
	}
	// What is at each line: the keys (for unknown fields) and the values.
	type at struct {
		kp     keyPath
		parent string
		value  string
	}
	byLine := map[int][]at{}
	walkConfig(doc, reflect.TypeOf(Config{}), "", func(k, v *yaml.Node, kp keyPath) {
		parent := kp.path[:max(0, strings.LastIndexAny(kp.path, ".["))]
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
			return reflect.TypeOf(Config{})
		}
		walkConfig(doc, reflect.TypeOf(Config{}), "", func(_, _ *yaml.Node, kp keyPath) {
			if kp.path == path {
				found = kp.typ
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
				if a.kp.typ != nil || !strings.HasSuffix(a.kp.path, key) {
					continue
				}
				msg = fmt.Sprintf("line %d: %s: unknown key", line, a.kp.path)
				var names []string
				for n := range yamlFields(parentType(a.parent)) {
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
				if a.kp.typ != nil && (path == "" || a.value == val) {
					path, typ = a.kp.path, a.kp.typ
				}
			}
			want := describeType(typ, goType)
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
func describeType(t reflect.Type, goType string) string {
	if t == durationType || goType == "time.Duration" {
		return `a duration (e.g. 500ms, 30s, 5m, 1h, 30d; at most 106751d)`
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

var longDurationRE = regexp.MustCompile(`\b(\d+h\d+m[0-9.]+s|\d+m[0-9.]+s)\b`)

// shortDurations rewrites Go's long duration forms in a validation message
// ("720h0m0s", "5m0s") the way the config file writes them ("30d", "5m").
func shortDurations(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	out := longDurationRE.ReplaceAllStringFunc(msg, func(m string) string {
		d, perr := time.ParseDuration(m)
		if perr != nil {
			return m
		}
		return FormatDuration(d)
	})
	if out == msg {
		return err
	}
	return errors.New(out)
}

// ruleLines puts "line N: " before each alert rule's problem in err (a
// rules.FieldError), N being the line of the rule's key in the file (of
// the rule's item when the key is missing), as decode errors have it.
// Without alerts.rules in the file (the defaults) err is left as it is.
func ruleLines(err error, doc *yaml.Node) error {
	if err == nil {
		return nil
	}
	var leaves []error
	var flatten func(error)
	flatten = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range j.Unwrap() {
				flatten(c)
			}
			return
		}
		leaves = append(leaves, e)
	}
	flatten(err)
	seq := mappingValue(mappingValue(rootMapping(doc), "alerts"), "rules")
	changed := false
	for i, e := range leaves {
		var fe *rules.FieldError
		if !errors.As(e, &fe) || seq == nil || seq.Kind != yaml.SequenceNode || fe.Rule >= len(seq.Content) {
			continue
		}
		item := seq.Content[fe.Rule]
		line := item.Line
		if k, _ := mappingPair(item, fe.Field); k != nil {
			line = k.Line
		}
		leaves[i] = fmt.Errorf("line %d: %w", line, e)
		changed = true
	}
	if !changed {
		return err
	}
	return errors.Join(leaves...)
}

func rootMapping(doc *yaml.Node) *yaml.Node {
	if doc != nil && doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return doc.Content[0]
	}
	return doc
}

// mappingPair returns the key and value nodes of key in mapping m, or
// nils.
func mappingPair(m *yaml.Node, key string) (k, v *yaml.Node) {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i], m.Content[i+1]
		}
	}
	return nil, nil
}

func mappingValue(m *yaml.Node, key string) *yaml.Node {
	_, v := mappingPair(m, key)
	return v
}
