// The signup page's script. It shows only what the API answers, and inserts every value with
// textContent: nothing from a response or from the form is ever parsed as HTML. An email's HTML
// part is shown only in a sandboxed frame (no script, no same origin).
//
// Under `confirmd demo --serve`, GET /demo answers, and the page also shows the race, the inbox
// and the outage button; the service alone answers 404 there, and they stay hidden.
'use strict';

const POLL_EVERY_MS = 250;
const FOLLOW_FOR_MS = 60_000;
const INBOX_EVERY_MS = 2_000;
const SVG = 'http://www.w3.org/2000/svg';
let following = null; // the id of the signup being followed; a new submit stops the old one
let followedEmail = null; // the address of that signup, as the API parsed it
let demo = null; // what GET /demo offers, when the demo serves the page
let inbox = []; // the last inbox the demo listed

const $ = (id) => document.getElementById(id);
const show = (id, text) => { $(id).textContent = text == null || text === '' ? '—' : String(text); };

// `Server-Timing: db;dur=1.2, smtp;dur=30.5, total;dur=32.0` as { db: '1.2', ... }.
function parseServerTiming(header) {
  const timings = {};
  for (const entry of (header || '').split(',')) {
    const [name, ...params] = entry.trim().split(';');
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith('dur='));
    if (name && dur) timings[name.trim()] = dur.slice(4);
  }
  return timings;
}

async function submit(event) {
  event.preventDefault();
  following = null;
  const mode = document.querySelector('input[name=mode]:checked').value;
  const name = $('name').value;
  const body = { email: $('email').value };
  if (name !== '') body.name = name;

  $('submit').disabled = true;
  $('email-state').hidden = true;
  followedEmail = null;
  show('link-state', '');
  $('problem').hidden = true;
  for (const id of ['state', 'attempts', 'next-attempt', 'sent-at', 'following']) show(id, '');
  const started = performance.now();
  let response;
  try {
    response = await fetch(`/signups?mode=${encodeURIComponent(mode)}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(body),
    });
  } catch (e) {
    showAnswer(null, performance.now() - started, {});
    show('sent-body', `POST /signups?mode=${mode} ${JSON.stringify(body)}`);
    showProblem('The request failed', String(e));
    $('submit').disabled = false;
    return;
  }
  const elapsed = performance.now() - started;
  // What this page sent: the API echoes neither the name nor the mode.
  show('sent-body', `POST /signups?mode=${mode} ${JSON.stringify(body)}`);
  const timings = parseServerTiming(response.headers.get('server-timing'));
  let json = null;
  try { json = await response.json(); } catch { /* not JSON: status and timings say enough */ }
  $('submit').disabled = false;

  showAnswer(response, elapsed, timings);
  if (!response.ok) {
    showProblem(json && json.title ? json.title : response.statusText, json && json.detail);
    return;
  }
  show('signup-id', json && json.id);
  followedEmail = json && json.email;
  const location = response.headers.get('location') || (json && json.id && `/signups/${encodeURIComponent(json.id)}`);
  if (location) follow(location);
}

function showAnswer(response, elapsed, timings) {
  $('answer').hidden = false;
  const status = $('status');
  status.textContent = response ? `${response.status} ${response.statusText}`.trim() : 'no answer';
  status.className = response && response.ok ? 'ok' : 'err';
  show('elapsed', `${elapsed.toFixed(1)} ms`);
  for (const part of ['db', 'smtp', 'total']) {
    show(`timing-${part}`, timings[part] === undefined ? '' : `${timings[part]} ms`);
  }
  show('signup-id', '');
}

function showProblem(title, detail) {
  $('problem').hidden = false;
  show('problem-title', title);
  show('problem-detail', detail);
}

// Polls GET /signups/{id} until the email is sent or failed, for at most a minute.
async function follow(location) {
  const id = location;
  following = id;
  const until = performance.now() + FOLLOW_FOR_MS;
  $('email-state').hidden = false;
  show('following', 'polling every 250 ms');
  while (following === id) {
    let details = null;
    try {
      const response = await fetch(location, { headers: { accept: 'application/json' } });
      if (response.ok) details = await response.json();
      else show('following', `GET ${location} answered ${response.status}`);
    } catch (e) {
      show('following', `GET ${location} failed: ${e}`);
    }
    if (following !== id) return;
    if (details && details.delivery) {
      const d = details.delivery;
      // A queued email that was already tried is being retried: the API says so by its
      // attempts and its next attempt.
      const retrying = d.state === 'queued' && d.attempts > 0;
      show('state', retrying ? `retrying, next attempt at ${clock(d.next_attempt_at)}` : d.state);
      $('state').className = `state ${d.state === 'sent' ? 'ok' : d.state === 'failed' ? 'err' : ''}`;
      show('attempts', d.attempts);
      show('next-attempt', d.state === 'queued' ? d.next_attempt_at : '');
      show('sent-at', d.sent_at);
      if (d.state === 'sent' || d.state === 'failed') {
        show('following', 'done');
        following = null;
        if (d.state === 'sent' && demo) followLink(id);
        return;
      }
    }
    if (performance.now() >= until) {
      show('following', 'stopped after a minute; reload the page to follow another signup');
      following = null;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_EVERY_MS));
  }
}

// `2026-11-30T03:52:39.123Z` as the time of day it names, in the browser's zone.
function clock(rfc3339) {
  const at = new Date(rfc3339);
  return Number.isNaN(at.getTime()) ? String(rfc3339) : at.toLocaleTimeString();
}

// Under the demo: the followed signup's email, found in the inbox by its address, and the state
// of its link as GET /confirm says it in JSON (pending, then confirmed once its page's button
// was pressed). Opening the link this way confirms nothing, as for a mail scanner.
async function followLink(id) {
  const address = followedEmail;
  if (!address) return;
  $('link-state').hidden = false;
  for (const el of document.querySelectorAll('.demo-only')) el.hidden = false;
  show('link-state', 'looking for its email in the inbox');
  following = id;
  while (following === id) {
    await refreshInbox();
    const email = inbox.find((e) => e.to.includes(address) && e.link);
    if (email) {
      try {
        const response = await fetch(email.link, { headers: { accept: 'application/json' } });
        const json = await response.json();
        if (following !== id) return;
        if (response.ok) {
          show('link-state', json.status === 'confirmed' ? 'confirmed' : 'pending: open it in the inbox, press its button');
          $('link-state').className = json.status === 'confirmed' ? 'state ok' : 'state';
          if (json.status === 'confirmed') { following = null; return; }
        } else {
          show('link-state', json.title || `GET /confirm answered ${response.status}`);
        }
      } catch (e) {
        show('link-state', `GET /confirm failed: ${e}`);
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// --- The race ------------------------------------------------------------------------------

// Reads a text/event-stream body as { event, data } objects. fetch, not EventSource: a refused
// race (409, 422) must show its problem+json, and a finished one must not be restarted.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield { event, data: JSON.parse(data.join('\n')) };
    }
  }
}

async function race(event) {
  event.preventDefault();
  const params = new URLSearchParams({
    requests: $('race-requests').value,
    concurrency: $('race-concurrency').value,
    smtp_latency_ms: $('race-latency').value,
  });
  $('race-start').disabled = true;
  $('race-problem').hidden = true;
  $('race-text').hidden = true;
  $('race-reading').replaceChildren();
  show('race-state', 'starting');
  try {
    const response = await fetch(`/demo/race?${params}`, { headers: { accept: 'text/event-stream' } });
    if (!response.ok) {
      let json = null;
      try { json = await response.json(); } catch { /* the status says enough */ }
      raceProblem(json && json.title ? json.title : `${response.status}`, json && json.detail);
      show('race-state', `refused: ${response.status}`);
      return;
    }
    show('race-state', 'running');
    for await (const { event: name, data } of events(response)) {
      if (name === 'progress') showRace(data.modes, data.requests);
      else if (name === 'done') {
        showRace(data.report.modes, data.report.requests);
        const reading = $('race-reading');
        for (const line of data.reading) {
          const li = document.createElement('li');
          li.textContent = line;
          reading.append(li);
        }
        $('race-text').textContent = data.text;
        $('race-text').hidden = false;
        show('race-state', 'done');
      } else if (name === 'failed') {
        raceProblem('The race failed', data.detail);
        show('race-state', 'failed');
      }
    }
  } catch (e) {
    raceProblem('The race was cut short', String(e));
    show('race-state', 'cut short');
  } finally {
    $('race-start').disabled = false;
  }
}

function raceProblem(title, detail) {
  $('race-problem').hidden = false;
  show('race-problem-title', title);
  show('race-problem-detail', detail);
}

const fixed = (v, digits) => (v == null ? '' : Number(v).toFixed(digits));

// Each mode's figures so far: a progress event's, or the final report's (same field names).
function showRace(modes, requests) {
  $('race-table').hidden = false;
  for (const m of modes) {
    const answered = m.answered ?? m.requests;
    show(`race-${m.mode}-answered`, `${answered} of ${requests}`);
    for (const p of ['p50', 'p90', 'p99', 'max']) show(`race-${m.mode}-${p}`, fixed(m.latency_ms && m.latency_ms[p], 2));
    show(`race-${m.mode}-sent`, m.sent ?? m.delivered);
    show(`race-${m.mode}-sent-p50`, fixed(m.delivery_ms && m.delivery_ms.p50, 0));
    show(`race-${m.mode}-sent-max`, fixed(m.delivery_ms && m.delivery_ms.max, 0));
  }
  chart($('race-chart-latency'), 'response time (ms, log scale)', modes, 'latency_ms');
  chart($('race-chart-delivery'), 'signup → email sent (ms, log scale)', modes, 'delivery_ms');
}

function el(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

// Horizontal bars, one per mode for each percentile, on a log scale: sync's 150 ms and
// background's 2 ms both stay readable.
function chart(svg, title, modes, field) {
  const percentiles = ['p50', 'p90', 'p99', 'max'];
  const values = modes.flatMap((m) => percentiles.map((p) => m[field] && m[field][p])).filter((v) => v > 0);
  svg.replaceChildren();
  svg.removeAttribute('hidden'); // an SVG element has no `hidden` property, only the attribute
  svg.append(el('text', { x: 8, y: 16, 'font-size': 13, 'font-weight': 600 }, title));
  if (!values.length) {
    svg.append(el('text', { x: 8, y: 40, 'font-size': 12 }, 'nothing yet'));
    return;
  }
  const low = Math.log10(Math.min(...values) / 2);
  const high = Math.log10(Math.max(...values) * 1.5);
  const left = 60;
  const width = 600 - left - 70;
  const x = (v) => left + (width * (Math.log10(Math.max(v, 1e-3)) - low)) / (high - low);
  percentiles.forEach((p, i) => {
    const y = 28 + i * 40;
    svg.append(el('text', { x: 8, y: y + 18, 'font-size': 12 }, p));
    modes.forEach((m, j) => {
      const v = m[field] && m[field][p];
      if (!(v > 0)) return;
      const top = y + j * 16;
      svg.append(el('rect', { x: left, y: top, width: Math.max(1, x(v) - left), height: 13, class: m.mode }));
      svg.append(el('text', { x: x(v) + 4, y: top + 11, 'font-size': 11, class: m.mode }, `${m.mode} ${fixed(v, v < 10 ? 2 : 0)}`));
    });
  });
}

// --- The inbox -----------------------------------------------------------------------------

async function refreshInbox() {
  let listed;
  try {
    const response = await fetch('/demo/inbox', { headers: { accept: 'application/json' } });
    if (!response.ok) return;
    listed = await response.json();
  } catch {
    return; // the next refresh tries again
  }
  inbox = listed.emails;
  show('inbox-count', `${listed.received} received; the last ${inbox.length} are kept.`);
  const list = $('inbox-list');
  list.replaceChildren(...inbox.map((email) => {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'mail-item';
    button.textContent = `#${email.number} to ${email.to.join(', ')}: ${email.subject ?? '(no subject)'}`;
    button.addEventListener('click', () => openEmail(email));
    li.append(button);
    return li;
  }));
}

// Shows one email as a mail client would: headers and the text part as text, the confirmation
// link as a link (only one that leads back here), the HTML part in a sandboxed frame.
function openEmail(email) {
  $('mail').hidden = false;
  show('mail-subject', email.subject ?? '(no subject)');
  show('mail-from', email.from);
  show('mail-to', email.to.join(', '));
  show('mail-date', email.date);
  const text = $('mail-text');
  text.replaceChildren();
  const body = email.text ?? '';
  const link = email.link && email.link.startsWith(`${location.origin}/confirm?`) ? email.link : null;
  const at = link ? body.indexOf(link) : -1;
  if (at < 0) {
    text.textContent = body;
  } else {
    const a = document.createElement('a');
    a.href = link;
    a.target = '_blank';
    a.rel = 'noopener';
    a.id = 'mail-link';
    a.textContent = link;
    text.append(document.createTextNode(body.slice(0, at)), a, document.createTextNode(body.slice(at + link.length)));
  }
  $('mail-html').srcdoc = email.html ?? '';
}

async function outage() {
  $('outage').disabled = true;
  try {
    const response = await fetch('/demo/outage?ms=3000', { method: 'POST' });
    show('outage-state', response.ok ? 'refusing for 3 s: sign up in background mode to see the retry' : `refused: ${response.status}`);
    setTimeout(() => { $('outage').disabled = false; show('outage-state', ''); }, 3000);
  } catch (e) {
    show('outage-state', String(e));
    $('outage').disabled = false;
  }
}

// The race, the inbox and the outage exist only under the demo: GET /demo says whether.
async function offerDemo() {
  try {
    const response = await fetch('/demo', { headers: { accept: 'application/json' } });
    if (!response.ok) return;
    demo = await response.json();
  } catch {
    return;
  }
  $('race-latency').value = demo.smtp_latency_ms;
  for (const id of ['race', 'inbox', 'outage-part']) $(id).hidden = false;
  $('race-form').addEventListener('submit', race);
  $('inbox-refresh').addEventListener('click', refreshInbox);
  $('outage').addEventListener('click', outage);
  await refreshInbox();
  setInterval(refreshInbox, INBOX_EVERY_MS);
}

document.addEventListener('DOMContentLoaded', () => {
  $('signup').addEventListener('submit', submit);
  offerDemo();
});
