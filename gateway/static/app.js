// The chat page: conversations on the left, one conversation on the right.
// Replies stream in over POST /v1/replies; a reply that is still streaming
// when the page loads (or whose stream broke) is followed again through
// GET /v1/messages/{id}/events. Offsets are Unicode code points.
// An assistant's text is Markdown, rendered with the vendored marked and DOMPurify (globals).
(() => {
  'use strict';

  const els = {};
  const state = {
    conversationId: null,
    views: new Map(), // message id -> view of the shown conversation
    session: 0, // bumped whenever the shown conversation changes
    sending: false,
    abort: null, // AbortController of the running POST stream
    nextPageToken: '',
    listSeq: 0,
    stick: true, // follow the bottom while streaming
  };

  // ---- small helpers ---------------------------------------------------

  const cpLength = (s) => { let n = 0; for (const _ of s) n++; return n; };
  const cpSlice = (s, start) => Array.from(s).slice(start).join('');
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const norm = (v) => String(v || '').toLowerCase().replace(/^.*_/, '');
  const parseJSON = (s) => { try { return JSON.parse(s); } catch { return null; } };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs a secure context
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function formatTime(value) { // ISO 8601, or epoch seconds / milliseconds
    const n = Number(value);
    const d = value && Number.isFinite(n) ? new Date(n < 1e12 ? n * 1000 : n) : new Date(value || NaN);
    if (Number.isNaN(d.getTime())) return '';
    return d.toDateString() === new Date().toDateString()
      ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
      : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
  }

  // ---- HTTP --------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, retryAfter = null) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter; // seconds, from a refusal's Retry-After
    }
  }

  const retryAfterSeconds = (value) => (/^\s*\d+\s*$/.test(value || '') ? Math.max(1, Number(value)) : null);

  async function errorFrom(res) {
    if (res.status === 401) return new ApiError(401, 'unauthenticated', 'Sign in required');
    const e = (parseJSON(await res.text().catch(() => '')) || {}).error || {};
    return new ApiError(res.status, e.code || `http_${res.status}`, e.message || `Request failed (HTTP ${res.status})`,
      retryAfterSeconds(res.headers.get('Retry-After')));
  }

  async function api(path, options = {}) {
    const res = await fetch(path, { headers: { Accept: 'application/json' }, ...options });
    if (!res.ok) throw await errorFrom(res);
    return res.json();
  }

  function showError(err) {
    if (err && err.name === 'AbortError') return;
    const refusal = err instanceof ApiError && err.retryAfter !== null;
    const text = typeof err === 'string' ? err
      : refusal ? `${err.message.replace(/[\s.;]+$/, '')}; try again in ${err.retryAfter} s`
        : err instanceof ApiError ? err.message
          : `Network error: ${(err && err.message) || err}`;
    els.errorText.textContent = text;
    els.error.classList.toggle('refusal', refusal); // busy, not broken: try again later
    els.error.hidden = false;
  }

  function clearError() {
    els.error.hidden = true;
  }

  // ---- Server-Sent Events over fetch ------------------------------------

  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let ev = { type: '', data: [] };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += decoder.decode(value, { stream: true });
        const cut = buffer.endsWith('\r') ? buffer.length - 1 : buffer.length; // a \r\n may be split
        const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
        buffer = lines.pop() + buffer.slice(cut);
        for (const line of lines) {
          if (line === '') {
            if (ev.data.length) onEvent({ type: ev.type || 'message', data: ev.data.join('\n') });
            ev = { type: '', data: [] };
          } else if (!line.startsWith(':')) {
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            let val = i < 0 ? '' : line.slice(i + 1);
            if (val.startsWith(' ')) val = val.slice(1);
            if (field === 'data') ev.data.push(val);
            else if (field === 'event') ev.type = val;
          }
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // ---- conversation list -------------------------------------------------

  async function loadConversations(more = false) {
    const seq = more ? state.listSeq : ++state.listSeq;
    const params = new URLSearchParams({ page_size: '30' });
    if (more) params.set('page_token', state.nextPageToken);
    try {
      const data = await api(`/v1/conversations?${params}`);
      if (seq !== state.listSeq) return;
      if (!more) els.conversations.replaceChildren();
      for (const c of data.conversations || []) {
        if (!els.conversations.querySelector(`[data-conversation-id="${CSS.escape(c.id)}"]`)) {
          els.conversations.append(renderConversation(c));
        }
      }
      state.nextPageToken = data.next_page_token || '';
      els.more.hidden = !state.nextPageToken;
      markActive();
    } catch (err) {
      showError(err);
    }
  }

  function renderConversation(c) {
    const a = el('a', 'conversation');
    a.href = `/?c=${encodeURIComponent(c.id)}`;
    a.dataset.conversationId = c.id;
    a.append(el('span', 'conversation-title', c.title || 'Untitled'),
      el('span', 'conversation-time', formatTime(c.updated_at || c.created_at)));
    a.addEventListener('click', (e) => {
      if (e.button || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      if (c.id !== state.conversationId) openConversation(c.id, true);
      else closeSidebar();
    });
    return a;
  }

  function markActive() {
    let title = state.conversationId ? 'Chat' : 'New chat';
    for (const a of els.conversations.children) {
      const active = a.dataset.conversationId === state.conversationId;
      a.classList.toggle('active', active);
      if (active) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
      if (active) title = a.querySelector('.conversation-title').textContent;
    }
    els.title.textContent = title;
    document.title = state.conversationId ? `${title} · Chat` : 'Chat';
  }

  // ---- Markdown --------------------------------------------------------------
  // Raw HTML in the model's text is shown as text, never parsed, and what marked makes is sanitized
  // again. Images become links: loading a URL the model wrote would send a request wherever the
  // model (or a prompt injected into it) chose.

  const escapeHTML = (s) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const markdown = new marked.Marked({
    gfm: true,
    breaks: true,
    renderer: {
      html: ({ text, block }) => {
        const shown = escapeHTML(text.trimEnd()).replace(/\n/g, '<br>');
        return block ? `<p>${shown}</p>` : shown;
      },
      image: ({ href, text }) => `<a href="${escapeHTML(href)}">${escapeHTML(text || href)}</a>`,
    },
  });
  const SANITIZE = {
    ALLOWED_TAGS: ['a', 'blockquote', 'br', 'code', 'del', 'em', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'input',
      'li', 'ol', 'p', 'pre', 'strong', 'table', 'tbody', 'td', 'th', 'thead', 'tr', 'ul'],
    ALLOWED_ATTR: ['align', 'checked', 'class', 'disabled', 'href', 'start', 'title', 'type'],
    RETURN_DOM_FRAGMENT: true,
  };
  DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    if (node.tagName === 'A') {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
    if (node.tagName !== 'CODE') node.removeAttribute('class'); // only a code block's language-*
  });

  function renderMarkdown(view) {
    view.renderPending = false;
    const started = performance.now();
    view.el.dataset.text = view.text;
    view.content.replaceChildren(DOMPurify.sanitize(markdown.parse(view.text), SANITIZE));
    for (const pre of view.content.querySelectorAll('pre')) {
      const block = el('div', 'code-block');
      const bar = el('div', 'code-bar');
      const language = /(?:^|\s)language-(\S+)/.exec(pre.firstElementChild?.className || '');
      bar.append(el('span', 'code-language', language ? language[1] : ''), el('button', 'copy-code', 'Copy'));
      bar.lastChild.type = 'button';
      pre.replaceWith(block);
      block.append(bar, pre);
    }
    view.renderedAt = performance.now();
    view.renderCost = view.renderedAt - started;
    followBottom();
  }

  // At most one render per animation frame however fast the deltas come; a reply long enough that
  // rendering it costs more than a few milliseconds is rendered less often, so the page stays responsive.
  function scheduleRender(view) {
    if (view.renderPending) return;
    view.renderPending = true;
    const frame = () => requestAnimationFrame(() => renderMarkdown(view));
    const wait = view.renderedAt + 4 * view.renderCost - performance.now();
    if (view.renderCost > 4 && wait > 0) setTimeout(frame, wait);
    else frame();
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch { // no clipboard API outside a secure context, or permission refused
      const area = el('textarea');
      area.value = text;
      area.setAttribute('readonly', '');
      area.className = 'offscreen';
      document.body.append(area);
      area.select();
      try { return document.execCommand('copy'); } finally { area.remove(); }
    }
  }

  async function copyCode(button) {
    const copied = await copyText(button.closest('.code-block').querySelector('pre').textContent);
    button.textContent = copied ? 'Copied' : 'Copy failed';
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  }

  // ---- messages ------------------------------------------------------------

  const STATUS_LABELS = { streaming: 'Streaming', complete: 'Complete', cancelled: 'Cancelled', error: 'Error' };

  function renderMessage(m) {
    const role = norm(m.role) || 'assistant';
    const node = el('article', 'message');
    node.dataset.role = role;
    node.dataset.messageId = m.id || '';
    const bubble = el('div', 'bubble');
    const view = {
      id: m.id, el: node, content: el('div', 'content'), text: '', cp: 0, status: '', source: null,
      markdown: role === 'assistant', renderPending: false, renderedAt: 0, renderCost: 0,
    };
    bubble.append(view.content);
    node.append(bubble);
    if (view.markdown) {
      Object.assign(view, { note: el('div', 'note'), badge: el('span', 'badge'), model: el('span', 'model') });
      bubble.append(view.note);
      node.append(el('div', 'meta'));
      node.lastChild.append(view.badge, view.model);
    }
    els.messages.append(node);
    if (m.id) state.views.set(m.id, view);
    setText(view, m.content || '');
    setStatus(view, norm(m.status) || 'complete', m.error, m.model);
    return view;
  }

  // data-text holds the message's exact text (an assistant's shows as its Markdown rendering);
  // while a reply streams it is brought up to date at each render.
  function setText(view, text) {
    view.text = text;
    view.cp = cpLength(text);
    view.el.dataset.text = text;
    if (view.markdown) scheduleRender(view);
    else view.content.textContent = text;
  }

  function setStatus(view, status, error, model) {
    view.status = status;
    view.el.dataset.status = status;
    if (view.badge) {
      view.badge.dataset.status = status;
      view.badge.textContent = STATUS_LABELS[status] || status;
      view.note.dataset.status = status;
      view.note.textContent = status === 'error' ? (error || 'The reply failed.')
        : status === 'cancelled' ? 'Stopped before the end.' : '';
      view.note.hidden = !view.note.textContent;
      if (model) view.model.textContent = model;
    }
    updateControls();
  }

  // Shows a delta's new part. False when it starts after what is shown (a gap).
  function applyDelta(view, text, offset) {
    if (view.status !== 'streaming') return true;
    const at = Number.isFinite(offset) ? offset : view.cp;
    if (at > view.cp) return false;
    const fresh = at < view.cp ? cpSlice(text, view.cp - at) : text;
    if (fresh) {
      view.text += fresh;
      view.cp += cpLength(fresh);
      scheduleRender(view);
    }
    return true;
  }

  function finish(view, m) {
    closeSource(view);
    // the streamed text is usually the whole text already: rendering it again would cost a render of it all
    if (m && typeof m.content === 'string' && m.content !== view.text) setText(view, m.content);
    else view.el.dataset.text = view.text;
    setStatus(view, m ? norm(m.status) || 'complete' : 'complete', m && m.error, m && m.model);
    followBottom();
  }

  function streamingView() {
    for (const v of state.views.values()) if (v.status === 'streaming') return v;
    return null;
  }

  function updateControls() {
    const streaming = streamingView();
    els.stop.hidden = !streaming;
    els.send.disabled = state.sending || Boolean(streaming);
    els.empty.hidden = els.messages.childElementCount > 0;
  }

  function followBottom() {
    if (state.stick) els.messages.scrollTop = els.messages.scrollHeight;
  }

  // ---- following a reply with EventSource --------------------------------

  function resume(view) {
    closeSource(view);
    const session = state.session;
    const es = new EventSource(`/v1/messages/${encodeURIComponent(view.id)}/events?offset=${view.cp}`);
    view.source = es;
    es.addEventListener('delta', (e) => {
      const d = parseJSON(e.data);
      if (d && !applyDelta(view, d.text || '', d.offset)) resume(view); // a gap: start again from what is shown
    });
    es.addEventListener('finished', (e) => finish(view, (parseJSON(e.data) || {}).message));
    es.onerror = () => { // EventSource retries by itself unless it gave up (HTTP error, wrong type)
      if (es.readyState === EventSource.CLOSED && view.source === es) {
        view.source = null;
        recover(view, session, 1);
      }
    };
  }

  function closeSource(view) {
    if (view.source) view.source.close();
    view.source = null;
  }

  async function recover(view, session, attempt) {
    await sleep(Math.min(1000 * attempt, 10000));
    if (session !== state.session || view.status !== 'streaming') return;
    try {
      const m = await api(`/v1/messages/${encodeURIComponent(view.id)}`);
      if (session !== state.session || view.status !== 'streaming') return;
      if (norm(m.status) === 'streaming') resume(view);
      else finish(view, m);
    } catch (err) {
      showError(err);
      if (!(err instanceof ApiError) || err.status >= 500) recover(view, session, attempt + 1);
    }
  }

  // ---- sending -------------------------------------------------------------

  async function send() {
    const content = els.input.value;
    if (!content.trim() || state.sending || streamingView()) return;
    clearError();
    const ctx = { session: state.session, view: null, controller: new AbortController() };
    state.sending = true;
    state.abort = ctx.controller;
    state.stick = true;
    const userView = renderMessage({ role: 'user', content, status: 'complete' });
    els.input.value = '';
    autosize();
    followBottom();
    const body = { content, request_id: uuid() };
    if (state.conversationId) body.conversation_id = state.conversationId;
    try {
      await postReply(body, ctx);
      if (!ctx.view) throw new Error('the reply did not start');
      if (ctx.view.status === 'streaming') resume(ctx.view); // the stream ended early
    } catch (err) {
      if (ctx.session !== state.session) return;
      if (ctx.view) {
        if (ctx.view.status === 'streaming') resume(ctx.view);
      } else {
        userView.el.remove();
        if (!els.input.value) els.input.value = content;
        showError(err);
      }
    } finally {
      if (ctx.session === state.session) {
        state.sending = false;
        state.abort = null;
        updateControls();
      }
    }
  }

  // The same request_id on a retry attaches to the reply already made.
  async function postReply(body, ctx) {
    for (let attempt = 1; ; attempt++) {
      try {
        const res = await fetch('/v1/replies', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
          body: JSON.stringify(body),
          signal: ctx.controller.signal,
        });
        if (!res.ok) throw await errorFrom(res);
        await readEvents(res.body, (ev) => onReplyEvent(ev, ctx));
        return;
      } catch (err) {
        if (err instanceof ApiError || err.name === 'AbortError' || ctx.view || attempt >= 3) throw err;
        await sleep(700 * attempt);
      }
    }
  }

  function onReplyEvent(ev, ctx) {
    const data = parseJSON(ev.data);
    if (!data) return;
    if (ev.type === 'started') {
      if (data.conversation_id && data.conversation_id !== state.conversationId) {
        state.conversationId = data.conversation_id;
        history.replaceState(null, '', `/?c=${encodeURIComponent(data.conversation_id)}`);
      }
      ctx.view = ctx.view || state.views.get(data.message_id)
        || renderMessage({ id: data.message_id, role: 'assistant', status: 'streaming', content: '' });
      followBottom();
      loadConversations();
    } else if (ev.type === 'delta' && ctx.view) {
      if (!applyDelta(ctx.view, data.text || '', data.offset)) throw new Error('gap in the stream');
    } else if (ev.type === 'finished' && ctx.view) {
      finish(ctx.view, data.message);
      loadConversations();
    }
  }

  async function stop() {
    const view = streamingView();
    if (!view) return;
    els.stop.disabled = true;
    try {
      const m = await api(`/v1/messages/${encodeURIComponent(view.id)}/cancel`, { method: 'POST' });
      if (m && norm(m.status) && norm(m.status) !== 'streaming') finish(view, m);
    } catch (err) {
      showError(err);
    } finally {
      els.stop.disabled = false;
    }
  }

  // ---- navigation ------------------------------------------------------------

  function leaveConversation() {
    state.session++;
    if (state.abort) state.abort.abort(); // the reply goes on server-side; coming back resumes it
    state.abort = null;
    state.sending = false;
    for (const v of state.views.values()) closeSource(v);
    state.views.clear();
    els.messages.replaceChildren();
    updateControls();
  }

  async function openConversation(id, push) {
    leaveConversation();
    state.conversationId = id || null;
    if (push) history.pushState(null, '', id ? `/?c=${encodeURIComponent(id)}` : '/');
    markActive();
    closeSidebar();
    clearError();
    if (!id) {
      els.input.focus();
      return;
    }
    const session = state.session;
    els.messages.setAttribute('aria-busy', 'true');
    try {
      const data = await api(`/v1/conversations/${encodeURIComponent(id)}/messages`);
      if (session !== state.session) return;
      for (const m of data.messages || []) renderMessage(m);
      state.stick = true;
      followBottom();
      for (const v of state.views.values()) if (v.status === 'streaming' && v.badge) resume(v);
    } catch (err) {
      if (session === state.session) showError(err);
    } finally {
      els.messages.removeAttribute('aria-busy');
      updateControls();
    }
  }

  const urlConversation = () => new URLSearchParams(location.search).get('c') || null;

  // ---- layout bits -------------------------------------------------------------

  function autosize() {
    els.input.style.height = 'auto';
    els.input.style.height = `${Math.min(els.input.scrollHeight, 200)}px`;
  }

  function closeSidebar() { document.body.classList.remove('sidebar-open'); }

  function bind() {
    for (const [key, id] of Object.entries({
      messages: 'messages', input: 'composer-input', send: 'send', stop: 'stop', form: 'composer',
      conversations: 'conversations', more: 'more-conversations', newChat: 'new-chat', error: 'error',
      errorText: 'error-text', errorClose: 'error-close', title: 'title', empty: 'empty', menu: 'menu',
      backdrop: 'backdrop',
    })) els[key] = document.getElementById(id);

    els.form.addEventListener('submit', (e) => { e.preventDefault(); send(); });
    els.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      }
    });
    els.input.addEventListener('input', autosize);
    els.stop.addEventListener('click', stop);
    els.newChat.addEventListener('click', () => openConversation(null, Boolean(state.conversationId)));
    els.more.addEventListener('click', () => loadConversations(true));
    els.errorClose.addEventListener('click', clearError);
    els.menu.addEventListener('click', () => document.body.classList.toggle('sidebar-open'));
    els.backdrop.addEventListener('click', closeSidebar);
    els.messages.addEventListener('click', (e) => {
      const button = e.target.closest('.copy-code');
      if (button) copyCode(button);
    });
    els.messages.addEventListener('scroll', () => {
      const m = els.messages;
      state.stick = m.scrollHeight - m.scrollTop - m.clientHeight < 48;
    }, { passive: true });
    window.addEventListener('popstate', () => openConversation(urlConversation(), false));
  }

  function init() {
    bind();
    loadConversations();
    openConversation(urlConversation(), false);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
