package sim

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

// Person is one simulated customer (ground truth).
type Person struct {
	Name string // "P01", ...
	Face int    // index into the faces
	// Role explains the person's pattern in the demo's output.
	Role string
}

// Visit is one simulated card insert.
type Visit struct {
	ID     string        // stable: becomes the stored visit id
	Offset time.Duration // from the start of the simulated day
	Person int           // index into People; -1 when no face is shown
	Shot   Shot
	Mask   int // -1 unmasked, else the index of the face's mask variant
	Card   string
	Seed   uint64 // frame rendering seed
}

// Scenario is a simulated ATM day.
type Scenario struct {
	Seed   uint64
	Day    time.Duration // simulated span of the visits
	People []Person
	Visits []Visit // sorted by Offset
}

// Build makes the day for nFaces available faces: three frequent customers
// (one of them visits five times within an hour, one uses four cards), the
// others once to four times over the day, masks on some visits, and a few
// visits with a covered camera or nobody in view. Deterministic in seed.
//
// scores, when given (one per face), put the three best-detected faces in
// the frequent roles, so the patterns the alert rules look for are carried
// by clear faces.
func Build(nFaces int, seed uint64, scores ...float64) Scenario {
	r := rand.New(rand.NewPCG(seed, 0xa7a))
	const day = 12 * time.Hour // 08:00 .. 20:00
	s := Scenario{Seed: seed, Day: day}
	order := r.Perm(nFaces)
	if len(scores) == nFaces {
		sort.SliceStable(order, func(i, j int) bool { return scores[order[i]] > scores[order[j]] })
		rest := order[3:]
		r.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	}
	people := min(nFaces, 14)
	card := func(p, k int) string {
		h := sha256.Sum256(fmt.Appendf(nil, "demo-card-%d-%d-%d", seed, p, k))
		return hex.EncodeToString(h[:])
	}
	at := func(lo, hi time.Duration) time.Duration {
		return lo + time.Duration(r.Int64N(int64(hi-lo)))
	}
	add := func(p int, off time.Duration, maskP float64, cards int, cardP float64) {
		v := Visit{Offset: off, Person: p, Shot: ShotFace, Mask: -1, Seed: r.Uint64()}
		if r.Float64() < maskP {
			v.Mask = r.IntN(4)
		}
		if r.Float64() < cardP {
			v.Card = card(p, r.IntN(cards))
		}
		s.Visits = append(s.Visits, v)
	}
	for i := 0; i < people; i++ {
		p := Person{Name: fmt.Sprintf("P%02d", i+1), Face: order[i]}
		switch i {
		case 0:
			// Seven visits within an hour, rarely masked.
			p.Role = "frequent: 7 visits in 1 h"
			t0 := at(2*time.Hour, 8*time.Hour)
			for k := 0; k < 7; k++ {
				add(i, t0+time.Duration(k)*8*time.Minute+at(0, 2*time.Minute), 0.15, 1, 0.9)
			}
		case 1:
			// One face, four cards over the afternoon.
			p.Role = "frequent: 4 cards"
			for k := 0; k < 5; k++ {
				v := len(s.Visits)
				add(i, at(time.Duration(4+k)*time.Hour, time.Duration(5+k)*time.Hour), 0.2, 1, 1)
				s.Visits[v].Card = card(i, k%4)
			}
		case 2:
			// Often, but spread over the day: no window holds five.
			p.Role = "frequent: 7 visits spread over the day"
			for k := 0; k < 7; k++ {
				add(i, time.Duration(k)*day/7+at(0, 40*time.Minute), 0.3, 1, 0.8)
			}
		default:
			p.Role = "occasional"
			n := 1 + r.IntN(3)
			maskP := []float64{0, 0.3, 0.6, 1}[r.IntN(4)]
			for k := 0; k < n; k++ {
				add(i, at(0, day), maskP, 1, 0.7)
			}
		}
		s.People = append(s.People, p)
	}
	// A covered camera for a while (the faceless rule), and a few visits
	// where nobody is in view.
	t0 := at(3*time.Hour, 9*time.Hour)
	for k := 0; k < 4; k++ {
		s.Visits = append(s.Visits, Visit{Offset: t0 + time.Duration(k)*7*time.Minute, Person: -1, Shot: ShotCovered, Mask: -1, Seed: r.Uint64()})
	}
	for k := 0; k < 3; k++ {
		s.Visits = append(s.Visits, Visit{Offset: at(0, day), Person: -1, Shot: ShotEmpty, Mask: -1, Seed: r.Uint64()})
	}
	sort.SliceStable(s.Visits, func(i, j int) bool { return s.Visits[i].Offset < s.Visits[j].Offset })
	for i := range s.Visits {
		s.Visits[i].ID = fmt.Sprintf("demo-%d-%04d", seed, i+1)
	}
	return s
}

// Day is the demo's day over faces: Build with the faces' detection scores,
// so the frequent roles get the clearest faces.
func Day(faces []Face, seed uint64) Scenario {
	scores := make([]float64, len(faces))
	for i, f := range faces {
		scores[i] = f.Score
	}
	return Build(len(faces), seed, scores...)
}

// Frames renders the burst of visit v from faces.
func (s Scenario) Frames(faces []Face, v Visit, n int) []Frame {
	var img []byte
	if v.Person >= 0 {
		f := faces[s.People[v.Person].Face]
		img = f.BGR
		if shownMasked(f, v) {
			img = f.Masked[v.Mask%len(f.Masked)]
		}
	}
	return Render(img, v.Shot, n, v.Seed)
}

// shownMasked reports whether visit v shows face f masked: the visit asks
// for a mask and the face has masked variants.
func shownMasked(f Face, v Visit) bool { return v.Mask >= 0 && len(f.Masked) > 0 }
