package web

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/periocular/atm-agent/sync/fleet/command"
	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// Commander sends a device the review commands and waits for the answer
// (command.Client). Deps.Commands nil: commands are not configured.
type Commander interface {
	IdentityVisits(ctx context.Context, site, device, id string) (wire.IdentityVisitsResult, command.Sent, error)
	// Split and Merge call before (command.BeforeSend) just before the
	// command is first published.
	Split(ctx context.Context, site, device, id string, visits []string, before command.BeforeSend) (wire.SplitResult, command.Sent, error)
	Merge(ctx context.Context, site, device, id, into string, before command.BeforeSend) (wire.MergeResult, command.Sent, error)
	Timeout() time.Duration
}

// errOffline: the device is not online; nothing was sent.
var errOffline = errors.New("device not online")

// errStale: the device's last status says online, but it has not been
// heard from for web.stale_after: it would most likely not answer, and
// the command would hold a slot for commands.reply_timeout to say so.
// Nothing was sent.
var errStale = errors.New("device stale")

// MaxUserCommands bounds the commands one user waits for at once, of
// commands.max_in_flight for everyone: one user (a scoped analyst too)
// reviewing ATMs that do not answer would otherwise hold every slot until
// the replies time out, and every other site's reviews and corrections
// would be refused meanwhile.
const MaxUserCommands = 4

// errUserBusy: the user already waits for MaxUserCommands commands;
// nothing was sent.
var errUserBusy = fmt.Errorf("%d of your commands already wait for devices' answers: try again when one has its answer", MaxUserCommands)

// userCommands counts each user's commands waiting for an answer.
type userCommands struct {
	mu sync.Mutex
	n  map[string]int
}

// take reserves one of user's MaxUserCommands; false when they are all
// taken. release gives it back.
func (u *userCommands) take(user string) (release func(), ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[user] >= MaxUserCommands {
		return nil, false
	}
	if u.n == nil {
		u.n = map[string]int{}
	}
	u.n[user]++
	return func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.n[user]--; u.n[user] <= 0 {
			delete(u.n, user)
		}
	}, true
}

// commandProblem is a command that did not give an answer: its code (and
// with it the status) and what the analyst is told (RetryAfter: when to try again; for a
// 429 when the device's budget has room, for a 503 busy the reply
// timeout: by then every command that held a slot has its answer or has
// given up, and an agent's busy worker has had as long again).
type commandProblem struct {
	Code       Code
	Msg        string
	RetryAfter time.Duration
	// AgentCode is the agent's refusal code, when it refused (the API
	// answers it as agent_code: docs/mqtt.md "Refusal codes").
	AgentCode wire.ReplyCode
}

// problemOf explains why a command to d gave no usable answer.
func (s *Server) problemOf(d storage.Device, err error) commandProblem {
	p := s.problemText(d, err)
	p.AgentCode = command.RefusalCode(err)
	return p
}

// write answers p: JSON with its agent_code for the API, a plain page
// otherwise (the review's own page shows p.Msg in its layout).
func (p commandProblem) write(w http.ResponseWriter, r *http.Request) {
	retryAfter(w, p)
	if strings.HasPrefix(r.URL.Path, "/api/") || wantsJSON(r) {
		writeAPIError(w, apiError{Error: p.Msg, Code: p.Code, AgentCode: p.AgentCode})
		return
	}
	http.Error(w, p.Msg, p.Code.Status())
}

// status is p's HTTP status; 0 for no problem.
func (p commandProblem) status() int {
	if p.Code == "" {
		return 0
	}
	return p.Code.Status()
}

// problemText is problemOf without the agent's code.
func (s *Server) problemText(d storage.Device, err error) commandProblem {
	dev := d.Site + " / " + d.Device
	timeout := time.Duration(0)
	if s.d.Commands != nil {
		timeout = s.d.Commands.Timeout()
	}
	switch {
	case errors.Is(err, errOffline):
		since := "it has sent no status yet"
		if d.Status != nil {
			since = fmt.Sprintf("its last status, %s, arrived %s", d.State(), ago(s.now(), d.StatusReceived))
		}
		return commandProblem{Code: CodeDeviceOffline, Msg: fmt.Sprintf("%s is not online (%s). Its identities are reviewed and corrected on the ATM itself, "+
			"which must be connected: try again when the fleet page shows it online. Nothing was sent.", dev, since)}
	case errors.Is(err, errStale):
		return commandProblem{Code: CodeDeviceStale, Msg: fmt.Sprintf("%s is stale: its last status said online, but nothing has come from it for %s "+
			"(web.stale_after %v), so it has most likely lost its connection without the broker noticing, and would not answer. "+
			"Try again when the fleet page shows it online (any message from it ends the stale state). Nothing was sent.",
			dev, s.now().Sub(d.LastHeard()).Round(time.Second), s.cfg.StaleAfter)}
	case errors.Is(err, command.ErrNotConfigured):
		return commandProblem{Code: CodeNotImplemented, Msg: "Commands are not configured on this fleet service, and the review asks the ATM itself: " +
			"an administrator sets the commands section of its config (docs/fleet.md, \"Reviewing and correcting identities\")."}
	case errors.Is(err, command.ErrUnpinned):
		return commandProblem{Code: CodeNotPinned, Msg: fmt.Sprintf("%s has no device key pinned, and this fleet acts only on signed replies "+
			"(commands.require_signed_replies): an administrator pins it (atm-fleet devices key set; docs/fleet.md, \"Device keys\"). Nothing was sent.", dev)}
	case errors.Is(err, command.ErrTimeout):
		return commandProblem{Code: CodeReplyTimeout, Msg: fmt.Sprintf("No answer from %s within %v. It may have gone offline a moment ago, "+
			"or its agent has commands off or does not trust this fleet's signing key (mqtt.commands on the agent, docs/mqtt.md), "+
			"or its replies do not carry the signature of the device key pinned for it (docs/fleet.md, \"Device keys\").", dev, timeout)}
	case command.RefusalCode(err) == wire.CodeNotFound:
		return commandProblem{Code: CodeNotFound, Msg: fmt.Sprintf("%s has no such identity or visit (it may have been merged, split or erased since): %v", dev, err)}
	case command.RefusalCode(err) == wire.CodeConflict:
		return commandProblem{Code: CodeIdentityConflict, Msg: fmt.Sprintf("%s: %v. Nothing changed: its identities changed since the review, or do not allow it as asked; review the identity again.", dev, err)}
	case command.RefusalCode(err) == wire.CodeBusy:
		return commandProblem{Code: CodeDeviceBusy, RetryAfter: timeout,
			Msg: fmt.Sprintf("%s was busy and did not run the command: %v. Try again in a moment.", dev, err)}
	case errors.Is(err, command.ErrUnsupported):
		answer := strings.TrimPrefix(err.Error(), command.ErrUnsupported.Error()+" ")
		return commandProblem{Code: CodeAgentUnsupported, Msg: fmt.Sprintf("The agent on %s is older than the identity review and refuses it: upgrade it %s.", dev, answer)}
	case errors.Is(err, command.ErrRefused), errors.Is(err, command.ErrBadResult):
		return commandProblem{Code: CodeDeviceError, Msg: fmt.Sprintf("%s: %v", dev, err)}
	case errors.Is(err, command.ErrBudget):
		var be *command.BudgetError
		wait := time.Minute
		if errors.As(err, &be) {
			wait = be.RetryAfter
		}
		return commandProblem{Code: CodeDeviceBudget, RetryAfter: wait, Msg: fmt.Sprintf("Not sent: %v. Each command uses up one of the "+
			"ids its agent holds against replays (docs/fleet.md, \"Reviewing and correcting identities\").", err)}
	case errors.Is(err, command.ErrBusy), errors.Is(err, errUserBusy):
		return commandProblem{Code: CodeBusy, RetryAfter: timeout, Msg: err.Error() + " Nothing was sent."}
	case errors.Is(err, command.ErrBroker):
		return commandProblem{Code: CodeUnavailable, Msg: fmt.Sprintf("Could not send the command to %s: %v. Nothing was sent.", dev, err)}
	case errors.Is(err, wire.ErrCommand):
		return commandProblem{Code: CodeBadRequest, Msg: err.Error()}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return commandProblem{Code: CodeUnavailable, Msg: "the request ended before the device answered"}
	}
	s.log.Error("fleet web: command", "device", dev, "err", err)
	return commandProblem{Code: CodeInternal, Msg: "internal error (logged)"}
}

// commandDevice is the device a command goes to: it must exist in the
// user's sites, be online and not stale, and commands be configured.
func (s *Server) commandDevice(r *http.Request, site, dev string) (storage.Device, error) {
	d, err := s.device(r, site, dev)
	if err != nil {
		return d, err
	}
	if s.d.Commands == nil {
		return d, command.ErrNotConfigured
	}
	if d.State() != string(wire.StateOnline) {
		return d, errOffline
	}
	if s.stale(d) {
		return d, errStale
	}
	return d, nil
}

// reviewVisits asks the device named by the request's path for the
// identity's visits (identity_visits), for the review page and the API. A
// bad identity id or an unknown device is answered here (false); any other
// error is the caller's to explain (problemOf).
func (s *Server) reviewVisits(w http.ResponseWriter, r *http.Request) (storage.Device, wire.IdentityVisitsResult, command.Sent, bool, error) {
	site, dev, id := r.PathValue("site"), r.PathValue("device"), r.PathValue("id")
	if err := wire.ValidateID(id, 64); err != nil {
		httpError(w, r, CodeBadRequest, "identity id: "+err.Error())
		return storage.Device{}, wire.IdentityVisitsResult{}, command.Sent{}, false, nil
	}
	d, err := s.commandDevice(r, site, dev)
	if errors.Is(err, storage.ErrNotFound) {
		s.fail(w, r, err)
		return d, wire.IdentityVisitsResult{}, command.Sent{}, false, nil
	}
	if err != nil {
		return d, wire.IdentityVisitsResult{}, command.Sent{}, true, err
	}
	release, ok := s.userCommands.take(who(r).User.Name)
	if !ok {
		return d, wire.IdentityVisitsResult{}, command.Sent{}, true, errUserBusy
	}
	defer release()
	res, sent, err := s.d.Commands.IdentityVisits(r.Context(), site, dev, id)
	return d, res, sent, true, err
}

// reviewPage shows an identity's visits as its agent lists them, with the
// split and merge forms. It is not live (no id="live"): each load asks the
// device again.
func (s *Server) reviewPage(w http.ResponseWriter, r *http.Request) {
	d, res, sent, ok, err := s.reviewVisits(w, r)
	if !ok {
		return
	}
	var p commandProblem
	var result *wire.IdentityVisitsResult
	var auth *replyAuth
	if err != nil {
		p = s.problemOf(d, err)
		retryAfter(w, p)
	} else {
		result = &res
		if auth, err = s.replyAuthOf(r, d, sent); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	id := r.PathValue("id")
	s.renderReview(w, r, p.status(), reviewData{Site: d.Site, Device: d.Device, ID: id, Error: p.Msg, Result: result, Auth: auth,
		Others: otherIdentities(d, id, res.Apart)})
}

// replyAuth says whether the reply a page shows was authenticated: signed
// by the device key pinned for the device (Key), or taken unsigned (no
// key pinned).
type replyAuth struct {
	Authenticated bool
	Key           *apiReplyKey
}

// replyAuthOf is the authentication of the reply sent was answered by.
func (s *Server) replyAuthOf(r *http.Request, d storage.Device, sent command.Sent) (*replyAuth, error) {
	a := &replyAuth{Authenticated: sent.Authenticated}
	if !a.Authenticated {
		return a, nil
	}
	k, err := s.replyKey(r, d.Site, d.Device)
	a.Key = k
	return a, err
}

// reviewData is the review page's (and the correction result's) data.
type reviewData struct {
	base
	Site, Device, ID string
	// Error: why there is nothing to review (offline, timeout...).
	Error  string
	Result *wire.IdentityVisitsResult
	// Auth: whether the reply shown (Result, Done) was authenticated.
	Auth *replyAuth
	// Others: identities of the device's last summary to merge into.
	Others []string
	// Done: what a correction did (the result page).
	Done, DoneOther string
}

// Coalesced reports whether a visit of the review stands for more than
// one card insert (the page then explains them).
func (d reviewData) Coalesced() bool {
	if d.Result == nil {
		return false
	}
	return slices.ContainsFunc(d.Result.Visits, func(v wire.ReviewVisit) bool { return len(v.CoalescedTxnIDs) > 0 })
}

func (s *Server) renderReview(w http.ResponseWriter, r *http.Request, code int, data reviewData) {
	page := "review"
	title := "Review " + data.ID
	if data.Done != "" || r.Method == http.MethodPost {
		page, title = "corrected", "Correct "+data.ID
	}
	data.base = s.base(r, title+" · "+data.Device, "fleet")
	data.Static = true
	s.renderCode(w, r, cmp.Or(code, http.StatusOK), page, data)
}

// otherIdentities are the identities of d's last summary other than id,
// and those kept apart from it by a split (a merge replaces that split's
// constraint: the agent accepts it).
func otherIdentities(d storage.Device, id string, apart []string) []string {
	var out []string
	if d.Summary != nil {
		for _, c := range d.Summary.Identities {
			if c.ID != id {
				out = append(out, c.ID)
			}
		}
	}
	for _, a := range apart {
		if a != id && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}

// retryAfter sets Retry-After (whole seconds, rounded up) for a 429 or a
// 503 that says when to try again.
func retryAfter(w http.ResponseWriter, p commandProblem) {
	if st := p.status(); (st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable) && p.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((p.RetryAfter+time.Second-1)/time.Second)))
	}
}

// correction is a split or merge as a form or the API asks it.
type correction struct {
	Site     string   `json:"site"`
	Device   string   `json:"device"`
	Identity string   `json:"identity"`
	Visits   []string `json:"visits,omitempty"` // split
	Into     string   `json:"into,omitempty"`   // merge
}

// correctionInput reads a split or merge: from the form of the review page
// (site, device and identity in the path) or from a JSON object (/api/:
// unknown fields refused).
func correctionInput(r *http.Request, split bool) (correction, error) {
	var in correction
	if strings.HasPrefix(r.URL.Path, "/api/") {
		if err := decodeBody(r, &in); err != nil {
			return in, err
		}
	} else {
		in = correction{Site: r.PathValue("site"), Device: r.PathValue("device"), Identity: r.PathValue("id"), Into: strings.TrimSpace(r.PostFormValue("into"))}
		_ = r.ParseForm()
		in.Visits = r.PostForm["visits"]
	}
	switch {
	case in.Site == "" || in.Device == "":
		return in, coded(CodeBadRequest, "site and device are required")
	case wire.ValidateID(in.Identity, 64) != nil:
		return in, coded(CodeBadRequest, "identity %q: want 1-64 of A-Z a-z 0-9 . _ : -", in.Identity)
	case split && in.Into != "", !split && len(in.Visits) > 0:
		return in, coded(CodeBadRequest, "a split takes visits, a merge into")
	case split && (len(in.Visits) == 0 || len(in.Visits) > wire.MaxSplitVisits):
		return in, coded(CodeBadRequest, "select 1 to %d visits to split off (%d selected)", wire.MaxSplitVisits, len(in.Visits))
	case !split && wire.ValidateID(in.Into, 64) != nil:
		return in, coded(CodeBadRequest, "into %q: want the identity (1-64 of A-Z a-z 0-9 . _ : -) that keeps the visits", in.Into)
	case !split && in.Into == in.Identity:
		return in, coded(CodeBadRequest, "an identity cannot be merged into itself")
	}
	for _, v := range in.Visits {
		if wire.ValidateID(v, 64) != nil {
			return in, coded(CodeBadRequest, "visit id %q", v)
		}
	}
	if split && len(slices.Compact(slices.Sorted(slices.Values(in.Visits)))) != len(in.Visits) {
		return in, coded(CodeBadRequest, "a visit is selected twice")
	}
	return in, nil
}

func (s *Server) split(w http.ResponseWriter, r *http.Request) { s.correct(w, r, true) }
func (s *Server) merge(w http.ResponseWriter, r *http.Request) { s.correct(w, r, false) }
func (s *Server) apiVisits(w http.ResponseWriter, r *http.Request) {
	d, res, sent, ok, err := s.reviewVisits(w, r)
	if !ok {
		return
	}
	if err != nil {
		s.problemOf(d, err).write(w, r)
		return
	}
	if res.Visits == nil {
		res.Visits = []wire.ReviewVisit{}
	}
	writeJSON(w, struct {
		onDevice
		wire.IdentityVisitsResult
		Authenticated bool `json:"authenticated"`
	}{onDevice{d.Site, d.Device}, res, sent.Authenticated})
}

// onDevice names the device of an API answer (its "site" and "device").
type onDevice struct {
	Site   string `json:"site"`
	Device string `json:"device"`
}

// correct sends a split or a merge to the device and answers with what
// the device did. It is audited twice: the request, committed before the
// command is first published (a fleet that stops while waiting still
// leaves it: with no outcome after it, the admin page shows it as
// unknown), and the outcome (applied, refused, no usable answer, not
// sent). A correction refused before anything was signed (device not
// online, budget spent...) is audited once, as not sent.
func (s *Server) correct(w http.ResponseWriter, r *http.Request, split bool) {
	api := strings.HasPrefix(r.URL.Path, "/api/")
	in, err := correctionInput(r, split)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	d, err := s.commandDevice(r, in.Site, in.Device)
	if errors.Is(err, storage.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	p := who(r)
	c := storage.Correction{Site: in.Site, Device: in.Device, Identity: in.Identity, User: p.User.Name, Role: p.User.Role,
		Remote: r.RemoteAddr, Action: storage.ActionSplitIdentity, Visits: len(in.Visits)}
	if !split {
		c.Action, c.Other, c.Visits = storage.ActionMergeIdentity, in.Into, 0
	}
	// The command is not abandoned with the request: a client that goes
	// away does not keep its correction out of the audit log.
	ctx := context.WithoutCancel(r.Context())
	record := func(c storage.Correction) error {
		c.At = s.now().UTC()
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := s.store.RecordCorrection(actx, c); err != nil {
			return err
		}
		s.log.Info("fleet web: identity "+c.Action, "site", c.Site, "device", c.Device, "outcome", c.Outcome,
			"note", storage.CorrectionNote(c), "user", c.User, "remote", c.Remote)
		return nil
	}
	requested := false
	before := func(sent command.Sent) error {
		rq := c
		rq.Outcome, rq.MessageID = storage.OutcomeRequested, sent.MessageID
		if err := record(rq); err != nil {
			return fmt.Errorf("%w: %w", errNoAudit, err)
		}
		requested = true
		return nil
	}
	var out any
	done := reviewData{Site: in.Site, Device: in.Device, ID: in.Identity}
	var sent command.Sent
	if err == nil {
		release, ok := s.userCommands.take(p.User.Name)
		if ok {
			defer release()
		} else {
			err = errUserBusy
		}
	}
	if err == nil {
		if split {
			var res wire.SplitResult
			res, sent, err = s.d.Commands.Split(ctx, in.Site, in.Device, in.Identity, in.Visits, before)
			if err == nil {
				c.Other, c.Visits = res.NewIdentity, res.VisitsMoved
				out = struct {
					onDevice
					wire.SplitResult
					Authenticated bool `json:"authenticated"`
				}{onDevice{in.Site, in.Device}, res, sent.Authenticated}
				done.Done, done.DoneOther = fmt.Sprintf("%s of %s split off into the new identity %s: the two are kept apart from now on.",
					storage.Visits(res.VisitsMoved), in.Identity, res.NewIdentity), res.NewIdentity
			}
		} else {
			var res wire.MergeResult
			res, sent, err = s.d.Commands.Merge(ctx, in.Site, in.Device, in.Identity, in.Into, before)
			if err == nil {
				c.Visits = res.VisitsMoved
				out = struct {
					onDevice
					wire.MergeResult
					Authenticated bool `json:"authenticated"`
				}{onDevice{in.Site, in.Device}, res, sent.Authenticated}
				done.Done, done.DoneOther = fmt.Sprintf("%s merged into %s: %s moved, kept together from now on.",
					in.Identity, in.Into, storage.Visits(res.VisitsMoved)), in.Into
			}
		}
	}
	c.MessageID = sent.MessageID
	switch {
	case err == nil:
		c.Outcome = storage.OutcomeApplied
	case errors.Is(err, command.ErrRefused) && command.RefusalCode(err).MayHaveRun():
		// Answered, but the device may have applied it (internal,
		// too_large).
		c.Outcome, c.Reason = storage.OutcomeUnknown, err.Error()
	case errors.Is(err, command.ErrRefused), errors.Is(err, command.ErrUnsupported):
		c.Outcome, c.Reason = storage.OutcomeRefused, err.Error()
	case !requested:
		// Nothing was published: not online, budget spent, no room,
		// the request's audit failed.
		c.Outcome, c.Reason = storage.OutcomeNotSent, err.Error()
	case !sent.Published && errors.Is(err, command.ErrBroker):
		c.Outcome, c.Reason = storage.OutcomeNotSent, err.Error()
	default:
		// No answer in time, or one that does not fit: the device may
		// have applied it.
		c.Outcome = storage.OutcomeUnknown
	}
	if errors.Is(err, errNoAudit) {
		s.log.Error("fleet web: correction not sent: its request could not be audited", "site", c.Site, "device", c.Device, "err", err)
	} else if aerr := record(c); aerr != nil {
		// Audited whatever the request's fate from here: a client gone
		// does not unmake what the device did.
		if requested {
			s.fail(w, r, fmt.Errorf("the device's answer (%s) could not be audited (its request is): %w", storage.CorrectionNote(c), aerr))
			return
		}
		s.log.Error("fleet web: a correction not sent could not be audited", "site", c.Site, "device", c.Device, "err", aerr)
	}
	if err != nil {
		pr := s.problemOf(d, err)
		if errors.Is(err, errNoAudit) {
			pr = commandProblem{Code: CodeUnavailable, Msg: "The audit log could not record the correction, so it was not sent: nothing changed. Try again in a moment."}
		}
		if c.Outcome == storage.OutcomeUnknown {
			pr.Msg += " The correction may or may not have been applied (the audit log has it as without a usable answer): review the identity again before repeating it."
		}
		if api {
			pr.write(w, r)
			return
		}
		retryAfter(w, pr)
		done.Error = pr.Msg
		s.renderReview(w, r, pr.status(), done)
		return
	}
	if api {
		writeJSON(w, out)
		return
	}
	if done.Auth, err = s.replyAuthOf(r, d, sent); err != nil {
		s.fail(w, r, err)
		return
	}
	s.renderReview(w, r, 0, done)
}

// errNoAudit: a correction's request could not be audited; it was not sent.
var errNoAudit = errors.New("the audit log could not record the request")
