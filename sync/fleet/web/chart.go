package web

import (
	"fmt"
	"html/template"
	"strings"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
)

// HourBar is one hour of the visits chart.
type HourBar struct {
	Hour   time.Time `json:"hour"`   // start of the hour (UTC)
	Visits int       `json:"visits"` // the agent's 1h count at the last summary in that hour
	Known  bool      `json:"known"`  // false: no summary arrived in that hour
}

// HourlyVisits turns summaries into one bar per hour for the last n hours
// ending with the current one. Agents send rolling counts ("visits in the
// last hour"), so the value of an hour is the 1h count of the last summary
// received in it: exact when a summary arrives near the end of each hour.
func HourlyVisits(pts []storage.SummaryPoint, now time.Time, n int) []HourBar {
	end := now.UTC().Truncate(time.Hour)
	start := end.Add(-time.Duration(n-1) * time.Hour)
	bars := make([]HourBar, n)
	last := make([]time.Time, n)
	for i := range bars {
		bars[i].Hour = start.Add(time.Duration(i) * time.Hour)
	}
	for _, p := range pts {
		i := int(p.TS.UTC().Sub(start) / time.Hour)
		if p.TS.Before(start) || i < 0 || i >= n {
			continue
		}
		if !bars[i].Known || !p.TS.Before(last[i]) {
			bars[i].Visits, bars[i].Known, last[i] = p.Visits1h, true, p.TS
		}
	}
	return bars
}

// VisitsPerHourSVG draws the bars as an inline SVG (no script, no external
// library): bar height is visits, hours without a summary are marked grey.
func VisitsPerHourSVG(bars []HourBar) template.HTML {
	const w, h, left, bottom, top = 760.0, 200.0, 36.0, 24.0, 10.0
	maxV := 1
	for _, b := range bars {
		maxV = max(maxV, b.Visits)
	}
	// round the axis up to a tidy number
	step := 1
	for maxV/step > 5 {
		step *= 2
		if maxV/step > 5 {
			step = step / 2 * 5
		}
	}
	axis := (maxV + step - 1) / step * step
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="visits per hour, last %d hours">`, w, h, len(bars))
	plotH := h - bottom - top
	bw := (w - left) / float64(len(bars))
	for v := 0; v <= axis; v += step {
		y := top + plotH - plotH*float64(v)/float64(axis)
		fmt.Fprintf(&sb, `<line class="grid" x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f"/><text class="tick" x="%.0f" y="%.1f" text-anchor="end">%d</text>`,
			left, w, y, y, left-4, y+4, v)
	}
	for i, b := range bars {
		x := left + float64(i)*bw
		if !b.Known {
			fmt.Fprintf(&sb, `<rect class="nodata" x="%.1f" y="%.1f" width="%.1f" height="3"><title>%s: no summary</title></rect>`,
				x+1, top+plotH-3, bw-2, b.Hour.Format("Jan 2 15:00"))
		} else {
			bh := plotH * float64(b.Visits) / float64(axis)
			fmt.Fprintf(&sb, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s: %d visits</title></rect>`,
				x+1, top+plotH-bh, bw-2, bh, b.Hour.Format("Jan 2 15:00"), b.Visits)
		}
		if b.Hour.Hour()%6 == 0 {
			fmt.Fprintf(&sb, `<text class="tick" x="%.1f" y="%.0f">%s</text>`, x, h-6, b.Hour.Format("15h"))
		}
	}
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String()) // built from numbers and fixed strings only
}

// IdentitySVG draws one identity's 24h visit count and 24h distinct cards
// over time as two polylines.
func IdentitySVG(pts []storage.IdentityPoint) template.HTML {
	if len(pts) == 0 {
		return ""
	}
	const w, h, left, bottom, top = 760.0, 180.0, 36.0, 24.0, 10.0
	t0, t1 := pts[0].TS, pts[len(pts)-1].TS
	span := t1.Sub(t0)
	if span <= 0 {
		span = time.Hour
	}
	maxV := 1
	for _, p := range pts {
		maxV = max(maxV, p.Visits.H24, p.DistinctCards.H24)
	}
	plotH := h - bottom - top
	xy := func(t time.Time, v int) string {
		return fmt.Sprintf("%.1f,%.1f", left+(w-left-4)*float64(t.Sub(t0))/float64(span), top+plotH-plotH*float64(v)/float64(maxV))
	}
	var visits, cards []string
	for _, p := range pts {
		visits = append(visits, xy(p.TS, p.Visits.H24))
		cards = append(cards, xy(p.TS, p.DistinctCards.H24))
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="24h visits and cards over time">`, w, h)
	fmt.Fprintf(&sb, `<line class="grid" x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f"/><text class="tick" x="%.0f" y="%.1f" text-anchor="end">%d</text>`,
		left, w, top, top, left-4, top+4, maxV)
	fmt.Fprintf(&sb, `<line class="grid" x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f"/><text class="tick" x="%.0f" y="%.1f" text-anchor="end">0</text>`,
		left, w, top+plotH, top+plotH, left-4, top+plotH+4)
	fmt.Fprintf(&sb, `<polyline class="line visits" points="%s"><title>visits (24h)</title></polyline>`, strings.Join(visits, " "))
	fmt.Fprintf(&sb, `<polyline class="line cards" points="%s"><title>distinct cards (24h)</title></polyline>`, strings.Join(cards, " "))
	fmt.Fprintf(&sb, `<text class="tick" x="%.0f" y="%.0f">%s</text><text class="tick" x="%.0f" y="%.0f" text-anchor="end">%s</text>`,
		left, h-6, t0.Format("Jan 2 15:04"), w-4, h-6, t1.Format("Jan 2 15:04"))
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String())
}
