/* homemesh visual job editor: a Drawflow canvas whose boxes are job steps. Served by the node at /editor;
   talks only to that node (GET /steps, POST /jobs, GET /jobs/{id}/events, POST /plan). Plain ES2017. */
'use strict';

(function () {
  const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
  const QUORUM_RE = /^(majority|unanimous|[0-9]{1,2}-of-[0-9]{1,2})$/;
  const REF_RE = /\{([A-Za-z0-9_-]+)\.output\}/g;
  const JOB_FIELDS = ['name', 'redundancy', 'quorum', 'timeout', 'max_replicas', 'adaptive', 'steps'];
  const EXTRA_JOB_FIELDS = ['timeout', 'max_replicas', 'adaptive'];
  const STEP_FIELDS = ['id', 'kind', 'params', 'after', 'compare'];
  const LAYER_DX = 310;
  const LAYER_DY = 170;

  const page = window.homemeshPage;  // page.js: elements, the message line, the token, requests
  const {$, el} = page;
  const clone = (v) => JSON.parse(JSON.stringify(v));

  const S = {
    kinds: {},          // GET /steps
    token: '',
    history: [],        // undo snapshots (JSON text)
    pos: -1,
    restoring: false,
    commitQueued: false,
    selected: null,     // Drawflow node id of the selected box
    formDirty: null,    // the box whose form was typed in since the last snapshot
    fieldErrors: {},    // param → message, for the form on show
    extra: {},          // job fields the top bar does not show (timeout, max_replicas, adaptive)
    run: null,          // {jobId, steps: {stepId: {state, replicas: {node: {...}}, output, credit, ...}}}
    models: [],         // GET /v1/models: [{id, sha256, peers, default, llm_default}], for the model line
    running: false,
    lastRun: null,      // the last finished run's report
    lastSaved: null,    // the last saved job file's text
    savedBlob: null,
    renderQueued: false,
    problemShown: false,  // the message is why the job cannot run: checked again on every edit
  };

  /* A step kind's spec, only for kinds the node named: a job file's kind `__proto__` or `constructor` found
     what every object inherits, and broke the box and its form. */
  const kindSpec = (kind) => (Object.prototype.hasOwnProperty.call(S.kinds, kind) ? S.kinds[kind] : undefined);

  // ---------------------------------------------------------------- messages, token, requests

  function showMessage(text, kind) {
    S.problemShown = false;
    page.showMessage(text, kind);
  }

  async function readToken() {
    S.token = await page.readToken();
  }

  const api = (method, path, body) => page.api(S.token, method, path, body);

  // ---------------------------------------------------------------- the graph (Drawflow is the store)

  const canvas = $('#canvas');
  const editor = new Drawflow(canvas);
  editor.force_first_input = true;  // a link may be dropped anywhere on a box, not just on its dot
  editor.start();

  const store = () => editor.drawflow.drawflow[editor.module].data;
  const nodeIds = () => Object.keys(store()).map(Number).sort((a, b) => a - b);
  const dataOf = (nid) => store()[nid] && store()[nid].data;
  const nidOfStep = (sid) => nodeIds().find((n) => dataOf(n).id === sid);
  const incoming = (nid) => ((store()[nid].inputs.input_1 || {connections: []}).connections).map((c) => Number(c.node));
  const boxEl = (nid) => document.getElementById('node-' + nid);

  function refsIn(value, out) {
    out = out || [];
    if (typeof value === 'string') {
      for (const m of value.matchAll(REF_RE)) if (!out.includes(m[1])) out.push(m[1]);
    } else if (Array.isArray(value)) value.forEach((v) => refsIn(v, out));
    else if (value && typeof value === 'object') Object.values(value).forEach((v) => refsIn(v, out));
    return out;
  }

  function renameRefs(value, from, to) {
    const pattern = new RegExp('\\{' + from.replace(/[-]/g, '\\-') + '\\.output\\}', 'g');
    if (typeof value === 'string') return value.replace(pattern, '{' + to + '.output}');
    if (Array.isArray(value)) return value.map((v) => renameRefs(v, from, to));
    if (value && typeof value === 'object') {
      const out = {};
      for (const [k, v] of Object.entries(value)) out[k] = renameRefs(v, from, to);
      return out;
    }
    return value;
  }

  function freshStepId() {
    const used = new Set(nodeIds().map((n) => dataOf(n).id));
    for (const c of 'abcdefghijklmnopqrstuvwxyz') if (!used.has(c)) return c;
    for (let i = 1; ; i++) if (!used.has('s' + i)) return 's' + i;
  }

  function addBox(kind, x, y, data) {
    const d = data || {id: freshStepId(), kind, params: {}};
    const nid = editor.addNode(kind, 1, 1, Math.round(x), Math.round(y), 'step kind-' + kind, d, '');
    renderBox(nid);
    return nid;
  }

  /** Screen point → canvas coordinates (respects Drawflow's pan and zoom). */
  function toCanvas(clientX, clientY) {
    const r = editor.precanvas.getBoundingClientRect();
    return {x: (clientX - r.x) / editor.zoom, y: (clientY - r.y) / editor.zoom};
  }

  function toJob() {
    const job = {name: $('#job-name').value.trim() || 'job'};
    const r = Number($('#redundancy').value);
    job.redundancy = Number.isInteger(r) ? r : $('#redundancy').value;
    job.quorum = $('#quorum').value.trim() || 'majority';
    Object.assign(job, clone(S.extra));
    job.steps = nodeIds().map((nid) => {
      const d = dataOf(nid);
      const step = {id: d.id, kind: d.kind, params: clone(d.params || {})};
      const after = incoming(nid).map((n) => dataOf(n) && dataOf(n).id).filter(Boolean);
      if (after.length) step.after = after;
      if (d.compare !== undefined) step.compare = d.compare;
      return step;
    });
    return job;
  }

  // ---------------------------------------------------------------- checks before running

  function missing(value) {
    return value === undefined || value === null || (typeof value === 'string' && !value.trim());
  }

  function findCycle(steps) {
    const deps = {};
    for (const s of steps) deps[s.id] = [...new Set([...(s.after || []), ...refsIn(s.params)])];
    const state = {};
    const path = [];
    const visit = (id) => {
      state[id] = 1;
      path.push(id);
      for (const d of deps[id] || []) {
        if (!(d in deps)) continue;
        if (state[d] === 1) return path.slice(path.indexOf(d)).concat(d);
        if (!state[d]) { const c = visit(d); if (c) return c; }
      }
      path.pop();
      state[id] = 2;
      return null;
    };
    for (const s of steps) {
      if (!state[s.id]) { const c = visit(s.id); if (c) return c.reverse(); }
    }
    return null;
  }

  /** The first reason the job cannot run ({text, steps: [ids to mark]}), or null. */
  function problem(job) {
    if (!job.steps.length) return {text: 'the canvas is empty: drag a step from the palette first', steps: []};
    if (!Number.isInteger(job.redundancy) || job.redundancy < 1 || job.redundancy > 16) {
      return {text: 'redundancy must be a whole number from 1 to 16', steps: []};
    }
    if (!QUORUM_RE.test(job.quorum)) {
      return {text: "quorum must be majority, unanimous or K-of-N (like 2-of-3), not '" + job.quorum + "'", steps: []};
    }
    const seen = new Set();
    for (const s of job.steps) {
      if (!ID_RE.test(s.id)) {
        return {text: "step id '" + s.id + "' may only use letters, digits, '-' and '_' (1 to 64)", steps: [s.id]};
      }
      if (seen.has(s.id)) return {text: "two steps are called '" + s.id + "': step ids must differ", steps: [s.id]};
      seen.add(s.id);
    }
    for (const s of job.steps) {
      const spec = kindSpec(s.kind);
      if (!spec) return {text: "step '" + s.id + "' has unknown kind '" + s.kind + "'", steps: [s.id]};
      const need = (spec.params.required || []).filter((p) => missing(s.params[p]));
      if (need.length) {
        return {text: "step '" + s.id + "' (" + s.kind + ') needs ' + need.join(' and '), steps: [s.id]};
      }
    }
    const open = S.selected !== null && dataOf(S.selected);
    const errs = Object.entries(S.fieldErrors);
    if (open && errs.length) {
      return {text: "step '" + open.id + "': " + errs[0][0] + ' ' + errs[0][1], steps: [open.id]};
    }
    for (const s of job.steps) {
      if (s.kind === 'python' && refsIn(s.params).length) {
        const r = refsIn(s.params)[0];
        return {text: "step '" + s.id + "': python code cannot contain {" + r + ".output}: read it as inputs['" + r +
                "'] and link " + r + ' to it', steps: [s.id]};
      }
      for (const r of refsIn(s.params)) {
        if (!seen.has(r)) {
          return {text: "step '" + s.id + "' uses {" + r + ".output} but there is no step '" + r + "'", steps: [s.id]};
        }
      }
    }
    const cycle = findCycle(job.steps);
    if (cycle) return {text: 'steps form a cycle: ' + cycle.join(' → ') + ' (a step cannot wait for itself)', steps: cycle};
    return null;
  }

  // ---------------------------------------------------------------- boxes

  function shortNode(node) { return String(node).slice(0, 8); }

  function replicaMark(r) {
    if (r.agreed === true) return '✓';
    if (r.agreed === false || r.state === 'failed') return '✗';
    return r.state === 'answered' ? '•' : '…';
  }

  function preview(d) {
    const spec = kindSpec(d.kind);
    const key = spec && (spec.params.required || [])[0];
    const v = key ? d.params[key] : undefined;
    if (v === undefined) return key ? '(' + key + ' not set)' : '';
    const text = typeof v === 'string' ? v : JSON.stringify(v);
    return text.length > 60 ? text.slice(0, 59) + '…' : text;
  }

  function renderBox(nid) {
    const box = boxEl(nid);
    const d = dataOf(nid);
    if (!box || !d) return;
    const st = S.run && S.run.steps[d.id];
    const state = st ? st.state : 'idle';
    box.dataset.step = d.id;
    box.dataset.kind = d.kind;
    box.dataset.state = state;
    const content = box.querySelector('.drawflow_content_node');
    const reps = el('div', {class: 'box-replicas'});
    if (st) {
      for (const [node, r] of Object.entries(st.replicas)) {
        reps.append(el('span', {
          class: 'rep', 'data-node': node, 'data-agreed': r.agreed === undefined ? '' : String(r.agreed),
          'data-rstate': r.state, title: node + ' · ' + r.state + (r.error ? ' · ' + r.error : ''),
          text: shortNode(node) + ' ' + replicaMark(r)}));
      }
    }
    content.replaceChildren(
      el('div', {class: 'box-head'},
        el('span', {class: 'box-title', text: d.id + ' · ' + d.kind}),
        el('span', {class: 'badge state-' + state, 'data-badge': state, text: state})),
      el('div', {class: 'box-preview', text: preview(d)}),
      reps,
      el('div', {class: 'box-credit', text: st && st.credit !== undefined ? 'credit ' + st.credit : ''}),
    );
    editor.updateConnectionNodes('node-' + nid);  // the box may have changed size
  }

  function renderAllBoxes() { nodeIds().forEach(renderBox); }

  /** Show why the job cannot run (the boxes at fault marked), and keep it true as the job is edited. */
  function showProblem(why) {
    markInvalid(why ? why.steps : []);
    if (why) { showMessage(why.text, 'error'); S.problemShown = true; }
  }

  /** After an edit: a problem shown is shown again as it is now, or cleared once fixed. */
  function recheck() {
    if (!S.problemShown) return;
    const why = problem(toJob());
    if (!why) showMessage('', '');
    showProblem(why);
  }

  function markInvalid(ids) {
    document.querySelectorAll('.drawflow-node.invalid').forEach((b) => b.classList.remove('invalid'));
    for (const id of ids || []) {
      const nid = nidOfStep(id);
      if (nid !== undefined && boxEl(nid)) boxEl(nid).classList.add('invalid');
    }
  }

  // ---------------------------------------------------------------- undo / redo

  function snapshot() { return JSON.stringify(editor.export().drawflow); }

  function commit() {
    if (S.restoring || S.commitQueued) return;
    S.commitQueued = true;
    Promise.resolve().then(() => {
      S.commitQueued = false;
      const snap = snapshot();
      if (snap !== S.history[S.pos]) {
        S.history = S.history.slice(0, S.pos + 1);
        S.history.push(snap);
        S.pos = S.history.length - 1;
      }
      updateButtons();
      recheck();
    });
  }

  function restore(snap) {
    S.restoring = true;
    S.formDirty = null;
    try {
      editor.import({drawflow: JSON.parse(snap)}, false);
      editor.node_selected = null;
      editor.connection_selected = null;
      S.selected = null;
      renderAllBoxes();
      renderPanel();
    } finally {
      S.restoring = false;
    }
    updateButtons();
    recheck();
  }

  function undo() { if (S.pos > 0) { S.pos -= 1; restore(S.history[S.pos]); } }
  function redo() { if (S.pos < S.history.length - 1) { S.pos += 1; restore(S.history[S.pos]); } }

  function updateButtons() {
    $('#undo').disabled = S.pos <= 0;
    $('#redo').disabled = S.pos >= S.history.length - 1;
    $('#run').disabled = S.running;
  }

  function deleteSelected() {
    if (editor.node_selected) {
      const id = editor.node_selected.id;
      editor.node_selected = null;
      if (document.getElementById(id)) editor.removeNodeId(id);
    } else if (editor.connection_selected) {
      editor.removeConnection();
      editor.connection_selected = null;
    } else {
      showMessage('select a box or a link to delete first', 'info');
    }
  }

  // ---------------------------------------------------------------- side panel: form and run details

  function renderPanel() {
    if (S.formDirty !== null) {  // the form goes away before its field saw a change event
      const prev = S.formDirty;
      S.formDirty = null;
      if (dataOf(prev) && !S.restoring) { linkReferences(prev); commit(); }
    }
    const nid = S.selected;
    const d = nid !== null ? dataOf(nid) : null;
    $('#panel-empty').hidden = !!d;
    S.fieldErrors = {};
    const form = $('#form');
    form.replaceChildren();
    if (!d) { $('#run-info').hidden = true; return; }
    const spec = kindSpec(d.kind) || {title: d.kind, description: '', params: {properties: {}, required: []}};
    form.append(el('h3', {text: spec.title}), el('p', {class: 'hint', text: spec.description}));
    const idInput = el('input', {id: 'f-id', 'data-param': '@id', value: d.id, spellcheck: 'false'});
    const idErr = el('div', {class: 'field-error'});
    idInput.addEventListener('change', () => renameStep(nid, idInput.value.trim(), idErr));
    form.append(el('label', {class: 'field'}, el('span', {class: 'field-name', text: 'step id'}), idInput, idErr));
    const required = spec.params.required || [];
    for (const [name, prop] of Object.entries(spec.params.properties || {})) {
      form.append(paramField(nid, name, prop, required.includes(name)));
    }
    renderRunInfo();
  }

  function paramField(nid, name, prop, required) {
    const d = dataOf(nid);
    const value = d.params[name];
    const err = el('div', {class: 'field-error'});
    const attrs = {id: 'f-' + name, 'data-param': name, spellcheck: 'false'};
    if (prop.default !== undefined && typeof prop.default !== 'object') attrs.placeholder = String(prop.default);
    let input;
    let read;
    if (prop.type === 'boolean') {
      input = el('input', Object.assign(attrs, {type: 'checkbox'}));
      input.checked = value !== undefined ? !!value : !!prop.default;
      read = () => ({value: input.checked});
    } else if (prop.type === 'integer' || prop.type === 'number') {
      input = el('input', Object.assign(attrs, {type: 'number', min: prop.minimum, max: prop.maximum,
        step: prop.type === 'integer' ? 1 : 'any'}));
      input.value = value !== undefined ? String(value) : '';
      read = () => {
        const t = input.value.trim();
        if (!t) return {unset: true};
        const v = Number(t);
        if (!Number.isFinite(v) || (prop.type === 'integer' && !Number.isInteger(v))) {
          return {error: 'must be a' + (prop.type === 'integer' ? ' whole' : '') + ' number'};
        }
        if ((prop.minimum !== undefined && v < prop.minimum) || (prop.maximum !== undefined && v > prop.maximum)) {
          return {error: 'must be from ' + prop.minimum + ' to ' + prop.maximum};
        }
        return {value: v};
      };
    } else if (prop.type === 'array') {
      input = el('textarea', Object.assign(attrs, {rows: 3, placeholder: 'one per line'}));
      input.value = Array.isArray(value) ? value.join('\n') : '';
      read = () => {
        const lines = input.value.split('\n').filter((l) => l.length);
        return lines.length ? {value: lines} : {unset: true};
      };
    } else if (prop.type === 'object') {
      input = el('textarea', Object.assign(attrs, {rows: 4, placeholder: '{ JSON }'}));
      input.value = value !== undefined ? JSON.stringify(value, null, 2) : '';
      read = () => {
        const t = input.value.trim();
        if (!t) return {unset: true};
        try {
          const v = JSON.parse(t);
          if (!v || typeof v !== 'object' || Array.isArray(v)) return {error: 'must be a JSON object'};
          return {value: v};
        } catch (exc) {
          return {error: 'is not valid JSON: ' + exc.message};
        }
      };
    } else {
      input = prop['x-multiline'] ? el('textarea', Object.assign(attrs, {rows: 5})) : el('input', attrs);
      input.value = typeof value === 'string' ? value : (value !== undefined ? JSON.stringify(value) : '');
      read = () => (input.value.length ? {value: input.value} : {unset: true});
    }
    const apply = () => {
      const got = read();
      const params = dataOf(nid).params;
      if (got.error) {
        S.fieldErrors[name] = got.error;
        err.textContent = name + ' ' + got.error;
      } else {
        delete S.fieldErrors[name];
        err.textContent = '';
        if (got.unset) delete params[name];
        else params[name] = got.value;
      }
      renderBox(nid);
      recheck();
    };
    input.addEventListener('input', () => { S.formDirty = nid; apply(); });
    input.addEventListener('change', () => { S.formDirty = null; apply(); linkReferences(nid); commit(); });
    const label = el('span', {class: 'field-name', text: name + (required ? ' *' : '')});
    return el('label', {class: 'field' + (prop.type === 'boolean' ? ' check' : '')}, label, input,
      prop.description ? el('small', {text: prop.description}) : null, err);
  }

  /** `{x.output}` in a box's params implies a link from x: draw it if it is missing. */
  function linkReferences(nid) {
    const have = incoming(nid);
    for (const ref of refsIn(dataOf(nid).params)) {
      const src = nidOfStep(ref);
      if (src !== undefined && src !== nid && !have.includes(src)) {
        editor.addConnection(src, nid, 'output_1', 'input_1');
      }
    }
  }

  function renameStep(nid, to, errEl) {
    const d = dataOf(nid);
    const from = d.id;
    if (to === from) { errEl.textContent = ''; return; }
    if (!ID_RE.test(to)) { errEl.textContent = "letters, digits, '-' and '_' only (1 to 64)"; return; }
    if (nidOfStep(to) !== undefined) { errEl.textContent = "another step is called '" + to + "'"; return; }
    errEl.textContent = '';
    d.id = to;
    for (const other of nodeIds()) {
      if (other !== nid) dataOf(other).params = renameRefs(dataOf(other).params, from, to);
    }
    if (S.run && S.run.steps[from]) { S.run.steps[to] = S.run.steps[from]; delete S.run.steps[from]; }
    renderAllBoxes();
    commit();
  }

  /** Which model an llm or ask-model box's output comes from: its name and SHA-256 as GET /v1/models
   *  lists them (every replica of a step runs that one file). */
  function modelLine(d) {
    if (d.kind !== 'llm' && d.kind !== 'ask-model') return '';
    const asked = (d.params || {}).model || 'default';
    const hit = S.models.find(m => asked === 'default' ? m.llm_default : (m.id === asked || m.sha256 === asked));
    if (!hit) return 'model: ' + asked;
    return 'model: ' + hit.id + ' (' + hit.sha256.slice(0, 12) + ')' + (asked === 'default' ? ', the default for llm steps' : '');
  }

  async function loadModels() {
    const r = await api('GET', '/v1/models');
    if (r.ok && r.body && Array.isArray(r.body.data)) {
      S.models = r.body.data.filter(m => m.id !== 'default').map(m => ({id: m.id, ...m.x_homemesh}));
    }
  }

  function renderRunInfo() {
    const nid = S.selected;
    const d = nid !== null ? dataOf(nid) : null;
    const st = d && S.run && S.run.steps[d.id];
    const box = $('#run-info');
    box.hidden = !st;
    if (!st) return;
    $('#run-step').textContent = d.id;
    $('#run-state').textContent = st.state;
    $('#run-state').className = 'badge state-' + st.state;
    $('#run-error').textContent = st.error || '';
    $('#run-model').textContent = modelLine(d);
    const out = $('#output');
    out.dataset.step = d.id;
    if (st.output === undefined) out.textContent = st.state === 'done' ? '' : '(no output yet)';
    else out.textContent = typeof st.output === 'string' ? st.output : JSON.stringify(st.output, null, 2);
    out.dataset.ready = st.output !== undefined ? 'true' : 'false';
    const tbody = $('#replicas tbody');
    tbody.replaceChildren(...Object.entries(st.replicas).map(([node, r]) => el('tr', {'data-node': node},
      el('td', {title: node, text: shortNode(node)}), el('td', {text: r.state + (r.error ? ': ' + r.error : '')}),
      el('td', {title: r.digest || '', text: r.digest ? r.digest.slice(0, 12) : ''}),
      el('td', {text: r.agreed === true ? '✓' : (r.agreed === false ? '✗' : '')}))));
    const streams = Object.entries(st.text || {});
    $('#stream').textContent = st.state === 'running' && streams.length
      ? streams.map(([node, t]) => shortNode(node) + ': ' + t).join('\n') : '';
  }

  function scheduleRender() {
    if (S.renderQueued) return;
    S.renderQueued = true;
    requestAnimationFrame(() => { S.renderQueued = false; renderAllBoxes(); renderRunInfo(); });
  }

  // ---------------------------------------------------------------- running

  function stepState(id) {
    if (!S.run.steps[id]) S.run.steps[id] = {state: 'waiting', replicas: {}, text: {}};
    return S.run.steps[id];
  }

  function onEvent(kind, data) {
    if (kind === 'job') {
      (data.steps || []).forEach((id) => stepState(id));
    } else if (kind === 'step') {
      const st = stepState(data.step);
      st.state = data.status;
      for (const k of ['output', 'digest', 'credit', 'error']) if (k in data) st[k] = data[k];
      if (Array.isArray(data.agreed)) {
        for (const [node, r] of Object.entries(st.replicas)) r.agreed = data.agreed.includes(node);
      }
    } else if (kind === 'replica') {
      const st = stepState(data.step);
      const r = st.replicas[data.node] || {};
      st.replicas[data.node] = Object.assign(r, {state: data.state, role: data.role},
        data.digest ? {digest: data.digest} : {}, data.error ? {error: data.error} : {});
    } else if (kind === 'progress') {
      if (typeof data.text === 'string') stepState(data.step).text[data.node] = data.text;
    } else if (kind === 'done') {
      finishRun(data);
    }
    scheduleRender();
  }

  function finishRun(report) {
    for (const [id, s] of Object.entries(report.steps || {})) {
      const st = stepState(id);
      st.state = s.status;
      for (const k of ['output', 'digest', 'credit', 'error']) if (k in s) st[k] = s[k];
      for (const r of s.replicas || []) {
        st.replicas[r.node] = Object.assign(st.replicas[r.node] || {}, {
          state: r.error ? 'failed' : (r.digest ? 'answered' : 'running'), digest: r.digest, agreed: !!r.agreed,
        }, r.error ? {error: r.error} : {});
      }
    }
    S.lastRun = report;
    const spent = report.credits_spent !== undefined ? report.credits_spent : 0;
    $('#credits').textContent = 'credits spent: ' + spent;
    $('#credits').dataset.credits = String(spent);
    const failed = Object.entries(report.steps || {}).filter(([, s]) => s.status === 'failed');
    if (report.status === 'done') {
      showMessage('job ' + report.job_id + ' done · ' + spent + ' credits spent · click a box for its output', 'ok');
    } else {
      const why = failed.length ? ": step '" + failed[0][0] + "' failed: " + (failed[0][1].error || 'no quorum') : '';
      showMessage('job ' + report.job_id + ' ' + report.status + why, 'error');
    }
  }

  async function follow(jobId) {
    const res = await page.opened(S.token, '/jobs/' + encodeURIComponent(jobId) + '/events');
    if (!res.ok || !res.body) throw new Error('the event stream answered ' + res.status);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return false;
      buf += decoder.decode(value, {stream: true}).replace(/\r\n/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let kind = 'message';
        const lines = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) kind = line.slice(6).trim();
          else if (line.startsWith('data:')) lines.push(line.slice(5).replace(/^ /, ''));
        }
        if (!lines.length) continue;  // a keep-alive comment
        onEvent(kind, JSON.parse(lines.join('\n')));
        if (kind === 'done') { reader.cancel().catch(() => {}); return true; }
      }
    }
  }

  async function run() {
    if (S.running) return;
    const job = toJob();
    const why = problem(job);
    showProblem(why);
    if (why) return;
    if (!S.token) { $('#token-box').hidden = false; showMessage('enter the node API token first', 'error'); return; }
    S.running = true;
    updateButtons();
    try {
      const res = await api('POST', '/jobs', {job});
      if (!res.ok) { showMessage('the node refused the job: ' + (res.body && res.body.error), 'error'); return; }
      const jobId = res.body.job_id;
      S.run = {jobId, steps: {}};
      job.steps.forEach((s) => stepState(s.id));
      $('#credits').textContent = '';
      delete $('#credits').dataset.credits;
      scheduleRender();
      showMessage('job ' + jobId + ' running at redundancy ' + job.redundancy + ' (' + job.quorum + ')…', 'info');
      let finished = false;
      try { finished = await follow(jobId); } catch (exc) { finished = false; }
      if (!finished) {  // the stream broke: ask for the report instead
        const rep = await api('GET', '/jobs/' + encodeURIComponent(jobId) + '?wait=60');
        if (rep.ok && rep.body.status !== 'running') { finishRun(rep.body); scheduleRender(); }
        else showMessage('lost the event stream of job ' + jobId + '; it may still be running', 'error');
      }
    } finally {
      S.running = false;
      updateButtons();
    }
  }

  // ---------------------------------------------------------------- save, load, plan, layout

  function save() {
    const job = toJob();
    const text = JSON.stringify(job, null, 2) + '\n';
    const blob = new Blob([text], {type: 'application/json'});
    const link = $('#save-link');
    if (link.href && link.href.startsWith('blob:')) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(blob);
    link.download = (job.name.replace(/[^A-Za-z0-9_.-]+/g, '-') || 'job') + '.json';
    S.lastSaved = text;
    S.savedBlob = blob;
    link.click();
    const why = problem(job);
    showMessage('saved ' + link.download + (why ? ' (it will not run yet: ' + why.text + ')' : ''), 'info');
  }

  function checkJobFile(job) {
    if (!job || typeof job !== 'object' || Array.isArray(job)) return 'a job file is a JSON object with a steps list';
    const unknown = Object.keys(job).filter((k) => !JOB_FIELDS.includes(k));
    if (unknown.length) return "unknown job field '" + unknown[0] + "'";
    if (!Array.isArray(job.steps) || !job.steps.length) return "'steps' must be a non-empty list";
    for (const [i, s] of job.steps.entries()) {
      if (!s || typeof s !== 'object' || Array.isArray(s)) return 'step ' + (i + 1) + ' is not an object';
      const extra = Object.keys(s).filter((k) => !STEP_FIELDS.includes(k));
      if (extra.length) return 'step ' + (i + 1) + " has unknown field '" + extra[0] + "'";
      if (typeof s.id !== 'string') return 'step ' + (i + 1) + ' has no id';
      if (!kindSpec(s.kind)) return "step '" + s.id + "' has unknown kind '" + s.kind + "'";
      if (s.params !== undefined && (!s.params || typeof s.params !== 'object' || Array.isArray(s.params))) {
        return "step '" + s.id + "': params must be an object";
      }
      if (s.after !== undefined && (!Array.isArray(s.after) || !s.after.every((a) => typeof a === 'string'))) {
        return "step '" + s.id + "': after must be a list of step ids";
      }
    }
    return null;
  }

  /** x by depth (longest chain of dependencies), y by order within the layer. */
  function layout(steps) {
    const deps = {};
    for (const s of steps) deps[s.id] = [...new Set([...(s.after || []), ...refsIn(s.params || {})])];
    const depth = {};
    const visiting = new Set();
    const depthOf = (id) => {
      if (depth[id] !== undefined) return depth[id];
      if (visiting.has(id)) return 0;  // a cycle: the check before running says so
      visiting.add(id);
      let d = 0;
      for (const p of deps[id] || []) if (p in deps) d = Math.max(d, depthOf(p) + 1);
      visiting.delete(id);
      depth[id] = d;
      return d;
    };
    const rows = {};
    const pos = {};
    for (const s of steps) {
      const d = depthOf(s.id);
      rows[d] = (rows[d] || 0) + 1;
      pos[s.id] = {x: 40 + d * LAYER_DX, y: 40 + (rows[d] - 1) * LAYER_DY};
    }
    return pos;
  }

  /** Zoom (at most 1:1) and pan so every box is in view. */
  function fitView() {
    const ids = nodeIds();
    if (!ids.length) return;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const nid of ids) {
      const n = store()[nid];
      const b = boxEl(nid);
      x0 = Math.min(x0, n.pos_x);
      y0 = Math.min(y0, n.pos_y);
      x1 = Math.max(x1, n.pos_x + (b ? b.offsetWidth : 250));
      y1 = Math.max(y1, n.pos_y + (b ? b.offsetHeight : 80));
    }
    const pad = 30;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    const z = Math.max(editor.zoom_min, Math.min(1, (w - 2 * pad) / (x1 - x0), (h - 2 * pad) / (y1 - y0)));
    editor.zoom = z;
    editor.zoom_last_value = z;
    // the canvas scales about its centre: a point p lands at canvas_x + W(1 - z)/2 + p z
    editor.canvas_x = pad - x0 * z - editor.precanvas.clientWidth * (1 - z) / 2;
    editor.canvas_y = pad - y0 * z - editor.precanvas.clientHeight * (1 - z) / 2;
    editor.precanvas.style.transform = 'translate(' + editor.canvas_x + 'px, ' + editor.canvas_y + 'px) scale(' + z + ')';
  }

  function loadJob(job) {
    S.restoring = true;
    S.formDirty = null;
    try {
      editor.clear();
      editor.node_selected = null;
      editor.connection_selected = null;
      S.selected = null;
      S.run = null;
      $('#job-name').value = typeof job.name === 'string' ? job.name : 'job';
      if (job.redundancy !== undefined) $('#redundancy').value = String(job.redundancy);
      if (job.quorum !== undefined) $('#quorum').value = String(job.quorum);
      S.extra = {};
      for (const k of EXTRA_JOB_FIELDS) if (job[k] !== undefined) S.extra[k] = job[k];
      const pos = layout(job.steps);
      const nids = {};
      for (const s of job.steps) {
        const data = {id: s.id, kind: s.kind, params: clone(s.params || {})};
        if (s.compare !== undefined) data.compare = s.compare;
        nids[s.id] = addBox(s.kind, pos[s.id].x, pos[s.id].y, data);
      }
      for (const s of job.steps) {
        for (const dep of [...new Set([...(s.after || []), ...refsIn(s.params || {})])]) {
          if (nids[dep] !== undefined && nids[dep] !== nids[s.id]) {
            editor.addConnection(nids[dep], nids[s.id], 'output_1', 'input_1');
          }
        }
      }
      renderAllBoxes();
      renderPanel();
      markInvalid([]);
      fitView();
    } finally {
      S.restoring = false;
    }
    commit();
  }

  async function loadFile(file) {
    let job;
    try {
      job = JSON.parse(await file.text());
    } catch (exc) {
      showMessage(file.name + ' is not valid JSON: ' + exc.message, 'error');
      return;
    }
    const why = checkJobFile(job);
    if (why) { showMessage(file.name + ': ' + why, 'error'); return; }
    loadJob(job);
    showMessage('loaded ' + file.name + ': ' + job.steps.length + ' step' + (job.steps.length === 1 ? '' : 's'), 'info');
  }

  async function plan() {
    const query = $('#plan-query').value.trim();
    if (!query) { showMessage('type a question to plan first', 'error'); return; }
    const button = $('#plan');
    button.disabled = true;
    showMessage('planning…', 'info');
    try {
      const body = {query, planner: 'auto'};
      const r = Number($('#redundancy').value);
      if (Number.isInteger(r) && r >= 1 && r <= 16) body.redundancy = r;
      const res = await api('POST', '/plan', body);
      if (!res.ok) { showMessage('the node could not plan that: ' + (res.body && res.body.error), 'error'); return; }
      const why = checkJobFile(res.body.plan);
      if (why) { showMessage('the plan is not a job the editor can show: ' + why, 'error'); return; }
      loadJob(res.body.plan);
      const who = res.body.planner === 'llm' ? 'the model' : 'the rules';
      showMessage('planned by ' + who + ' (planner: ' + res.body.planner + ', ' + res.body.plan.steps.length +
        ' step' + (res.body.plan.steps.length === 1 ? '' : 's') + ')' +
        (res.body.fallback ? ' · fallback: ' + res.body.fallback : ''), 'info');
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- palette (mouse drag, not HTML5 DnD)

  function startPaletteDrag(kind, e) {
    if (e.button !== 0) return;
    e.preventDefault();
    const x0 = e.clientX;
    const y0 = e.clientY;
    let ghost = null;
    const move = (ev) => {
      if (!ghost && Math.hypot(ev.clientX - x0, ev.clientY - y0) > 4) {
        ghost = el('div', {class: 'ghost kind-' + kind, text: kind});
        document.body.append(ghost);
      }
      if (ghost) { ghost.style.left = ev.clientX + 'px'; ghost.style.top = ev.clientY + 'px'; }
    };
    const up = (ev) => {
      document.removeEventListener('mousemove', move, true);
      document.removeEventListener('mouseup', up, true);
      if (ghost) {
        ghost.remove();
        const r = canvas.getBoundingClientRect();
        if (ev.clientX >= r.left && ev.clientX <= r.right && ev.clientY >= r.top && ev.clientY <= r.bottom) {
          const p = toCanvas(ev.clientX, ev.clientY);
          addBox(kind, p.x - 20, p.y - 16);
        }
      } else {  // a click: put it somewhere visible
        const r = canvas.getBoundingClientRect();
        const n = nodeIds().length % 8;
        const p = toCanvas(r.left + 60 + n * 36, r.top + 60 + n * 36);
        addBox(kind, p.x, p.y);
      }
    };
    document.addEventListener('mousemove', move, true);
    document.addEventListener('mouseup', up, true);
  }

  function renderPalette() {
    const list = $('#kinds');
    list.replaceChildren();
    for (const [kind, spec] of Object.entries(S.kinds)) {
      const item = el('div', {class: 'palette-item kind-' + kind, 'data-kind': kind, title: spec.description},
        el('span', {class: 'pi-title', text: spec.title}),
        el('span', {class: 'pi-kind', text: kind + ' · ' + spec.workers + ' worker' + (spec.workers === 1 ? '' : 's')}));
      item.addEventListener('mousedown', (e) => startPaletteDrag(kind, e));
      list.append(item);
    }
  }

  // ---------------------------------------------------------------- wiring

  editor.on('nodeCreated', () => commit());
  editor.on('nodeRemoved', (id) => {
    if (String(S.selected) === String(id)) { S.selected = null; renderPanel(); }
    if (editor.node_selected && editor.node_selected.id === 'node-' + id) editor.node_selected = null;
    commit();
  });
  editor.on('connectionCreated', () => commit());
  editor.on('connectionRemoved', () => commit());
  editor.on('nodeMoved', () => commit());
  editor.on('nodeSelected', (id) => {
    if (String(S.selected) !== String(id)) { S.selected = Number(id); renderPanel(); }
  });
  editor.on('nodeUnselected', () => { if (S.selected !== null) { S.selected = null; renderPanel(); } });

  $('#run').addEventListener('click', () => { run(); });
  $('#save').addEventListener('click', save);
  $('#load').addEventListener('change', (e) => {
    const file = e.target.files && e.target.files[0];
    e.target.value = '';
    if (file) loadFile(file);
  });
  $('#undo').addEventListener('click', undo);
  $('#redo').addEventListener('click', redo);
  $('#delete').addEventListener('click', deleteSelected);
  $('#fit').addEventListener('click', fitView);
  $('#plan').addEventListener('click', () => { plan(); });
  $('#token').addEventListener('change', (e) => {
    S.token = e.target.value.trim();
    page.saveToken(S.token);
    loadModels();
  });
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
    const key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === 'z') { e.preventDefault(); if (e.shiftKey) redo(); else undo(); }
    else if ((e.ctrlKey || e.metaKey) && key === 'y') { e.preventDefault(); redo(); }
    else if (e.key === 'Delete' && !canvas.contains(t)) deleteSelected();  // on the canvas Drawflow does it
  });

  async function init() {
    await readToken();
    S.history = [snapshot()];
    S.pos = 0;
    updateButtons();
    let res;
    try { res = await fetch('/steps'); } catch (exc) { res = null; }
    if (!res || !res.ok) { showMessage('could not read the step kinds from this node (GET /steps)', 'error'); return; }
    S.kinds = await res.json();
    renderPalette();
    if (S.token) await loadModels();
    document.body.dataset.ready = 'true';
    if (!S.token && !$('#message').textContent) {  // (readToken may have said why there is none)
      showMessage('paste the node API token (<node home>/api-token) into the Token field', 'info');
    }
  }

  window.homemesh = Object.freeze({
    toJob: () => toJob(),
    problem: () => { const p = problem(toJob()); return p && p.text; },
    get lastRun() { return S.lastRun; },
    get lastSaved() { return S.lastSaved; },
    get savedBlob() { return S.savedBlob; },
  });

  init();
}());
