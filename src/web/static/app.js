/* Haven web UI: the little the server cannot do alone. Everything works without it
   except live updates, the file preview and time-zone detection (times then show in
   UTC and forms default to UTC).
   - times: shown in the user's time zone (detected, or chosen in a form; cookie haven_tz)
   - forms: show the date-time picker only for "Schedule for later", confirm rollbacks,
     preview the first rows of an import file with the detected mapping (editable)
   - dashboard: live status and progress over the WebSocket, announced to screen readers
*/
(function () {
  'use strict';

  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute('content') : '';

  function getCookie(name) {
    var parts = document.cookie.split(';');
    for (var i = 0; i < parts.length; i++) {
      var kv = parts[i].trim().split('=');
      if (kv[0] === name) { return decodeURIComponent(kv.slice(1).join('=')); }
    }
    return null;
  }

  function validZone(zone) {
    if (!zone) { return false; }
    try { new Intl.DateTimeFormat('en', { timeZone: zone }); return true; } catch (e) { return false; }
  }

  function setZone(zone) {
    document.cookie = 'haven_tz=' + encodeURIComponent(zone) + '; Path=/; Max-Age=31536000; SameSite=Lax';
  }

  var detected = 'UTC';
  try { detected = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'; } catch (e) { /* old browser */ }
  var zone = getCookie('haven_tz');
  if (!validZone(zone)) {
    zone = detected;
    setZone(zone);
  }

  function formatTimes(root) {
    var fmt;
    try {
      fmt = new Intl.DateTimeFormat(undefined, {
        year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
        timeZone: zone, timeZoneName: 'short'
      });
    } catch (e) { return; }
    var times = root.querySelectorAll('time[datetime]');
    for (var i = 0; i < times.length; i++) {
      var d = new Date(times[i].getAttribute('datetime'));
      if (!isNaN(d.getTime())) { times[i].textContent = fmt.format(d); }
    }
  }

  function announce(text) {
    var live = document.getElementById('live');
    if (!live) { return; }
    live.textContent = '';
    window.setTimeout(function () { live.textContent = text; }, 50);
  }

  /* ---- forms ---- */

  function setupToggles() {
    var blocks = document.querySelectorAll('[data-when]');
    function sync() {
      for (var i = 0; i < blocks.length; i++) {
        var radio = document.getElementById(blocks[i].getAttribute('data-when'));
        blocks[i].hidden = !(radio && radio.checked);
      }
    }
    var radios = document.querySelectorAll('input[type="radio"]');
    for (var i = 0; i < radios.length; i++) { radios[i].addEventListener('change', sync); }
    sync();
  }

  function setupZones() {
    var inputs = document.querySelectorAll('[data-tz-input]');
    if (!inputs.length) { return; }
    var list = document.getElementById('tz-list');
    if (list && Intl.supportedValuesOf) {
      var names = Intl.supportedValuesOf('timeZone');
      var frag = document.createDocumentFragment();
      for (var i = 0; i < names.length; i++) {
        var o = document.createElement('option');
        o.value = names[i];
        frag.appendChild(o);
      }
      list.appendChild(frag);
    }
    for (var j = 0; j < inputs.length; j++) {
      var input = inputs[j];
      // The server filled in the zone of the cookie; the first visit has none yet.
      if (!input.value || (input.value === 'UTC' && !input.hasAttribute('aria-invalid'))) { input.value = zone; }
      // The zone chosen in a form is also the one times are shown in from then on.
      var remember = function (ev) {
        var value = ev.target.value.trim();
        if (validZone(value)) { zone = value; setZone(value); }
      };
      input.addEventListener('input', remember);
      input.addEventListener('change', remember);
    }
  }

  function setupConfirms() { setupConfirmsIn(document); }

  function focusFirstMessage() {
    var ids = ['error-summary', 'form-error', 'preview-count', 'notice'];
    for (var i = 0; i < ids.length; i++) {
      var el = document.getElementById(ids[i]);
      if (el) { el.focus(); return; }
    }
  }

  /* ---- import preview ---- */

  // Reads up to `max` CSV records (RFC 4180 quoting) from text.
  function parseCsv(text, max) {
    var rows = [], row = [], cell = '', quoted = false, i = 0;
    if (text.charCodeAt(0) === 0xFEFF) { i = 1; }
    for (; i < text.length && rows.length < max; i++) {
      var c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') { cell += '"'; i++; } else { quoted = false; }
        } else { cell += c; }
      } else if (c === '"') { quoted = true; }
      else if (c === ',') { row.push(cell); cell = ''; }
      else if (c === '\n' || c === '\r') {
        if (c === '\r' && text[i + 1] === '\n') { i++; }
        row.push(cell); cell = ''; rows.push(row); row = [];
      } else { cell += c; }
    }
    if ((cell !== '' || row.length) && rows.length < max) { row.push(cell); rows.push(row); }
    return rows;
  }

  function setupImportPreview() {
    var file = document.getElementById('file');
    var box = document.getElementById('preview');
    var hidden = document.getElementById('field_mapping');
    if (!file || !box || !hidden || !window.fetch || !file.files) { return; }
    var table = document.getElementById('preview-table');
    var problems = document.getElementById('preview-problems');

    function updateMapping() {
      var selects = table.querySelectorAll('select[data-column]');
      var mapping = {};
      for (var i = 0; i < selects.length; i++) {
        if (selects[i].value) { mapping[selects[i].getAttribute('data-column')] = selects[i].value; }
      }
      hidden.value = JSON.stringify(mapping);
    }

    function render(rows, answer) {
      table.textContent = '';
      var head = document.createElement('thead');
      var names = document.createElement('tr');
      var maps = document.createElement('tr');
      answer.columns.forEach(function (col, index) {
        var th = document.createElement('th');
        th.scope = 'col';
        th.textContent = col.name || ('column ' + (index + 1));
        names.appendChild(th);
        var td = document.createElement('td');
        var label = document.createElement('label');
        label.className = 'visually-hidden';
        label.htmlFor = 'map-' + index;
        label.textContent = 'Patient field for column ' + (col.name || index + 1);
        var select = document.createElement('select');
        select.id = 'map-' + index;
        select.setAttribute('data-column', col.name);
        var none = document.createElement('option');
        none.value = '';
        none.textContent = '(not imported)';
        select.appendChild(none);
        answer.fields.forEach(function (f) {
          var o = document.createElement('option');
          o.value = f;
          o.textContent = f.replace(/_/g, ' ');
          if (f === col.field) { o.selected = true; }
          select.appendChild(o);
        });
        select.addEventListener('change', updateMapping);
        td.appendChild(label);
        td.appendChild(select);
        maps.appendChild(td);
      });
      head.appendChild(names);
      head.appendChild(maps);
      table.appendChild(head);
      var body = document.createElement('tbody');
      rows.slice(1).forEach(function (r) {
        var tr = document.createElement('tr');
        answer.columns.forEach(function (_, index) {
          var td = document.createElement('td');
          td.textContent = r[index] || '';
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
      table.appendChild(body);
      if (answer.problems && answer.problems.length) {
        problems.textContent = answer.problems.join(' ');
        problems.hidden = false;
      } else {
        problems.hidden = true;
      }
      box.hidden = false;
      updateMapping();
      announce('Preview of ' + (rows.length - 1) + ' rows with ' + answer.columns.length + ' columns below the file field.');
    }

    file.addEventListener('change', function () {
      var chosen = file.files[0];
      hidden.value = '';
      if (!chosen) { box.hidden = true; return; }
      chosen.slice(0, 65536).text().then(function (text) {
        var rows = parseCsv(text, 6);
        if (!rows.length) { box.hidden = true; return null; }
        // Only the column names go to the server; the rows stay in the browser.
        return fetch('/import/mapping', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
          body: JSON.stringify({ columns: rows[0] })
        }).then(function (r) { return r.ok ? r.json() : null; }).then(function (answer) {
          if (answer) { render(rows, answer); }
        });
      }).catch(function () { box.hidden = true; });
    });
  }

  /* ---- live dashboard ---- */

  function updateCounts() {
    var lists = document.querySelectorAll('ul.ops[id^="section-"]');
    for (var i = 0; i < lists.length; i++) {
      var key = lists[i].getAttribute('data-section');
      var n = lists[i].children.length;
      var count = document.querySelector('[data-count-for="' + key + '"]');
      if (count) { count.textContent = '(' + n + ')'; }
      var empty = document.querySelector('[data-empty-for="' + key + '"]');
      if (empty) { empty.hidden = n > 0; }
    }
  }

  var rowRequests = {};

  function refreshRow(id) {
    var seq = (rowRequests[id] || 0) + 1;
    rowRequests[id] = seq;
    fetch('/operations/' + id + '/row', { credentials: 'same-origin' })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        // A later request for the same operation wins over a slower earlier one.
        if (!html || rowRequests[id] !== seq) { return; }
        var tpl = document.createElement('template');
        tpl.innerHTML = html.trim();
        var row = tpl.content.firstElementChild;
        if (!row) { return; }
        var old = document.getElementById('op-' + id);
        if (old && old.classList.contains('highlight')) { row.classList.add('highlight'); }
        var target = document.getElementById('section-' + row.getAttribute('data-section'));
        var before = old ? old.getAttribute('data-status') : null;
        if (target) {
          var copies = document.querySelectorAll('li.op[data-id="' + id + '"]');
          for (var i = 0; i < copies.length; i++) { copies[i].parentNode.removeChild(copies[i]); }
          target.insertBefore(row, target.firstChild);
        } else if (old) {
          old.parentNode.replaceChild(row, old);
        } else {
          return;
        }
        formatTimes(row);
        setupConfirmsIn(row);
        updateCounts();
        if (before !== row.getAttribute('data-status')) {
          var title = row.querySelector('h3 a');
          var status = row.querySelector('[data-role="status"]');
          announce((title ? title.textContent : 'Operation') + ': ' + (status ? status.textContent : ''));
        }
      })
      .catch(function () { /* the next event or a reload shows it */ });
  }

  function setupConfirmsIn(root) {
    var forms = root.querySelectorAll('form[data-confirm]');
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener('submit', function (ev) {
        if (!window.confirm(ev.currentTarget.getAttribute('data-confirm'))) { ev.preventDefault(); }
      });
    }
  }

  function updateProgress(id, progress) {
    var bar = document.getElementById('progress-' + id);
    if (!bar) { refreshRow(id); return; }
    var percent = Math.round(progress.percent);
    bar.value = progress.percent;
    bar.textContent = percent + ' %';
    var text = bar.parentNode.querySelector('[data-role="progress-text"]');
    if (text) {
      text.textContent = progress.total ? percent + ' % (' + progress.processed + ' of ' + progress.total + ')'
        : (progress.processed ? progress.processed + ' so far' : 'starting…');
    }
  }

  function updateUnread() {
    fetch('/api/v2/notifications?limit=1', { credentials: 'same-origin', headers: { 'X-CSRF-Token': csrf } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        var badge = document.getElementById('unread');
        var count = document.getElementById('unread-count');
        if (badge && count) {
          count.textContent = body.unread_count;
          badge.hidden = !body.unread_count;
        }
      })
      .catch(function () { /* not important */ });
  }

  function setupLive() {
    var lists = document.querySelectorAll('ul.ops');
    if (!lists.length || !window.WebSocket || !csrf) { return; }
    var state = document.querySelector('[data-live-state]');
    // The newest event when the page was read: the socket replays what came after it.
    var last = document.body.getAttribute('data-last-event');
    var delay = 1000;
    function connect() {
      var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/v2/ws' +
        (last ? '?after=' + encodeURIComponent(last) : '');
      var socket = new WebSocket(url);
      var opened = false;
      socket.onopen = function () {
        opened = true;
        delay = 1000;
        document.body.setAttribute('data-live', 'on');
        if (state) { state.textContent = 'This page updates by itself.'; }
      };
      socket.onmessage = function (message) {
        var ev;
        try { ev = JSON.parse(message.data); } catch (e) { return; }
        if (!ev || !ev.operation_id) { return; }
        last = ev.event_id || last;
        if (ev.event_type === 'operation.progress') {
          updateProgress(ev.operation_id, ev.progress);
        } else {
          refreshRow(ev.operation_id);
          updateUnread();
        }
      };
      socket.onclose = function () {
        // Refused before opening: the event to resume after may be gone (purged).
        if (!opened) { last = null; }
        document.body.setAttribute('data-live', 'off');
        if (state) { state.textContent = 'Live updates paused: reconnecting…'; }
        window.setTimeout(connect, delay);
        delay = Math.min(delay * 2, 30000);
      };
    }
    connect();
  }

  function start() {
    formatTimes(document);
    setupToggles();
    setupZones();
    setupConfirms();
    setupImportPreview();
    setupLive();
    focusFirstMessage();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
}());
