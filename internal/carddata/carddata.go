// Package carddata finds payment card numbers (PANs) in free text, as
// the scanners of card-data audits do: the trigger API refuses them in a
// txn_id, and the fleet service keeps no rejected payload holding one.
package carddata

import "strings"

// PANInText finds a card number anywhere in free text such as a txn_id,
// whatever the share of digits: a run of 13..19 digits, or digit groups
// joined by one kind of separator (space, '-', '.', '/', '_') in a card's
// printed grouping (fours, the last group shorter; Amex 4-6-5; Diners
// 4-6-4), that starts with 1..9 and passes the Luhn check, as the scanners
// of card-data audits look for them. It returns the number's length, or 0.
// The trigger API does not use it for card_hash: a random SHA-256 in hex
// holds such a run in about 1 in 1,700 hashes, and refusing those would
// refuse the same cardholder at every visit.
func PANInText(s string) int {
	isDigit := func(b byte) bool { return b >= '0' && b <= '9' }
	pan := func(d string) bool {
		return len(d) >= 13 && len(d) <= 19 && d[0] != '0' && LuhnValid([]byte(d))
	}
	for i := 0; i < len(s); {
		if !isDigit(s[i]) {
			i++
			continue
		}
		// Groups of digits joined by one separator, repeated.
		var groups []string
		var sep byte
		j := i
		for {
			k := j
			for k < len(s) && isDigit(s[k]) {
				k++
			}
			groups = append(groups, s[j:k])
			if k+1 < len(s) && strings.IndexByte(" -./_", s[k]) >= 0 && isDigit(s[k+1]) && (sep == 0 || sep == s[k]) {
				sep, j = s[k], k+1
				continue
			}
			j = k
			break
		}
		for _, g := range groups {
			if pan(g) {
				return len(g)
			}
		}
		if joined := strings.Join(groups, ""); len(groups) > 1 && cardGrouping(groups) && pan(joined) {
			return len(joined)
		}
		i = j
	}
	return 0
}

// cardGrouping: the lengths a card number is printed in.
func cardGrouping(groups []string) bool {
	n := make([]int, len(groups))
	for i, g := range groups {
		n[i] = len(g)
	}
	switch {
	case len(n) == 3 && n[0] == 4 && n[1] == 6 && (n[2] == 5 || n[2] == 4):
		return true
	case len(n) >= 3:
		for _, x := range n[:len(n)-1] {
			if x != 4 {
				return false
			}
		}
		return n[len(n)-1] >= 1 && n[len(n)-1] <= 7
	}
	return false
}

// LuhnValid reports whether the digits d pass the Luhn check.
func LuhnValid(d []byte) bool {
	sum := 0
	for i := len(d) - 1; i >= 0; i-- {
		n := int(d[i] - '0')
		if (len(d)-1-i)%2 == 1 {
			n *= 2
			if n > 9 {
				n -= 9
			}
		}
		sum += n
	}
	return sum%10 == 0
}
