// parlai-ext chat page: talks to `parlai chat_web` (POST /interact, POST /reset, GET /info).
'use strict';

const replies = [];  // candidates of each model reply, by reply index

function fmt(value, digits) {
  return value === null || value === undefined ? '-' : Number(value).toFixed(digits);
}

function addRow(kind, speaker, text, meta) {
  const row = document.createElement('div');
  row.className = 'row ' + kind;
  const who = document.createElement('span');
  who.className = 'speaker';
  who.textContent = speaker;
  const said = document.createElement('span');
  said.className = 'text';
  said.textContent = text;
  row.append(who, said);
  if (meta) {
    const info = document.createElement('span');
    info.className = 'meta';
    info.textContent = meta;
    row.append(info);
  }
  const log = document.getElementById('log');
  log.append(row);
  log.scrollTop = log.scrollHeight;
  return row;
}

function showCandidates(index) {
  document.querySelectorAll('.row.model').forEach(
    (row) => row.classList.toggle('selected', Number(row.dataset.reply) === index));
  const candidates = index === null ? [] : replies[index];
  const body = document.getElementById('candBody');
  body.replaceChildren();
  candidates.forEach((cand, rank) => {
    const tr = document.createElement('tr');
    if (cand.chosen) tr.className = 'chosen';
    const cells = [
      [String(rank + 1) + (cand.chosen ? ' \u2605' : ''), 'rank'],
      [cand.latent === null || cand.latent === undefined ? '-' : String(cand.latent), 'latent'],
      [fmt(cand.score, 3), 'score'],
      [fmt(cand.evaluator, 3), 'evaluator'],
      [fmt(cand.logprob, 2), 'logprob'],
      [fmt(cand.penalty, 1), 'penalty'],
      [cand.text, 'text'],
    ];
    for (const [value, key] of cells) {
      const td = document.createElement('td');
      td.textContent = value;
      td.dataset.key = key;
      if (key !== 'text') td.className = 'num';
      tr.append(td);
    }
    body.append(tr);
  });
  document.getElementById('candTable').hidden = candidates.length === 0;
  document.getElementById('candCount').textContent =
    candidates.length ? '(' + candidates.length + ')' : '';
  document.getElementById('candNote').hidden = candidates.length !== 0;
}

function setBusy(busy, message) {
  document.getElementById('respond').disabled = busy;
  document.getElementById('restart').disabled = busy;
  document.getElementById('status').textContent = message || '';
}

async function post(path, payload) {
  const response = await fetch(path, {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(payload || {}),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function send(event) {
  event.preventDefault();
  const input = document.getElementById('userIn');
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  addRow('you', 'You', text);
  setBusy(true, 'the model is thinking\u2026');
  try {
    const data = await post('/interact', {text: text});
    const index = replies.length;
    const candidates = data.candidates || [];
    replies.push(candidates);
    const chosen = candidates.find((cand) => cand.chosen);
    let meta = '';
    if (candidates.length) {
      meta = 'chosen from ' + candidates.length + ' candidates';
      if (chosen && chosen.latent !== null && chosen.latent !== undefined) {
        meta += ' \u00b7 latent z = ' + chosen.latent;
      }
    }
    const row = addRow('model', 'Model', data.text, meta);
    row.dataset.reply = String(index);
    row.addEventListener('click', () => showCandidates(index));
    showCandidates(index);
    setBusy(false, '');
  } catch (error) {
    addRow('error', 'Error', String(error.message || error));
    setBusy(false, '');
  }
  input.focus();
}

async function restart() {
  setBusy(true, 'starting a new conversation\u2026');
  try {
    await post('/reset');
    document.querySelectorAll('#log .row:not(.info)').forEach((row) => row.remove());
    replies.length = 0;
    showCandidates(null);
    setBusy(false, '');
  } catch (error) {
    setBusy(false, 'reset failed: ' + (error.message || error));
  }
}

document.getElementById('interact').addEventListener('submit', send);
document.getElementById('restart').addEventListener('click', restart);
fetch('/info').then((response) => response.json()).then((info) => {
  document.getElementById('model').textContent = info.model || '';
}).catch(() => {});
