package web

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/fleet/storage/storetest"
	"github.com/periocular/atm-agent/sync/wire"
)

// BenchmarkFleetPage renders the fleet page of 2,000 devices (bbolt), each
// with a status, a summary of two identities and one alert in ten:
// go test ./sync/fleet/web -run '^$' -bench FleetPage -benchtime 20x
// (b.SetBytes: MB/s over the page's HTML).
func BenchmarkFleetPage(b *testing.B) {
	st := openBolt(b)
	now := time.Now().UTC()
	var msgs []storage.Message
	for i := 0; i < 2000; i++ {
		site, dev := fmt.Sprintf("site-%02d", i%40), fmt.Sprintf("atm-%04d", i)
		msgs = append(msgs, storetest.Summary(site, dev, 1, now, 3, "p-"+dev[4:]+"a", "p-"+dev[4:]+"b"))
		if i%10 == 0 {
			msgs = append(msgs, storetest.Alert(site, dev, 2, now, "a-"+dev, "p-"+dev[4:]+"a", 6))
		}
		st.PutStatus(context.Background(), storage.Status{Site: site, Device: dev, Received: now,
			Status: wire.Status{Envelope: wire.NewEnvelope(site, dev, now), State: wire.StateOnline,
				Cameras: []wire.CameraHealth{{Name: "front", OK: true}}, Outbox: &wire.OutboxStats{}}})
	}
	if _, err := st.Apply(context.Background(), msgs); err != nil {
		b.Fatal(err)
	}
	s, _ := newTestServer(b, st)
	h := s.Handler()
	rec := httptest.NewRecorder()
	s.newSession(rec, s.allUsers()["ana"])
	// The default page (the first 100 rows), the last page, one site, a
	// name search, and the most rows one page may show.
	for _, path := range []string{"/", "/?page=20", "/?site=site-07", "/?q=atm-19", "/?sort=visits&per=1000"} {
		b.Run(path, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, path, nil)
			for _, ck := range rec.Result().Cookies() {
				req.AddCookie(ck)
			}
			for i := 0; i < b.N; i++ {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != 200 {
					b.Fatal(w.Code)
				}
				b.SetBytes(int64(w.Body.Len()))
			}
		})
	}
}
