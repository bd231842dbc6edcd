import '../chrome.js';
import {$, h, replace, int, pct} from '../dom.js';
import {prompts, num, workerLabForm} from '../lab.js';
import {Stepper} from '../stepper.js';
import {ms, shape, span, inFlight, batchText, pipelineRun, bubble, overlaps, firstFull, zoomWindow, bars, ticks,
  rangeText, poolWords, readoutText} from '../logic/pipeline-parallelism.js';

const form = $('#lab');
const stageClass = (s) => `pp-s${s % 2}`;

let run = null;  // the run on show
let origin = 0;  // its first stage start: the timeline's zero

// -- 1. the stages --------------------------------------------------------------------------

function drawStages() {
  const total = run.start.num_layers;
  const strip = h('ol', {class: 'pp-strip', 'aria-label': `The model's ${total} layers by stage`},
    run.stages.map((s) => h('li', {class: stageClass(s.stage), style: {flexGrow: String(s.layers[1] - s.layers[0])}},
      [s.weights.embed_tokens ? 'embedding, ' : '', `layers ${span(s.layers)}`,
       s.weights.lm_head ? ', norm, LM head' : ''].join(''))));
  const cards = run.stages.map((s) => {
    const others = Object.entries(s.weights).filter(([name]) => name === 'embed_tokens' || name === 'lm_head')
      .map(([name, dims]) => `${name} ${shape(dims)}`);
    return h('li', {class: `pp-stage ${stageClass(s.stage)}`},
      h('h3', {}, `Stage ${s.stage}`),
      h('p', {}, `Decoder layers ${span(s.layers)} (${s.layers[1] - s.layers[0]} of ${total}).`),
      h('p', {}, s.extras.length
        ? `Also holds the ${s.extras.join(' and the ')} (${others.join(', ')}).`
        : 'Holds decoder layers only.'),
      h('p', {}, `KV pool [${s.kvPoolShape.join(', ')}]: ${poolWords(s)}.`),
      h('p', {class: 'note'}, s.ranks.map((r) => `Rank ${r.rank}: worker pid ${r.pid}, its stage loaded in `
        + `${r.load_s.toFixed(2)} s.`).join(' ')));
  });
  replace($('#stages'), strip, h('ul', {class: 'pp-stages'}, cards),
    h('p', {class: 'note'}, `Each stage's pool has a layer dimension of its own layers only; the blocks are the `
      + `same ${int(run.start.num_blocks)} ids on every stage, handed out by the engine's one block manager.`));
}

// -- 2. the timeline ------------------------------------------------------------------------

// Lanes of bars over [from, to]: one per stage, bars labelled with their step when
// `labels`, and a time axis in ms after the run's first stage start.
function gantt(from, to, {labels, label}) {
  const drawn = bars(run, from, to);
  const lanes = run.stages.map((s) => h('div', {class: 'pp-lane'},
    h('span', {class: 'pp-name'}, `stage ${s.stage}`),
    h('div', {class: 'pp-track'}, drawn.filter((b) => b.stage === s.stage).map((b) => h('span', {
      class: `pp-bar ${stageClass(b.stage)}`, 'data-index': b.index, 'data-step': b.step,
      title: `step ${b.step}, stage ${b.stage}: ${rangeText(b, origin)}, ${ms(b.end - b.start)}`,
      style: {left: `${100 * b.left}%`, width: `${100 * b.width}%`},
      onclick: () => stepper.go(b.index)}, labels ? String(b.step) : null)))));
  const axis = h('div', {class: 'pp-lane', 'aria-hidden': 'true'}, h('span', {class: 'pp-name'}),
    h('div', {class: 'pp-axis'}, ticks(from, to, origin, labels ? 4 : 5).map((t) => h('span', {
      class: `pp-tick${t.at > 0.85 ? ' end' : ''}`, style: {left: `${100 * t.at}%`}}, `${t.ms} ms`))));
  return h('div', {class: 'pp-gantt', role: 'img', 'aria-label': label}, lanes, axis);
}

function drawOverview() {
  const b = bubble(run);
  const label = `The whole run, ${ms(b.span)}: ` + run.stages.map((s) => `stage ${s.stage} computed `
    + `${run.steps.filter((st) => st.times.some((t) => t.stage === s.stage)).length} batches, busy `
    + `${pct(b.share[s.stage])} of the time`).join('; ') + '.';
  replace($('#gantt'), gantt(b.first, b.last, {labels: false, label}));
}

function drawZoom(index) {
  const w = zoomWindow(run, index);
  const label = `Steps ${run.steps[w.lo].step} to ${run.steps[w.hi].step}: ` + run.steps.slice(w.lo, w.hi + 1)
    .map((s) => `step ${s.step}: ${s.times.map((t) => `stage ${t.stage} ${rangeText(t, origin)}`).join(', ')}`)
    .join('; ') + '.';
  replace($('#zoom'), gantt(w.from, w.to, {labels: true, label}));
}

function drawDetail(index) {
  const s = run.steps[index];
  const items = overlaps(run, index).map((t) => h('li', {class: stageClass(t.stage)},
    h('span', {class: 'who'}, `stage ${t.stage}`),
    ` ${rangeText(t, origin)} after the first stage start, ${ms(t.end - t.start)}; `,
    t.others.length
      ? `meanwhile ${t.others.map((o) => `stage ${o.stage} computed step ${o.step} for ${ms(o.seconds)}`).join(', ')}.`
      : 'no other stage was computing meanwhile.'));
  replace($('#step-detail'),
    h('p', {}, h('strong', {}, `Step ${s.step}`), `: requests ${batchText(s.batch)}, ${int(s.numTokens)} tokens. `
      + `When it was sent in, ${inFlight(s.inFlight)}, itself included.`),
    h('ul', {class: 'pp-detail'}, items));
}

function select(index) {
  for (const el of document.querySelectorAll('.pp-bar.selected')) el.classList.remove('selected');
  for (const el of document.querySelectorAll(`#gantt .pp-bar[data-index="${index}"]`)) el.classList.add('selected');
  drawZoom(index);
  for (const el of document.querySelectorAll(`#zoom .pp-bar[data-index="${index}"]`)) el.classList.add('selected');
  drawDetail(index);
  for (const row of document.querySelectorAll('#steps tbody tr')) {
    const current = Number(row.dataset.index) === index;
    row.classList.toggle('current', current);
    if (current) row.setAttribute('aria-current', 'true');
    else row.removeAttribute('aria-current');
  }
  $('#readout').textContent = readoutText(run, index);
}

const stepper = new Stepper($('[data-stepper="pp-step"]'), (index) => {
  if (run) select(index);
});

// -- 3. the bubble ----------------------------------------------------------------------------

function drawBubble() {
  const b = bubble(run);
  const share = (text, fraction, cls) => h('li', {},
    h('span', {class: 'bar-label'}, text),
    h('div', {class: 'track', 'aria-hidden': 'true'},
      h('span', {class: `fill ${cls}`, style: {width: `${100 * Math.min(1, fraction)}%`}})));
  const full = run.steps.filter((s) => s.inFlight >= run.numStages).length;
  replace($('#bubble'),
    h('p', {}, `Measured: the stages' times span ${ms(b.span)}, from the first stage start to the last `
      + `stage end; ${full} of the ${run.steps.length} steps were sent in with ${inFlight(run.numStages)}.`),
    h('ul', {class: 'bars'},
      run.stages.map((s) => share(`stage ${s.stage} busy ${ms(b.busy[s.stage])}: ${pct(b.share[s.stage])} of the `
        + 'span (computed)', b.share[s.stage], stageClass(s.stage))),
      share(`two stages at once ${ms(b.together)}: ${pct(b.together / b.span)} of the span (computed)`,
        b.together / b.span, 'pp-both')),
    h('p', {class: 'pp-fraction'}, `Bubble: ${pct(b.fraction)} of all stage-time was idle (computed: 1 − busy `
      + `${ms(b.total)} / (${run.numStages} stages × span ${ms(b.span)})).`),
    h('p', {class: 'note'}, `With a single batch in flight no two stages could compute at once, so the busy `
      + `times could add up to at most the span, and the bubble could not fall below 1 − 1/${run.numStages} = `
      + `${pct(1 - 1 / run.numStages)} (computed from the number of stages, not measured). The time the stages `
      + 'overlapped is what the second batch in flight bought. On this server the overlapping stages share the '
      + 'same CPU cores, so each runs slower while the other computes: the overlap does not make the run faster '
      + 'here.'));
}

// -- 4. the steps table, the outputs ---------------------------------------------------------

function drawTable() {
  replace($('#steps-head'),
    ['Step', 'In flight', 'Requests', 'Tokens'].map((t) => h('th', {scope: 'col'}, t)),
    run.stages.map((s) => [h('th', {scope: 'col'}, `Stage ${s.stage} ran`), h('th', {scope: 'col'}, `Stage ${s.stage} time`)]));
  replace($('#steps tbody'), run.steps.map((s, index) => {
    const row = h('tr', {'data-index': index},
      h('th', {scope: 'row'}, String(s.step)),
      h('td', {}, String(s.inFlight)),
      h('td', {}, batchText(s.batch)),
      h('td', {}, int(s.numTokens)),
      run.stages.map((st) => {
        const t = s.times.find((x) => x.stage === st.stage);
        return t ? [h('td', {}, rangeText(t, origin)), h('td', {}, ms(t.end - t.start))] : [h('td', {}, '–'), h('td', {}, '–')];
      }));
    row.addEventListener('click', () => stepper.go(index));
    return row;
  }));
}

function drawOutputs() {
  replace($('#outputs'), run.outputs.map((o) => h('li', {},
    h('span', {class: 'meta'}, `request ${o.request_id}, ${o.token_ids.length} tokens: `),
    h('span', {class: 'text'}, o.text))));
}

function show(data) {
  run = pipelineRun(data);
  const b = bubble(run);
  if (!b || !run.stages.length) {
    $('#readout').textContent = readoutText(run, 0);
    return;
  }
  origin = b.first;
  drawStages();
  drawOverview();
  drawBubble();
  drawTable();
  drawOutputs();
  stepper.load(run.steps.length, (i) => `engine step ${run.steps[i].step}, ${inFlight(run.steps[i].inFlight)}`,
    firstFull(run));
}

// -- the form ---------------------------------------------------------------------------

const requestBody = () => ({
  prompts: prompts($('#prompts')),
  max_tokens: num('#max-tokens'),
  block_size: 4,
  num_blocks: 64,
  enable_prefix_caching: false,
  pipeline_parallel_size: 2,
});

workerLabForm(form, [$('#prompts'), $('#max-tokens')], requestBody, (data) => show(data), {
  label: 'The pipeline-parallel run',
  waiting: (s) => 'Running on 2 stages: starting the worker processes, loading their layers, '
    + `stepping the engine… ${s} s`,
});
