// Live updates for the fleet pages: one EventSource on /events; on a change
// the page's <main> is re-fetched and swapped in (server-rendered, no
// client templates). While the user is typing a note or a control in the
// page has the focus, updates wait (applied when the focus leaves).
// When the stream is refused the page asks the server whether the session
// is still valid: if not (signed out, expired, new session key after a
// restart) it says so with a link to sign in again; otherwise it keeps
// retrying with backoff.
(function () {
  'use strict';
  var main = document.getElementById('live');
  var dot = document.getElementById('live-state');
  if (!main || !dot || !window.EventSource) return;
  var pending = null, stale = false, opened = false, ended = false;
  var es = null, retry = null, backoff = 1000;
  // Busy: typing a note, or any control in the page has the focus (a
  // keyboard user on a button or link would lose their place if <main> were
  // replaced under them).
  function busy() {
    var a = document.activeElement;
    if (a && a !== main && main.contains(a)) return true;
    var notes = main.querySelectorAll('form.act input[name=note]');
    for (var i = 0; i < notes.length; i++) if (notes[i].value) return true;
    return false;
  }
  function state(cls, title) { dot.className = 'live ' + cls; dot.title = title; }
  // The session is gone: stop live updates and offer to sign in again,
  // back to this page (the sign-in form honours ?next=).
  function sessionEnded() {
    if (ended) return;
    ended = true;
    if (es) es.close();
    clearTimeout(retry); clearTimeout(pending);
    state('off', 'signed out: live updates stopped');
    var p = document.createElement('p');
    p.id = 'session-ended'; p.className = 'session-ended'; p.setAttribute('role', 'alert');
    var a = document.createElement('a');
    a.href = '/login?next=' + encodeURIComponent(location.pathname + location.search);
    a.textContent = 'Sign in again';
    p.appendChild(document.createTextNode('Your session has ended (signed out, expired, or the service restarted): this page is no longer updated. '));
    p.appendChild(a);
    p.appendChild(document.createTextNode(' to continue.'));
    main.parentNode.insertBefore(p, main);
    // Forms would only be refused now.
    var buttons = main.querySelectorAll('form.act button');
    for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = true; buttons[i].title = 'sign in again first'; }
  }
  // signedOut: a response that means "no valid session": 401, or a page
  // request redirected to the sign-in page.
  function signedOut(r) {
    return r.status === 401 || (r.redirected && new URL(r.url).pathname === '/login');
  }
  function refresh() {
    pending = null;
    if (ended) return;
    if (busy()) { stale = true; state('stale', 'updates waiting while you work in the page'); return; }
    fetch(location.href, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
      .then(function (r) {
        if (signedOut(r)) { sessionEnded(); return null; }
        if (!r.ok || r.redirected) throw new Error('HTTP ' + r.status);
        return r.text();
      })
      .then(function (html) {
        if (html === null || ended) return;
        var next = new DOMParser().parseFromString(html, 'text/html').getElementById('live');
        if (next) main.innerHTML = next.innerHTML;
        document.body.setAttribute('data-updated', String(Date.now()));
        stale = false; state('on', 'live');
      })
      .catch(function (e) { state('off', 'refresh failed: ' + e.message); });
  }
  function schedule() { if (!pending && !ended) pending = setTimeout(refresh, 250); }
  // The browser gave up on the stream (it does on any HTTP error, 401
  // included, and does not say which): ask whether the session is still
  // valid; if it is (or the service does not answer), try again later.
  function check() {
    fetch('/api/v1/session', { credentials: 'same-origin', cache: 'no-store', headers: { 'Accept': 'application/json' } })
      .then(function (r) { if (signedOut(r)) sessionEnded(); else later(); }, later);
  }
  function later() {
    if (ended) return;
    state('off', 'reconnecting in ' + Math.round(backoff / 1000) + ' s');
    clearTimeout(retry);
    retry = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 30000);
  }
  function connect() {
    if (ended) return;
    es = new EventSource('/events');
    es.addEventListener('open', function () { backoff = 1000; state('on', 'live'); if (opened) schedule(); opened = true; });
    es.addEventListener('error', function () {
      if (ended) return;
      if (es.readyState === EventSource.CLOSED) { state('off', 'connection refused: checking the session'); check(); return; }
      state('off', 'reconnecting'); // the browser retries by itself
    });
    es.addEventListener('change', schedule);
  }
  connect();
  document.addEventListener('focusout', function () { if (stale) schedule(); });
})();
