// The signup page's script. It shows only what the API answers, and inserts every value with
// textContent: nothing from a response or from the form is ever parsed as HTML.
'use strict';

const POLL_EVERY_MS = 250;
const FOLLOW_FOR_MS = 60_000;
let following = null; // the id of the signup being followed; a new submit stops the old one

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
    showProblem('The request failed', String(e));
    $('submit').disabled = false;
    return;
  }
  const elapsed = performance.now() - started;
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
      show('state', d.state);
      $('state').className = `state ${d.state === 'sent' ? 'ok' : d.state === 'failed' ? 'err' : ''}`;
      show('attempts', d.attempts);
      show('next-attempt', d.state === 'queued' ? d.next_attempt_at : '');
      show('sent-at', d.sent_at);
      if (d.state === 'sent' || d.state === 'failed') {
        show('following', 'done');
        following = null;
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

document.addEventListener('DOMContentLoaded', () => {
  $('signup').addEventListener('submit', submit);
});
