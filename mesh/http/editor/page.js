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

  /* {ok, status, body}: never throws; a refused token shows the Token field again. */
  async function api(token, method, path, body) {
    if (gone) return {ok: false, status: 0, body: {error: GONE}};
    const headers = {Authorization: 'Bearer ' + token};
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
    } catch (exc) {
      gone = true;
      return {ok: false, status: 0, body: {error: 'the node did not answer (' + exc.message + '); ' + GONE}};
    }
    let data = null;
    try { data = await res.json(); } catch (exc) { data = {error: res.statusText || 'unreadable answer'}; }
    if (!res.ok && res.status === 401) {
      $('#token-box').hidden = false;
      data = {error: 'the node refused the API token: paste <node home>/api-token into the Token field'};
    }
    return {ok: res.ok, status: res.status, body: data};
  }

  /* A streamed answer (a job's events) with the token, under the same rule as api(); throws when the node
     is gone or does not answer. */
  async function opened(token, path) {
    if (gone) throw new Error(GONE);
    try {
      return await fetch(path, {headers: {Authorization: 'Bearer ' + token}});
    } catch (exc) {
      gone = true;
      throw new Error('the node did not answer (' + exc.message + '); ' + GONE);
    }
  }

  return {$, el, showMessage, readToken, saveToken, api, opened};
})();
