// What every lesson page shares: a form that starts a lab engine run on the server,
// and a player over that run's events.

import {$} from './dom.js';
import {API, getJSON, postJSON, runLab, showError} from './api.js';
import {Timeline} from './timeline.js';
import {Player} from './player.js';
import {clampIndex} from './logic/attention-heads.js';

export function prompts(textarea) {
  return textarea.value.split('\n').map((line) => line.trim()).filter(Boolean);
}

// The prompt the engine gets: `text` alone, or wrapped in the model's chat template by
// the server (`chat`); with its length in tokens.
export async function chatPrompt(text, chat) {
  if (!chat) {
    const {count} = await postJSON('/tokenize', {prompt: text});
    return {prompt: text, count};
  }
  const {tokens, count} = await postJSON('/tokenize', {messages: [{role: 'user', content: text}]});
  const {prompt} = await postJSON('/detokenize', {tokens});
  return {prompt, count};
}

export function num(id) {
  const text = $(id).value.trim();
  return text === '' ? NaN : Number(text);
}

// The #layer and #head inputs of a page that probes one attention head. boundLayerHead
// bounds them by the loaded model from /info: their max and `limits` ({layers, heads},
// Infinity until then); it returns the engine's description, or null when /info does not
// answer (the bounds are a convenience: the server checks every value). readLayerHead
// reads them, pulling a value out of range back into `limits`.
export async function boundLayerHead(limits) {
  try {
    const e = (await getJSON(`${API}/info`)).engine;
    limits.layers = e.num_layers;
    limits.heads = e.num_heads;
    $('#layer').max = String(e.num_layers - 1);
    $('#head').max = String(e.num_heads - 1);
    return e;
  } catch {
    return null;
  }
}

export function readLayerHead(limits) {
  const layer = clampIndex(Number($('#layer').value), limits.layers);
  const head = clampIndex(Number($('#head').value), limits.heads);
  $('#layer').value = String(layer);
  $('#head').value = String(head);
  return {layer, head};
}

// Wire `form` to run the lab with build()'s body (build may be async: a page that
// asks the server something first); onData(data, body) gets each response.
// Returns a function that starts a run (pages call it once on load).
export function labForm(form, build, onData, options = {}) {
  const button = form.querySelector('button[type="submit"]');
  const statusEl = $('#status');
  const errorEl = $('#error');
  let shown = false;
  const go = async () => {
    let body;
    try {
      body = await build();
    } catch (err) {
      showError(errorEl, 'Preparing the run', err);
      return null;
    }
    const data = await runLab(body, {button, statusEl, errorEl, keepsPrevious: shown, ...options});
    if (data) {
      shown = true;
      onData(data, body);
    }
    return data;
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go();
  });
  return go;
}

// Wire `form` to a run that starts worker processes (seconds, not milliseconds): one
// run at a time, `fields` read-only meanwhile, and the status counting the seconds in
// the words `waiting(seconds)` gives. onData(data) gets each response.
export function workerLabForm(form, fields, build, onData, {label, waiting}) {
  const statusEl = $('#status');
  const errorEl = $('#error');
  let running = false;
  let shown = false;
  const go = async () => {
    if (running) return;
    running = true;
    for (const el of fields) el.readOnly = true;
    form.setAttribute('aria-busy', 'true');
    const started = performance.now();
    const pending = runLab(build(), {button: form.querySelector('button[type="submit"]'), statusEl,
                                     errorEl, label, keepsPrevious: shown});
    // runLab wrote its first status; say what the seconds go to
    const tick = setInterval(() => {
      statusEl.textContent = waiting(Math.floor((performance.now() - started) / 1000));
    }, 1000);
    try {
      const data = await pending;
      if (data) {
        shown = true;
        onData(data);
      }
    } finally {
      clearInterval(tick);
      for (const el of fields) el.readOnly = false;
      form.removeAttribute('aria-busy');
      running = false;
    }
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go();
  });
}

// A player over an (initially empty) run; `render(state, timeline)` draws each move.
export function playerFor(container, render, options) {
  return new Player(container, new Timeline([]), render, options);
}

// Load a run's events into the player at `where`: 'start', 'first-step',
// 'last-step', 'end', or an event position.
export function loadRun(player, events, where = 'first-step') {
  const timeline = new Timeline(events);
  const {stops} = timeline;
  const pos = {
    'end': timeline.length,
    'first-step': stops[0] ?? timeline.length,
    // the last step that still has requests running (the final one ends them)
    'last-step': stops.length > 1 ? stops[stops.length - 2] : stops[0] ?? timeline.length,
    'start': 0,
  }[where] ?? where;
  player.setTimeline(timeline, pos);
  return timeline;
}

// What a readout says before the first event: no run yet, or the start of one.
export function emptyReadout(timeline) {
  return timeline.length ? `event 0 of ${timeline.length}: before the engine started` : 'No run yet.';
}
