/* What the node's own pages (the editor at /editor, the dashboard at /dashboard) share: building elements
   (text always as text, never as HTML), the message line, the API token (taken from the URL's fragment
   into the tab's session storage, one for both pages) and requests to the node with it. Plain ES2017. */
'use strict';

window.homemeshPage = (function () {
  const TOKEN_KEY = 'homemesh-token';

  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  };

  function showMessage(text, kind) {
    const m = $('#message');
    m.textContent = text || '';
    m.className = text ? (kind || 'info') : '';
    m.dataset.kind = text ? (kind || 'info') : '';
  }

  /* The token: from the URL's fragment (then out of sight and history) or the tab's storage. */
  function readToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
      history.replaceState(null, '', location.pathname + location.search);
    }
    const token = sessionStorage.getItem(TOKEN_KEY) || '';
    $('#token-box').hidden = !!token;
    return token;
  }

  function saveToken(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  }

  /* Once the node does not answer, the token goes nowhere until the page is reloaded: a tab that kept
     polling a stopped node sent it to the next process listening on the node's port. */
  let gone = false;
  const GONE = 'the node stopped answering: reload this page once it runs again (until then its token is sent ' +
    'to nothing that may answer on its port now)';

  /* A request to the node with the token, or an Error saying why none went (gone, or no answer). */
  async function reach(token, path, init) {
    if (gone) throw new Error(GONE);
    try {
      const headers = Object.assign({}, init.headers, {Authorization: 'Bearer ' + token});
      return await fetch(path, Object.assign({}, init, {headers}));
    } catch (exc) {
      gone = true;
      throw new Error('the node did not answer (' + exc.message + '); ' + GONE);
    }
  }

  /* {ok, status, body}: never throws; a refused token shows the Token field again. */
  async function api(token, method, path, body) {
    const init = {method};
    if (body !== undefined) {
      init.headers = {'Content-Type': 'application/json'};
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await reach(token, path, init);
    } catch (exc) {
      return {ok: false, status: 0, body: {error: exc.message}};
    }
    let data = null;
    try { data = await res.json(); } catch (exc) { data = {error: res.statusText || 'unreadable answer'}; }
    if (!res.ok && res.status === 401) {
      $('#token-box').hidden = false;
      data = {error: 'the node refused the API token: paste <node home>/api-token into the Token field'};
    }
    return {ok: res.ok, status: res.status, body: data};
  }

  /* A streamed answer (a job's events): throws when the node is gone or does not answer. */
  const opened = (token, path) => reach(token, path, {});

  return {$, el, showMessage, readToken, saveToken, api, opened};
})();
