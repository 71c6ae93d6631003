package main

import (
	"cmp"
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/web"
	"github.com/periocular/atm-agent/sync/wire"
)

// The fleet act's last part: an analyst reviews an alert's identity and
// corrects the ATMs' splits and merges through the fleet's JSON API, which
// sends the signed review commands to the ATMs (docs/fleet.md, "Reviewing
// and correcting identities"). The analyst's decisions come from the
// simulated day's truth; a real analyst's come from the transaction ids,
// the bank's records and its CCTV.

// demoCommandKeyFile is the fleet act's signing key, in its directory.
const demoCommandKeyFile = "commands.key"

// demoCommandKey writes a new signing key into dir (mode 0600) and returns
// its public half as the agents' config takes it inline.
func demoCommandKey(dir string) (string, error) {
	pub, priv, err := wire.GenerateCommandKey()
	if err != nil {
		return "", fmt.Errorf("command key: %w", err)
	}
	pem, err := wire.MarshalPrivateKeyPEM(priv)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, demoCommandKeyFile)
	os.Remove(path) // a --dir run before: the key is the run's own
	if err := os.WriteFile(path, pem, 0o600); err != nil {
		return "", fmt.Errorf("write command key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(pub), nil
}

// reviewAnswer is the fleet API's answer to a review (the visits asked
// live from the ATM).
type reviewAnswer struct {
	wire.IdentityVisitsResult
	Site   string `json:"site"`
	Device string `json:"device"`
}

// correctionRequest is the body of the fleet API's split and merge.
type correctionRequest struct {
	Site     string   `json:"site"`
	Device   string   `json:"device"`
	Identity string   `json:"identity"`
	Visits   []string `json:"visits,omitempty"`
	Into     string   `json:"into,omitempty"`
}

// demoCorrections is what the analyst's part did, for the tests.
type demoCorrections struct {
	Reviewed        string // identity reviewed ("" if no alert named one)
	ReviewedVisits  int
	Merges, Splits  int
	SplitBefore     map[string]int // device -> people split over several identities
	MergedBefore    map[string]int // device -> identities shared by several people
	SplitAfter      map[string]int
	MergedAfter     map[string]int
	IdentitiesAfter map[string]int // device -> identities in the agent's store
}

// correct reviews the first alert's identity, then merges every person's
// extra identities into the one holding most of their visits and splits
// every other person's visits off an identity shared by several, and
// waits until the fleet shows the ATMs' corrected counts.
func (f *fleetAct) correct(ctx context.Context, out *demoRun) error {
	c, err := login(ctx, f.URL, f.User, f.Password)
	if err != nil {
		return err
	}
	res := demoCorrections{SplitBefore: map[string]int{}, MergedBefore: map[string]int{}, SplitAfter: map[string]int{},
		MergedAfter: map[string]int{}, IdentitiesAfter: map[string]int{}}
	out.printf("\n=== An analyst's review and corrections, through the fleet's JSON API (signed commands to the ATMs) ===\n")
	out.printf("(the analyst's decisions here come from the SIMULATED day's truth; a real analyst's from the transaction ids, the bank's records and its CCTV)\n")

	var al []web.APIAlert
	if err := c.get(ctx, "/api/v1/alerts?state=all&limit=100", &al); err != nil {
		return err
	}
	for _, a := range al {
		if a.IdentityID == "" {
			continue
		}
		var rv reviewAnswer
		path := fmt.Sprintf("/api/v1/devices/%s/%s/identities/%s/visits", url.PathEscape(a.Site), url.PathEscape(a.Device), url.PathEscape(a.IdentityID))
		if err := c.get(ctx, path, &rv); err != nil {
			return fmt.Errorf("review: %w", err)
		}
		res.Reviewed, res.ReviewedVisits = a.IdentityID, rv.Total
		out.printf("review of %s on %s (alert %s): %s, asked live from the ATM\n", a.IdentityID, a.Device, a.Rule, visitsN(rv.Total))
		tw := tabwriter.NewWriter(out.out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  time\ttransaction\tmasked\tcard\tsimilarity")
		for _, v := range rv.Visits {
			sim := "-"
			if v.Similarity != nil {
				sim = fmt.Sprintf("%.2f", *v.Similarity)
			}
			card := "no card"
			if v.Card > 0 {
				card = fmt.Sprintf("card %d", v.Card)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%v\t%s\t%s\n", v.TS.Format("15:04:05"), v.TxnID, v.Masked, card, sim)
		}
		tw.Flush()
		break
	}

	for _, a := range f.ATMs {
		idsOf, personsOf, err := a.storedIdentities(ctx)
		if err != nil {
			return err
		}
		res.SplitBefore[a.dev.ID], res.MergedBefore[a.dev.ID] = countErrors(idsOf, personsOf)
		// False merges first: each other person's visits split off, one
		// person at a time.
		vs, err := a.dm.Store().VisitsBetween(ctx, a.day0.Add(-time.Hour), time.Now().Add(time.Hour))
		if err != nil {
			return err
		}
		for _, id := range slices.Sorted(maps.Keys(personsOf)) {
			people := personsOf[id]
			if len(people) < 2 {
				continue
			}
			keep, n := -1, -1
			for _, p := range slices.Sorted(maps.Keys(people)) {
				if idsOf[p][id] > n {
					keep, n = p, idsOf[p][id]
				}
			}
			visitsOf := map[int][]string{}
			for _, v := range vs {
				if tv, ok := a.truth(v.ID); ok && v.IdentityID == id && tv.Person != keep {
					visitsOf[tv.Person] = append(visitsOf[tv.Person], v.ID)
				}
			}
			for _, p := range slices.Sorted(maps.Keys(visitsOf)) {
				var sr wire.SplitResult
				if err := c.post(ctx, "/api/v1/identities/split", correctionRequest{Site: a.dev.Site, Device: a.dev.ID, Identity: id, Visits: visitsOf[p]}, &sr); err != nil {
					return fmt.Errorf("split: %w", err)
				}
				res.Splits++
				out.printf("%s: %s holds %s and %s: %s's %s split off into %s\n", a.dev.ID, id, a.sc.People[keep].Name,
					a.sc.People[p].Name, a.sc.People[p].Name, visitsN(sr.VisitsMoved), sr.NewIdentity)
			}
		}
		if res.Splits > 0 {
			if idsOf, _, err = a.storedIdentities(ctx); err != nil {
				return err
			}
		}
		// Then each person's extra identities merged into the one with
		// most of their visits.
		for _, p := range slices.Sorted(maps.Keys(idsOf)) {
			ids := idsOf[p]
			if len(ids) < 2 {
				continue
			}
			order := slices.SortedFunc(maps.Keys(ids), func(x, y string) int { return cmp.Or(ids[y]-ids[x], strings.Compare(x, y)) })
			for _, id := range order[1:] {
				var mr wire.MergeResult
				if err := c.post(ctx, "/api/v1/identities/merge", correctionRequest{Site: a.dev.Site, Device: a.dev.ID, Identity: id, Into: order[0]}, &mr); err != nil {
					return fmt.Errorf("merge: %w", err)
				}
				res.Merges++
				out.printf("%s: %s is split over %d identities: %s (%s) merged into %s (%s): %s moved\n",
					a.dev.ID, a.sc.People[p].Name, len(ids), id, visitsN(ids[id]), order[0], visitsN(ids[order[0]]), visitsN(mr.VisitsMoved))
			}
		}
		idsOf, personsOf, err = a.storedIdentities(ctx)
		if err != nil {
			return err
		}
		res.SplitAfter[a.dev.ID], res.MergedAfter[a.dev.ID] = countErrors(idsOf, personsOf)
		res.IdentitiesAfter[a.dev.ID] = len(personsOf)
	}
	if res.Merges+res.Splits == 0 {
		out.printf("nothing to correct: every person has one identity, no identity holds two people\n")
	}

	// Each correction queues a summary at once: wait until the fleet
	// shows every ATM's corrected count.
	shown := func() bool {
		v, err := f.view(ctx)
		if err != nil {
			return false
		}
		for _, d := range v.Devices {
			if d.Summary == nil {
				return false
			}
			for _, a := range f.ATMs {
				if a.dev.ID == d.Device && d.Summary.Totals.Identities.D7 != res.IdentitiesAfter[a.dev.ID] {
					return false
				}
			}
		}
		return true
	}
	werr := waitFor(ctx, 20*time.Second, shown)
	tw := tabwriter.NewWriter(out.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "device\tpeople split (before -> after)\tfalse merges (before -> after)\tidentities after")
	for _, a := range f.ATMs {
		id := a.dev.ID
		fmt.Fprintf(tw, "%s\t%d -> %d\t%d -> %d\t%d\n", id, res.SplitBefore[id], res.SplitAfter[id], res.MergedBefore[id], res.MergedAfter[id], res.IdentitiesAfter[id])
	}
	tw.Flush()
	if werr != nil {
		out.printf("  (the fleet does not show the corrected counts yet: %v)\n", werr)
	} else {
		out.printf("the fleet shows the corrected counts; every correction is in its audit log (Settings)\n")
	}
	if demoCorrected != nil {
		demoCorrected(res)
	}
	return nil
}

// demoCorrected, when set (tests), receives what the analyst's part did.
var demoCorrected func(demoCorrections)

// storedIdentities sets the ATM's stored visits against the day's truth.
func (a *fleetATM) storedIdentities(ctx context.Context) (map[int]map[string]int, map[string]map[int]bool, error) {
	vs, err := a.dm.Store().VisitsBetween(ctx, a.day0.Add(-time.Hour), time.Now().Add(time.Hour))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", a.dev.ID, err)
	}
	idsOf, personsOf := a.identitiesByPerson(vs)
	return idsOf, personsOf, nil
}

// visitsN is "1 visit", "2 visits".
func visitsN(n int) string {
	if n == 1 {
		return "1 visit"
	}
	return fmt.Sprintf("%d visits", n)
}

// countErrors counts the people split over several identities and the
// identities shared by several people.
func countErrors(idsOf map[int]map[string]int, personsOf map[string]map[int]bool) (split, merged int) {
	for _, ids := range idsOf {
		if len(ids) > 1 {
			split++
		}
	}
	for _, ps := range personsOf {
		if len(ps) > 1 {
			merged++
		}
	}
	return split, merged
}
