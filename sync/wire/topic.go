package wire

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Topic kinds: the last level of every topic.
const (
	KindStatus  = "status"
	KindState   = "state"
	KindSummary = "summary"
	KindAlert   = "alert"
	KindCommand = "cmd"
	KindReply   = "reply"
)

// Limits on configured topic parts. MQTT allows 65535 bytes per topic; these
// keep topics readable and bounded.
const (
	MaxPrefixLen = 128
	MaxLevelLen  = 64
	MaxPrefixLvl = 8
)

// ErrTopic is wrapped by every topic validation error.
var ErrTopic = errors.New("invalid topic")

// Topics builds the topics of one device:
// <prefix>/<site>/<device>/status|summary|alert|cmd|reply.
type Topics struct {
	Prefix string
	Site   string
	Device string
}

// NewTopics validates prefix, site and device and returns the builder.
func NewTopics(prefix, site, device string) (Topics, error) {
	if err := ValidatePrefix(prefix); err != nil {
		return Topics{}, err
	}
	if err := ValidateLevel("site", site); err != nil {
		return Topics{}, err
	}
	if err := ValidateLevel("device", device); err != nil {
		return Topics{}, err
	}
	return Topics{Prefix: prefix, Site: site, Device: device}, nil
}

func (t Topics) base() string    { return t.Prefix + "/" + t.Site + "/" + t.Device + "/" }
func (t Topics) Status() string  { return t.base() + KindStatus }
func (t Topics) State() string   { return t.base() + KindState }
func (t Topics) Summary() string { return t.base() + KindSummary }
func (t Topics) Alert() string   { return t.base() + KindAlert }
func (t Topics) Command() string { return t.base() + KindCommand }
func (t Topics) Reply() string   { return t.base() + KindReply }

// For returns the topic of an outbox suffix (visit.OutboxMessage.Topic): one
// or more valid levels below the device, e.g. "alert".
func (t Topics) For(suffix string) (string, error) {
	if suffix == "" {
		return "", fmt.Errorf("%w: empty suffix", ErrTopic)
	}
	if len(suffix) > MaxPrefixLen {
		return "", fmt.Errorf("%w: suffix longer than %d bytes", ErrTopic, MaxPrefixLen)
	}
	for _, l := range strings.Split(suffix, "/") {
		if err := checkLevel(l); err != nil {
			return "", fmt.Errorf("%w: suffix %q: %v", ErrTopic, suffix, err)
		}
	}
	return t.base() + suffix, nil
}

// Filter returns the subscription filter for every device below prefix:
// <prefix>/+/+/#.
func Filter(prefix string) string { return prefix + "/+/+/#" }

// ValidatePrefix checks a topic prefix: 1..MaxPrefixLvl non-empty levels,
// at most MaxPrefixLen bytes, valid UTF-8, no wildcards, no NUL, not starting
// with '$' (reserved by brokers).
func ValidatePrefix(p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty prefix", ErrTopic)
	}
	if len(p) > MaxPrefixLen {
		return fmt.Errorf("%w: prefix longer than %d bytes", ErrTopic, MaxPrefixLen)
	}
	if p[0] == '$' {
		return fmt.Errorf("%w: prefix %q starts with '$'", ErrTopic, p)
	}
	levels := strings.Split(p, "/")
	if len(levels) > MaxPrefixLvl {
		return fmt.Errorf("%w: prefix has more than %d levels", ErrTopic, MaxPrefixLvl)
	}
	for _, l := range levels {
		if err := checkLevel(l); err != nil {
			return fmt.Errorf("%w: prefix %q: %v", ErrTopic, p, err)
		}
	}
	return nil
}

// ValidateLevel checks a single topic level such as a site or device id.
func ValidateLevel(what, s string) error {
	if len(s) > MaxLevelLen {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrTopic, what, MaxLevelLen)
	}
	if err := checkLevel(s); err != nil {
		return fmt.Errorf("%w: %s %q: %v", ErrTopic, what, s, err)
	}
	if s[0] == '$' {
		return fmt.Errorf("%w: %s %q starts with '$'", ErrTopic, what, s)
	}
	return nil
}

func checkLevel(l string) error {
	if l == "" {
		return errors.New("empty level")
	}
	if !utf8.ValidString(l) {
		return errors.New("not valid UTF-8")
	}
	for _, r := range l {
		switch {
		case r == '+' || r == '#':
			return fmt.Errorf("wildcard %q", r)
		case r == '/':
			return errors.New("contains '/'")
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			return fmt.Errorf("control character %U", r)
		case r == utf8.RuneError || r == 0xfeff:
			return fmt.Errorf("disallowed character %U", r)
		case unicode.IsSpace(r):
			return fmt.Errorf("white space %U", r)
		case unicode.Is(unicode.Cf, r):
			// Zero-width and bidirectional marks: two devices that read
			// the same on every screen.
			return fmt.Errorf("invisible formatting character %U", r)
		}
	}
	return nil
}

// TopicParts is a parsed device topic.
type TopicParts struct {
	Site, Device, Kind string
}

// ParseTopic splits a topic received below prefix into site, device and
// kind. It accepts exactly <prefix>/<site>/<device>/<kind> with valid levels.
func ParseTopic(prefix, topic string) (TopicParts, error) {
	if err := ValidatePrefix(prefix); err != nil {
		return TopicParts{}, err
	}
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return TopicParts{}, fmt.Errorf("%w: %q not below prefix %q", ErrTopic, topic, prefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return TopicParts{}, fmt.Errorf("%w: %q: want <site>/<device>/<kind> below prefix", ErrTopic, topic)
	}
	if err := ValidateLevel("site", parts[0]); err != nil {
		return TopicParts{}, err
	}
	if err := ValidateLevel("device", parts[1]); err != nil {
		return TopicParts{}, err
	}
	if err := ValidateLevel("kind", parts[2]); err != nil {
		return TopicParts{}, err
	}
	return TopicParts{Site: parts[0], Device: parts[1], Kind: parts[2]}, nil
}
