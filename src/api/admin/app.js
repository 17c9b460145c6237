// whatsd admin page. Plain JS, no build step, no dependencies.
//
// The session list is what the event WebSocket says: its `snapshot` frame
// replaces everything, event frames update it. REST is used for commands
// and for what events do not carry (transitions, webhook status).
'use strict';

const TOKEN_KEY = 'whatsd.token';
// After its first code, whatsapp-rust shows each further QR code for 20 s
// (pair.rs); with the activation deadline that bounds how many are left.
const LATER_QR_MS = 20000;
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 5000;
// After a message.received frame, when the contacts page is asked again.
const CONTACTS_REFRESH_MS = 500;
// How many received messages the recent-messages panel keeps per session.
const RECENT_MAX = 20;
const PAIRING_STATES = new Set(['starting', 'qr', 'pair_code']);
const LINKED_STATES = new Set(['paired', 'connecting', 'connected', 'disconnected']);

const $ = (id) => document.getElementById(id);

const page = {
  token: null,
  sessions: new Map(), // id -> session, as the WebSocket reported it
  selected: null,
  socket: null,
  attempts: 0,
  reconnectTimer: null,
  clockSkewMs: 0, // server clock minus ours, from the frames' at_ms
  pairCode: null, // {session, code, expires_at_ms}
  detailSeq: 0,
  demo: null, // GET /v1/demo's answer under `serve --demo`, else null
  demoScanning: null, // session id while the demo phone scans its QR
  demoScanned: null, // {session, code, phone}: the QR the demo phone scanned last
  demoSending: false,
  demoSent: null, // {session, id, from, to}: the last demo message
  limits: null, // {session, at_ms, buckets}: GET /v1/sessions/{id}/limits, when it answered
  limitsLoading: false,
  groupsSeq: 0,
  groups: null, // {session, groups} or {session, error}: GET /v1/sessions/{id}/groups
  contactsSeq: 0,
  contacts: null, // {session, q, rows, next, loading, error, paged}: pages of GET /v1/sessions/{id}/contacts
  contactsTimer: null,
  recent: new Map(), // session id -> entries, newest first: message.received frames since the page opened
};

// ---- API ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + page.token };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network_error', 'the daemon did not answer (' + e.message + ')');
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = null;
  }
  if (!response.ok) {
    const error = json && json.error ? json.error : {};
    throw new ApiError(response.status, error.code || 'http_' + response.status,
      error.message || text || response.statusText);
  }
  return json;
}

function showError(error) {
  $('error-code').textContent = error.code ? '[' + error.code + ']' : '[error]';
  $('error-message').textContent = error.message || String(error);
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
}

// ---- sign-in ---------------------------------------------------------------

async function signIn(token) {
  page.token = token;
  try {
    await api('GET', '/v1/sessions');
  } catch (e) {
    page.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    throw e;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('sign-in').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = false;
  clearError();
  loadTenants();
  loadDemo();
  connect();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  page.token = null;
  clearTimeout(page.reconnectTimer);
  if (page.socket) {
    const socket = page.socket;
    page.socket = null;
    socket.close(1000, 'signed out');
  }
  page.sessions.clear();
  page.selected = null;
  page.pairCode = null;
  page.demo = null;
  page.demoScanned = null;
  page.demoSent = null;
  page.groups = null;
  page.contacts = null;
  clearRecent();
  clearTimeout(page.contactsTimer);
  $('groups-list').replaceChildren();
  $('contact-rows').replaceChildren();
  $('contacts-q').value = '';
  $('demo-banner').hidden = true;
  $('session-rows').replaceChildren();
  $('detail').hidden = true;
  $('app').hidden = true;
  $('sign-out').hidden = true;
  $('sign-in').hidden = false;
  $('token').value = '';
  setConnection('offline', 'signed out');
  $('token').focus();
}

async function loadTenants() {
  try {
    const { tenants } = await api('GET', '/v1/tenants');
    const options = tenants.map((t) => {
      const option = document.createElement('option');
      option.value = t.id;
      return option;
    });
    $('tenant-list').replaceChildren(...options);
  } catch (e) {
    // The list only helps typing; creating works without it.
  }
}

// ---- event WebSocket -------------------------------------------------------

function setConnection(state, text) {
  $('conn').dataset.state = state;
  $('app').classList.toggle('stale', state !== 'live');
  $('conn-text').textContent = text;
}

async function connect() {
  clearTimeout(page.reconnectTimer);
  if (!page.token) return;
  setConnection(page.attempts === 0 ? 'connecting' : 'reconnecting',
    page.attempts === 0 ? 'connecting…' : 'reconnecting…');
  let ticket;
  try {
    ticket = (await api('POST', '/v1/ws-tickets')).ticket;
  } catch (e) {
    if (e.status === 401) {
      signOut();
      showError(e);
      return;
    }
    scheduleReconnect();
    return;
  }
  if (!page.token) return;
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const socket = new WebSocket(scheme + location.host + '/v1/events?ticket=' + encodeURIComponent(ticket));
  page.socket = socket;
  socket.addEventListener('message', (message) => {
    if (page.socket !== socket) return;
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    onFrame(frame);
  });
  socket.addEventListener('close', () => {
    if (page.socket !== socket) return;
    page.socket = null;
    scheduleReconnect();
  });
}

function scheduleReconnect() {
  if (!page.token) return;
  page.attempts += 1;
  setConnection('reconnecting', 'reconnecting…');
  // Nothing shown may outlive the socket: QR codes go until the next snapshot.
  for (const session of page.sessions.values()) session.qr = null;
  renderDetail();
  const delay = Math.min(RECONNECT_MAX_MS, RECONNECT_MIN_MS * 2 ** Math.min(page.attempts - 1, 4));
  page.reconnectTimer = setTimeout(connect, delay);
}

function onFrame(frame) {
  if (typeof frame.at_ms === 'number') page.clockSkewMs = frame.at_ms - Date.now();
  if (frame.type === 'snapshot') {
    // A new daemon may answer after a reconnect: ask again whether it demos.
    if (page.attempts > 0) loadDemo();
    page.attempts = 0;
    setConnection('live', 'live');
    page.sessions.clear();
    for (const entry of frame.sessions) {
      const session = { ...entry, qr: null, activation_deadline_ms: 0 };
      if (entry.qr) session.qr = { ...entry.qr, at_ms: frame.at_ms };
      page.sessions.set(entry.id, session);
    }
    renderList();
    renderDetail();
    if (page.selected && page.sessions.has(page.selected)) loadDetail(page.selected);
    return;
  }
  const id = frame.session;
  if (!id) return;
  let session = page.sessions.get(id);
  if (!session) {
    // New since the snapshot (its events can overtake the answer to our
    // own create): start from the event, fetch what events do not carry.
    session = blankSession(id, frame.tenant);
    page.sessions.set(id, session);
    fetchSession(id);
  }
  applyEvent(session, frame);
  if (frame.type === 'message.received') noteReceived(id, frame);
  renderList();
  if (id === page.selected) {
    renderDetail();
    // A send or a pairing step may have taken a token.
    if (frame.type === 'message.sent' || frame.type === 'session.state') loadLimits(id);
    // A message may bring a new person, whom the daemon notes just after
    // the event: refresh the first page a little later, unless more pages
    // are on screen (refreshing would drop them).
    if (frame.type === 'message.received') {
      clearTimeout(page.contactsTimer);
      page.contactsTimer = setTimeout(() => refreshContacts(id), CONTACTS_REFRESH_MS);
    }
  }
}

function applyEvent(session, frame) {
  switch (frame.type) {
    case 'session.state':
      session.state = frame.to;
      session.reason = frame.reason || null;
      session.reason_message = frame.message || null;
      session.updated_at_ms = frame.at_ms;
      if (!PAIRING_STATES.has(frame.to)) session.qr = null;
      if (frame.to === 'created' || frame.to === 'logged_out') {
        session.phone = '';
        session.jid = '';
        session.push_name = '';
      }
      if (session.id === page.selected) loadDetail(session.id);
      break;
    case 'session.qr':
      session.qr = {
        code: frame.code,
        svg: frame.svg,
        index: frame.index,
        expires_at_ms: frame.expires_at_ms,
        at_ms: frame.at_ms,
      };
      session.activation_deadline_ms = frame.activation_deadline_ms || 0;
      break;
    case 'session.pair_code':
      page.pairCode = { session: session.id, code: frame.code, expires_at_ms: frame.expires_at_ms };
      break;
    case 'session.pair_code_error':
      if (session.id === page.selected) {
        showError({ code: frame.reason, message: 'WhatsApp refused the pairing code: ' + frame.message });
      }
      break;
    case 'session.paired':
    case 'session.phone':
    case 'session.connected':
      session.qr = null;
      if (frame.phone) session.phone = frame.phone;
      if (frame.jid) session.jid = frame.jid;
      if (frame.lid) session.lid = frame.lid;
      if (frame.push_name) session.push_name = frame.push_name;
      if (frame.type === 'session.connected') session.last_connected_at_ms = frame.at_ms;
      if (page.pairCode && page.pairCode.session === session.id) page.pairCode = null;
      break;
    case 'session.push_name':
      session.push_name = frame.push_name;
      break;
    default:
      break;
  }
}

function blankSession(id, tenant) {
  return {
    id, tenant, state: 'created', reason: null, reason_message: null, phone: '', jid: '', lid: '',
    push_name: '', last_connected_at_ms: 0, updated_at_ms: 0, qr: null, activation_deadline_ms: 0,
  };
}

// A REST record of a session the socket already reports: it wins when it is
// newer than the last event; otherwise it only fills in what is unknown.
function mergeRecord(record) {
  let session = page.sessions.get(record.id);
  if (!session) {
    session = blankSession(record.id, record.tenant);
    page.sessions.set(record.id, session);
  }
  const newer = (record.updated_at_ms || 0) > (session.updated_at_ms || 0);
  for (const [key, value] of Object.entries(record)) {
    if (key === 'transitions' || key === 'qr') continue;
    if (newer || session[key] === undefined || session[key] === '' || session[key] === 0) session[key] = value;
  }
  if (!PAIRING_STATES.has(session.state)) session.qr = null;
}

async function fetchSession(id) {
  try {
    const record = await api('GET', '/v1/sessions/' + encodeURIComponent(id));
    if (!page.sessions.has(id)) return; // deleted meanwhile
    mergeRecord(record);
    renderList();
    if (id === page.selected) renderDetail();
  } catch (e) {
    // Gone again, or not ours to see.
  }
}

// ---- rendering -------------------------------------------------------------

function serverNow() {
  return Date.now() + page.clockSkewMs;
}

function formatTime(ms) {
  if (!ms) return '—';
  const date = new Date(ms);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

function formatDuration(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const minutes = Math.floor(total / 60);
  const seconds = total % 60;
  return minutes > 0 ? minutes + ' min ' + String(seconds).padStart(2, '0') + ' s' : seconds + ' s';
}

function stateLabel(state) {
  return state.replace('_', ' ');
}

function setBadge(element, state) {
  element.className = 'badge state-' + state;
  element.textContent = stateLabel(state);
}

function sortedSessions() {
  return [...page.sessions.values()].sort((a, b) => a.id.localeCompare(b.id));
}

function renderList() {
  const rows = $('session-rows');
  const existing = new Map([...rows.children].map((row) => [row.dataset.id, row]));
  const wanted = sortedSessions();
  wanted.forEach((session, i) => {
    let row = existing.get(session.id);
    if (!row) row = newRow(session.id);
    existing.delete(session.id);
    fillRow(row, session);
    if (rows.children[i] !== row) rows.insertBefore(row, rows.children[i] || null);
  });
  for (const row of existing.values()) row.remove();
  $('no-sessions').hidden = wanted.length > 0;
  $('sessions').hidden = wanted.length === 0;
}

function newRow(id) {
  const row = document.createElement('tr');
  row.dataset.id = id;
  const labels = ['Session', 'Tenant', 'State', 'Phone', 'Push name', 'Last connected'];
  for (const label of labels) {
    const cell = document.createElement(label === 'Session' ? 'th' : 'td');
    if (label === 'Session') cell.scope = 'row';
    cell.dataset.label = label;
    row.append(cell);
  }
  const open = document.createElement('button');
  open.type = 'button';
  open.className = 'link';
  open.textContent = id;
  open.addEventListener('click', () => select(id));
  row.cells[0].append(open);
  const badge = document.createElement('span');
  row.cells[2].append(badge);
  row.addEventListener('click', (event) => {
    if (event.target === row || event.target.tagName === 'TD') select(id);
  });
  return row;
}

function fillRow(row, session) {
  row.classList.toggle('selected', session.id === page.selected);
  const open = row.cells[0].firstChild;
  if (session.id === page.selected) open.setAttribute('aria-current', 'true');
  else open.removeAttribute('aria-current');
  row.cells[1].textContent = session.tenant;
  setBadge(row.cells[2].firstChild, session.state);
  row.cells[3].textContent = session.phone ? '+' + session.phone : '—';
  row.cells[4].textContent = session.push_name || '—';
  row.cells[5].textContent = formatTime(session.last_connected_at_ms);
}

function select(id) {
  if (page.selected !== id) {
    page.pairCode = null;
    $('contacts-q').value = '';
  }
  page.selected = id;
  clearError();
  renderList();
  renderDetail();
  loadDetail(id);
  $('detail').hidden = false;
  $('detail-title').focus();
}

function renderDetail() {
  const session = page.sessions.get(page.selected);
  if (!session) {
    $('detail').hidden = true;
    return;
  }
  $('detail').hidden = false;
  $('detail-id').textContent = session.id;
  setBadge($('detail-state'), session.state);
  const reason = $('detail-reason');
  if (session.reason && !['connected', 'qr', 'starting', 'connecting'].includes(session.state)) {
    reason.textContent = 'Reason: ' + session.reason + (session.reason_message ? ' — ' + session.reason_message : '');
    reason.hidden = false;
  } else {
    reason.hidden = true;
  }

  const pairing = PAIRING_STATES.has(session.state);
  $('pairing').hidden = !pairing;
  const linked = !pairing && Boolean(session.phone) && LINKED_STATES.has(session.state);
  $('linked').hidden = !linked;
  if (linked) {
    $('linked-phone').textContent = '+' + session.phone;
    $('linked-jid').textContent = session.jid || '—';
    $('linked-name').textContent = session.push_name || '—';
  }
  renderQr(session);
  renderPairCode(session);
  renderDemo(session, linked);
  $('groups').hidden = pairing || !page.groups || page.groups.session !== session.id;
  $('contacts').hidden = pairing || !page.contacts || page.contacts.session !== session.id;
  renderRecent(session, pairing);

  const running = !['created', 'stopped', 'failed', 'logged_out'].includes(session.state);
  $('act-start').disabled = running;
  $('act-stop').disabled = !running;
  $('act-logout').disabled = !(session.phone || running);
}

function renderQr(session) {
  const img = $('qr');
  const qr = session.qr;
  if (!qr || !isOurSvg(qr.svg)) {
    img.hidden = true;
    img.removeAttribute('src');
    delete img.dataset.qr;
    delete img.dataset.index;
    $('qr-waiting').hidden = false;
    $('qr-meta').hidden = true;
    return;
  }
  if (img.dataset.qr !== qr.code) {
    img.src = 'data:image/svg+xml;base64,' + btoa(qr.svg);
    img.dataset.qr = qr.code;
    img.dataset.index = String(qr.index);
    img.alt = 'Pairing QR code ' + qr.index + ' for session ' + session.id;
  }
  img.hidden = false;
  $('qr-waiting').hidden = true;
  $('qr-meta').hidden = false;
  renderCountdowns();
}

// The QR comes from our own server as an SVG document; it is shown through
// an <img> (scripts in it never run), and anything else is refused.
function isOurSvg(svg) {
  return typeof svg === 'string' && /^(<\?xml[^>]*>\s*)?<svg[\s>]/.test(svg) && /^[\x20-\x7e\s]*$/.test(svg);
}

function renderPairCode(session) {
  const box = $('pair-code-box');
  const code = page.pairCode && page.pairCode.session === session.id ? page.pairCode : null;
  box.hidden = !code || session.state !== 'pair_code';
  if (!box.hidden) {
    const text = code.code.length === 8 ? code.code.slice(0, 4) + '-' + code.code.slice(4) : code.code;
    $('pair-code').textContent = text;
    $('pair-code').dataset.code = code.code;
  }
  renderCountdowns();
}

function renderCountdowns() {
  const session = page.sessions.get(page.selected);
  if (!session) return;
  renderLimits();
  const now = serverNow();
  const qr = session.qr;
  if (qr) {
    const left = qr.expires_at_ms - now;
    $('qr-expiry').textContent = left > 0 ? 'Expires in ' + formatDuration(left) + '.' : 'Expired; the next code is on its way.';
    if (session.activation_deadline_ms) {
      const activation = session.activation_deadline_ms - now;
      const later = Math.ceil(Math.max(0, session.activation_deadline_ms - qr.expires_at_ms) / LATER_QR_MS);
      $('qr-count').textContent = 'Code ' + qr.index + ' of about ' + (qr.index + later) + '.';
      $('qr-activation').textContent = 'Pairing must finish within ' + formatDuration(activation) + '.';
    } else {
      $('qr-count').textContent = 'Code ' + qr.index + '.';
      $('qr-activation').textContent = '';
    }
  }
  const code = page.pairCode;
  if (code && code.session === session.id) {
    const left = code.expires_at_ms - now;
    $('pair-code-expiry').textContent = left > 0 ? 'Valid for ' + formatDuration(left) + '.' : 'Expired; request a new code.';
  }
}

async function loadDetail(id) {
  const seq = ++page.detailSeq;
  let session;
  try {
    session = await api('GET', '/v1/sessions/' + encodeURIComponent(id));
  } catch (e) {
    if (e.status !== 404) showError(e);
    return;
  }
  if (seq !== page.detailSeq || page.selected !== id || !page.sessions.has(id)) return;
  mergeRecord(session);
  renderList();
  renderDetail();
  renderTransitions(session.transitions || []);
  loadWebhooks(session.tenant, seq);
  loadLimits(id);
  if (!PAIRING_STATES.has(session.state)) {
    loadGroups(id);
    if (!page.contacts || page.contacts.session !== id) loadContacts(id, '', false);
    else refreshContacts(id);
  }
}

// ---- rate limits -------------------------------------------------------------

const BUCKET_LABELS = {
  sends_per_minute: 'Sends / minute',
  sends_per_hour: 'Sends / hour',
  sends_per_day: 'Sends / day',
  qr_per_hour: 'QR pairings / hour',
  pair_codes_per_hour: 'Pairing codes / hour',
  resets_per_hour: 'Resets / hour',
};

async function loadLimits(id) {
  if (page.limitsLoading) return;
  page.limitsLoading = true;
  let view;
  try {
    view = await api('GET', '/v1/sessions/' + encodeURIComponent(id) + '/limits');
  } catch (e) {
    if (page.selected === id) $('limits').hidden = true;
    return;
  } finally {
    page.limitsLoading = false;
  }
  if (page.selected !== id || !view || !Array.isArray(view.buckets)) return;
  page.limits = { session: id, at_ms: serverNow(), buckets: view.buckets };
  renderLimits();
}

// Each bucket as remaining/limit, a bar, and the time to its next token
// and to full, counted down between answers; a bucket due a token is
// asked for again.
function renderLimits() {
  const limits = page.limits;
  const panel = $('limits');
  if (!limits || limits.session !== page.selected) {
    panel.hidden = true;
    return;
  }
  // The clock skew estimate moves with each frame: never count backwards.
  const elapsed = Math.max(0, serverNow() - limits.at_ms);
  let due = false;
  const rows = limits.buckets.map((b) => {
    const row = document.createElement('div');
    row.className = 'bucket';
    row.dataset.bucket = b.name;
    row.dataset.testid = 'bucket';
    const name = document.createElement('dt');
    name.textContent = BUCKET_LABELS[b.name] || b.name;
    const value = document.createElement('dd');
    const level = document.createElement('meter');
    level.min = 0;
    level.max = b.limit;
    level.low = Math.max(1, b.limit / 5);
    level.optimum = b.limit;
    level.value = b.remaining;
    const count = document.createElement('span');
    count.className = 'count';
    count.textContent = b.remaining + ' / ' + b.limit;
    const next = Math.max(0, b.next_token_seconds * 1000 - elapsed);
    const full = Math.max(0, b.full_seconds * 1000 - elapsed);
    if (b.next_token_seconds > 0 && next === 0) due = true;
    const when = document.createElement('span');
    when.className = 'why';
    when.textContent = b.full_seconds === 0 ? 'full'
      : (b.remaining === 0 ? 'empty; next in ' : 'next in ') + formatDuration(next) + ', full in ' + formatDuration(full);
    value.append(level, ' ', count, ' ', when);
    row.append(name, value);
    return row;
  });
  $('limits-body').replaceChildren(...rows);
  panel.hidden = false;
  if (due) loadLimits(limits.session);
}

// ---- groups and contacts ---------------------------------------------------

function sessionPath(id) {
  return '/v1/sessions/' + encodeURIComponent(id);
}

async function loadGroups(id) {
  const seq = ++page.groupsSeq;
  if (!page.groups || page.groups.session !== id) {
    page.groups = { session: id, groups: null, loading: true };
    renderGroups();
  }
  let answer = null;
  let error = null;
  try {
    answer = await api('GET', sessionPath(id) + '/groups');
  } catch (e) {
    error = e;
  }
  if (seq !== page.groupsSeq || page.selected !== id) return;
  page.groups = error ? { session: id, error } : { session: id, groups: answer.groups || [] };
  renderGroups();
  renderDetail();
}

function renderGroups() {
  const state = page.groups;
  if (!state || state.session !== page.selected) return;
  let status = '';
  let items = [];
  if (state.loading) {
    status = 'Loading groups…';
  } else if (state.error) {
    status = state.error.code === 'not_connected'
      ? 'Groups show while the session is connected to WhatsApp; it is not connected now.'
      : 'Could not load the groups: ' + state.error.message;
  } else if (state.groups.length === 0) {
    status = 'This account is in no groups.';
  } else {
    status = state.groups.length === 1 ? '1 group.' : state.groups.length + ' groups.';
    items = state.groups.map(groupItem);
  }
  setText($('groups-status'), status);
  $('groups-status').dataset.state = state.loading ? 'loading' : state.error ? 'error' : 'ready';
  $('groups-list').replaceChildren(...items);
}

function groupItem(group) {
  const item = document.createElement('li');
  item.dataset.jid = group.jid;
  const details = document.createElement('details');
  const summary = document.createElement('summary');
  const subject = document.createElement('strong');
  subject.textContent = group.subject || group.jid;
  const size = document.createElement('span');
  size.className = 'why';
  size.textContent = group.size === 1 ? '1 member' : group.size + ' members';
  summary.append(subject, ' ', size);
  details.append(summary);
  const meta = document.createElement('p');
  meta.className = 'hint';
  const jid = document.createElement('code');
  jid.textContent = group.jid;
  meta.append(jid);
  if (group.created_at) meta.append(' · created ' + formatTime(group.created_at * 1000));
  if (group.addressing_mode === 'lid') meta.append(' · phone numbers hidden (LID addressing)');
  details.append(meta);
  if (group.description) {
    const description = document.createElement('p');
    description.className = 'description';
    description.textContent = group.description;
    details.append(description);
  }
  const people = document.createElement('ul');
  people.className = 'participants';
  for (const p of group.participants || []) {
    const person = document.createElement('li');
    person.textContent = p.phone ? '+' + p.phone : 'hidden (LID ' + (p.lid || p.jid) + ')';
    if (p.admin) {
      const badge = document.createElement('span');
      badge.className = 'badge admin';
      badge.textContent = p.super_admin ? 'super admin' : 'admin';
      person.append(' ', badge);
    }
    people.append(person);
  }
  details.append(people);
  item.append(details);
  return item;
}

// `append`: the next page after the rows shown; otherwise the first page.
async function loadContacts(id, q, append) {
  const seq = ++page.contactsSeq;
  const current = page.contacts && page.contacts.session === id ? page.contacts : null;
  const after = append && current ? current.next : null;
  page.contacts = {
    session: id, q, rows: append && current ? current.rows : [], next: null,
    loading: true, error: null, paged: Boolean(after),
  };
  if (!current || !append) renderContacts();
  const params = new URLSearchParams();
  if (q) params.set('q', q);
  if (after) params.set('after', after);
  params.set('limit', '50');
  let answer = null;
  let error = null;
  try {
    answer = await api('GET', sessionPath(id) + '/contacts?' + params.toString());
  } catch (e) {
    error = e;
  }
  if (seq !== page.contactsSeq || page.selected !== id) return;
  const state = page.contacts;
  state.loading = false;
  if (error) state.error = error;
  else {
    state.rows = state.rows.concat(answer.contacts || []);
    state.next = answer.next || null;
  }
  renderContacts();
  renderDetail();
}

function renderContacts() {
  const state = page.contacts;
  if (!state || state.session !== page.selected) return;
  let status;
  if (state.error) status = 'Could not load the contacts: ' + state.error.message;
  else if (state.loading && state.rows.length === 0) status = 'Loading contacts…';
  else if (state.rows.length === 0) status = state.q ? 'No contact matches “' + state.q + '”.' : 'No contacts yet.';
  else status = state.rows.length + (state.rows.length === 1 ? ' contact' : ' contacts') + (state.next ? ' shown; more below.' : '.');
  setText($('contacts-status'), status);
  $('contacts-status').dataset.state = state.loading ? 'loading' : state.error ? 'error' : 'ready';
  const rows = state.rows.map((c) => {
    const row = document.createElement('tr');
    row.dataset.phone = c.phone || '';
    const cells = [
      ['Phone', c.phone ? '+' + c.phone : '—'],
      ['LID', c.lid || '—'],
      ['Name', c.name || '—'],
      ['Push name', c.push_name || '—'],
      ['Groups', String((c.groups || []).length)],
      ['Labels', (c.labels || []).join(', ') || '—'],
    ];
    for (const [label, text] of cells) {
      const cell = document.createElement('td');
      cell.dataset.label = label;
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  $('contact-rows').replaceChildren(...rows);
  $('contacts-table').hidden = rows.length === 0;
  $('contacts-more').hidden = !state.next;
  $('contacts-more').disabled = state.loading;
}

function refreshContacts(id) {
  const state = page.contacts;
  if (page.selected !== id || !state || state.session !== id || state.loading || state.paged) return;
  loadContacts(id, state.q, false);
}

function filterContacts(event) {
  event.preventDefault();
  const id = page.selected;
  if (!id) return;
  loadContacts(id, $('contacts-q').value.trim(), false);
}

// The CSV needs the Authorization header, which a plain link cannot send
// (and the token never goes into a URL): fetch it, then save the blob.
async function downloadContacts() {
  const id = page.selected;
  if (!id) return;
  clearError();
  const button = $('contacts-csv');
  button.setAttribute('aria-busy', 'true');
  try {
    let response;
    try {
      response = await fetch(sessionPath(id) + '/contacts.csv', {
        headers: { Authorization: 'Bearer ' + page.token }, cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError(0, 'network_error', 'the daemon did not answer (' + e.message + ')');
    }
    if (!response.ok) {
      let error = {};
      try {
        error = (await response.json()).error || {};
      } catch (e) {
        error = {};
      }
      throw new ApiError(response.status, error.code || 'http_' + response.status, error.message || response.statusText);
    }
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = 'contacts-' + id + '.csv';
    link.hidden = true;
    document.body.append(link);
    link.click();
    link.remove();
    // The download has its own copy once it started.
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (e) {
    showError(e);
  } finally {
    button.setAttribute('aria-busy', 'false');
  }
}

function renderTransitions(transitions) {
  const items = transitions.slice().reverse().map((t) => {
    const item = document.createElement('li');
    const time = document.createElement('time');
    time.dateTime = new Date(t.at_ms).toISOString();
    time.textContent = formatTime(t.at_ms);
    const what = document.createElement('span');
    what.textContent = stateLabel(t.from) + ' → ' + stateLabel(t.to);
    item.append(time, ' ', what);
    if (t.reason) {
      const why = document.createElement('span');
      why.className = 'why';
      why.textContent = t.reason;
      item.append(' ', why);
    }
    return item;
  });
  $('transitions').replaceChildren(...items);
}

// The webhook status route is new; its shape may still change. Show what
// it answers, hide the panel on anything but 200.
async function loadWebhooks(tenant, seq) {
  const panel = $('webhooks');
  let status;
  try {
    status = await api('GET', '/v1/tenants/' + encodeURIComponent(tenant) + '/webhooks/status');
  } catch (e) {
    if (seq === page.detailSeq) panel.hidden = true;
    return;
  }
  if (seq !== page.detailSeq || !status || typeof status !== 'object') return;
  $('webhooks-tenant').textContent = tenant;
  const rows = [];
  const add = (key, value) => {
    const row = document.createElement('div');
    const dt = document.createElement('dt');
    dt.textContent = key.replaceAll('_', ' ');
    const dd = document.createElement('dd');
    dd.textContent = value === null || value === '' ? '—' : String(value);
    row.append(dt, dd);
    rows.push(row);
  };
  const walk = (value, prefix) => {
    for (const [key, inner] of Object.entries(value)) {
      const name = prefix ? prefix + ' ' + key : key;
      if (inner && typeof inner === 'object' && !Array.isArray(inner)) walk(inner, name);
      else if (Array.isArray(inner)) add(name, inner.length + ' item(s)');
      else add(name, inner);
    }
  };
  walk(status, '');
  $('webhooks-body').replaceChildren(...rows.slice(0, 40));
  panel.hidden = false;
}

// ---- recent messages ---------------------------------------------------------

// A message.received frame becomes a row, newest first, RECENT_MAX per
// session. A picture's bytes need the Authorization header, which an <img>
// cannot send (and the token never goes into a URL): fetched, then shown
// through a blob: URL that is revoked when its row drops out.
function noteReceived(id, frame) {
  let entries = page.recent.get(id);
  if (!entries) {
    entries = [];
    page.recent.set(id, entries);
  }
  if (entries.some((e) => e.id === frame.id)) return; // a redelivery
  const entry = { id: frame.id, element: null, objectUrl: null, dropped: false };
  entry.element = recentItem(id, frame, entry);
  entries.unshift(entry);
  for (const old of entries.splice(RECENT_MAX)) dropRecent(old);
}

function dropRecent(entry) {
  entry.dropped = true;
  if (entry.objectUrl) URL.revokeObjectURL(entry.objectUrl);
  entry.objectUrl = null;
}

function clearRecent() {
  for (const entries of page.recent.values()) entries.forEach(dropRecent);
  page.recent.clear();
  $('recent-list').replaceChildren();
}

function recentItem(id, frame, entry) {
  const item = document.createElement('li');
  item.dataset.id = frame.id;
  item.dataset.kind = frame.kind || 'other';
  const media = frame.media && typeof frame.media.url === 'string' ? frame.media : null;
  const picture = media && ['image', 'sticker'].includes(frame.kind);
  if (picture) {
    const img = document.createElement('img');
    img.className = 'thumb';
    img.alt = (frame.kind === 'sticker' ? 'Sticker' : 'Picture') + ' from ' + sender(frame);
    img.width = 96;
    img.height = 96;
    img.hidden = true;
    const status = document.createElement('span');
    status.className = 'thumb-status hint';
    status.textContent = 'Loading the picture…';
    item.append(img, status);
    loadThumbnail(media.url, entry, img, status);
  }
  const body = document.createElement('div');
  body.className = 'body';
  const meta = document.createElement('p');
  meta.className = 'meta';
  const at = frame.timestamp ? frame.timestamp * 1000 : frame.at_ms;
  const time = document.createElement('time');
  time.dateTime = new Date(at).toISOString();
  time.textContent = formatTime(at);
  const from = document.createElement('span');
  from.className = 'from';
  from.textContent = sender(frame);
  meta.append(time, ' ', from);
  if (frame.kind && frame.kind !== 'text') {
    const kind = document.createElement('span');
    kind.className = 'badge';
    kind.textContent = frame.kind;
    meta.append(' ', kind);
  }
  const text = document.createElement('p');
  text.className = 'text';
  text.textContent = frame.text || frame.caption || (picture ? '' : '—');
  body.append(meta);
  if (text.textContent) body.append(text);
  if (media && !picture) {
    const what = document.createElement('p');
    what.className = 'hint';
    what.textContent = 'Attachment: ' + (media.mimetype || 'unknown type');
    body.append(what);
  }
  item.append(body);
  return item;
}

function sender(frame) {
  const phone = frame.from ? '+' + frame.from : frame.chat || 'unknown';
  return frame.push_name ? phone + ' (' + frame.push_name + ')' : phone;
}

async function loadThumbnail(url, entry, img, status) {
  // Only our own API paths: a frame never makes the page fetch elsewhere.
  if (!url.startsWith('/v1/')) {
    status.textContent = 'The picture is not available.';
    return;
  }
  try {
    let response;
    try {
      response = await fetch(url, { headers: { Authorization: 'Bearer ' + page.token }, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'network_error', 'the daemon did not answer (' + e.message + ')');
    }
    if (!response.ok) {
      let error = {};
      try {
        error = (await response.json()).error || {};
      } catch (e) {
        error = {};
      }
      throw new ApiError(response.status, error.code || 'http_' + response.status, error.message || response.statusText);
    }
    const blob = await response.blob();
    if (entry.dropped || !/^image\//.test(blob.type)) {
      if (!entry.dropped) status.textContent = 'Not a picture (' + (blob.type || 'unknown type') + ').';
      return;
    }
    entry.objectUrl = URL.createObjectURL(blob);
    img.src = entry.objectUrl;
    img.hidden = false;
    status.remove();
  } catch (e) {
    if (!entry.dropped) status.textContent = 'Could not load the picture: ' + (e.code ? '[' + e.code + '] ' : '') + e.message;
  }
}

function renderRecent(session, pairing) {
  const entries = page.recent.get(session.id) || [];
  $('recent').hidden = pairing && entries.length === 0;
  $('recent-empty').hidden = entries.length > 0;
  const list = $('recent-list');
  const items = entries.map((e) => e.element);
  if (items.length !== list.children.length || items.some((item, i) => list.children[i] !== item)) {
    list.replaceChildren(...items);
  }
}

// ---- demo mode -------------------------------------------------------------

// Only `whatsd serve --demo` answers GET /v1/demo with 200; any other answer
// (404 from other daemons and builds, an error) hides every demo control.
async function loadDemo() {
  let demo = null;
  try {
    const info = await api('GET', '/v1/demo');
    if (info && info.demo === true) demo = info;
  } catch (e) {
    demo = null;
  }
  if (!page.token) return; // signed out meanwhile
  page.demo = demo;
  $('demo-banner').hidden = !demo;
  renderDetail();
}

function renderDemo(session, linked) {
  const demo = page.demo;
  $('demo-scan-box').hidden = !demo;
  const scanning = page.demoScanning === session.id;
  // Busy, not disabled, while scanning: the button keeps the focus.
  $('demo-scan').disabled = !scanning && !session.qr;
  $('demo-scan').setAttribute('aria-busy', String(scanning));
  let scanText = '';
  if (scanning) scanText = 'The demo phone is scanning the code…';
  else if (page.demoScanned && page.demoScanned.session === session.id
    && session.qr && session.qr.code === page.demoScanned.code) {
    scanText = 'The demo phone +' + page.demoScanned.phone + ' scanned the code; the session is linking.';
  }
  setText($('demo-scan-status'), scanText);

  $('demo-message').hidden = !(demo && linked);
  $('demo-contact').textContent = demo ? '+' + demo.default_contact : '';
  $('demo-send').setAttribute('aria-busy', String(page.demoSending));
  $('demo-send-image').setAttribute('aria-busy', String(page.demoSending));
  if (!linked && page.demoSent && page.demoSent.session === session.id) page.demoSent = null;
  const sent = page.demoSent && page.demoSent.session === session.id ? page.demoSent : null;
  const notice = $('demo-sent');
  // Rebuilt only when it changes: it is a live region.
  const key = sent ? sent.id : '';
  if (notice.dataset.id !== key) {
    notice.dataset.id = key;
    if (sent) {
      const id = document.createElement('code');
      id.textContent = sent.id;
      notice.replaceChildren('Sent: message ', id, ' from +' + sent.from + ' to +' + sent.to + '.');
    } else {
      notice.replaceChildren();
    }
  }
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

async function demoScan() {
  const id = page.selected;
  if (!id || page.demoScanning) return;
  const session = page.sessions.get(id);
  const code = session && session.qr ? session.qr.code : null;
  clearError();
  page.demoScanning = id;
  page.demoScanned = null;
  renderDetail();
  try {
    const paired = await api('POST', '/v1/demo/sessions/' + encodeURIComponent(id) + '/scan', {});
    page.demoScanned = { session: id, code, phone: paired.phone };
  } catch (e) {
    showError(e);
  } finally {
    page.demoScanning = null;
    renderDetail();
  }
}

async function demoSend(event, image) {
  event.preventDefault();
  const id = page.selected;
  if (!id || page.demoSending) return;
  clearError();
  const input = $('demo-text');
  const text = input.value;
  if (!image && !text.trim()) {
    showError({ code: 'missing_text', message: 'type the text the demo contact sends' });
    input.focus();
    return;
  }
  page.demoSending = true;
  page.demoSent = null;
  renderDetail();
  try {
    const body = image ? { image: true } : { text };
    if (image && text.trim()) body.text = text;
    const sent = await api('POST', '/v1/demo/sessions/' + encodeURIComponent(id) + '/messages', body);
    page.demoSent = { session: id, id: sent.id, from: sent.from, to: sent.to };
    if (input.value === text) input.value = '';
  } catch (e) {
    showError(e);
  } finally {
    page.demoSending = false;
    renderDetail();
  }
}

// ---- actions ---------------------------------------------------------------

function confirmAction(title, text, ok) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = ok;
  return new Promise((resolve) => {
    const done = (answer) => {
      $('confirm-ok').removeEventListener('click', yes);
      $('confirm-cancel').removeEventListener('click', no);
      dialog.removeEventListener('close', no);
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $('confirm-ok').addEventListener('click', yes);
    $('confirm-cancel').addEventListener('click', no);
    dialog.addEventListener('close', no);
    dialog.showModal();
  });
}

async function act(action) {
  const id = page.selected;
  if (!id) return;
  const path = '/v1/sessions/' + encodeURIComponent(id);
  const confirmations = {
    reset: ['Reset session ' + id + '?',
      'This unlinks the device from the phone, wipes the session\'s keys and starts pairing again with a new QR code. Messages stop until it is paired again.',
      'Reset'],
    logout: ['Log out session ' + id + '?',
      'This unlinks the device from the phone and wipes the session\'s keys. The session stays in the list; start it to pair again.',
      'Log out'],
    delete: ['Delete session ' + id + '?',
      'This unlinks the device, wipes its keys and removes the session for good.',
      'Delete'],
  };
  if (confirmations[action] && !(await confirmAction(...confirmations[action]))) return;
  clearError();
  try {
    if (action === 'delete') {
      await api('DELETE', path);
      page.sessions.delete(id);
      page.selected = null;
      renderList();
      renderDetail();
      return;
    }
    if (action === 'reset') page.pairCode = null;
    await api('POST', path + '/' + action);
  } catch (e) {
    showError(e);
  }
}

async function createSession(event) {
  event.preventDefault();
  clearError();
  const body = {};
  const id = $('new-id').value.trim();
  const tenant = $('new-tenant').value.trim();
  if (id) body.id = id;
  if (tenant) body.tenant = tenant;
  try {
    const session = await api('POST', '/v1/sessions', body);
    mergeRecord(session);
    $('new-id').value = '';
    renderList();
    select(session.id);
  } catch (e) {
    showError(e);
  }
}

async function requestPairCode(event) {
  event.preventDefault();
  clearError();
  const id = page.selected;
  if (!id) return;
  try {
    const issued = await api('POST', '/v1/sessions/' + encodeURIComponent(id) + '/pair-code',
      { phone: $('pair-phone').value });
    page.pairCode = { session: id, code: issued.code, expires_at_ms: issued.expires_at_ms };
    renderDetail();
  } catch (e) {
    showError(e);
  }
}

function selectTab(which) {
  const qr = which === 'qr';
  $('tab-qr').setAttribute('aria-selected', String(qr));
  $('tab-phone').setAttribute('aria-selected', String(!qr));
  $('tab-qr').tabIndex = qr ? 0 : -1;
  $('tab-phone').tabIndex = qr ? -1 : 0;
  $('panel-qr').hidden = !qr;
  $('panel-phone').hidden = qr;
}

function onTabKey(event) {
  if (event.key === 'ArrowRight' || event.key === 'ArrowLeft') {
    const next = event.currentTarget.id === 'tab-qr' ? 'phone' : 'qr';
    selectTab(next);
    $('tab-' + next).focus();
    event.preventDefault();
  }
}

// ---- wiring ----------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  $('detail-title').tabIndex = -1;
  $('sign-in-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!token) {
      showError({ code: 'missing_token', message: 'paste the admin token or a tenant token' });
      return;
    }
    try {
      await signIn(token);
    } catch (e) {
      showError(e);
    }
  });
  $('sign-out').addEventListener('click', signOut);
  $('error-close').addEventListener('click', clearError);
  $('create-form').addEventListener('submit', createSession);
  $('pair-code-form').addEventListener('submit', requestPairCode);
  $('demo-scan').addEventListener('click', demoScan);
  $('demo-message-form').addEventListener('submit', (event) => demoSend(event, false));
  $('demo-send-image').addEventListener('click', (event) => demoSend(event, true));
  $('groups-refresh').addEventListener('click', () => {
    if (page.selected) loadGroups(page.selected);
  });
  $('contacts-filter').addEventListener('submit', filterContacts);
  $('contacts-more').addEventListener('click', () => {
    const state = page.contacts;
    if (state && state.session === page.selected && state.next && !state.loading) {
      loadContacts(state.session, state.q, true);
    }
  });
  $('contacts-csv').addEventListener('click', downloadContacts);
  $('tab-qr').addEventListener('click', () => selectTab('qr'));
  $('tab-phone').addEventListener('click', () => selectTab('phone'));
  $('tab-qr').addEventListener('keydown', onTabKey);
  $('tab-phone').addEventListener('keydown', onTabKey);
  for (const action of ['start', 'stop', 'reset', 'logout', 'delete']) {
    $('act-' + action).addEventListener('click', () => act(action));
  }
  setInterval(renderCountdowns, 1000);
  renderList();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).catch((e) => {
      signOut();
      showError(e);
    });
  } else {
    $('token').focus();
  }
});
