package daemon

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/periocular/atm-agent/agent/rules"
	"github.com/periocular/atm-agent/internal/durfmt"
	"github.com/periocular/atm-agent/internal/yamlkeys"
)

// The config file speaks in keys (`camera.burst_frames`), never in Go
// types: yaml.v3's decode errors ("field x not found in type
// camera.Config", "cannot unmarshal !!str `30d` into time.Duration") are
// rewritten with the key's path, a "did you mean" for a misspelt key and
// what the value should look like (internal/yamlkeys, which the fleet's
// config uses too). Durations also take days ("30d",
// "1d12h"), which Go's time.ParseDuration does not.

var durationType = reflect.TypeOf(time.Duration(0))

// fractionErrors lists the whole-number keys given a fraction (3.5), which
// yaml.v3 would silently cut to 3; 3.0 is a whole number.
func fractionErrors(doc *yaml.Node) []string {
	var msgs []string
	yamlkeys.Walk(doc, reflect.TypeOf(Config{}), func(_, v *yaml.Node, kp yamlkeys.KeyPath) {
		t := kp.Type
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
		msgs = append(msgs, fmt.Sprintf("line %d: %s: %q is not a whole number", v.Line, kp.Path, v.Value))
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
	yamlkeys.Walk(doc, reflect.TypeOf(Config{}), func(_, v *yaml.Node, kp yamlkeys.KeyPath) {
		if kp.Type != durationType || v.Kind != yaml.ScalarNode || !daysRE.MatchString(v.Value) {
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

// durationText is what a duration looks like in the agent's config.
const durationText = `a duration (e.g. 500ms, 30s, 5m, 1h, 30d; at most 106751d)`

// configError rewrites a yaml decode error in config terms.
func configError(err error, doc *yaml.Node) error {
	return yamlkeys.Explain(err, doc, reflect.TypeOf(Config{}), durationText)
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
// the rule's item when the key is missing), as decode errors have it, and
// before each other problem that starts with a key the file sets
// (keyLine).
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
		if !errors.As(e, &fe) {
			if line := keyLine(e.Error(), doc); line > 0 {
				leaves[i] = fmt.Errorf("line %d: %w", line, e)
				changed = true
			}
			continue
		}
		if seq == nil || seq.Kind != yaml.SequenceNode || fe.Rule >= len(seq.Content) {
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

var leadingKeyRE = regexp.MustCompile(`^([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+)[ :]`)

// keyLine is the line of the key a Validate message starts with
// ("camera.burst_frames 500: want 1..100"), 0 when the message names no
// key or the file does not set it (a default).
func keyLine(msg string, doc *yaml.Node) int {
	m := leadingKeyRE.FindStringSubmatch(msg)
	if m == nil {
		return 0
	}
	n, line := rootMapping(doc), 0
	for _, part := range strings.Split(m[1], ".") {
		k, v := mappingPair(n, part)
		if k == nil {
			return 0
		}
		n, line = v, k.Line
	}
	return line
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
