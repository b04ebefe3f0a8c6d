/* homemesh owner's dashboard. Served by the node at /dashboard; talks only to that node (GET /status,
   GET /dashboard/data, GET /ledger/explain/{id}) with the editor's token. Everything a peer controls (ids,
   reasons, texts) goes into the page as text, never as HTML. Plain ES2017. */
'use strict';

(function () {
  const EVERY_MS = 10000;
  const SVG = 'http://www.w3.org/2000/svg';
  const S = {token: '', status: null, data: null, selected: '', timer: null};

  const page = window.homemeshPage;  // /editor/page.js: elements, the message line, the token, requests
  const {$, el} = page;
  const svg = (tag, attrs) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  };
  const short = (id) => String(id || '').slice(0, 12);
  const num = (x, digits) => (typeof x === 'number' && isFinite(x) ? x.toFixed(digits === undefined ? 2 : digits) : '–');
  const mib = (bytes) => (bytes / 1048576).toFixed(0) + ' MiB';
  const clock = (ms) => new Date(ms).toLocaleTimeString([], {hour12: false});
  const when = (ms) => new Date(ms).toLocaleString([], {hour12: false});

  const showMessage = page.showMessage;
  const readToken = async () => { S.token = await page.readToken(); };
  const api = (path) => page.api(S.token, 'GET', path);

  function fill(tbody, rows, empty, columns) {
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el('tr', {}, el('td', {class: 'empty', colspan: columns, text: empty})));
      return;
    }
    for (const cells of rows) tbody.append(el('tr', {}, ...cells.map((c) => (c instanceof Node ? el('td', {}, c) : el('td', {text: c})))));
  }

  // ---------------------------------------------------------------- the parts of the page

  function renderTop(st) {
    $('#node-id').textContent = short(st.node);
    $('#node-id').title = st.node;
    const r = $('#reachability');
    r.textContent = 'reachability: ' + st.reachability;
    r.className = 'pill ' + ({public: 'ok', private: 'warn'}[st.reachability] || '');
    $('#paused').hidden = !st.paused;
    $('#paused').textContent = st.paused ? 'paused: ' + st.paused : '';
    $('#fault').hidden = !st.fault;  // (a node started with --fault misbehaves on purpose)
    $('#fault').textContent = st.fault ? 'fault: ' + st.fault : '';
  }

  function renderReach(st) {
    const dl = $('#reach');
    dl.replaceChildren();
    const add = (k, v) => dl.append(el('dt', {text: k}), el('dd', {text: v}));
    add('reachability', st.reachability);
    add('transport', st.transport);
    add('listening on', (st.addresses || []).join(', ') || st.listen || '–');
    const counts = {};
    for (const p of st.peers) if (p.connected) counts[p.connection || 'unknown'] = (counts[p.connection || 'unknown'] || 0) + 1;
    fill($('#kinds tbody'), Object.keys(counts).sort().map((k) => [k, String(counts[k])]), 'no peer linked', 2);
  }

  function renderSteps(data) {
    fill($('#steps tbody'), ['hour', 'day'].map((w) => {
      const s = data.steps[w] || {};
      return ['last ' + w, String(s.ok || 0), String(s.failed || 0), String(s.refused || 0), String(s.paid || 0),
        num(s.credits, 4)];
    }), '', 6);
    $('#steps tbody').dataset.ready = 'true';
    $('#steps-since').textContent = 'ok, failed, refused: steps peers asked of this node since ' + when(data.since) +
      ' (kept in memory); paid and credits: from the ledger.';
  }

  function meter(label, used, max, text) {
    const m = el('div', {class: 'meter' + (used === null ? ' unmeasured' : ''), 'data-limit': label},
      el('div', {class: 'label'}, el('span', {text: label}), el('span', {text: text})));
    if (used !== null && max) {
      const bar = el('div', {class: 'bar'}, el('div', {class: 'fill'}));
      bar.firstChild.style.width = Math.min(100, 100 * used / max).toFixed(1) + '%';
      m.append(bar);
    }
    return m;
  }

  function renderLimits(st, data) {
    const box = $('#limits');
    box.replaceChildren();
    const w = st.worker || {};
    const inUse = (w.known || 0) + (w.stranger || 0);
    box.append(meter('step slots', inUse, st.max_steps, inUse + ' of ' + st.max_steps + ' in use'));
    const used = data.use && typeof data.use.memory === 'number' ? data.use.memory : null;
    const memText = used === null ? (st.max_memory ? 'cap ' + mib(st.max_memory) + '; use not measured' : 'no cap; use not measured')
      : mib(used) + ' of ' + (st.max_memory ? mib(st.max_memory) : 'no cap');
    box.append(meter('memory (python steps, Chromium)', used, st.max_memory, memText));
    const cpu = data.use && typeof data.use.cpu === 'number' ? data.use.cpu : null;
    const cap = st.max_cpu ? Math.round(st.max_cpu * 100) + '% of the CPUs' : 'no cap';
    box.append(meter('CPU', cpu, st.max_cpu, cpu === null ? (st.max_cpu ? 'cap ' + cap : cap) + '; use not measured yet'
      : Math.round(cpu * 100) + '% of the CPUs since the last look (' + (st.max_cpu ? 'cap ' + cap : cap) + ')'));
    box.append(el('p', {class: 'hint', text: st.paused ? 'Paused: no new steps from peers (' + st.paused + ').'
      : 'Taking steps from peers.'}));
  }

  function renderChart(series, st) {
    const box = $('#chart');
    box.replaceChildren();
    const total = series.length ? series[series.length - 1][1] : 0;
    $('#credits-total').textContent = num(total, 4);
    $('#balance').textContent = 'Balance ' + num(st.balance, 4) + ' credits (earned less paid). Each point is the credits ' +
      'earned up to then, from the ledger.';
    if (!series.length) {
      box.append(el('p', {class: 'empty', text: 'nothing earned yet'}));
      return;
    }
    const W = 800, H = 200, L = 56, R = 12, T = 10, B = 24;
    const t0 = series[0][0], t1 = Math.max(series[series.length - 1][0], t0 + 1);
    const top = Math.max(total, 1e-9);
    const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
    const y = (v) => H - B - (H - T - B) * v / top;
    const s = svg('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'credits earned over time'});
    s.append(svg('line', {class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B}),
      svg('line', {class: 'axis', x1: L, y1: T, x2: L, y2: H - B}));
    const pts = [[x(t0), y(0)]];
    let prev = 0;
    for (const [t, v] of series) { pts.push([x(t), y(prev)], [x(t), y(v)]); prev = v; }
    const line = pts.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' ');
    s.append(svg('polygon', {class: 'area', points: `${line} ${x(t1).toFixed(1)},${y(0)} ${L},${y(0)}`}));
    s.append(svg('polyline', {class: 'line', points: line}));
    for (const [t, v] of series) {
      const c = svg('circle', {class: 'point', cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 3, 'data-ts': t, 'data-credits': v});
      const title = svg('title');
      title.textContent = when(t) + ': ' + num(v, 4) + ' credits';
      c.append(title);
      s.append(c);
    }
    const label = (text, attrs) => { const e = svg('text', attrs); e.textContent = text; return e; };
    s.append(label(num(top, 3), {x: L - 6, y: T + 10, 'text-anchor': 'end'}),
      label('0', {x: L - 6, y: H - B, 'text-anchor': 'end'}),
      label(clock(t0), {x: L, y: H - 6}),
      label(clock(t1), {x: W - R, y: H - 6, 'text-anchor': 'end'}));
    box.append(s);
  }

  function renderRejected(st) {
    const rows = Object.entries(st.rejected || {}).map(([k, n]) => [k, String(n)]);
    for (const [k, n] of Object.entries(st.dials_refused || {})) rows.push(['dial refused: ' + k, String(n)]);
    rows.sort((a, b) => Number(b[1]) - Number(a[1]));
    fill($('#rejected tbody'), rows, 'none', 2);
  }

  function offerText(o) {
    if (!o) return '–';
    const parts = [o.steps + ' steps (' + o.per_peer + ' per peer)'];
    parts.push(o.memory ? mib(o.memory) : 'no memory cap');
    parts.push(o.cpu ? Math.round(o.cpu * 100) + '% CPU' : 'no CPU cap');
    if (o.paused) parts.push('paused');
    return parts.join(', ');
  }

  function renderPeers(st) {
    const tbody = $('#peers tbody');
    fill(tbody, st.peers.map((p) => {
      const id = el('span', {class: 'mono', title: p.node, text: short(p.node)});
      return [id, String(p.state), p.connection || '–', num(p.reputation, 3), num(p.standing, 3), offerText(p.offer)];
    }), 'no peers known', 6);
    st.peers.forEach((p, i) => { if (tbody.rows[i]) tbody.rows[i].dataset.node = p.node; });
  }

  function itemKey(it) { return [it.entry || '', it.peer, it.job, it.step, it.reason].join('|'); }

  function renderItems(list, items, empty, describe) {
    list.replaceChildren();
    if (!items.length) { list.append(el('li', {class: 'empty', text: empty})); return; }
    for (const it of items) {
      const li = el('li', {'data-reason': it.reason, 'data-entry': it.entry || null, tabindex: 0},
        el('span', {class: 'when', text: clock(it.ts)}),
        el('span', {class: 'reason', text: it.reason}),
        el('span', {text: describe(it)}));
      if (itemKey(it) === S.selected) li.classList.add('selected');
      li.addEventListener('click', () => explain(it, li));
      li.addEventListener('keydown', (e) => { if (e.key === 'Enter') explain(it, li); });
      list.append(li);
    }
  }

  function renderUnearned(data) {
    renderItems($('#unearned'), data.unearned, 'none: every step it answered was paid', (it) =>
      `${it.kind} step ${it.step} of job ${short(it.job)} for ${short(it.peer)}` +
      (it.entry ? ` (entry ${it.entry}, ${num(it.amount, 4)} credits)` : ''));
    renderItems($('#judged'), data.judged, 'none', (it) =>
      `${short(it.peer)} on step ${it.step} of job ${short(it.job)} (entry ${it.entry})`);
  }

  async function explain(it, li) {
    S.selected = itemKey(it);
    for (const e of document.querySelectorAll('ul.items li.selected')) e.classList.remove('selected');
    li.classList.add('selected');
    const card = $('#explain-card');
    const text = $('#explain');
    card.hidden = false;
    $('#explain-what').textContent = it.entry ? 'entry ' + it.entry : `step ${it.step} of job ${short(it.job)}`;
    text.dataset.ready = '';
    if (!it.entry) {
      text.textContent = it.explanation || it.reason;
    } else {
      text.textContent = 'reading entry ' + it.entry + '…';
      const res = await api('/ledger/explain/' + encodeURIComponent(it.entry));
      text.textContent = res.ok ? res.body.explanation : 'could not explain entry ' + it.entry + ': ' + res.body.error;
    }
    text.dataset.ready = 'true';
    card.scrollIntoView({block: 'nearest'});
  }

  // ---------------------------------------------------------------- reading the node

  async function load() {
    if (!S.token) {
      showMessage('paste the node API token (<node home>/api-token) into the Token field', 'info');
      document.body.dataset.ready = 'true';
      return;
    }
    const [st, data] = await Promise.all([api('/status'), api('/dashboard/data')]);
    const bad = [st, data].find((r) => !r.ok);
    if (bad) {
      showMessage(bad.body && bad.body.error ? bad.body.error : 'the node answered ' + bad.status, 'error');
      document.body.dataset.ready = 'true';
      return;
    }
    S.status = st.body;
    S.data = data.body;
    renderTop(S.status);
    renderReach(S.status);
    renderSteps(S.data);
    renderLimits(S.status, S.data);
    renderChart(S.data.credits, S.status);
    renderRejected(S.status);
    renderPeers(S.status);
    renderUnearned(S.data);
    $('#updated').textContent = 'read at ' + clock(S.data.now);
    showMessage('', '');
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    document.body.dataset.ready = 'true';
  }

  $('#refresh').addEventListener('click', () => { load(); });
  $('#token').addEventListener('change', (e) => {
    S.token = e.target.value.trim();
    page.saveToken(S.token);
    $('#token-box').hidden = !!S.token;
    load();
  });

  readToken().then(load);
  S.timer = setInterval(() => { if (S.token && !document.hidden) load(); }, EVERY_MS);
}());
