/* What the node's own pages (the editor at /editor, the dashboard at /dashboard) share: building elements
   (text always as text, never as HTML), the message line, the API token (from a one-use ticket in the URL's
   fragment, kept in the tab's session storage for both pages and sent only to a server that proves it holds
   it) and requests to the node with it. Plain ES2017. */
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

  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

  /* Whether the server at this page's address holds `token` (mesh/http/pagekeys.py): an HMAC of a nonce drawn
     here and of the address seen here, which a process without the token cannot make, nor borrow from a node
     at another address. A kept token is sent only after this: after a reload it went to whatever held the
     node's port by then. */
  async function proven(token) {
    try {
      const nonce = hex(crypto.getRandomValues(new Uint8Array(16)));
      const res = await fetch('/prove?nonce=' + nonce);
      if (!res.ok) return false;
      const said = (await res.json()).proof;
      const enc = new TextEncoder();
      const key = await crypto.subtle.importKey('raw', enc.encode(token), {name: 'HMAC', hash: 'SHA-256'},
        false, ['sign']);
      const mac = await crypto.subtle.sign('HMAC', key, enc.encode('homemesh-prove ' + location.host.toLowerCase() +
        ' ' + nonce));
      return hex(new Uint8Array(mac)) === said;
    } catch (exc) {
      return false;
    }
  }

  /* The token for a one-use ticket (`mesh up` prints the pages' addresses with one: a token in an address
     stays in the browser's history), or '' when the ticket is unknown or used. */
  async function redeem(ticket) {
    try {
      const res = await fetch('/tickets/redeem', {method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({ticket})});
      return res.ok ? ((await res.json()).token || '') : '';
    } catch (exc) {
      return '';
    }
  }

  /* The token: traded for the ticket in the URL's fragment, or as given in the fragment (`#token=`, typed by
     the owner), or the one this tab kept once the server proves it holds it; '' with the Token field shown
     when there is none to send. The fragment is taken out of the address first. */
  async function readToken() {
    const hash = location.hash;
    if (hash) history.replaceState(null, '', location.pathname + location.search);
    let token = '';
    const ticket = /(?:^#|&)ticket=([0-9a-f]{32})(?:&|$)/.exec(hash);
    const given = /(?:^#|&)token=([^&]+)/.exec(hash);
    if (ticket) token = await redeem(ticket[1]);
    else if (given) token = decodeURIComponent(given[1]);
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
    } else {
      const kept = sessionStorage.getItem(TOKEN_KEY) || '';
      if (kept && await proven(kept)) token = kept;
      else if (kept) showMessage('the server at this address did not prove it holds this node\'s API token, so ' +
        'the token was not sent: reload once the node runs, or paste <node home>/api-token', 'error');
      else if (ticket) showMessage('this address\'s ticket was used already: open the one `mesh up` printed ' +
        'in a new tab, or paste <node home>/api-token into the Token field', 'error');
    }
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
