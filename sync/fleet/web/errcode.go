package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/periocular/atm-agent/sync/fleet/storage"
	"github.com/periocular/atm-agent/sync/wire"
)

// Code is the machine-readable reason of an error answer: the "code" of
// every JSON error ({"error": text, "code": code}). A program decides by
// it; the text is for people and its words may change from release to
// release. Each code has one status (codeStatus), and every error goes
// out through httpError or writeAPIError, which take a code: no answer
// can leave it out. docs/fleet.md "Error codes" says what each means and
// whether a retry can succeed; docs/openapi/fleet.yaml lists them
// (TestOpenAPIMatchesServer produces each one). Where a meaning is the
// agent's trigger API's, so is the name (bad_json, unknown_field,
// unauthorized, not_found, method_not_allowed, too_large, wrong_host,
// busy).
type Code string

const (
	CodeBadJSON          Code = "bad_json"           // 400: the body is not a JSON object of the fields asked for
	CodeUnknownField     Code = "unknown_field"      // 400: a member the request does not take
	CodeBadRequest       Code = "bad_request"        // 400: a parameter or field value the API does not take
	CodeUnauthorized     Code = "unauthorized"       // 401: not signed in, or a wrong user name or password
	CodeForbidden        Code = "forbidden"          // 403: the role does not allow it
	CodeCSRF             Code = "csrf"               // 403: missing or wrong CSRF token, or a cross-origin request
	CodeNotFound         Code = "not_found"          // 404: no such device, alert, key, identity (on the device) or endpoint
	CodeMethodNotAllowed Code = "method_not_allowed" // 405: the endpoint does not take the method (Allow names those it takes)

	// 409: what the state does not allow.
	CodeAlreadyAcknowledged Code = "already_acknowledged" // another user acknowledged the alert
	CodeAlreadyResolved     Code = "already_resolved"     // the alert is resolved (by another user)
	CodeDeviceOnline        Code = "device_online"        // a device to remove is online and heard from
	CodeDeviceActiveAlerts  Code = "device_active_alerts" // a device to remove has active alerts
	CodeDeviceOffline       Code = "device_offline"       // a command's device is not online
	CodeDeviceStale         Code = "device_stale"         // a command's device is online but not heard from for web.stale_after
	CodeNotPinned           Code = "not_pinned"           // commands.require_signed_replies and no key pinned for the device
	CodeIdentityConflict    Code = "identity_conflict"    // the device refused a correction as its identities stand (agent_code conflict)
	CodeTooLarge            Code = "too_large"            // 413: a body over 64 KiB
	CodeWrongHost           Code = "wrong_host"           // 421: a Host the service does not answer to
	CodeThrottled           Code = "throttled"            // 429: too many failed sign-ins
	CodeDeviceBudget        Code = "device_budget"        // 429: the device's command budget is spent
	CodeInternal            Code = "internal"             // 500: the service failed (logged)
	CodeNotImplemented      Code = "not_implemented"      // 501: commands not configured (or a store backed up with its own tools)
	CodeAgentUnsupported    Code = "agent_unsupported"    // 502: the device's agent is older than the command
	CodeDeviceError         Code = "device_error"         // 502: the device refused otherwise (agent_code) or answered what does not fit
	CodeBusy                Code = "busy"                 // 503: every command slot (or password check slot) taken; Retry-After
	CodeDeviceBusy          Code = "device_busy"          // 503: the device did not run the command (agent_code busy); Retry-After
	CodeUnavailable         Code = "unavailable"          // 503: not connected to the broker, the audit log unwritable
	CodeReplyTimeout        Code = "reply_timeout"        // 504: no reply within commands.reply_timeout
)

// codeStatus is each code's HTTP status.
var codeStatus = map[Code]int{
	CodeBadJSON: 400, CodeUnknownField: 400, CodeBadRequest: 400,
	CodeUnauthorized: 401,
	CodeForbidden:    403, CodeCSRF: 403,
	CodeNotFound:            404,
	CodeMethodNotAllowed:    405,
	CodeAlreadyAcknowledged: 409, CodeAlreadyResolved: 409, CodeDeviceOnline: 409, CodeDeviceActiveAlerts: 409,
	CodeDeviceOffline: 409, CodeDeviceStale: 409, CodeNotPinned: 409, CodeIdentityConflict: 409,
	CodeTooLarge:  413,
	CodeWrongHost: 421,
	CodeThrottled: 429, CodeDeviceBudget: 429,
	CodeInternal:         500,
	CodeNotImplemented:   501,
	CodeAgentUnsupported: 502, CodeDeviceError: 502,
	CodeBusy: 503, CodeDeviceBusy: 503, CodeUnavailable: 503,
	CodeReplyTimeout: 504,
}

// Status is the code's HTTP status (500 for a code the table lacks).
func (c Code) Status() int {
	if s, ok := codeStatus[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// codedError is an error answered with its code: its text is the
// answer's "error".
type codedError struct {
	code Code
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// coded is fmt.Errorf's error answered with code (s.fail).
func coded(code Code, format string, a ...any) error {
	return &codedError{code, fmt.Errorf(format, a...)}
}

// stateCodes: the store's refusals for the state of an alert or device.
var stateCodes = []struct {
	err  error
	code Code
}{
	{storage.ErrAcknowledged, CodeAlreadyAcknowledged},
	{storage.ErrResolved, CodeAlreadyResolved},
	{storage.ErrDeviceOnline, CodeDeviceOnline},
	{storage.ErrActiveAlerts, CodeDeviceActiveAlerts},
}

// codeOf is the code and text an error is answered with (s.fail); ok
// false for an error of the service's own (answered internal, logged).
func codeOf(err error) (code Code, msg string, ok bool) {
	var tooLarge *http.MaxBytesError
	var ce *codedError
	var nf *storage.NotFoundError
	switch {
	case errors.As(err, &tooLarge):
		return CodeTooLarge, fmt.Sprintf("request body larger than %d bytes", tooLarge.Limit), true
	case errors.As(err, &ce):
		return ce.code, ce.Error(), true
	case errors.As(err, &nf):
		// What was asked for, not the store's wrapping of it: the same
		// for a device or alert outside the user's sites.
		return CodeNotFound, nf.Error(), true
	case errors.Is(err, storage.ErrNotFound):
		return CodeNotFound, err.Error(), true
	}
	for _, sc := range stateCodes {
		if errors.Is(err, sc.err) {
			return sc.code, err.Error(), true
		}
	}
	return CodeInternal, "internal error (logged)", false
}

// apiError is the body of every JSON error.
type apiError struct {
	Error string `json:"error"`
	Code  Code   `json:"code"`
	// AgentCode is the agent's refusal code, when it refused a command.
	AgentCode wire.ReplyCode `json:"agent_code,omitempty"`
	// Alert is the alert as it stands, for a conflict on it.
	Alert *APIAlert `json:"alert,omitempty"`
}

// httpError answers an error: as JSON ({"error": ..., "code": ...})
// under /api/ and to a client that asks for JSON, as plain text
// elsewhere; with the code's status.
func httpError(w http.ResponseWriter, r *http.Request, code Code, msg string) {
	if strings.HasPrefix(r.URL.Path, "/api/") || wantsJSON(r) {
		writeAPIError(w, apiError{Error: msg, Code: code})
		return
	}
	http.Error(w, msg, code.Status())
}

// writeAPIError answers e as JSON with its code's status.
func writeAPIError(w http.ResponseWriter, e apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Code.Status())
	_ = json.NewEncoder(w).Encode(e)
}
