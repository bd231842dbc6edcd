// The chunked-prefill lesson: one press runs the same workload twice on the server
// (unchunked, then chunked at the slider's budget) and draws both runs' measured steps
// one above the other, the longest wait between two tokens of the short requests, and
// the long prompt's prefill time in each. Computing is in ../logic/chunked-prefill.js.
import '../chrome.js';
import {$, h, svg, replace} from '../dom.js';
import {runLab, showError, clearError} from '../api.js';
import {prompts, num} from '../lab.js';
import {Stepper} from '../stepper.js';
import {describeEvent} from '../describe.js';
import {UNCHUNKED_BUDGET, collapse, runBody, longId, runFigures, trackBars, sharedScale, differing,
  figureRows, verdict, readoutLines, ms, chunkText, stallText, stepsText} from '../logic/chunked-prefill.js';

const form = $('#lab');
const statusEl = $('#status');
const errorEl = $('#error');
const runButton = $('#run');
const budgetInput = $('#budget');
const NAMES = ['unchunked', 'chunked'];

let shown = null;  // {figs, events, stepNumbers} of the runs on show
let running = false;

// -- the slider -------------------------------------------------------------------------

function budgetWords() {
  return `${budgetInput.value} tokens per step`;
}

budgetInput.addEventListener('input', () => {
  budgetInput.setAttribute('aria-valuetext', budgetWords());
  $('#budget-value').textContent = budgetWords();
});

// -- the tracks -------------------------------------------------------------------------

function trackLabel(name, f) {
  return `${name} run, token budget ${f.budget}: ${f.steps.length} steps; the long prompt in `
    + `${chunkText(f.chunks)}, ${stepsText(f.chunkSteps)}, ${ms(f.prefillMs)} in all; longest wait between two tokens `
    + `of a short request ${stallText(f.stall)}.`;
}

function drawTrack(container, name, f, scale, selected) {
  const t = trackBars(f, scale);
  const root = svg('svg', {viewBox: `0 0 ${t.width} ${t.height}`, role: 'img', 'aria-label': trackLabel(name, f)});
  const slot = t.width / Math.max(1, scale.numSteps);
  for (const b of t.bars) {
    const cls = ['cp-bar', `cp-${b.kind}`, b.stall ? 'cp-stall-bar' : '', b.step === selected ? 'selected' : '']
      .filter(Boolean).join(' ');
    const rect = svg('rect', {x: b.x, y: b.y, width: b.w, height: b.h, class: cls,
                              'data-step': b.step, 'data-kind': b.kind});
    rect.append(svg('title', {}, b.label));
    rect.addEventListener('click', () => selectStep(b.step));
    root.append(rect);
    if (b.chunk && slot >= 11) {
      root.append(svg('text', {x: b.x + b.w / 2, y: b.y - 2, class: 'axis cp-chunk', 'text-anchor': 'middle'},
        String(b.chunk)));
    }
  }
  root.append(svg('text', {x: 2, y: 9, class: 'axis'}, `ms per step (top ${scale.maxMs.toFixed(1)})`));
  root.append(svg('text', {x: t.width - 2, y: t.height - 3, class: 'axis', 'text-anchor': 'end'},
    `steps 0–${f.steps.length ? f.steps[f.steps.length - 1].step : 0}`));
  replace(container, root);
}

function drawTracks(selected = null) {
  const [u, c] = shown.figs;
  const scale = sharedScale(u, c);
  $('#unchunked-h').textContent = `Unchunked: token budget ${u.budget}`;
  $('#chunked-h').textContent = `Chunked: token budget ${c.budget}`;
  drawTrack($('#track-unchunked'), 'Unchunked', u, scale, selected);
  drawTrack($('#track-chunked'), 'Chunked', c, scale, selected);
}

// -- one step of each run -------------------------------------------------------------------

function batchWords(s) {
  return s.batch.map((c) => `request ${c.request_id} ${c.phase} ${c.num_tokens === 1 ? '1 token'
    : `${c.num_tokens} tokens (positions ${c.start}–${c.start + c.num_tokens - 1})`}`).join('; ');
}

function drawStep(list, f, events, step) {
  const s = f.steps.find((x) => x.step === step);
  if (!s) {
    replace(list, h('li', {}, `This run had ended before engine step ${step}.`));
    return;
  }
  const happened = events.filter((e) => e.step === step && !['step_begin', 'step_end', 'engine_started'].includes(e.kind));
  replace(list,
    h('li', {class: 'cp-head'}, `Step ${step}: ${ms(s.ms)}, ${s.tokens} tokens. ${batchWords(s)}.`),
    happened.map((e) => h('li', {}, describeEvent(e))));
}

function selectStep(step) {
  const index = shown.stepNumbers.indexOf(step);
  if (index >= 0) stepper.go(index);
}

const stepper = new Stepper($('[data-stepper="cp-step"]'), (index) => {
  if (!shown) return;
  const step = shown.stepNumbers[index];
  drawTracks(step);
  drawStep($('#step-unchunked'), shown.figs[0], shown.events[0], step);
  drawStep($('#step-chunked'), shown.figs[1], shown.events[1], step);
});

// -- the table, the readout -------------------------------------------------------------------

function drawFigures(u, c) {
  replace($('#figures tbody'), figureRows(u, c).map(([name, a, b]) => h('tr', {},
    h('th', {scope: 'row'}, name), h('td', {}, a), h('td', {}, b))));
  replace($('#verdict'), verdict(u, c).map((line) => h('p', {class: 'cp-verdict'}, line)));
}

function show(bodies, datas) {
  const id = longId(bodies[0]);
  const figs = datas.map((d) => runFigures(d.events, id));
  const steps = new Set(figs.flatMap((f) => f.steps.map((s) => s.step)));
  shown = {figs, events: datas.map((d) => d.events), stepNumbers: [...steps].sort((a, b) => a - b)};
  const [u, c] = figs;
  drawFigures(u, c);
  drawTracks();
  $('#readout').textContent = readoutLines(u, c, differing(datas[0].outputs, datas[1].outputs)).join('\n');
  const opening = Math.max(0, shown.stepNumbers.indexOf(u.stall ? u.stall.to : u.chunkSteps[0]));
  stepper.load(shown.stepNumbers.length, (i) => `engine step ${shown.stepNumbers[i]}`, opening);
}

// -- the form ---------------------------------------------------------------------------------

function workload() {
  const shorts = prompts($('#short-prompts'));
  const long = collapse($('#long-prompt').value);
  if (!shorts.length) throw new Error('give at least one short request');
  if (!long) throw new Error('the long prompt is empty');
  return {shorts, long, maxTokens: num('#max-tokens'), arriveAt: num('#arrive-at')};
}

async function runBoth(bodies) {
  const datas = [];
  for (const [i, body] of bodies.entries()) {
    const pending = runLab(body, {statusEl, errorEl, label: `The ${NAMES[i]} run`, keepsPrevious: Boolean(shown)});
    statusEl.textContent = `Running the ${NAMES[i]} run (${i + 1} of 2) on the server, token budget `
      + `${body.max_num_batched_tokens}…`;
    const data = await pending;
    if (!data) return null;
    datas.push(data);
  }
  return datas;
}

async function go() {
  if (running) return;
  running = true;
  const fields = form.querySelectorAll('textarea, input');
  for (const el of fields) el.readOnly = true;
  runButton.disabled = true;
  form.setAttribute('aria-busy', 'true');
  const started = performance.now();
  try {
    let bodies;
    try {
      const w = workload();
      bodies = [runBody(w, UNCHUNKED_BUDGET), runBody(w, Number(budgetInput.value))];
    } catch (err) {
      showError(errorEl, 'Preparing the run', err);
      return;
    }
    clearError(errorEl);
    const datas = await runBoth(bodies);
    if (!datas) return;
    show(bodies, datas);
    statusEl.textContent = `Both runs done in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } finally {
    for (const el of fields) el.readOnly = false;
    runButton.disabled = false;
    form.removeAttribute('aria-busy');
    running = false;
  }
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  go();
});
