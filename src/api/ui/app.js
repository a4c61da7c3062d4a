// The status page: polls the API (GET status every few seconds, GET status/history for the
// charts, GET crr/failed for the failed list) and sends pause, resume and retry requests.
// Everything is drawn here by hand (DOM and <canvas>): no library, no build step.
//
// Token: when the API needs a bearer token, it is typed in the header's field and kept in
// sessionStorage (this tab only). A `#token=...` in the address is taken the same way, then
// removed from the address.
// Actions in the address (for scripts and tests that cannot click): `#pause=<site>`,
// `#resume=<site>` click that site's button once the sites are shown; the outcome is written
// to the hidden `#action-result` element.
'use strict';

(function () {
  const API = '/_/backbeat/api/';
  const TOKEN_KEY = 'backbeat.token';
  const POLL_MS = 3000;
  const HISTORY_MS = 30000;
  const $ = (id) => document.getElementById(id);

  const page = {
    sites: [],
    pendingAction: null,
    failedNext: null,
    historyTimer: null,
  };

  // ---------- API ----------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }

  async function api(method, route, body) {
    const headers = {};
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(API + route, init);
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const err = new Error((data && data.description) || 'HTTP ' + resp.status);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function notice(text, isError) {
    const n = $('notice');
    if (!text) {
      n.hidden = true;
      n.textContent = '';
      return;
    }
    n.hidden = false;
    n.textContent = text;
    n.className = isError ? 'notice error' : 'notice';
  }

  function apiFailed(err) {
    if (err.status === 401) {
      notice('The API needs a token: enter it in the field above.', true);
    } else if (err.status === 403) {
      notice('The API refuses this address (server.allow_from).', true);
    } else {
      notice('The API did not answer: ' + err.message, true);
    }
  }

  // ---------- formatting ----------

  function fmtBytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let v = Number(n);
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(1)) + ' ' + units[i];
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return '–';
    const v = Number(s);
    if (v < 1) return Math.round(v * 1000) + ' ms';
    if (v < 60) return v.toFixed(1) + ' s';
    if (v < 3600) return Math.floor(v / 60) + ' min ' + Math.round(v % 60) + ' s';
    if (v < 86400) return Math.floor(v / 3600) + ' h ' + Math.round((v % 3600) / 60) + ' min';
    return Math.floor(v / 86400) + ' d ' + Math.round((v % 86400) / 3600) + ' h';
  }

  function fmtNumber(n) {
    const v = Number(n);
    if (!isFinite(v)) return '–';
    if (Math.abs(v) >= 100 || Number.isInteger(v)) return Math.round(v).toLocaleString('en');
    return v.toFixed(2);
  }

  // Axis labels: short, exact enough to tell gridlines apart.
  function fmtAxis(n) {
    const v = Number(n);
    if (v === 0) return '0';
    if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en');
    return String(parseFloat(v.toPrecision(3)));
  }

  function fmtTime(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.toLocaleString('en-GB', { hour12: false });
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children || []) e.appendChild(c);
    return e;
  }

  function td(text, cls) {
    const attrs = { text: text === undefined || text === null ? '–' : String(text) };
    if (cls) attrs.class = cls;
    return el('td', attrs);
  }

  function setOptions(select, names) {
    const keep = select.value;
    const have = Array.from(select.options).map((o) => o.value);
    if (have.join('\u0000') === names.join('\u0000')) return;
    select.textContent = '';
    for (const n of names) select.appendChild(el('option', { value: n, text: n }));
    if (names.includes(keep)) select.value = keep;
  }

  // ---------- sites and sources ----------

  function siteRow(s) {
    const tr = el('tr', { 'data-site': s.name });
    tr.appendChild(td(s.name));
    const state = el('span', { class: 'state state-' + s.state, text: s.state });
    tr.appendChild(el('td', { class: 'site-state' }, [state]));
    tr.appendChild(td(fmtNumber(s.backlog.ops) + ' (' + fmtBytes(s.backlog.bytes) + ')', 'num'));
    tr.appendChild(td(fmtSeconds(s.oldestPendingSeconds), 'num'));
    tr.appendChild(td(fmtSeconds(s.lag.p50) + ' / ' + fmtSeconds(s.lag.p99), 'num'));
    tr.appendChild(
      td(fmtNumber(s.throughput.opsPerSecond) + '/s, ' + fmtBytes(s.throughput.bytesPerSecond) + '/s', 'num')
    );
    tr.appendChild(td(fmtNumber(s.completions24h), 'num'));
    const reasons = Object.entries(s.failuresByReason || {})
      .map(([r, n]) => r + ' ' + n)
      .join(', ');
    tr.appendChild(td(fmtNumber(s.failures24h) + (reasons ? ' (' + reasons + ')' : ''), 'num'));
    const eta = s.etaSeconds === null || s.backlog.ops === 0 ? '–' : fmtSeconds(s.etaSeconds);
    tr.appendChild(td(eta, 'num'));
    tr.appendChild(
      td(s.lastError ? fmtTime(s.lastError.at) + ': ' + s.lastError.message : '–', s.lastError ? 'err' : null)
    );
    const paused = s.state === 'paused';
    const pause = el('button', {
      type: 'button',
      text: 'Pause',
      disabled: paused,
      'data-action': 'pause',
      'data-site': s.name,
    });
    const resume = el('button', {
      type: 'button',
      text: 'Resume',
      disabled: !paused,
      'data-action': 'resume',
      'data-site': s.name,
    });
    pause.addEventListener('click', () => pauseResume('pause', s.name));
    resume.addEventListener('click', () => pauseResume('resume', s.name));
    tr.appendChild(el('td', { class: 'actions' }, [pause, resume]));
    return tr;
  }

  function renderStatus(st) {
    const body = $('sites').tBodies[0];
    body.textContent = '';
    for (const s of st.sites) body.appendChild(siteRow(s));
    const src = $('sources').tBodies[0];
    src.textContent = '';
    if (st.sources.length === 0) {
      src.appendChild(el('tr', {}, [el('td', { text: 'No source configured.', colSpan: 3 })]));
    }
    for (const s of st.sources) {
      src.appendChild(
        el('tr', {}, [td(s.bucket), td(s.lastFullScan ? fmtTime(s.lastFullScan) : 'not yet'), td(s.watching ? 'yes' : 'no')])
      );
    }
    page.sites = st.sites.map((s) => s.name);
    setOptions($('chart-site'), page.sites);
    setOptions($('failed-site'), page.sites);
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString('en-GB', { hour12: false });
  }

  async function refreshStatus() {
    try {
      const st = await api('GET', 'status');
      notice('');
      renderStatus(st);
      runPendingAction();
      return true;
    } catch (err) {
      apiFailed(err);
      return false;
    }
  }

  async function pauseResume(action, site) {
    const result = $('action-result');
    try {
      await api('POST', 'crr/' + action + '/' + encodeURIComponent(site));
      result.textContent = (action === 'pause' ? 'paused ' : 'resumed ') + site;
      await refreshStatus();
    } catch (err) {
      result.textContent = action + ' ' + site + ' failed: ' + err.message;
      apiFailed(err);
    }
  }

  function runPendingAction() {
    const a = page.pendingAction;
    if (!a) return;
    page.pendingAction = null;
    const button = Array.from(document.querySelectorAll('button[data-action]')).find(
      (b) => b.getAttribute('data-action') === a.action && b.getAttribute('data-site') === a.site
    );
    if (!button) {
      $('action-result').textContent = a.action + ' ' + a.site + ' failed: no such site';
      return;
    }
    button.click();
  }

  // ---------- charts ----------

  function drawChart(canvas, start, stepMs, series, yFormat) {
    const ratio = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || canvas.width;
    const cssH = canvas.clientHeight || canvas.height;
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    const left = 64;
    const right = 12;
    const top = 20;
    const bottom = 24;
    const w = cssW - left - right;
    const h = cssH - top - bottom;
    const n = series.length ? series[0].values.length : 0;
    let max = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
    if (max <= 0) max = 1;
    // A round top: 1, 2 or 5 times a power of ten.
    const p = Math.pow(10, Math.floor(Math.log10(max)));
    const top10 = [1, 2, 5, 10].map((m) => m * p).find((m) => m >= max);
    g.font = '11px system-ui, sans-serif';
    g.strokeStyle = '#e3e7ee';
    g.fillStyle = '#667085';
    g.lineWidth = 1;
    // Five gridlines: a fifth of 1, 2 or 5 times a power of ten is a round number.
    const lines = 5;
    for (let i = 0; i <= lines; i++) {
      const y = top + h - (h * i) / lines;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(left + w, y);
      g.stroke();
      g.textAlign = 'right';
      g.fillText(yFormat((top10 * i) / lines), left - 6, y + 4);
    }
    const ticks = 6;
    for (let i = 0; i <= ticks && n > 1; i++) {
      const idx = Math.round(((n - 1) * i) / ticks);
      const x = left + (w * idx) / (n - 1);
      const t = new Date(start + idx * stepMs);
      const label = t.toLocaleTimeString('en-GB', { hour12: false, hour: '2-digit', minute: '2-digit' });
      g.textAlign = i === 0 ? 'left' : i === ticks ? 'right' : 'center';
      g.fillText(label, x, top + h + 16);
    }
    if (n === 0) return;
    series.forEach((s, k) => {
      g.strokeStyle = s.color;
      g.fillStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      let drawing = false;
      s.values.forEach((v, i) => {
        if (v === null) {
          drawing = false;
          return;
        }
        const x = n === 1 ? left + w / 2 : left + (w * i) / (n - 1);
        const y = top + h - (h * v) / top10;
        if (drawing) g.lineTo(x, y);
        else g.moveTo(x, y);
        drawing = true;
        if (s.dots) g.fillRect(x - 1.5, y - 1.5, 3, 3);
      });
      g.stroke();
      g.textAlign = 'left';
      g.fillText(s.label, left + 8 + k * 140, 13);
    });
  }

  async function refreshHistory() {
    const site = $('chart-site').value;
    if (!site) return;
    const hours = $('chart-hours').value;
    let h;
    try {
      h = await api('GET', 'status/history?hours=' + encodeURIComponent(hours));
    } catch (err) {
      apiFailed(err);
      return;
    }
    const s = h.sites.find((x) => x.name === site);
    if (!s) return;
    const step = h.bucketSeconds * 1000;
    const perSecond = (arr) => arr.map((v) => v / h.bucketSeconds);
    drawChart($('chart-backlog'), h.startMs, step, [{ label: 'backlog (versions)', color: '#1565c0', values: s.backlog }], fmtAxis);
    drawChart(
      $('chart-throughput'),
      h.startMs,
      step,
      [
        { label: 'completed /s', color: '#1565c0', values: perSecond(s.completed) },
        { label: 'failed /s', color: '#c62828', values: perSecond(s.failed) },
      ],
      fmtAxis
    );
    drawChart(
      $('chart-lag'),
      h.startMs,
      step,
      [
        { label: 'mean lag', color: '#1565c0', values: s.lagMean, dots: true },
        { label: 'largest lag', color: '#ef6c00', values: s.lagMax, dots: true },
      ],
      fmtSeconds
    );
  }

  // ---------- failed list ----------

  async function loadFailed(marker) {
    const site = $('failed-site').value;
    const body = $('failed').tBodies[0];
    if (!site) return;
    let route = 'crr/failed?sitename=' + encodeURIComponent(site);
    if (marker !== null && marker !== undefined) route += '&marker=' + encodeURIComponent(marker);
    let pageData;
    try {
      pageData = await api('GET', route);
    } catch (err) {
      apiFailed(err);
      return;
    }
    body.textContent = '';
    const versions = pageData.Versions || [];
    if (versions.length === 0) {
      body.appendChild(el('tr', {}, [el('td', { text: 'No failed version.', colSpan: 9 })]));
    }
    for (const v of versions) {
      const tr = el('tr');
      tr.appendChild(td(v.Bucket, 'key'));
      tr.appendChild(td(v.Key, 'key'));
      tr.appendChild(td(v.VersionId, 'key'));
      tr.appendChild(td(fmtBytes(v.Size), 'num'));
      tr.appendChild(td(v.Reason));
      tr.appendChild(td(v.Attempts, 'num'));
      tr.appendChild(td(v.LastError, v.LastError ? 'err' : null));
      tr.appendChild(td(v.LastAttempt ? fmtTime(v.LastAttempt) : fmtTime(v.LastModified)));
      const retry = el('button', { type: 'button', text: 'Retry' });
      retry.addEventListener('click', () => retryOne(v, site, retry));
      tr.appendChild(el('td', {}, [retry]));
      body.appendChild(tr);
    }
    page.failedNext = pageData.IsTruncated ? pageData.NextMarker : null;
    $('failed-next').disabled = page.failedNext === null;
  }

  async function retryOne(v, site, button) {
    button.disabled = true;
    try {
      const out = await api('POST', 'crr/failed', [
        { Bucket: v.Bucket, Key: v.Key, VersionId: v.VersionId, StorageClass: v.StorageClass || site },
      ]);
      button.textContent = out && out.length ? 'queued again' : 'not queued';
    } catch (err) {
      button.textContent = 'retry failed';
      button.disabled = false;
      apiFailed(err);
    }
  }

  // ---------- start ----------

  function readHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    const t = params.get('token');
    if (t !== null) {
      sessionStorage.setItem(TOKEN_KEY, t);
      params.delete('token');
      const rest = params.toString();
      history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    }
    for (const action of ['pause', 'resume']) {
      const site = params.get(action);
      if (site) page.pendingAction = { action, site };
    }
  }

  function start() {
    readHash();
    $('token').value = token();
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $('token').value);
      refreshAll();
    });
    $('token-clear').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $('token').value = '';
      refreshAll();
    });
    $('chart-site').addEventListener('change', refreshHistory);
    $('chart-hours').addEventListener('change', refreshHistory);
    $('failed-site').addEventListener('change', () => loadFailed(null));
    $('failed-refresh').addEventListener('click', () => loadFailed(null));
    $('failed-first').addEventListener('click', () => loadFailed(null));
    $('failed-next').addEventListener('click', () => {
      if (page.failedNext !== null) loadFailed(page.failedNext);
    });
    refreshAll();
    setInterval(refreshStatus, POLL_MS);
    page.historyTimer = setInterval(refreshHistory, HISTORY_MS);
  }

  async function refreshAll() {
    if (await refreshStatus()) {
      await Promise.all([refreshHistory(), loadFailed(null)]);
    }
  }

  start();
})();
