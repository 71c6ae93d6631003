// Live updates for the fleet pages: one EventSource on /events; on a change
// the page's <main> is re-fetched and swapped in (server-rendered, no
// client templates). While the user is typing a note or a control in the
// page has the focus, updates wait (applied when the focus leaves).
(function () {
  'use strict';
  var main = document.getElementById('live');
  var dot = document.getElementById('live-state');
  if (!main || !dot || !window.EventSource) return;
  var pending = null, stale = false, opened = false;
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
  function refresh() {
    pending = null;
    if (busy()) { stale = true; state('stale', 'updates waiting while you work in the page'); return; }
    fetch(location.href, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
      .then(function (r) { if (!r.ok || r.redirected) throw new Error('HTTP ' + r.status); return r.text(); })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, 'text/html').getElementById('live');
        if (next) main.innerHTML = next.innerHTML;
        document.body.setAttribute('data-updated', String(Date.now()));
        stale = false; state('on', 'live');
      })
      .catch(function (e) { state('off', 'refresh failed: ' + e.message); });
  }
  function schedule() { if (!pending) pending = setTimeout(refresh, 250); }
  var es = new EventSource('/events');
  es.addEventListener('open', function () { state('on', 'live'); if (opened) schedule(); opened = true; });
  es.addEventListener('error', function () { state('off', 'reconnecting'); });
  es.addEventListener('change', schedule);
  document.addEventListener('focusout', function () { if (stale) schedule(); });
})();
